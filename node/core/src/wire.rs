//! Peer-to-peer messages and their encoding (postcard). Decoding checks size and
//! shape before anything reaches the protocol, so a peer speaking garbage gets an
//! error and a counter, never a panic.

use serde::{Deserialize, Serialize};

use crate::storage::Entry;
use crate::types::{ClientRequest, ClientResponse, GroupId, RequestId};

/// Which channel a message travels on. The transport gives `Meta` a reliable
/// ordered stream; `Group` (one group's Raft traffic) and `Forward` (forwarded
/// client requests and replies) tolerate loss, duplication and reordering.
/// Carrying the group lets a transport keep one stream per group, so one
/// group's snapshot never delays another's heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    Group(GroupId),
    Forward,
    Meta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Raft {
        group: GroupId,
        term: u64,
        body: RaftMsg,
    },
    /// A client request forwarded to the leader of its group. `boot` names
    /// the sender's process lifetime: a shell numbers its requests afresh
    /// after every restart, so `id` alone is unique only within one boot.
    Forward {
        boot: u64,
        id: RequestId,
        req: ClientRequest,
    },
    /// The answer to a `Forward`, carrying the `boot` it came with: a reply
    /// meant for an earlier life of the node is dropped, never given to a
    /// new request that happens to reuse its id.
    ForwardReply {
        boot: u64,
        id: RequestId,
        resp: ClientResponse,
    },
    /// One automerge sync message.
    Meta {
        #[serde(with = "serde_bytes")]
        sync: Vec<u8>,
    },
    // New kinds go last: a kind's tag is its position.
    /// Is the forward path to you and back working? Sent when forwards to
    /// a peer go unanswered; answered at once with `ProbeReply`.
    Probe {
        boot: u64,
        seq: u64,
    },
    ProbeReply {
        boot: u64,
        seq: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftMsg {
    /// Asks whether an election at `term` (the sender's term + 1) would succeed.
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResp {
        granted: bool,
    },
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResp {
        granted: bool,
    },
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        /// Heartbeat round, echoed back; leases are counted in rounds.
        round: u64,
        /// Set while the leader is handing leadership to this node.
        transferring_to: Option<u8>,
        /// The follower's own clock reading from its last response (bounded staleness).
        echo_us: u64,
        /// The leader held a valid lease and had committed its no-op when sending.
        lease_ok: bool,
    },
    AppendResp {
        success: bool,
        match_index: u64,
        last_index: u64,
        round: u64,
        echo_us: u64,
    },
    Snapshot {
        index: u64,
        term: u64,
        offset: u64,
        total: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        round: u64,
    },
    SnapshotResp {
        index: u64,
        received: u64,
        done: bool,
        round: u64,
    },
    TimeoutNow,
}

/// Our own data would not encode. Postcard fails only on types it cannot
/// represent, so this is a bug; it is reported, never turned into an empty
/// payload (an empty snapshot followed by log compaction loses data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {what}: {reason}")]
pub struct EncodeError {
    pub what: &'static str,
    pub reason: String,
}

/// The postcard encoding of `v` (`what` names it in the error).
pub fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_allocvec(v).map_err(|e| EncodeError {
        what,
        reason: e.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes exceeds the limit")]
    Oversized(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl Msg {
    pub fn channel(&self) -> Channel {
        match self {
            Msg::Raft { group, .. } => Channel::Group(*group),
            Msg::Forward { .. }
            | Msg::ForwardReply { .. }
            | Msg::Probe { .. }
            | Msg::ProbeReply { .. } => Channel::Forward,
            Msg::Meta { .. } => Channel::Meta,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode("peer message", self)
    }

    pub fn decode(bytes: &[u8], max: usize) -> Result<Msg, WireError> {
        if bytes.len() > max {
            return Err(WireError::Oversized(bytes.len()));
        }
        let (msg, rest): (Msg, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(msg)
    }
}

impl RaftMsg {
    /// What is out of shape in this message from a leader at `term`, if
    /// anything: more entries than `entries_max`, entries that do not follow
    /// `prev_index` one by one or carry a term above the sender's, or a
    /// snapshot chunk that overruns its total or `chunk_bytes_max`. A peer
    /// sending such a message is out of protocol; nothing of it applies.
    pub fn shape_error(
        &self,
        term: u64,
        entries_max: usize,
        chunk_bytes_max: usize,
    ) -> Option<&'static str> {
        match self {
            RaftMsg::Append {
                prev_index,
                entries,
                ..
            } => {
                if entries.len() > entries_max {
                    return Some("too many entries");
                }
                let misplaced = entries
                    .iter()
                    .enumerate()
                    .any(|(k, e)| e.index != prev_index + 1 + k as u64 || e.term > term);
                misplaced.then_some("entries out of place")
            }
            RaftMsg::Snapshot {
                offset,
                total,
                data,
                ..
            } => (offset.saturating_add(data.len() as u64) > *total
                || data.len() > chunk_bytes_max)
                .then_some("bad snapshot chunk"),
            _ => None,
        }
    }
}

/// An append of no-op entries given as (index, term), for tests.
#[cfg(test)]
pub(crate) fn test_append(prev_index: u64, prev_term: u64, entries: &[(u64, u64)]) -> RaftMsg {
    RaftMsg::Append {
        prev_index,
        prev_term,
        entries: entries
            .iter()
            .map(|&(index, term)| crate::storage::Entry {
                index,
                term,
                data: crate::storage::EntryData::Noop,
            })
            .collect(),
        commit: 0,
        round: 1,
        transferring_to: None,
        echo_us: 0,
        lease_ok: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose serialization fails, as a bug in our own types would.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses"))
        }
    }

    /// The simulator's garbage peer messages rely on this: tags 0-5 are the
    /// message kinds, in declaration order, and nothing above decodes.
    #[test]
    fn message_tags_are_positions_and_higher_tags_are_malformed() {
        let probe = Msg::Probe { boot: 1, seq: 2 }.encode().expect("encode");
        assert_eq!(probe[0], 4);
        let meta = Msg::Meta { sync: vec![] }.encode().expect("encode");
        assert_eq!(meta[0], 3, "an existing kind keeps its tag");
        for tag in 6..=255u8 {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            assert!(Msg::decode(&bytes, 1 << 20).is_err(), "tag {tag} decoded");
        }
    }

    #[test]
    fn a_failed_encode_is_an_error_not_an_empty_payload() {
        let e = encode("test value", &Unencodable).expect_err("must fail");
        assert_eq!(e.what, "test value");
        assert!(e.to_string().starts_with("cannot encode test value"), "{e}");
    }

    fn append(prev_index: u64, entries: &[(u64, u64)]) -> RaftMsg {
        test_append(prev_index, 1, entries)
    }

    #[test]
    fn out_of_shape_appends_and_chunks_are_named() {
        assert_eq!(append(4, &[(5, 2), (6, 3)]).shape_error(3, 8, 64), None);
        assert_eq!(
            append(4, &[(5, 2), (7, 3)]).shape_error(3, 8, 64),
            Some("entries out of place"),
            "a gap"
        );
        assert_eq!(
            append(4, &[(5, 4)]).shape_error(3, 8, 64),
            Some("entries out of place"),
            "a term above the sender's"
        );
        assert_eq!(
            append(4, &[(5, 2), (6, 2)]).shape_error(3, 1, 64),
            Some("too many entries")
        );
        let chunk = |offset: u64, total: u64, len: usize| RaftMsg::Snapshot {
            index: 9,
            term: 2,
            offset,
            total,
            data: vec![0; len],
            round: 1,
        };
        assert_eq!(chunk(0, 10, 10).shape_error(3, 8, 64), None);
        assert_eq!(
            chunk(5, 10, 6).shape_error(3, 8, 64),
            Some("bad snapshot chunk")
        );
        assert_eq!(
            chunk(u64::MAX, 10, 1).shape_error(3, 8, 64),
            Some("bad snapshot chunk")
        );
        assert_eq!(
            chunk(0, 100, 65).shape_error(3, 8, 64),
            Some("bad snapshot chunk")
        );
    }
}
