//! Metadata that any region may edit, even while partitioned: an automerge
//! document replicated with the automerge sync protocol over a reliable ordered
//! channel (`Channel::Meta`). Actor ids are deterministic: region + incarnation.
//!
//! Permissions are flat keys in the root map, so no two regions ever create
//! competing nested objects:
//! - `label/<key>` = value (concurrent sets: automerge's deterministic winner);
//! - `grant/<principal>|<permission>#<grant id>` = the revocation ids the granter had seen;
//! - `revoke/<principal>|<permission>#<revoke id>` = "1".
//!
//! A permission is granted iff some grant has seen every revocation of it. A
//! revocation concurrent with a grant was not seen by it, so the revocation wins;
//! a grant made after seeing the revocation counts again.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ScalarValue, Value, ROOT};

use crate::types::{MetaOp, NodeId};

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
        match op {
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

    pub fn granted(&self, principal: &str, permission: &str) -> bool {
        let perm = format!("{principal}|{permission}");
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
}
