//! Secrets: values encrypted at rest by envelope encryption, decrypted
//! only by the region serving a caller allowed to reveal them (docs/secrets.md).
//!
//! The core, the log, snapshots, peers and RocksDB only ever hold the
//! envelope (`envelope.rs`): a fresh AES-256-GCM data key per version,
//! wrapped by a key-encryption key of the region's keyring (`keyring.rs`),
//! the ciphertext bound to its namespace, key and version. `Secrets` is the
//! region's handle: seal a plaintext for a version, open a stored envelope.
//! Without a usable keyring the region still serves everything else, and
//! secret operations fail with KEYRING_UNAVAILABLE.

pub mod envelope;
pub mod keyring;

use envelope::{Attrs, Envelope, DEK_BYTES, NONCE_BYTES};
use keyring::{aead_key, random, FileKeyring, KeyWrapper};
use ring::aead::{Aad, Nonce};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

pub use envelope::{is_destroyed, is_envelope};

/// A secret's plaintext must fit in this (it is sealed whole, in memory).
pub const PLAINTEXT_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// No keyring, a wrong one, or one without the version needed.
    #[error("keyring unavailable: {0}")]
    Keyring(String),
    /// The stored envelope is damaged or was moved: it fails its tag.
    #[error("secret corrupt: {0}")]
    Corrupt(String),
    /// The version's `expires_at` has passed.
    #[error("the secret expired at {expires_ms} ms since the epoch")]
    Expired { expires_ms: u64 },
    /// The version was destroyed: its ciphertext is gone for good.
    #[error("version {version} of the secret was destroyed")]
    Destroyed { version: u64 },
}

/// A revealed plaintext. Its `Debug` shows only its length, so a log line
/// or error that formats one never carries the secret; it is wiped on drop.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub fn new(bytes: Vec<u8>) -> Plaintext {
        Plaintext(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext(<redacted {} bytes>)", self.0.len())
    }
}

/// What reveal found in a stored envelope.
#[derive(Debug)]
pub struct Opened {
    pub plaintext: Plaintext,
    pub attrs: Attrs,
    pub kek_version: u32,
}

type Keyring = Result<Arc<dyn KeyWrapper>, String>;

/// A region's secrets handle: its keyring, if it has a usable one. Clones
/// share the keyring, which `reload` replaces while the region serves.
#[derive(Clone)]
pub struct Secrets {
    keyring: Arc<RwLock<Keyring>>,
    /// Where the keyring is read from (None: none configured, or given).
    file: Option<PathBuf>,
    /// Accept secret writes on a client connection without TLS.
    allow_plaintext: bool,
    /// How long before a version's expiry watches are told.
    expiry_warning_ms: u64,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("keyring", &self.current().map(|k| k.versions()))
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// A KEK version and its public fingerprint.
pub type KekFingerprint = (u32, [u8; envelope::KEK_CHECK_BYTES]);

/// What a region's keyring holds (no key material): for operators and for
/// checking that every region has a new KEK before secrets are re-wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringStatus {
    pub file: Option<PathBuf>,
    /// The active version and every version with its public fingerprint;
    /// or why there is no usable keyring.
    pub keyring: Result<(u32, Vec<KekFingerprint>), String>,
}

/// A day: how long before a version's expiry watches are told, unless
/// configured (`[secrets] expiry_warning_s`).
pub const DEFAULT_EXPIRY_WARNING_MS: u64 = 86_400_000;

impl Secrets {
    /// The secrets handle of a region: `keyring_file` loaded if given. A
    /// missing or bad keyring is not fatal (everything else is served); it
    /// is logged once here and named by every secret operation's error.
    pub fn load(keyring_file: Option<&Path>, allow_plaintext: bool) -> Secrets {
        let keyring = match keyring_file {
            None => Err("no keyring is configured ([secrets] keyring_file)".to_string()),
            Some(p) => match FileKeyring::load(p) {
                Ok(k) => {
                    tracing::info!(
                        keyring = %p.display(),
                        versions = ?k.versions(),
                        active = k.active(),
                        "secrets keyring loaded"
                    );
                    Ok(Arc::new(k) as Arc<dyn KeyWrapper>)
                }
                Err(e) => {
                    tracing::error!(
                        "{e}: secret reads and writes answer KEYRING_UNAVAILABLE; \
                         everything else is served"
                    );
                    Err(e.to_string())
                }
            },
        };
        Secrets {
            keyring: Arc::new(RwLock::new(keyring)),
            file: keyring_file.map(Path::to_path_buf),
            allow_plaintext,
            expiry_warning_ms: DEFAULT_EXPIRY_WARNING_MS,
        }
    }

    /// Watches are told of a version's expiry this long before it.
    pub fn with_expiry_warning_ms(mut self, ms: u64) -> Secrets {
        self.expiry_warning_ms = ms;
        self
    }

    pub fn expiry_warning_ms(&self) -> u64 {
        self.expiry_warning_ms
    }

    /// With a keyring given directly (tests, a KMS).
    pub fn with_keyring(keyring: Arc<dyn KeyWrapper>, allow_plaintext: bool) -> Secrets {
        Secrets {
            keyring: Arc::new(RwLock::new(Ok(keyring))),
            file: None,
            allow_plaintext,
            expiry_warning_ms: DEFAULT_EXPIRY_WARNING_MS,
        }
    }

    /// The keyring file this region reads, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read the keyring file again (a new KEK version was added to it). A
    /// file that no longer loads keeps the keyring in use, so a bad copy
    /// never takes secrets away from a serving region; the error is returned.
    pub fn reload(&self) -> Result<KeyringStatus, SecretError> {
        if let Some(p) = &self.file {
            reload_into(&self.keyring, p)?;
        }
        Ok(self.status())
    }

    /// Reload the keyring file whenever it changes (size or modification
    /// time, looked at every `every`), so a new KEK version copied to the
    /// region is in use within that time, without a restart. Ends when the
    /// last handle is dropped.
    pub fn spawn_reloader(&self, every: std::time::Duration) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let slot = Arc::downgrade(&self.keyring);
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            loop {
                tokio::time::sleep(every).await;
                let Some(slot) = slot.upgrade() else {
                    return;
                };
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                if let Err(e) = reload_into(&slot, &path) {
                    tracing::error!("{e}: keeping the keyring in use");
                }
            }
        });
    }

    pub fn status(&self) -> KeyringStatus {
        KeyringStatus {
            file: self.file.clone(),
            keyring: self.current().map(|k| {
                let versions = k
                    .versions()
                    .into_iter()
                    .map(|v| (v, k.check(v).unwrap_or_default()))
                    .collect();
                (k.active(), versions)
            }),
        }
    }

    pub fn allow_plaintext(&self) -> bool {
        self.allow_plaintext
    }

    fn current(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn keyring(&self) -> Result<Arc<dyn KeyWrapper>, SecretError> {
        self.current().map_err(SecretError::Keyring)
    }

    /// The envelope `stored` (version `version` of `key` in `ns`) with its
    /// data key wrapped by the active KEK instead, the sealed data untouched;
    /// None if it already is. Fails if the keyring lacks the KEK it is under.
    pub fn rewrap(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>, SecretError> {
        let mut env = Envelope::decode(stored)?;
        let ring = self.keyring()?;
        let active = ring.active();
        if env.kek_version == active {
            return Ok(None);
        }
        let dek = Self::unwrap_dek(ring.as_ref(), &env, ns, key, version)?;
        env.kek_check = ring.check(active).ok_or_else(|| {
            SecretError::Keyring(format!("the active KEK version {active} is missing"))
        })?;
        env.wrapped = ring.wrap(active, &dek, &envelope::wrap_aad(active, ns, key, version))?;
        env.kek_version = active;
        Ok(Some(env.encode()))
    }

    /// The KEK version an envelope is under, if it is one.
    pub fn kek_version_of(stored: &[u8]) -> Option<u32> {
        Envelope::peek(stored).ok().map(|(v, _)| v)
    }

    /// The active KEK version, if a keyring is loaded.
    pub fn active_kek(&self) -> Option<u32> {
        self.current().ok().map(|k| k.active())
    }

    /// The data key of `env` (version `version` of `key` in `ns`), after
    /// checking that this keyring's KEK is the one that wrapped it.
    fn unwrap_dek(
        ring: &dyn KeyWrapper,
        env: &Envelope,
        ns: &str,
        key: &str,
        version: u64,
    ) -> Result<Zeroizing<[u8; DEK_BYTES]>, SecretError> {
        Self::check_kek(ring, env)?;
        ring.unwrap(
            env.kek_version,
            &env.wrapped,
            &envelope::wrap_aad(env.kek_version, ns, key, version),
        )
    }

    fn check_kek(ring: &dyn KeyWrapper, env: &Envelope) -> Result<(), SecretError> {
        match ring.check(env.kek_version) {
            None => Err(SecretError::Keyring(format!(
                "this region's keyring has no KEK version {} (it holds {:?})",
                env.kek_version,
                ring.versions()
            ))),
            Some(c) if c != env.kek_check => Err(SecretError::Keyring(format!(
                "this region's KEK version {} is not the key that sealed this secret \
                 (a different keyring file?)",
                env.kek_version
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The envelope of `plaintext` as version `version` of `key` in `ns`.
    pub fn seal(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        plaintext: &[u8],
        attrs: Attrs,
    ) -> Result<Vec<u8>, SecretError> {
        let ring = self.keyring()?;
        let kek_version = ring.active();
        let kek_check = ring.check(kek_version).ok_or_else(|| {
            SecretError::Keyring(format!("the active KEK version {kek_version} is missing"))
        })?;
        let dek = Zeroizing::new(random::<DEK_BYTES>()?);
        let wrapped = ring.wrap(
            kek_version,
            &dek,
            &envelope::wrap_aad(kek_version, ns, key, version),
        )?;
        let nonce = random::<NONCE_BYTES>()?;
        let mut sealed = plaintext.to_vec();
        aead_key(&dek)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(envelope::data_aad(ns, key, version, &attrs)),
                &mut sealed,
            )
            .map_err(|_| SecretError::Keyring("sealing failed".into()))?;
        Ok(Envelope {
            kek_version,
            kek_check,
            wrapped,
            nonce,
            attrs,
            sealed,
        }
        .encode())
    }

    /// The plaintext of a stored envelope, if it is version `version` of
    /// `key` in `ns` and was sealed under a KEK this keyring holds.
    pub fn open(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        stored: &[u8],
    ) -> Result<Opened, SecretError> {
        if envelope::is_destroyed(stored) {
            return Err(SecretError::Destroyed { version });
        }
        let env = Envelope::decode(stored)?;
        let ring = self.keyring()?;
        let dek = Self::unwrap_dek(ring.as_ref(), &env, ns, key, version)?;
        let (nonce, attrs, kek_version) = (env.nonce, env.attrs, env.kek_version);
        let mut buf = Zeroizing::new(env.sealed);
        let plain = aead_key(&dek)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(envelope::data_aad(ns, key, version, &attrs)),
                &mut buf,
            )
            .map_err(|_| {
                SecretError::Corrupt(format!(
                    "version {version} of {key:?} in {ns} fails its authentication tag"
                ))
            })?;
        Ok(Opened {
            plaintext: Plaintext::new(plain.to_vec()),
            attrs,
            kek_version,
        })
    }
}

/// Load `p` into `slot`, unless it does not load.
fn reload_into(slot: &RwLock<Keyring>, p: &Path) -> Result<(), SecretError> {
    let k = FileKeyring::load(p)?;
    tracing::info!(
        keyring = %p.display(),
        versions = ?k.versions(),
        active = k.active(),
        "secrets keyring loaded"
    );
    *slot.write().unwrap_or_else(|e| e.into_inner()) = Ok(Arc::new(k) as Arc<dyn KeyWrapper>);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(dir: &Path) -> Secrets {
        let p = dir.join("keyring");
        FileKeyring::create(&p).unwrap();
        Secrets::load(Some(&p), false)
    }

    #[test]
    fn seal_open_and_every_way_a_ciphertext_must_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path());
        let attrs = Attrs {
            expires_ms: 5,
            rotate_ms: 0,
        };
        let env = s.seal("p/e", "db.pw", 3, b"hunter2-marker", attrs).unwrap();
        assert!(is_envelope(&env));
        assert!(
            !env.windows(7).any(|w| w == b"hunter2"),
            "plaintext in the envelope"
        );
        let o = s.open("p/e", "db.pw", 3, &env).unwrap();
        assert_eq!(o.plaintext.expose(), b"hunter2-marker");
        assert_eq!(o.attrs, attrs);
        assert!(!format!("{o:?}").contains("hunter2"));
        // Moved to another key, version or namespace: corrupt, never garbage.
        for (ns, key, v) in [
            ("p/f", "db.pw", 3),
            ("p/e", "db.pw2", 3),
            ("p/e", "db.pw", 4),
        ] {
            assert!(
                matches!(s.open(ns, key, v, &env), Err(SecretError::Corrupt(_))),
                "{ns} {key} {v} opened"
            );
        }
        // Every single flipped bit fails (header, wrapped key, attrs, data).
        for i in 6..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            match s.open("p/e", "db.pw", 3, &bad) {
                Err(SecretError::Corrupt(_)) | Err(SecretError::Keyring(_)) => {}
                other => panic!("byte {i} flipped: {other:?}"),
            }
        }
        // Another keyring's version 1: told apart from damage.
        let other = tempfile::tempdir().unwrap();
        let s2 = secrets(other.path());
        let e = s2.open("p/e", "db.pw", 3, &env).unwrap_err();
        assert!(matches!(e, SecretError::Keyring(_)), "{e}");
        assert!(e.to_string().contains("different keyring"), "{e}");
        // No keyring at all.
        let none = Secrets::load(None, false);
        assert!(matches!(
            none.seal("p/e", "k", 1, b"x", Attrs::default()),
            Err(SecretError::Keyring(_))
        ));
        assert!(matches!(
            none.open("p/e", "db.pw", 3, &env),
            Err(SecretError::Keyring(_))
        ));
    }

    #[test]
    fn rewrap_moves_a_secret_to_the_new_kek_and_the_old_one_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        FileKeyring::create(&p).unwrap();
        let s = Secrets::load(Some(&p), false);
        let old = s.seal("p/e", "k", 4, b"value", Attrs::default()).unwrap();
        assert_eq!(
            s.rewrap("p/e", "k", 4, &old).unwrap(),
            None,
            "already current"
        );
        FileKeyring::add_version(&p).unwrap();
        FileKeyring::activate(&p, 2).unwrap();
        // Not reloaded yet: still version 1 only.
        assert_eq!(s.active_kek(), Some(1));
        let st = s.reload().unwrap();
        assert_eq!(st.keyring.as_ref().unwrap().0, 2);
        let new = s.rewrap("p/e", "k", 4, &old).unwrap().unwrap();
        assert_eq!(Secrets::kek_version_of(&new), Some(2));
        assert_eq!(
            Envelope::decode(&new).unwrap().sealed,
            Envelope::decode(&old).unwrap().sealed,
            "the sealed data is untouched"
        );
        // Bound to its place: a re-wrap for another version fails.
        assert!(s.rewrap("p/e", "k", 5, &old).is_err());
        FileKeyring::remove_below(&p, 2).unwrap();
        s.reload().unwrap();
        assert_eq!(
            s.open("p/e", "k", 4, &new).unwrap().plaintext.expose(),
            b"value"
        );
        let e = s.open("p/e", "k", 4, &old).unwrap_err();
        assert!(matches!(e, SecretError::Keyring(_)), "{e}");
        // A broken file keeps the keyring in use.
        std::fs::write(&p, "garbage").unwrap();
        assert!(s.reload().is_err());
        assert_eq!(
            s.open("p/e", "k", 4, &new).unwrap().plaintext.expose(),
            b"value"
        );
    }

    #[test]
    fn each_version_gets_a_fresh_data_key_and_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets(dir.path());
        let a =
            Envelope::decode(&s.seal("p/e", "k", 1, b"same", Attrs::default()).unwrap()).unwrap();
        let b =
            Envelope::decode(&s.seal("p/e", "k", 1, b"same", Attrs::default()).unwrap()).unwrap();
        assert_ne!(a.wrapped, b.wrapped);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.sealed, b.sealed);
    }
}
