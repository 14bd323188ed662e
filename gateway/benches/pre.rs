//! Threshold proxy re-encryption (2 of 3): grant and re-encrypted DEK open.
//!
//! `cargo bench -p ehr-gateway --bench pre`; medians are in
//! `target/criterion/pre_*/new/estimates.json` (`median.point_estimate`, ns).

use criterion::{Criterion, criterion_group, criterion_main};
use ehr_gateway::crypto::sealer::{KeySealer, UmbralKeyPair, UmbralSealer};
use ehr_gateway::crypto::stream::Dek;
use ehr_gateway::crypto::threshold::{
    GrantKeys, ProxyCfrag, ProxyKey, ThresholdGrant, capsule_of, collect, decrypt_reencrypted,
    open_kfrag, reencrypt, secret_key_of,
};
use umbral_pre::{SecretKey, Signer};

fn bench(c: &mut Criterion) {
    let pair = UmbralKeyPair::generate().unwrap();
    let patient = secret_key_of(&pair).unwrap();
    let patient_pk = patient.public_key();
    let signer_sk = SecretKey::random();
    let signer_pk = signer_sk.public_key();
    let signer = Signer::new(signer_sk);
    let reader = SecretKey::random();
    let reader_pk = reader.public_key();
    let proxy_sks: Vec<SecretKey> = (0..3).map(|_| SecretKey::random()).collect();
    let proxies: Vec<ProxyKey> = proxy_sks
        .iter()
        .enumerate()
        .map(|(i, sk)| ProxyKey {
            org: format!("Org{i}MSP"),
            public_key: sk.public_key(),
        })
        .collect();
    let keys = GrantKeys {
        verifying: &signer_pk,
        delegating: &patient_pk,
        receiving: &reader_pk,
    };

    c.bench_function("pre_grant_2of3", |b| {
        b.iter(|| ThresholdGrant::generate(&patient, &signer, &reader_pk, &proxies, 2).unwrap())
    });

    let grant = ThresholdGrant::generate(&patient, &signer, &reader_pk, &proxies, 2).unwrap();
    c.bench_function("pre_proxy_open_kfrag", |b| {
        b.iter(|| {
            open_kfrag(
                &proxy_sks[0],
                &grant.sealed_kfrags[0],
                keys,
                &grant.metadata.kfrag_commitments[0],
            )
            .unwrap()
        })
    });

    let dek = Dek::generate();
    let sealed = UmbralSealer.seal(&pair.public, &dek).unwrap();
    let kfrags: Vec<_> = (0..2)
        .map(|i| {
            open_kfrag(
                &proxy_sks[i],
                &grant.sealed_kfrags[i],
                keys,
                &grant.metadata.kfrag_commitments[i],
            )
            .unwrap()
        })
        .collect();
    c.bench_function("pre_reencrypted_open_2of3", |b| {
        b.iter(|| {
            let cfrags: Vec<ProxyCfrag> = kfrags
                .iter()
                .enumerate()
                .map(|(i, k)| ProxyCfrag {
                    org: format!("Org{i}MSP"),
                    cfrag: reencrypt(&sealed.capsule, k).unwrap(),
                })
                .collect();
            let capsule = capsule_of(&sealed).unwrap();
            let collected = collect(&capsule, cfrags, keys, &grant.metadata.proxies, 2).unwrap();
            let out = decrypt_reencrypted(
                &reader,
                &patient_pk,
                &capsule,
                &collected,
                &sealed.ciphertext,
            )
            .unwrap();
            assert_eq!(out.as_bytes(), dek.as_bytes());
            out
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
