//! Cryptography of the gateway: the chunked file cipher, DEK sealing (Umbral)
//! and the key-encryption key for secrets at rest.

pub mod kek;
pub mod sealer;
pub mod stream;
pub mod threshold;
