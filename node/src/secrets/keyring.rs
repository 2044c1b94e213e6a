//! Key-encryption keys. `KeyWrapper` is what the secrets code needs of a
//! keyring (wrap and unwrap a data key under a KEK version), small enough
//! that a cloud KMS can implement it; `FileKeyring` is the default, a file
//! per region holding every KEK version (the same file in every region:
//! each region decrypts what any region encrypted).
//!
//! The file is TOML, mode 0600:
//!
//! ```toml
//! active = 2          # the version new secrets are wrapped with
//! [keys]
//! 1 = "base64 of 32 random bytes"
//! 2 = "..."
//! ```
//!
//! Key material never crosses the network: a new KEK version is added to
//! every region's file by the operator (`meridian secrets keyring add`),
//! and the cluster is then told to use it.

use super::envelope::{DEK_BYTES, KEK_CHECK_BYTES, NONCE_BYTES, WRAPPED_BYTES};
use super::SecretError;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// KEK versions one keyring file holds at most.
pub const KEK_VERSIONS_MAX: usize = 1000;
/// A keyring file larger than this is refused unread.
const KEYRING_FILE_BYTES_MAX: u64 = 1 << 20;

/// What the secrets code needs of a keyring. Implementations must be
/// deterministic in what they accept: an unwrap either returns the data key
/// that was wrapped, or fails.
pub trait KeyWrapper: Send + Sync {
    /// The version new data keys are wrapped with.
    fn active(&self) -> u32;
    /// The versions this keyring can unwrap, ascending.
    fn versions(&self) -> Vec<u32>;
    /// A short public fingerprint of a version (stored with each envelope
    /// to tell a wrong keyring from a damaged envelope).
    fn check(&self, version: u32) -> Option<[u8; KEK_CHECK_BYTES]>;
    fn wrap(
        &self,
        version: u32,
        dek: &[u8; DEK_BYTES],
        aad: &[u8],
    ) -> Result<[u8; WRAPPED_BYTES], SecretError>;
    fn unwrap(
        &self,
        version: u32,
        wrapped: &[u8; WRAPPED_BYTES],
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; DEK_BYTES]>, SecretError>;
}

/// The keyring in a region's key file.
pub struct FileKeyring {
    path: PathBuf,
    active: u32,
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for FileKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyring")
            .field("path", &self.path)
            .field("active", &self.active)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    active: u32,
    keys: BTreeMap<String, String>,
}

/// SHA-256("meridian-kek-check\0" ‖ key), first bytes.
fn kek_check(key: &[u8; 32]) -> [u8; KEK_CHECK_BYTES] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"meridian-kek-check\0");
    ctx.update(key);
    let d = ctx.finish();
    let mut out = [0u8; KEK_CHECK_BYTES];
    out.copy_from_slice(&d.as_ref()[..KEK_CHECK_BYTES]);
    out
}

pub(super) fn random<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SecretError::Keyring("the system random source failed".into()))?;
    Ok(out)
}

pub(super) fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // 32 bytes is AES-256's key length, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

impl FileKeyring {
    /// Read and check a keyring file: owner-only permissions, known fields,
    /// 32-byte keys, an active version it holds.
    pub fn load(path: &Path) -> Result<FileKeyring, SecretError> {
        let bad = |m: String| SecretError::Keyring(format!("keyring {}: {m}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {mode:o} lets others read it; chmod 600 it"
                )));
            }
        }
        if meta.len() > KEYRING_FILE_BYTES_MAX {
            return Err(bad(format!("{} bytes is too large", meta.len())));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?,
        );
        // The parse error names a position, never the text (it is key material).
        let file: KeyringFile = toml::from_str(&text).map_err(|e| {
            bad(format!(
                "not a keyring file ({})",
                e.span().map_or("?".into(), |s| format!("at bytes {s:?}"))
            ))
        })?;
        if file.keys.len() > KEK_VERSIONS_MAX {
            return Err(bad(format!("more than {KEK_VERSIONS_MAX} versions")));
        }
        let mut keys = BTreeMap::new();
        for (v, b64) in &file.keys {
            let version: u32 = v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("version {v:?} is not a positive integer")))?;
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| bad(format!("version {version}: not base64")))?,
            );
            let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                bad(format!(
                    "version {version}: {} bytes, not 32 (AES-256)",
                    raw.len()
                ))
            })?;
            keys.insert(version, Zeroizing::new(key));
        }
        if !keys.contains_key(&file.active) {
            return Err(bad(format!(
                "active version {} is not among its keys",
                file.active
            )));
        }
        Ok(FileKeyring {
            path: path.to_path_buf(),
            active: file.active,
            keys,
        })
    }

    /// Write a new keyring file with one random version (refuses to
    /// overwrite an existing file: that would lose every secret).
    pub fn create(path: &Path) -> Result<(), SecretError> {
        let mut keys = BTreeMap::new();
        keys.insert("1".to_string(), b64(&random::<32>()?));
        write_new(
            path,
            &KeyringFile { active: 1, keys },
            /* overwrite */ false,
        )
    }

    /// Add a random version to a keyring file, not yet active, and return
    /// it. Every region must hold a version before any region seals with
    /// it, so activating is a second step (`activate`) once the file with
    /// the new version is in every region.
    pub fn add_version(path: &Path) -> Result<u32, SecretError> {
        let ring = FileKeyring::load(path)?;
        let next = ring.keys.keys().max().copied().unwrap_or(0) + 1;
        let mut keys = ring.encoded(|_| true);
        keys.insert(next.to_string(), b64(&random::<32>()?));
        write_new(
            path,
            &KeyringFile {
                active: ring.active,
                keys,
            },
            true,
        )?;
        Ok(next)
    }

    /// Make `version` (which the file holds) the one new secrets use.
    pub fn activate(path: &Path, version: u32) -> Result<(), SecretError> {
        let ring = FileKeyring::load(path)?;
        if !ring.keys.contains_key(&version) {
            return Err(SecretError::Keyring(format!(
                "keyring {} has no version {version} (it holds {:?})",
                path.display(),
                ring.versions()
            )));
        }
        let keys = ring.encoded(|_| true);
        write_new(
            path,
            &KeyringFile {
                active: version,
                keys,
            },
            true,
        )
    }

    /// Copy a keyring file keeping only versions at least `min_version`
    /// (after a re-wrap, older KEKs can go).
    pub fn remove_below(path: &Path, min_version: u32) -> Result<usize, SecretError> {
        let ring = FileKeyring::load(path)?;
        if ring.active < min_version {
            return Err(SecretError::Keyring(format!(
                "the active version {} is below {min_version}",
                ring.active
            )));
        }
        let keys = ring.encoded(|v| v >= min_version);
        let removed = ring.keys.len() - keys.len();
        write_new(
            path,
            &KeyringFile {
                active: ring.active,
                keys,
            },
            true,
        )?;
        Ok(removed)
    }
}

impl FileKeyring {
    /// The versions `keep` keeps, as the file writes them.
    fn encoded(&self, keep: impl Fn(u32) -> bool) -> BTreeMap<String, String> {
        self.keys
            .iter()
            .filter(|(v, _)| keep(**v))
            .map(|(v, k)| (v.to_string(), b64(k)))
            .collect()
    }
}

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Write a keyring atomically (temporary file, mode 0600, rename).
fn write_new(path: &Path, file: &KeyringFile, overwrite: bool) -> Result<(), SecretError> {
    let io = |e: std::io::Error| SecretError::Keyring(format!("keyring {}: {e}", path.display()));
    if !overwrite && path.exists() {
        return Err(SecretError::Keyring(format!(
            "keyring {} exists; not overwriting it (its keys decrypt stored secrets)",
            path.display()
        )));
    }
    let body = Zeroizing::new(format!(
        "# Meridian keyring: key-encryption keys for secrets. Keep it secret (mode 0600),\n\
         # the same in every region, and backed up: without it no secret can be read.\n{}",
        toml::to_string(file).map_err(|e| SecretError::Keyring(e.to_string()))?
    ));
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(body.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

impl KeyWrapper for FileKeyring {
    fn active(&self) -> u32 {
        self.active
    }

    fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    fn check(&self, version: u32) -> Option<[u8; KEK_CHECK_BYTES]> {
        self.keys.get(&version).map(|k| kek_check(k))
    }

    fn wrap(
        &self,
        version: u32,
        dek: &[u8; DEK_BYTES],
        aad: &[u8],
    ) -> Result<[u8; WRAPPED_BYTES], SecretError> {
        let kek = self.keys.get(&version).ok_or_else(|| {
            SecretError::Keyring(format!(
                "this region's keyring has no KEK version {version}"
            ))
        })?;
        let nonce = random::<NONCE_BYTES>()?;
        let mut buf = dek.to_vec();
        aead_key(kek)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SecretError::Keyring("wrapping the data key failed".into()))?;
        let mut out = [0u8; WRAPPED_BYTES];
        out[..NONCE_BYTES].copy_from_slice(&nonce);
        out[NONCE_BYTES..].copy_from_slice(&buf);
        Ok(out)
    }

    fn unwrap(
        &self,
        version: u32,
        wrapped: &[u8; WRAPPED_BYTES],
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; DEK_BYTES]>, SecretError> {
        let kek = self.keys.get(&version).ok_or_else(|| {
            SecretError::Keyring(format!(
                "this region's keyring has no KEK version {version} (it holds {:?})",
                self.versions()
            ))
        })?;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&wrapped[..NONCE_BYTES]);
        let mut buf = Zeroizing::new(wrapped[NONCE_BYTES..].to_vec());
        let plain = aead_key(kek)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SecretError::Corrupt("the data key fails its tag".into()))?;
        let mut out = Zeroizing::new([0u8; DEK_BYTES]);
        out.copy_from_slice(plain);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_add_remove_and_refuse_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring.toml");
        FileKeyring::create(&p).unwrap();
        assert!(FileKeyring::create(&p).is_err(), "overwrote a keyring");
        let k = FileKeyring::load(&p).unwrap();
        assert_eq!((k.active(), k.versions()), (1, vec![1]));
        assert_eq!(FileKeyring::add_version(&p).unwrap(), 2);
        let k2 = FileKeyring::load(&p).unwrap();
        assert_eq!(
            (k2.active(), k2.versions()),
            (1, vec![1, 2]),
            "added, not active"
        );
        assert!(FileKeyring::activate(&p, 3).is_err());
        FileKeyring::activate(&p, 2).unwrap();
        let k2 = FileKeyring::load(&p).unwrap();
        assert_eq!((k2.active(), k2.versions()), (2, vec![1, 2]));
        assert_eq!(k.check(1), k2.check(1), "version 1 kept its key");
        assert_eq!(FileKeyring::remove_below(&p, 2).unwrap(), 1);
        assert_eq!(FileKeyring::load(&p).unwrap().versions(), vec![2]);

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileKeyring::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let write = |body: &str| {
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            FileKeyring::load(&p).unwrap_err().to_string()
        };
        let secretish = "c2VjcmV0LWtleS1tYXRlcmlhbA==";
        let e = write(&format!("active = 1\n[keys]\n1 = \"{secretish}\"\n"));
        assert!(e.contains("not 32"), "{e}");
        assert!(!e.contains(secretish), "the error quoted key material: {e}");
        let e = write(&format!("active = 1\nkeys = \"{secretish}\"\n"));
        assert!(!e.contains(secretish), "the error quoted key material: {e}");
        let e = write("active = 3\n[keys]\n1 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n");
        assert!(e.contains("active version 3"), "{e}");
        let e = FileKeyring::load(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, SecretError::Keyring(_)), "{e}");
    }

    #[test]
    fn wrapped_keys_open_only_with_their_aad_and_kek() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        FileKeyring::create(&p).unwrap();
        FileKeyring::add_version(&p).unwrap();
        let k = FileKeyring::load(&p).unwrap();
        let dek = [9u8; 32];
        let w = k.wrap(1, &dek, b"here").unwrap();
        assert_eq!(*k.unwrap(1, &w, b"here").unwrap(), dek);
        assert!(matches!(
            k.unwrap(1, &w, b"there"),
            Err(SecretError::Corrupt(_))
        ));
        assert!(matches!(
            k.unwrap(2, &w, b"here"),
            Err(SecretError::Corrupt(_))
        ));
        assert!(matches!(
            k.unwrap(3, &w, b"here"),
            Err(SecretError::Keyring(_))
        ));
        assert!(!format!("{k:?}").contains(&b64(&k.keys[&1])));
    }
}
