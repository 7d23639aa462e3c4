//! Secrets: values a task needs (a registry token for setup, an API key the egress proxy adds
//! to requests) that must never be stored, logged or shown in the clear.
//!
//! Values are sealed with XChaCha20-Poly1305 under a key kept apart from the store: the store
//! (SQLite or PostgreSQL) only ever holds sealed bytes, and the secret's name is bound into
//! each seal so a sealed value cannot be passed off as another secret. Before anything a task
//! produces is stored (events, logs, artifacts, diffs) or sent to the model, a [`Redactor`]
//! replaces every secret value in it, plain or trivially encoded, by `[secret:NAME]`.

mod forms;
mod redact;

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// The first byte of every sealed value: the format's version.
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Values shorter than this cannot be redacted reliably (they occur everywhere by chance).
pub const MIN_SECRET_LEN: usize = 6;

pub use redact::{Redactor, WITHHELD};

/// What can go wrong with secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret key {path} is unreadable: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret key in {origin} is not 64 hexadecimal digits")]
    BadKey { origin: String },
    #[error(
        "the secret `{name}` could not be decrypted: it was sealed with another key, or it is damaged"
    )]
    Unseal { name: String },
    #[error("`{0}` is not a secret name: use letters, digits and _, starting with a letter or _")]
    BadName(String),
    #[error(
        "the value of `{name}` is {len} characters; secrets need at least {MIN_SECRET_LEN} to be redacted reliably"
    )]
    TooShort { name: String, len: usize },
}

/// The key secrets are sealed with.
pub struct SecretKey(Key);

impl SecretKey {
    /// `NIGHTSHIFT_SECRET_KEY` (64 hex digits) when given, else the key file `path`, created
    /// (mode 0600, in a directory of its own) on first use. Every worker that runs tasks with
    /// secrets needs the same key.
    pub fn load(from_env: Option<&str>, path: &Path) -> Result<SecretKey, SecretError> {
        if let Some(hex) = from_env.filter(|hex| !hex.trim().is_empty()) {
            return parse_key(hex.trim(), "NIGHTSHIFT_SECRET_KEY");
        }
        match std::fs::read_to_string(path) {
            Ok(hex) => parse_key(hex.trim(), &path.display().to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                write_private(path, &hex).map_err(|source| SecretError::KeyFile {
                    path: path.into(),
                    source,
                })?;
                Ok(SecretKey(Key::from(key)))
            }
            Err(source) => Err(SecretError::KeyFile {
                path: path.into(),
                source,
            }),
        }
    }

    /// The key if there is one (`NIGHTSHIFT_SECRET_KEY`, else the key file), without making
    /// one: what a worker needs to unseal secrets that were set.
    pub fn existing(from_env: Option<&str>, path: &Path) -> Result<Option<SecretKey>, SecretError> {
        if from_env.is_some_and(|hex| !hex.trim().is_empty()) || path.exists() {
            return SecretKey::load(from_env, path).map(Some);
        }
        Ok(None)
    }

    /// Encrypts `value` for the secret `name`.
    pub fn seal(&self, name: &str, value: &str) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let cipher = XChaCha20Poly1305::new(&self.0);
        let payload = Payload {
            msg: value.as_bytes(),
            aad: name.as_bytes(),
        };
        // Encryption with a valid key and nonce length cannot fail; keep the empty seal as a
        // value that will not unseal rather than panic.
        let ciphertext = cipher
            .encrypt(&XNonce::from(nonce), payload)
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts the sealed value of the secret `name`.
    pub fn unseal(&self, name: &str, sealed: &[u8]) -> Result<String, SecretError> {
        let unseal_error = || SecretError::Unseal {
            name: name.to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(unseal_error());
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| unseal_error())?;
        let cipher = XChaCha20Poly1305::new(&self.0);
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| unseal_error())?;
        String::from_utf8(plain).map_err(|_| unseal_error())
    }
}

fn parse_key(hex: &str, origin: &str) -> Result<SecretKey, SecretError> {
    let bad = || SecretError::BadKey {
        origin: origin.to_string(),
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(SecretKey(Key::from(key)))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")
}

/// Checks a secret's name and value before it is stored.
pub fn validate(name: &str, value: &str) -> Result<(), SecretError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(SecretError::BadName(name.to_string()));
    }
    if value.chars().count() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort {
            name: name.to_string(),
            len: value.chars().count(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> SecretKey {
        SecretKey::load(None, &dir.join("keys/secrets.key")).unwrap()
    }

    #[test]
    fn seals_and_unseals_bound_to_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let sealed = key.seal("TOKEN", "s3cr3t-value");
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(key.unseal("TOKEN", &sealed).unwrap(), "s3cr3t-value");
        assert!(
            key.unseal("OTHER", &sealed).is_err(),
            "a seal is bound to its name"
        );
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(key.unseal("TOKEN", &damaged).is_err());
    }

    #[test]
    fn the_key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        assert!(
            SecretKey::existing(None, &path).unwrap().is_none(),
            "existing never makes a key"
        );
        assert!(!path.exists());
        let sealed = SecretKey::load(None, &path).unwrap().seal("A", "value-1");
        assert!(SecretKey::existing(None, &path).unwrap().is_some());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            SecretKey::load(None, &path)
                .unwrap()
                .unseal("A", &sealed)
                .unwrap(),
            "value-1"
        );
        let other = SecretKey::load(Some(&"ab".repeat(32)), &path).unwrap();
        assert!(other.unseal("A", &sealed).is_err());
        assert!(SecretKey::load(Some("xyz"), &path).is_err());
    }

    #[test]
    fn validates_names_and_values() {
        assert!(validate("NPM_TOKEN", "123456").is_ok());
        assert!(matches!(
            validate("1X", "123456"),
            Err(SecretError::BadName(_))
        ));
        assert!(matches!(
            validate("A-B", "123456"),
            Err(SecretError::BadName(_))
        ));
        assert!(matches!(
            validate("A", "12345"),
            Err(SecretError::TooShort { .. })
        ));
    }
}
