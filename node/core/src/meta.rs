//! Metadata that any region may edit, even while partitioned: an automerge
//! document replicated with the automerge sync protocol over a reliable ordered
//! channel (`Channel::Meta`). Actor ids are deterministic: region + incarnation.
//!
//! Permissions are flat keys in the root map, so no two regions ever create
//! competing nested objects:
//! - `label/<key>` = value (concurrent sets: automerge's deterministic winner);
//! - `grant/<principal>|<permission>#<grant id>` = the revocation ids the granter had seen;
//! - `revoke/<principal>|<permission>#<revoke id>` = "1";
//! - records the shell interprets (`RECORD_PREFIXES`): `role/<name>`,
//!   `token/<id>`, `token-revoked/<id>`, `ns/<namespace>`. A token revocation
//!   can never be removed, so once merged it wins over everything.
//!
//! A permission is granted iff some grant has seen every revocation of it. A
//! revocation concurrent with a grant was not seen by it, so the revocation wins;
//! a grant made after seeing the revocation counts again.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ScalarValue, Value, ROOT};

use crate::types::{MetaOp, NodeId};

/// Where records may live (`MetaOp::PutRecord`).
pub const RECORD_PREFIXES: &[&str] = &["role/", "token/", "token-revoked/", "ns/"];
/// Records that are permanent once written.
pub const PERMANENT_PREFIXES: &[&str] = &["token-revoked/"];
/// Longest record key and value: a record is a small JSON document, and the
/// whole metadata document is synced to every region.
pub const RECORD_KEY_BYTES_MAX: usize = 512;
pub const RECORD_VALUE_BYTES_MAX: usize = 16 << 10;
/// Longest principal or permission name in a grant.
pub const GRANT_NAME_BYTES_MAX: usize = 256;

/// Whether a metadata edit is well-formed (a malformed one is refused before
/// it touches the document).
pub fn op_ok(op: &MetaOp) -> bool {
    let name_ok =
        |s: &str| !s.is_empty() && s.len() <= GRANT_NAME_BYTES_MAX && !s.contains(['|', '#', ',']);
    let record_ok = |k: &str| {
        k.len() <= RECORD_KEY_BYTES_MAX
            && RECORD_PREFIXES
                .iter()
                .any(|p| k.len() > p.len() && k.starts_with(p))
    };
    match op {
        MetaOp::SetLabel { key, value } => {
            key.len() <= RECORD_KEY_BYTES_MAX && value.len() <= RECORD_VALUE_BYTES_MAX
        }
        MetaOp::Grant {
            principal,
            permission,
        }
        | MetaOp::Revoke {
            principal,
            permission,
        } => name_ok(principal) && name_ok(permission),
        MetaOp::PutRecord { key, value } => record_ok(key) && value.len() <= RECORD_VALUE_BYTES_MAX,
        MetaOp::RemoveRecord { key } => {
            record_ok(key) && !PERMANENT_PREFIXES.iter().any(|p| key.starts_with(p))
        }
    }
}

/// What the shell reads of the document: every record and every grant in
/// force, each sorted (no map order reaches the shell).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaView {
    /// (key, value) of every record, by key.
    pub records: Vec<(String, String)>,
    /// (principal, permission) of every grant in force, sorted.
    pub grants: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("corrupt metadata document: {0}")]
    Corrupt(String),
    #[error("bad sync message: {0}")]
    BadSync(String),
    #[error("metadata edit failed: {0}")]
    Edit(String),
}

pub struct MetaDoc {
    doc: AutoCommit,
    peers: Vec<sync::State>,
    saved_heads: Vec<ChangeHash>,
    next_id: u64,
    /// The `grant_wins_over_revoke` mutant (tests of the simulator only).
    grant_wins: bool,
}

fn actor(region: NodeId, incarnation: u64) -> ActorId {
    let mut bytes = vec![b'm', region];
    bytes.extend_from_slice(&incarnation.to_be_bytes());
    ActorId::from(bytes)
}

fn str_of(v: Option<(Value<'_>, automerge::ObjId)>) -> Option<String> {
    match v {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

impl MetaDoc {
    /// Load from the saved chunks (possibly none) as `region`'s `incarnation`.
    pub fn load(
        chunks: &[Vec<u8>],
        region: NodeId,
        incarnation: u64,
        regions: u8,
    ) -> Result<MetaDoc, MetaError> {
        let mut doc = if chunks.is_empty() {
            AutoCommit::new()
        } else {
            let all: Vec<u8> = chunks.concat();
            AutoCommit::load(&all).map_err(|e| MetaError::Corrupt(e.to_string()))?
        };
        doc.set_actor(actor(region, incarnation));
        let saved_heads = doc.get_heads();
        Ok(MetaDoc {
            doc,
            peers: (0..regions).map(|_| sync::State::new()).collect(),
            saved_heads,
            next_id: 0,
            grant_wins: false,
        })
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.doc.get_actor().to_hex_string(), self.next_id)
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.doc
            .keys(ROOT)
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    pub fn apply(&mut self, op: &MetaOp) -> Result<(), MetaError> {
        let err = |e: automerge::AutomergeError| MetaError::Edit(e.to_string());
        if !op_ok(op) {
            return Err(MetaError::Edit(format!("malformed metadata edit: {op:?}")));
        }
        match op {
            MetaOp::PutRecord { key, value } => {
                self.doc
                    .put(ROOT, key.as_str(), value.as_str())
                    .map_err(err)?;
            }
            MetaOp::RemoveRecord { key } => {
                if self.doc.get(ROOT, key.as_str()).map_err(err)?.is_some() {
                    self.doc.delete(ROOT, key.as_str()).map_err(err)?;
                }
            }
            MetaOp::SetLabel { key, value } => {
                self.doc
                    .put(ROOT, format!("label/{key}"), value.as_str())
                    .map_err(err)?;
            }
            MetaOp::Grant {
                principal,
                permission,
            } => {
                let perm = format!("{principal}|{permission}");
                let seen: Vec<String> = self
                    .keys_with_prefix(&format!("revoke/{perm}#"))
                    .into_iter()
                    .filter_map(|k| k.rsplit_once('#').map(|(_, id)| id.to_string()))
                    .collect();
                let id = self.id();
                self.doc
                    .put(ROOT, format!("grant/{perm}#{id}"), seen.join(","))
                    .map_err(err)?;
            }
            MetaOp::Revoke {
                principal,
                permission,
            } => {
                let id = self.id();
                self.doc
                    .put(ROOT, format!("revoke/{principal}|{permission}#{id}"), "1")
                    .map_err(err)?;
            }
        }
        self.doc.commit();
        Ok(())
    }

    pub fn label(&self, key: &str) -> Option<String> {
        str_of(self.doc.get(ROOT, format!("label/{key}")).ok().flatten())
    }

    /// Every record and every grant in force.
    pub fn view(&self) -> MetaView {
        let mut records = Vec::new();
        let mut grants = std::collections::BTreeSet::new();
        for k in self.doc.keys(ROOT) {
            if RECORD_PREFIXES.iter().any(|p| k.starts_with(p)) {
                if let Some(v) = str_of(self.doc.get(ROOT, k.as_str()).ok().flatten()) {
                    records.push((k, v));
                }
            } else if let Some(rest) = k.strip_prefix("grant/") {
                if let Some((perm, _)) = rest.rsplit_once('#') {
                    if let Some((principal, permission)) = perm.split_once('|') {
                        grants.insert((principal.to_string(), permission.to_string()));
                    }
                }
            }
        }
        records.sort();
        let grants = grants
            .into_iter()
            .filter(|(p, perm)| self.granted(p, perm))
            .collect();
        MetaView { records, grants }
    }

    /// Plant the `grant_wins_over_revoke` mutant.
    pub fn plant_grant_wins(&mut self) {
        self.grant_wins = true;
    }

    /// The keys of every grant and revocation (`grant/...#id`,
    /// `revoke/...#id`), sorted: what the simulator's revocation checker
    /// builds its own model from.
    pub fn permission_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .doc
            .keys(ROOT)
            .filter(|k| k.starts_with("grant/") || k.starts_with("revoke/"))
            .collect();
        keys.sort();
        keys
    }

    pub fn granted(&self, principal: &str, permission: &str) -> bool {
        let perm = format!("{principal}|{permission}");
        if self.grant_wins {
            return !self.keys_with_prefix(&format!("grant/{perm}#")).is_empty();
        }
        let revokes: Vec<String> = self
            .keys_with_prefix(&format!("revoke/{perm}#"))
            .into_iter()
            .filter_map(|k| k.rsplit_once('#').map(|(_, id)| id.to_string()))
            .collect();
        self.keys_with_prefix(&format!("grant/{perm}#"))
            .into_iter()
            .any(|k| {
                let seen =
                    str_of(self.doc.get(ROOT, k.as_str()).ok().flatten()).unwrap_or_default();
                let seen: Vec<&str> = seen.split(',').collect();
                revokes.iter().all(|r| seen.contains(&r.as_str()))
            })
    }

    /// Bytes to persist since the last call (empty: nothing new).
    pub fn take_unsaved(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        let mut h = self.doc.get_heads();
        h.sort();
        h
    }

    /// The next sync message for `peer`, if any.
    pub fn sync_message(&mut self, peer: NodeId) -> Option<Vec<u8>> {
        let state = self.peers.get_mut(peer as usize)?;
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
    }

    /// Take a sync message from `peer`. Returns whether the document changed.
    pub fn receive(&mut self, peer: NodeId, bytes: &[u8]) -> Result<bool, MetaError> {
        let msg = sync::Message::decode(bytes).map_err(|e| MetaError::BadSync(e.to_string()))?;
        let before = self.doc.get_heads();
        let Some(state) = self.peers.get_mut(peer as usize) else {
            return Err(MetaError::BadSync(format!("unknown peer {peer}")));
        };
        if let Err(e) = self.doc.sync().receive_sync_message(state, msg) {
            // Start the conversation with this peer over; what we have is intact.
            self.peers[peer as usize] = sync::State::new();
            return Err(MetaError::BadSync(e.to_string()));
        }
        Ok(self.doc.get_heads() != before)
    }

    /// The channel to `peer` was re-established: start a fresh sync conversation.
    pub fn reset_peer(&mut self, peer: NodeId) {
        if let Some(s) = self.peers.get_mut(peer as usize) {
            *s = sync::State::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_all(docs: &mut [MetaDoc]) {
        for _ in 0..10 {
            let mut moved = false;
            for a in 0..docs.len() {
                for b in 0..docs.len() {
                    if a == b {
                        continue;
                    }
                    if let Some(m) = docs[a].sync_message(b as u8) {
                        docs[b].receive(a as u8, &m).unwrap();
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn revoke_wins_over_concurrent_grant_and_later_grant_counts() {
        let mut docs: Vec<MetaDoc> = (0..2)
            .map(|r| MetaDoc::load(&[], r, 1, 2).unwrap())
            .collect();
        docs[0]
            .apply(&MetaOp::Grant {
                principal: "ann".into(),
                permission: "write:prod".into(),
            })
            .unwrap();
        sync_all(&mut docs);
        assert!(docs[1].granted("ann", "write:prod"));
        // Concurrent: region 0 grants again while region 1 revokes.
        docs[0]
            .apply(&MetaOp::Grant {
                principal: "ann".into(),
                permission: "write:prod".into(),
            })
            .unwrap();
        docs[1]
            .apply(&MetaOp::Revoke {
                principal: "ann".into(),
                permission: "write:prod".into(),
            })
            .unwrap();
        sync_all(&mut docs);
        assert!(!docs[0].granted("ann", "write:prod"), "revocation wins");
        assert!(!docs[1].granted("ann", "write:prod"));
        assert_eq!(docs[0].heads(), docs[1].heads());
        // A grant made after seeing the revocation counts.
        docs[1]
            .apply(&MetaOp::Grant {
                principal: "ann".into(),
                permission: "write:prod".into(),
            })
            .unwrap();
        sync_all(&mut docs);
        assert!(docs[0].granted("ann", "write:prod"));
    }

    #[test]
    fn reload_from_chunks_and_garbage_sync() {
        let mut d = MetaDoc::load(&[], 0, 1, 3).unwrap();
        d.apply(&MetaOp::SetLabel {
            key: "owner".into(),
            value: "team-a".into(),
        })
        .unwrap();
        let c1 = d.take_unsaved();
        d.apply(&MetaOp::SetLabel {
            key: "tier".into(),
            value: "1".into(),
        })
        .unwrap();
        let c2 = d.take_unsaved();
        assert!(d.take_unsaved().is_empty());
        let r = MetaDoc::load(&[c1, c2], 0, 2, 3).unwrap();
        assert_eq!(r.label("owner").as_deref(), Some("team-a"));
        assert_eq!(r.label("tier").as_deref(), Some("1"));
        let mut r = r;
        assert!(r.receive(1, b"garbage").is_err());
        assert!(MetaDoc::load(&[b"nonsense".to_vec()], 0, 3, 3).is_err());
    }

    #[test]
    fn records_sync_and_revocations_are_permanent() {
        let mut docs: Vec<MetaDoc> = (0..3)
            .map(|r| MetaDoc::load(&[], r, 1, 3).unwrap())
            .collect();
        let put = |k: &str, v: &str| MetaOp::PutRecord {
            key: k.into(),
            value: v.into(),
        };
        docs[0].apply(&put("token/t1", "{}")).unwrap();
        docs[1].apply(&put("role/reader", "[]")).unwrap();
        docs[2]
            .apply(&MetaOp::Grant {
                principal: "ci".into(),
                permission: "role:reader".into(),
            })
            .unwrap();
        sync_all(&mut docs);
        let v = docs[2].view();
        assert_eq!(
            v.records,
            vec![
                ("role/reader".to_string(), "[]".to_string()),
                ("token/t1".to_string(), "{}".to_string())
            ]
        );
        assert_eq!(
            v.grants,
            vec![("ci".to_string(), "role:reader".to_string())]
        );
        docs[1].apply(&put("token-revoked/t1", "1")).unwrap();
        sync_all(&mut docs);
        assert!(docs[0]
            .view()
            .records
            .iter()
            .any(|(k, _)| k == "token-revoked/t1"));
        // Malformed edits and removing a revocation are refused whole.
        for bad in [
            MetaOp::RemoveRecord {
                key: "token-revoked/t1".into(),
            },
            put("secret/x", "1"),
            put("role/", "1"),
            put("role/big", &"x".repeat(RECORD_VALUE_BYTES_MAX + 1)),
            MetaOp::Grant {
                principal: "a|b".into(),
                permission: "role:x".into(),
            },
        ] {
            assert!(!op_ok(&bad), "{bad:?}");
            assert!(docs[0].apply(&bad).is_err());
        }
        assert_eq!(docs[0].view(), docs[1].view());
        docs[0]
            .apply(&MetaOp::RemoveRecord {
                key: "role/reader".into(),
            })
            .unwrap();
        sync_all(&mut docs);
        assert!(!docs[2]
            .view()
            .records
            .iter()
            .any(|(k, _)| k == "role/reader"));
    }
}
