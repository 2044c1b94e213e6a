//! The stored form of one secret version: an envelope. The plaintext is
//! sealed with AES-256-GCM under a fresh data key (DEK); the DEK is wrapped
//! by a key-encryption key (KEK) of the keyring. The associated data binds
//! the ciphertext to its namespace, key and version, so it cannot be moved
//! to another key or replayed as another version.
//!
//! Layout (format 1), every integer big-endian:
//!
//! ```text
//! magic        6   b"\0MRDS1" (a NUL first: no JSON document starts so)
//! kek_version  4   the KEK that wraps the DEK
//! kek_check    8   SHA-256("meridian-kek-check\0" ‖ KEK)[..8]: tells a
//!                  wrong keyring from a damaged envelope
//! wrapped_len  1   always WRAPPED_BYTES
//! wrapped     60   nonce (12) ‖ AES-256-GCM(KEK, DEK) (32) ‖ tag (16)
//! nonce       12   the data nonce
//! expires_ms   8   when reveals start failing (0: never)
//! rotate_ms    8   how often the secret should be rotated (0: no policy)
//! sealed     ≥16   AES-256-GCM(DEK, plaintext) ‖ tag
//! ```
//!
//! The lifecycle attributes sit in the clear (listing secrets that are due
//! needs no key) but are covered by the data's associated data: changing
//! one fails the tag. The KEK fields are not, so a re-wrap under a new KEK
//! replaces them without touching the sealed data.

use super::SecretError;

pub const MAGIC: &[u8; 6] = b"\0MRDS1";
pub const KEK_CHECK_BYTES: usize = 8;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;
pub const DEK_BYTES: usize = 32;
pub const WRAPPED_BYTES: usize = NONCE_BYTES + DEK_BYTES + TAG_BYTES;
const HEADER_BYTES: usize =
    MAGIC.len() + 4 + KEK_CHECK_BYTES + 1 + WRAPPED_BYTES + NONCE_BYTES + 16;

/// When a version stops revealing, and how often it should be rotated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Wall-clock ms after which reveals fail with SECRET_EXPIRED (0: never).
    pub expires_ms: u64,
    /// Rotation period in ms (0: none); due when the version is older.
    pub rotate_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub kek_version: u32,
    pub kek_check: [u8; KEK_CHECK_BYTES],
    pub wrapped: [u8; WRAPPED_BYTES],
    pub nonce: [u8; NONCE_BYTES],
    pub attrs: Attrs,
    /// Ciphertext with its tag.
    pub sealed: Vec<u8>,
}

/// What a destroyed secret version's bytes become (Vault KV v2's destroy):
/// no ciphertext at all. It shares the magic's first five bytes, so every
/// path that tells a secret's stored form from a plain value still does.
pub const DESTROYED: &[u8; 6] = b"\0MRDSX";

/// Whether stored bytes are a destroyed secret version.
pub fn is_destroyed(bytes: &[u8]) -> bool {
    bytes == DESTROYED
}

/// Whether stored bytes are an envelope (a secret), by their magic alone.
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..5])
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.kek_version.to_be_bytes());
        out.extend_from_slice(&self.kek_check);
        out.push(WRAPPED_BYTES as u8);
        out.extend_from_slice(&self.wrapped);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.attrs.expires_ms.to_be_bytes());
        out.extend_from_slice(&self.attrs.rotate_ms.to_be_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }

    /// Parse stored bytes; anything that is not a whole format-1 envelope
    /// is SECRET_CORRUPT (never a guess).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, SecretError> {
        let mut env = Envelope::decode_header(bytes)?;
        env.sealed = bytes[HEADER_BYTES..].to_vec();
        Ok(env)
    }

    /// The KEK version and attributes of stored bytes, checked as `decode`
    /// checks them but without copying the sealed data (listings and every
    /// load of a layer look at these).
    pub fn peek(bytes: &[u8]) -> Result<(u32, Attrs), SecretError> {
        let env = Envelope::decode_header(bytes)?;
        Ok((env.kek_version, env.attrs))
    }

    /// Everything but the sealed data (left empty).
    fn decode_header(bytes: &[u8]) -> Result<Envelope, SecretError> {
        let corrupt = |what: &str| SecretError::Corrupt(format!("envelope: {what}"));
        if !is_envelope(bytes) {
            return Err(corrupt("no envelope magic"));
        }
        match bytes.get(5) {
            Some(f) if *f == MAGIC[5] => {}
            Some(f) => {
                return Err(corrupt(&format!(
                    "format {:?} is not one this build reads (1)",
                    *f as char
                )))
            }
            None => return Err(corrupt("truncated in its magic")),
        }
        if bytes.len() < HEADER_BYTES + TAG_BYTES {
            return Err(corrupt(&format!(
                "{} bytes, shorter than any envelope ({})",
                bytes.len(),
                HEADER_BYTES + TAG_BYTES
            )));
        }
        let mut r = Reader { b: bytes, at: 6 };
        let kek_version = u32::from_be_bytes(r.take::<4>());
        let kek_check = r.take::<KEK_CHECK_BYTES>();
        let wrapped_len = r.take::<1>()[0] as usize;
        if wrapped_len != WRAPPED_BYTES {
            return Err(corrupt(&format!(
                "wrapped data key of {wrapped_len} bytes (expected {WRAPPED_BYTES})"
            )));
        }
        let wrapped = r.take::<WRAPPED_BYTES>();
        let nonce = r.take::<NONCE_BYTES>();
        let expires_ms = u64::from_be_bytes(r.take::<8>());
        let rotate_ms = u64::from_be_bytes(r.take::<8>());
        debug_assert_eq!(r.at, HEADER_BYTES);
        Ok(Envelope {
            kek_version,
            kek_check,
            wrapped,
            nonce,
            attrs: Attrs {
                expires_ms,
                rotate_ms,
            },
            sealed: Vec::new(),
        })
    }
}

/// Fixed-size reads from a buffer whose length was checked up front.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        out
    }
}

/// The associated data of a version's sealed plaintext: where it lives and
/// its lifecycle attributes.
pub fn data_aad(ns: &str, key: &str, version: u64, attrs: &Attrs) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + ns.len() + key.len());
    aad.extend_from_slice(b"meridian-secret-v1\0");
    aad.extend_from_slice(ns.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(&attrs.expires_ms.to_be_bytes());
    aad.extend_from_slice(&attrs.rotate_ms.to_be_bytes());
    aad
}

/// The associated data of a wrapped data key: the KEK version and where the
/// value lives (a wrapped key moved to another value fails to unwrap).
pub fn wrap_aad(kek_version: u32, ns: &str, key: &str, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(48 + ns.len() + key.len());
    aad.extend_from_slice(b"meridian-dek-v1\0");
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad.extend_from_slice(ns.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            kek_version: 7,
            kek_check: [1; 8],
            wrapped: [2; WRAPPED_BYTES],
            nonce: [3; NONCE_BYTES],
            attrs: Attrs {
                expires_ms: 9,
                rotate_ms: 10,
            },
            sealed: vec![4; 20],
        }
    }

    #[test]
    fn round_trips_and_refuses_every_truncation() {
        let e = sample();
        let b = e.encode();
        assert!(is_envelope(&b));
        assert_eq!(Envelope::decode(&b).unwrap(), e);
        for n in 0..HEADER_BYTES + TAG_BYTES {
            assert!(
                matches!(Envelope::decode(&b[..n]), Err(SecretError::Corrupt(_))),
                "{n} bytes decoded"
            );
        }
    }

    #[test]
    fn refuses_other_formats_and_wrapped_lengths() {
        let mut b = sample().encode();
        b[5] = b'2';
        let err = Envelope::decode(&b).unwrap_err().to_string();
        assert!(err.contains("format '2'"), "{err}");
        let mut b = sample().encode();
        b[6 + 4 + KEK_CHECK_BYTES] = 59;
        assert!(Envelope::decode(&b).is_err());
        // JSON never starts with a NUL, so no plain value is an envelope.
        assert!(!is_envelope(br#""\u0000MRDS1""#));
    }
}
