//! Keyed digests of credentials (HMAC-SHA256 under a random per-process key): the store keeps
//! these, never a secret, and compares them in constant time.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Computes credential digests. The HMAC key is drawn from the OS RNG at construction and
/// never leaves the process, so a digest is useless outside it.
pub(crate) struct Digester {
    /// Keyed once; cloned per digest so the key schedule is not redone on the hot path.
    mac: Hmac<Sha256>,
}

/// Domain separation: an api key credential and a bearer token never digest alike.
const TAG_API_KEY: u8 = 1;
const TAG_BEARER: u8 = 2;

impl Digester {
    pub(crate) fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Digester { mac: Hmac::new_from_slice(&key).expect("HMAC accepts any key length") }
    }

    /// Digest of `(lowercased api_key, secret)`; the key is length-prefixed so no two pairs
    /// share an input.
    pub(crate) fn api_key(&self, key_lowercase: &str, secret: &str) -> Digest {
        let mut mac = self.mac.clone();
        mac.update(&[TAG_API_KEY]);
        mac.update(&(key_lowercase.len() as u64).to_be_bytes());
        mac.update(key_lowercase.as_bytes());
        mac.update(secret.as_bytes());
        Digest::truncated(mac)
    }

    pub(crate) fn bearer(&self, token: &str) -> Digest {
        let mut mac = self.mac.clone();
        mac.update(&[TAG_BEARER]);
        mac.update(token.as_bytes());
        Digest::truncated(mac)
    }
}

/// A keyed digest: HMAC-SHA256 truncated to its first 128 bits (RFC 2104 §5; forging one
/// without the process's key is a 2^-128 guess), half the bytes in every cached credential.
/// `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Digest([u8; 16]);

impl Digest {
    fn truncated(mac: Hmac<Sha256>) -> Self {
        let full = mac.finalize().into_bytes();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&full[..16]);
        Digest(bytes)
    }

    /// Constant-time equality (the hit path's comparison).
    pub(crate) fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The first `bytes` bytes in hex: a label that identifies a bearer token in logs without
    /// revealing it.
    pub(crate) fn short_hex(&self, bytes: usize) -> String {
        use fmt::Write;
        self.0.iter().take(bytes).fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_separated() {
        let d = Digester::random();
        assert!(d.api_key("k", "s").ct_eq(&d.api_key("k", "s")));
        assert!(!d.api_key("k", "s").ct_eq(&d.api_key("k", "t")));
        assert!(!d.api_key("k", "s").ct_eq(&d.api_key("ks", "")));
        assert!(!d.bearer("k:s").ct_eq(&d.api_key("k", "s")));
        // Another process (another key) gets another digest.
        assert!(!Digester::random().api_key("k", "s").ct_eq(&d.api_key("k", "s")));
        assert_eq!(d.bearer("t").short_hex(8).len(), 16);
        assert_eq!(format!("{:?}", d.bearer("t")), "Digest(..)");
    }
}
