//! Signed gateway-to-gateway requests (`ehr.proxy.v1.SignedRequest`).
//!
//! The body is a serialized request message whose [`RequestHeader`] names
//! the method, the target org, the time and a nonce; the signature (the
//! caller's enrolled service identity, ECDSA P-256) covers
//! `"ehr-proxy/v1\n" + method + "\n" + body`. The receiver accepts it only
//! from a gateway service identity of a consortium org, for itself, for
//! the method called, within [`CLOCK_SKEW_SECS`] of its clock.

use ehr_ledger::msp::{Msp, OrgMsp, SigningIdentity};
use ehr_proto::ehr::proxy::v1::{RequestHeader, SignedRequest};
use prost::Message;

use super::SERVICE_USER;
use crate::api::error::{ApiError, ApiResult};

/// How far a request's `issued_at` may be from the receiver's clock.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// The bytes a request's signature covers.
pub fn signed_bytes(method: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + method.len() + 16);
    out.extend_from_slice(b"ehr-proxy/v1\n");
    out.extend_from_slice(method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// A fresh header for `method` to `target_org`.
pub fn header(method: &str, target_org: &str) -> RequestHeader {
    RequestHeader {
        method: method.to_owned(),
        target_org: target_org.to_owned(),
        issued_at: chrono::Utc::now().timestamp(),
        nonce: rand::random::<[u8; 16]>().to_vec(),
    }
}

/// Serializes and signs a request message.
pub fn sign<M: Message>(service: &SigningIdentity, method: &str, msg: &M) -> SignedRequest {
    let body = msg.encode_to_vec();
    SignedRequest {
        signature: service.sign(&signed_bytes(method, &body)),
        identity: service.serialized().to_vec(),
        body,
    }
}

/// The consortium's MSP from the org CA certificates (PEM by org).
pub fn consortium_msp(
    cas: &std::collections::BTreeMap<String, String>,
) -> Result<Msp, ehr_ledger::msp::MspError> {
    let mut orgs = Vec::new();
    for (org, pem) in cas {
        orgs.push(OrgMsp::new(org, pem)?);
    }
    Ok(Msp::new(orgs))
}

/// Checks the signature and the caller, decodes the body and checks its
/// header. Returns the message and the calling org.
pub fn open<M: Message + Default>(
    msp: &Msp,
    own_org: &str,
    method: &str,
    req: &SignedRequest,
    header_of: impl Fn(&M) -> Option<&RequestHeader>,
) -> ApiResult<(M, String)> {
    let who = msp
        .deserialize(&req.identity)
        .map_err(|_| ApiError::unauthorized("the caller is not a member of the consortium"))?;
    who.verify(&signed_bytes(method, &req.body), &req.signature)
        .map_err(|_| ApiError::unauthorized("bad request signature"))?;
    if !who.valid_at(chrono::Utc::now().timestamp()) {
        return Err(ApiError::unauthorized(
            "the caller's certificate is not valid now",
        ));
    }
    // The gateway's service identity: ehrchain role admin, user `gateway`
    // (attributes, as the contract reads them; its certificate is OU=client).
    let attr = |k: &str| who.attrs.get(k).map(String::as_str);
    let is_service = attr(crate::identity::attrs::ROLE) == Some("admin")
        && attr(crate::identity::attrs::USER_ID) == Some(SERVICE_USER);
    if !is_service {
        return Err(ApiError::forbidden(
            "only a gateway's service identity may call the key proxy",
        ));
    }
    let msg = M::decode(req.body.as_slice())
        .map_err(|_| ApiError::bad_request("undecodable request body"))?;
    let h = header_of(&msg).ok_or_else(|| ApiError::bad_request("request header missing"))?;
    if h.method != method {
        return Err(ApiError::bad_request(format!(
            "request for {:?} sent to {method}",
            h.method
        )));
    }
    if h.target_org != own_org {
        return Err(ApiError::forbidden(format!(
            "request addressed to {:?}, this is {own_org}",
            h.target_org
        )));
    }
    if (chrono::Utc::now().timestamp() - h.issued_at).abs() > CLOCK_SKEW_SECS {
        return Err(ApiError::unauthorized(
            "request is too old or from the future (check the clocks)",
        ));
    }
    if h.nonce.len() != 16 {
        return Err(ApiError::bad_request("request nonce must be 16 bytes"));
    }
    Ok((msg, who.msp_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_ledger::msp::ca::{CertRole, OrgCa};
    use ehr_proto::ehr::proxy::v1::ReencryptRequest;

    fn setup() -> (Msp, SigningIdentity, SigningIdentity, SigningIdentity) {
        let a = OrgCa::generate("org-a", "org-a").unwrap();
        let b = OrgCa::generate("org-b", "org-b").unwrap();
        let rogue = OrgCa::generate("org-a", "org-a").unwrap();
        let id = |ca: &OrgCa, user: &str, role: &str, cr| {
            ca.issue(
                user,
                cr,
                &[
                    (crate::identity::attrs::USER_ID, user),
                    (crate::identity::attrs::ROLE, role),
                ],
            )
            .unwrap()
        };
        let mut cas = std::collections::BTreeMap::new();
        cas.insert("org-a".to_owned(), a.cert_pem().to_owned());
        cas.insert("org-b".to_owned(), b.cert_pem().to_owned());
        (
            consortium_msp(&cas).unwrap(),
            id(&a, SERVICE_USER, "admin", CertRole::Client),
            id(&a, "u-doc", "clinician", CertRole::Client),
            id(&rogue, SERVICE_USER, "admin", CertRole::Client),
        )
    }

    fn req(method: &str, target: &str) -> ReencryptRequest {
        ReencryptRequest {
            header: Some(header(method, target)),
            event_id: "e1".into(),
            record_id: "r1".into(),
        }
    }

    fn open_r(msp: &Msp, s: &SignedRequest) -> ApiResult<(ReencryptRequest, String)> {
        open(msp, "org-b", "Reencrypt", s, |m: &ReencryptRequest| {
            m.header.as_ref()
        })
    }

    #[test]
    fn accepts_a_signed_request_from_a_service_identity() {
        let (msp, svc, _, _) = setup();
        let s = sign(&svc, "Reencrypt", &req("Reencrypt", "org-b"));
        let (m, org) = open_r(&msp, &s).unwrap();
        assert_eq!(org, "org-a");
        assert_eq!(m.event_id, "e1");
    }

    #[test]
    fn refuses_tampered_misdirected_stale_and_foreign_requests() {
        let (msp, svc, doc, rogue) = setup();
        let code = |r: ApiResult<(ReencryptRequest, String)>| r.unwrap_err().status.as_u16();
        // Tampered body.
        let mut s = sign(&svc, "Reencrypt", &req("Reencrypt", "org-b"));
        let last = s.body.len() - 1;
        s.body[last] ^= 1;
        assert_eq!(code(open_r(&msp, &s)), 401);
        // Signed for another method (signature domain), or header says another method.
        let s = sign(&svc, "Release", &req("Reencrypt", "org-b"));
        assert_eq!(code(open_r(&msp, &s)), 401);
        let s = sign(&svc, "Reencrypt", &req("Release", "org-b"));
        assert_eq!(code(open_r(&msp, &s)), 400);
        // For another org.
        let s = sign(&svc, "Reencrypt", &req("Reencrypt", "org-c"));
        assert_eq!(code(open_r(&msp, &s)), 403);
        // Stale.
        let mut m = req("Reencrypt", "org-b");
        m.header.as_mut().unwrap().issued_at -= CLOCK_SKEW_SECS + 5;
        assert_eq!(code(open_r(&msp, &sign(&svc, "Reencrypt", &m))), 401);
        // A clinician, not a gateway.
        let s = sign(&doc, "Reencrypt", &req("Reencrypt", "org-b"));
        assert_eq!(code(open_r(&msp, &s)), 403);
        // …also when its user id is the service's.
        let a = OrgCa::generate("org-a", "org-a").unwrap();
        let mut cas = std::collections::BTreeMap::new();
        cas.insert("org-a".to_owned(), a.cert_pem().to_owned());
        let msp_a = consortium_msp(&cas).unwrap();
        let fake = a
            .issue(
                SERVICE_USER,
                CertRole::Client,
                &[
                    (crate::identity::attrs::USER_ID, SERVICE_USER),
                    (crate::identity::attrs::ROLE, "clinician"),
                ],
            )
            .unwrap();
        let s = sign(&fake, "Reencrypt", &req("Reencrypt", "org-b"));
        assert_eq!(code(open_r(&msp_a, &s)), 403);
        // A certificate from a CA outside the consortium.
        let s = sign(&rogue, "Reencrypt", &req("Reencrypt", "org-b"));
        assert_eq!(code(open_r(&msp, &s)), 401);
        // No header.
        let m = ReencryptRequest {
            header: None,
            ..req("Reencrypt", "org-b")
        };
        assert_eq!(code(open_r(&msp, &sign(&svc, "Reencrypt", &m))), 400);
    }
}
