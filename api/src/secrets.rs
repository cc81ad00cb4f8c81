//! Secrets Fleetyard stores for itself (its SSH private key, webhook signing secrets), sealed
//! with a key from configuration, so a copy of the database alone gives none of them away.
//!
//! A sealed value is text: `fyseal1:<key id>:<base64 of nonce and ciphertext>`, sealed with
//! XChaCha20-Poly1305 under a key derived from `auth.data_key`. The key id (a hash of the key)
//! says which key sealed it, so keys can be rotated: values sealed with a previous key are
//! still opened, and [`DataKeys::needs_sealing`] tells the start-up pass to seal them again.

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::config::Secret;

const PREFIX: &str = "fyseal1:";

struct DataKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl DataKey {
    fn new(secret: &Secret) -> Self {
        let key = Sha256::new().chain_update(b"fleetyard data key\0").chain_update(secret.0.as_bytes()).finalize();
        let id = hex::encode(&Sha256::digest(key)[..6]);
        Self { id, cipher: XChaCha20Poly1305::new(&key) }
    }
}

/// The current data key and those it replaced.
pub struct DataKeys {
    current: DataKey,
    previous: Vec<DataKey>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys").field("current", &self.current.id).finish_non_exhaustive()
    }
}

impl DataKeys {
    pub fn new(current: &Secret, previous: &[Secret]) -> Self {
        Self { current: DataKey::new(current), previous: previous.iter().map(DataKey::new).collect() }
    }

    /// Seals `plain` with the current key.
    pub fn seal(&self, plain: &str) -> String {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .current
            .cipher
            .encrypt(&XNonce::from(nonce), plain.as_bytes())
            .expect("XChaCha20-Poly1305 seals any length Fleetyard stores");
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        format!("{PREFIX}{}:{}", self.current.id, STANDARD_NO_PAD.encode(bytes))
    }

    /// Opens a sealed value; a value stored before sealing existed (plain text) is refused.
    pub fn open(&self, stored: &str) -> anyhow::Result<String> {
        let rest = stored.strip_prefix(PREFIX).ok_or_else(|| anyhow!("the stored secret is not sealed"))?;
        let (id, data) = rest.split_once(':').ok_or_else(|| anyhow!("a sealed secret without its key id"))?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| anyhow!("the secret was sealed with data key {id}, which is not configured"))?;
        let bytes = STANDARD_NO_PAD.decode(data).context("a sealed secret that is not base64")?;
        if bytes.len() < 24 {
            bail!("a sealed secret too short to hold its nonce");
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().expect("split at 24");
        let plain = key
            .cipher
            .decrypt(&XNonce::from(nonce), sealed)
            .map_err(|_| anyhow!("a sealed secret failed its integrity check (data key {id})"))?;
        String::from_utf8(plain).context("a sealed secret that is not text")
    }

    /// Whether a stored value should be sealed (again) with the current key: it is plain text
    /// from before sealing, or sealed with a previous key.
    pub fn needs_sealing(&self, stored: &str) -> bool {
        !stored.starts_with(&format!("{PREFIX}{}:", self.current.id))
    }

    /// The plain value of something stored plain or sealed, for the start-up pass.
    pub fn open_or_plain(&self, stored: &str) -> anyhow::Result<String> {
        if stored.starts_with(PREFIX) { self.open(stored) } else { Ok(stored.to_owned()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret(s.repeat(32))
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_hides_the_plain_text() {
        let keys = DataKeys::new(&secret("a"), &[]);
        let sealed = keys.seal("whsec_very-secret");
        assert!(sealed.starts_with("fyseal1:") && !sealed.contains("very-secret"));
        assert_ne!(sealed, keys.seal("whsec_very-secret"), "every seal has its own nonce");
        assert_eq!(keys.open(&sealed).unwrap(), "whsec_very-secret");
        assert!(!keys.needs_sealing(&sealed));
        assert!(keys.needs_sealing("whsec_plain"));
        assert!(keys.open("whsec_plain").is_err(), "plain text is not taken for sealed");
    }

    #[test]
    fn rotated_keys_still_open_old_values_which_are_marked_for_sealing_again() {
        let old = DataKeys::new(&secret("a"), &[]);
        let sealed = old.seal("key material");
        let rotated = DataKeys::new(&secret("b"), &[secret("a")]);
        assert_eq!(rotated.open(&sealed).unwrap(), "key material");
        assert!(rotated.needs_sealing(&sealed));
        let without = DataKeys::new(&secret("b"), &[]);
        assert!(without.open(&sealed).unwrap_err().to_string().contains("not configured"));
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let keys = DataKeys::new(&secret("a"), &[]);
        let sealed = keys.seal("key material");
        let (head, data) = sealed.rsplit_once(':').unwrap();
        let mut bytes = STANDARD_NO_PAD.decode(data).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        let tampered = format!("{head}:{}", STANDARD_NO_PAD.encode(bytes));
        assert!(keys.open(&tampered).unwrap_err().to_string().contains("integrity"));
    }
}
