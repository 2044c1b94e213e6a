//! Vault KV v2's lifecycle for secrets beyond writes and deletes: destroying
//! versions (their ciphertext replaced in place, for good) and undeleting a
//! deleted secret (its last version's plaintext sealed again as a new one).

use super::*;
use crate::reason::Reason;

/// Versions one destroy names at most (one `ReplaceValues` entry).
pub const DESTROY_VERSIONS_MAX: usize = meridian_core::types::REPLACE_ITEMS_MAX;

/// What a destroy did: the versions it destroyed, and those it found
/// destroyed already (a destroy is idempotent).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DestroyResult {
    pub key: String,
    pub destroyed: Vec<u64>,
    pub already_destroyed: Vec<u64>,
}

impl ConfigStore {
    /// Every retained version of `key` in `ns`, read at the home leader
    /// (so a version written a moment ago is among them).
    async fn key_history(&self, ns: &str, key: &str) -> Result<Vec<KeyValue>, CfgError> {
        let token = self.probe(ns).await?;
        let q = ReadQuery::History {
            key: key.to_string(),
        };
        match self.read(ns, q, Consistency::Stale, token).await? {
            ClientResponse::History { versions, .. } => {
                Ok(versions.into_iter().filter(|v| v.version != 0).collect())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Destroy `versions` of the secret `key` (needs `delete` on it): each
    /// version's ciphertext is replaced in place, through the home group's
    /// log, by a marker that holds nothing. Reads show the version as
    /// destroyed, reveals fail with SECRET_DESTROYED, and snapshots taken
    /// from then on hold no trace of it. Versions that are deletions or not
    /// secrets are refused, with nothing destroyed.
    pub async fn destroy_secret(
        &self,
        access: &Access,
        ns: &str,
        key: &str,
        versions: &[u64],
    ) -> Result<DestroyResult, CfgError> {
        tree::check_key(key).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        access.check_key(Action::Delete, ns, key)?;
        let wanted: BTreeSet<u64> = versions.iter().copied().collect();
        if wanted.is_empty() || wanted.contains(&0) {
            return Err(CfgError::invalid(
                "name the versions to destroy (1 and up; a key's history lists them)",
            ));
        }
        if wanted.len() > DESTROY_VERSIONS_MAX {
            return Err(CfgError::new(
                Reason::TooManyOps,
                format!("a destroy names at most {DESTROY_VERSIONS_MAX} versions"),
            ));
        }
        let mut result = DestroyResult {
            key: key.to_string(),
            ..DestroyResult::default()
        };
        // A re-wrap replacing a version's bytes between the read and the
        // replace makes its compare fail: read again and retry.
        for _ in 0..WRITE_ATTEMPTS_MAX {
            let history = self.key_history(ns, key).await?;
            let mut items = Vec::new();
            let mut already = Vec::new();
            for &v in &wanted {
                let Some(kv) = history.iter().find(|kv| kv.version == v) else {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!(
                            "version {v} of {key:?} in {ns} is not retained (its history \
                             lists the versions kept)"
                        ),
                    ));
                };
                match kv.value.as_deref() {
                    Some(b) if crate::secrets::is_destroyed(b) => already.push(v),
                    Some(b) if crate::secrets::is_envelope(b) => {
                        items.push(meridian_core::types::ValuePatch {
                            key: key.to_string(),
                            version: v,
                            expect: fnv1a(b),
                            value: crate::secrets::envelope::DESTROYED.to_vec(),
                        })
                    }
                    Some(_) => {
                        return Err(CfgError::new(
                            Reason::NotASecret,
                            format!("version {v} of {key:?} in {ns} is not a secret"),
                        ))
                    }
                    None => {
                        return Err(CfgError::new(
                            Reason::NotASecret,
                            format!(
                                "version {v} of {key:?} in {ns} is a deletion: nothing to destroy"
                            ),
                        ))
                    }
                }
            }
            if items.is_empty() {
                result.already_destroyed = already
                    .into_iter()
                    .filter(|v| !result.destroyed.contains(v))
                    .collect();
                let detail = format!("secret.destroy versions {:?}", result.destroyed);
                access.audit_ok(ns, &[key], &detail);
                return Ok(result);
            }
            result.destroyed.extend(items.iter().map(|i| i.version));
            result.destroyed.sort_unstable();
            result.destroyed.dedup();
            self.replace(ns, items).await?;
        }
        Err(CfgError::new(
            Reason::Contended,
            format!("{key:?} in {ns} changed under {WRITE_ATTEMPTS_MAX} attempts in a row; retry"),
        ))
    }

    /// Undelete the secret `key`, deleted in `ns`: its version `version`
    /// (by default the last one before the deletion) is opened and sealed
    /// again as a new version, as a rollback does. Needs `write` and `read`
    /// on the key, not `reveal`: the caller sees no plaintext.
    pub async fn undelete_secret(
        &self,
        ns: &str,
        key: &str,
        version: Option<u64>,
        opts: &WriteOpts,
    ) -> Result<WriteResult, CfgError> {
        tree::check_key(key).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        opts.access.check_key(Action::Read, ns, key)?;
        opts.access.check_key(Action::Write, ns, key)?;
        let history = self.key_history(ns, key).await?;
        let Some(current) = history.iter().max_by_key(|kv| kv.version) else {
            return Err(CfgError::new(
                Reason::NotFound,
                format!("{key:?} was never written in {ns}"),
            ));
        };
        if current.value.is_some() {
            return Err(CfgError::invalid(format!(
                "{key:?} in {ns} is not deleted (its version {} is live); a rollback \
                 restores an older version",
                current.version
            )));
        }
        let live = |kv: &&KeyValue| kv.value.is_some();
        let target = match version {
            Some(v) => history.iter().find(|kv| kv.version == v).ok_or_else(|| {
                CfgError::new(
                    Reason::NotFound,
                    format!("version {v} of {key:?} in {ns} is not retained"),
                )
            })?,
            None => history
                .iter()
                .filter(live)
                .max_by_key(|kv| kv.version)
                .ok_or_else(|| {
                    CfgError::new(
                        Reason::NotFound,
                        format!("{key:?} in {ns} retains no version to undelete"),
                    )
                })?,
        };
        match target.value.as_deref() {
            Some(b) if crate::secrets::is_destroyed(b) => {
                return Err(crate::secrets::SecretError::Destroyed {
                    version: target.version,
                }
                .into())
            }
            Some(b) if crate::secrets::is_envelope(b) => {}
            _ => {
                return Err(CfgError::new(
                    Reason::NotASecret,
                    format!(
                        "version {} of {key:?} in {ns} is not a secret (undelete restores \
                         secrets; a rollback restores any key)",
                        target.version
                    ),
                ))
            }
        }
        let mut opts = opts.clone();
        if opts.message.is_empty() {
            opts.message = format!("undelete of {key} (version {})", target.version);
        }
        self.rollback(ns, Some(key), target.mod_revision, false, &opts)
            .await
    }
}
