//! Streaming, chunked AES-256-GCM ("EHR stream" format, version 1).
//!
//! Built like the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár):
//! the plaintext is cut into fixed-size chunks; chunk `i` is sealed with
//! nonce = `prefix(7) || i (u32, big-endian) || final(1)` and associated data
//! = `header || i (u64, big-endian) || final(1)`. The header carries a random
//! file id and nonce prefix, so
//! - truncation at a chunk boundary fails (the new last chunk was sealed as
//!   not final),
//! - appending fails (the real last chunk was sealed as final),
//! - reordering fails (the index is in the nonce and AAD),
//! - splicing chunks from another file fails (header and key differ).
//!
//! Layout: `header (33 bytes) || chunk_0 || … || chunk_n`, each chunk being
//! `ciphertext || tag (16)`; every chunk but the last holds exactly
//! `chunk_size` plaintext bytes; the last holds `0..=chunk_size`.
//!
//! The types here are sans-I/O: feed bytes in, take bytes out. Memory use is
//! bounded by one chunk.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Magic bytes opening every EHR stream.
pub const MAGIC: [u8; 4] = *b"EHRS";
/// Format version.
pub const VERSION: u8 = 1;
/// Algorithm id for AES-256-GCM.
pub const ALG_AES_256_GCM: u8 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 16 + 7;
/// Length of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Default plaintext chunk size (64 KiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest chunk size accepted when reading a header.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size accepted when reading a header (bounds memory).
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Errors of the stream cipher. None of them carries key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("not an EHR stream (bad magic or version)")]
    BadHeader,
    #[error("unsupported chunk size {0}")]
    BadChunkSize(u32),
    #[error("chunk {0} failed authentication (tampered, reordered, spliced or truncated)")]
    Authentication(u64),
    #[error("stream truncated: no final chunk")]
    Truncated,
    #[error("too many chunks")]
    TooManyChunks,
}

/// A 256-bit data-encryption key, zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Dek([u8; 32]);

impl Dek {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// Builds a key from a slice, which must be 32 bytes.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
    /// The raw key bytes (handle with care).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek(..)")
    }
}

/// The plaintext header of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub file_id: [u8; 16],
    pub nonce_prefix: [u8; 7],
}

impl Header {
    /// A fresh header with a random file id and nonce prefix.
    pub fn random(chunk_size: u32) -> Self {
        let mut rng = rand::rng();
        let mut file_id = [0u8; 16];
        let mut nonce_prefix = [0u8; 7];
        rng.fill_bytes(&mut file_id);
        rng.fill_bytes(&mut nonce_prefix);
        Self {
            chunk_size,
            file_id,
            nonce_prefix,
        }
    }

    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = ALG_AES_256_GCM;
        b[6..10].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[10..26].copy_from_slice(&self.file_id);
        b[26..33].copy_from_slice(&self.nonce_prefix);
        b
    }

    /// Parses and validates a header.
    pub fn parse(b: &[u8]) -> Result<Self, StreamError> {
        if b.len() < HEADER_LEN || b[..4] != MAGIC || b[4] != VERSION || b[5] != ALG_AES_256_GCM {
            return Err(StreamError::BadHeader);
        }
        let chunk_size = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(StreamError::BadChunkSize(chunk_size));
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&b[10..26]);
        let mut nonce_prefix = [0u8; 7];
        nonce_prefix.copy_from_slice(&b[26..33]);
        Ok(Self {
            chunk_size,
            file_id,
            nonce_prefix,
        })
    }
}

struct ChunkCipher {
    aead: Aes256Gcm,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    index: u64,
}

impl ChunkCipher {
    fn new(dek: &Dek, header: Header) -> Self {
        let key = Key::<Aes256Gcm>::from(*dek.as_bytes());
        Self {
            aead: Aes256Gcm::new(&key),
            header_bytes: header.to_bytes(),
            header,
            index: 0,
        }
    }

    fn nonce_aad(
        &self,
        last: bool,
    ) -> Result<
        (
            Nonce<aes_gcm::aes::cipher::consts::U12>,
            [u8; HEADER_LEN + 9],
        ),
        StreamError,
    > {
        let counter = u32::try_from(self.index).map_err(|_| StreamError::TooManyChunks)?;
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&self.header.nonce_prefix);
        nonce[7..11].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = u8::from(last);
        let mut aad = [0u8; HEADER_LEN + 9];
        aad[..HEADER_LEN].copy_from_slice(&self.header_bytes);
        aad[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&self.index.to_be_bytes());
        aad[HEADER_LEN + 8] = u8::from(last);
        Ok((Nonce::from(nonce), aad))
    }

    /// Seals `buf` in place (appends the tag).
    fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), StreamError> {
        let (nonce, aad) = self.nonce_aad(last)?;
        self.aead
            .encrypt_in_place(&nonce, &aad, buf)
            .map_err(|_| StreamError::TooManyChunks)?;
        self.index += 1;
        Ok(())
    }

    /// Opens `buf` in place (removes the tag).
    fn open(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), StreamError> {
        let (nonce, aad) = self.nonce_aad(last)?;
        self.aead
            .decrypt_in_place(&nonce, &aad, buf)
            .map_err(|_| StreamError::Authentication(self.index))?;
        self.index += 1;
        Ok(())
    }
}

/// Streaming encryptor. Call [`Encryptor::update`] with plaintext as it
/// arrives and [`Encryptor::finish`] once; concatenate the header and all
/// outputs to get the stream.
pub struct Encryptor {
    cipher: ChunkCipher,
    chunk_size: usize,
    buf: Vec<u8>,
}

impl Encryptor {
    /// A new encryptor with a fresh random header; returns the header bytes to
    /// write first.
    pub fn new(dek: &Dek, chunk_size: u32) -> Result<(Self, [u8; HEADER_LEN]), StreamError> {
        Self::with_header(dek, Header::random(chunk_size))
    }

    /// A new encryptor with a given header (tests, deterministic vectors).
    pub fn with_header(dek: &Dek, header: Header) -> Result<(Self, [u8; HEADER_LEN]), StreamError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&header.chunk_size) {
            return Err(StreamError::BadChunkSize(header.chunk_size));
        }
        let chunk_size = header.chunk_size as usize;
        let cipher = ChunkCipher::new(dek, header);
        let bytes = cipher.header_bytes;
        Ok((
            Self {
                cipher,
                chunk_size,
                buf: Vec::with_capacity(chunk_size + TAG_LEN),
            },
            bytes,
        ))
    }

    /// Feeds plaintext; appends any completed ciphertext chunks to `out`.
    ///
    /// A full chunk is only sealed once more input arrives, because the last
    /// chunk must be sealed as final.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        while !input.is_empty() {
            if self.buf.len() == self.chunk_size {
                self.flush_chunk(out, false)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Seals the last chunk (possibly empty) and appends it to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.flush_chunk(out, true)
    }

    fn flush_chunk(&mut self, out: &mut Vec<u8>, last: bool) -> Result<(), StreamError> {
        self.cipher.seal(&mut self.buf, last)?;
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        Ok(())
    }
}

/// Streaming decryptor. Plaintext of a chunk is released only after that
/// chunk authenticated; a stream that ends without a valid final chunk fails
/// in [`Decryptor::finish`].
pub struct Decryptor {
    dek: Dek,
    header_buf: Vec<u8>,
    cipher: Option<ChunkCipher>,
    seg_len: usize,
    buf: Vec<u8>,
    done: bool,
}

impl Decryptor {
    /// A decryptor for a stream sealed under `dek`; the header is read from
    /// the input.
    pub fn new(dek: &Dek) -> Self {
        Self {
            dek: dek.clone(),
            header_buf: Vec::with_capacity(HEADER_LEN),
            cipher: None,
            seg_len: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The parsed header, once enough input arrived.
    pub fn header(&self) -> Option<Header> {
        self.cipher.as_ref().map(|c| c.header)
    }

    /// Feeds ciphertext; appends authenticated plaintext to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.cipher.is_none() {
            let take = (HEADER_LEN - self.header_buf.len()).min(input.len());
            self.header_buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header_buf.len() < HEADER_LEN {
                return Ok(());
            }
            let header = Header::parse(&self.header_buf)?;
            self.seg_len = header.chunk_size as usize + TAG_LEN;
            self.buf.reserve(self.seg_len);
            self.cipher = Some(ChunkCipher::new(&self.dek, header));
        }
        if self.done && !input.is_empty() {
            return Err(StreamError::Authentication(u64::MAX));
        }
        while !input.is_empty() {
            if self.buf.len() == self.seg_len {
                // More data follows, so this segment is not the last one.
                self.open_segment(out, false)?;
            }
            let take = (self.seg_len - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Authenticates the final chunk and appends its plaintext to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.cipher.is_none() {
            return Err(StreamError::BadHeader);
        }
        if self.buf.len() < TAG_LEN {
            return Err(StreamError::Truncated);
        }
        self.open_segment(out, true)?;
        self.done = true;
        Ok(())
    }

    fn open_segment(&mut self, out: &mut Vec<u8>, last: bool) -> Result<(), StreamError> {
        let cipher = self.cipher.as_mut().ok_or(StreamError::BadHeader)?;
        cipher.open(&mut self.buf, last)?;
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        Ok(())
    }
}

/// Size of the ciphertext stream for `plaintext_len` bytes.
pub fn ciphertext_len(plaintext_len: u64, chunk_size: u32) -> u64 {
    let cs = u64::from(chunk_size);
    // Full chunks followed by a (possibly empty) final chunk; an exact
    // multiple seals its last full chunk as final.
    let chunks = if plaintext_len == 0 {
        1
    } else {
        plaintext_len.div_ceil(cs)
    };
    HEADER_LEN as u64 + plaintext_len + chunks * TAG_LEN as u64
}

/// Encrypts a whole buffer (tests and small payloads).
pub fn encrypt_all(dek: &Dek, chunk_size: u32, plaintext: &[u8]) -> Result<Vec<u8>, StreamError> {
    let (mut enc, header) = Encryptor::new(dek, chunk_size)?;
    let mut out = header.to_vec();
    enc.update(plaintext, &mut out)?;
    enc.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole buffer (tests and small payloads).
pub fn decrypt_all(dek: &Dek, stream: &[u8]) -> Result<Vec<u8>, StreamError> {
    let mut dec = Decryptor::new(dek);
    let mut out = Vec::new();
    dec.update(stream, &mut out)?;
    dec.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u32 = 1024;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seg(i: usize) -> std::ops::Range<usize> {
        let s = CS as usize + TAG_LEN;
        HEADER_LEN + i * s..HEADER_LEN + (i + 1) * s
    }

    #[test]
    fn roundtrip_various_sizes_and_feed_patterns() {
        let dek = Dek::generate();
        for n in [0, 1, 1023, 1024, 1025, 2048, 5000] {
            let pt = data(n);
            let ct = encrypt_all(&dek, CS, &pt).unwrap();
            assert_eq!(ct.len() as u64, ciphertext_len(n as u64, CS), "n={n}");
            assert_eq!(decrypt_all(&dek, &ct).unwrap(), pt, "n={n}");
            // Byte-by-byte and odd-sized feeding give the same result.
            for step in [1usize, 7, 1040] {
                let mut d = Decryptor::new(&dek);
                let mut out = Vec::new();
                for c in ct.chunks(step) {
                    d.update(c, &mut out).unwrap();
                }
                d.finish(&mut out).unwrap();
                assert_eq!(out, pt, "n={n} step={step}");
            }
        }
    }

    #[test]
    fn wrong_key_fails() {
        let ct = encrypt_all(&Dek::generate(), CS, &data(100)).unwrap();
        assert_eq!(
            decrypt_all(&Dek::generate(), &ct),
            Err(StreamError::Authentication(0))
        );
    }

    #[test]
    fn truncation_at_chunk_boundary_is_detected() {
        let dek = Dek::generate();
        let ct = encrypt_all(&dek, CS, &data(3 * CS as usize)).unwrap();
        let cut = &ct[..seg(1).end];
        assert_eq!(decrypt_all(&dek, cut), Err(StreamError::Authentication(1)));
        // Only the header left.
        assert_eq!(
            decrypt_all(&dek, &ct[..HEADER_LEN]),
            Err(StreamError::Truncated)
        );
        // Mid-chunk cut.
        assert!(decrypt_all(&dek, &ct[..ct.len() - 5]).is_err());
    }

    #[test]
    fn appending_is_detected() {
        let dek = Dek::generate();
        let pt = data(2 * CS as usize + 10);
        let ct = encrypt_all(&dek, CS, &pt).unwrap();
        // Append a copy of the first chunk after the final one.
        let mut longer = ct.clone();
        longer.extend_from_slice(&ct[seg(0)]);
        assert!(decrypt_all(&dek, &longer).is_err());
        let mut junk = ct.clone();
        junk.push(0);
        assert!(decrypt_all(&dek, &junk).is_err());
    }

    #[test]
    fn reordering_is_detected() {
        let dek = Dek::generate();
        let ct = encrypt_all(&dek, CS, &data(3 * CS as usize)).unwrap();
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&ct[seg(1)]);
        swapped.extend_from_slice(&ct[seg(0)]);
        swapped.extend_from_slice(&ct[seg(2)]);
        assert_eq!(
            decrypt_all(&dek, &swapped),
            Err(StreamError::Authentication(0))
        );
    }

    #[test]
    fn splicing_between_files_is_detected_even_under_one_key() {
        let dek = Dek::generate();
        let a = encrypt_all(&dek, CS, &data(2 * CS as usize)).unwrap();
        let b = encrypt_all(&dek, CS, &data(2 * CS as usize)).unwrap();
        let mut spliced = a[..seg(0).end].to_vec();
        spliced.extend_from_slice(&b[seg(1).start..]);
        assert_eq!(
            decrypt_all(&dek, &spliced),
            Err(StreamError::Authentication(1))
        );
        // Same chunks under a swapped header.
        let mut reheaded = b[..HEADER_LEN].to_vec();
        reheaded.extend_from_slice(&a[HEADER_LEN..]);
        assert_eq!(
            decrypt_all(&dek, &reheaded),
            Err(StreamError::Authentication(0))
        );
    }

    #[test]
    fn bit_flip_anywhere_is_detected() {
        let dek = Dek::generate();
        let ct = encrypt_all(&dek, CS, &data(1500)).unwrap();
        for pos in [0, 5, 7, 12, HEADER_LEN, HEADER_LEN + 100, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x01;
            assert!(decrypt_all(&dek, &bad).is_err(), "flip at {pos}");
        }
    }

    #[test]
    fn header_validation() {
        assert_eq!(Header::parse(b"short"), Err(StreamError::BadHeader));
        let mut h = Header::random(CS).to_bytes();
        h[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Header::parse(&h), Err(StreamError::BadChunkSize(u32::MAX)));
        assert!(Encryptor::new(&Dek::generate(), 10).is_err());
    }

    #[test]
    fn fresh_headers_differ() {
        let a = Header::random(CS);
        let b = Header::random(CS);
        assert_ne!(a.file_id, b.file_id);
    }
}
