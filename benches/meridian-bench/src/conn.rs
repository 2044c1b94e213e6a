//! One connection to either system, with the operations the workloads use:
//! get at a consistency level, put, compare-and-set on a key's version, and a
//! bulk load of puts in one transaction. Meridian is driven through its
//! generated gRPC stubs (no client-side retries, like `etcd-client`), etcd
//! through `etcd-client`. Keys and values are the same bytes on both sides.

use std::time::Duration;

use anyhow::{Context, Result};
use meridian_proto::client::AuthChannel;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::{
    op, CompareAndSetRequest, Consistency, GetRequest, Op, PutRequest, ReadOptions, TxnRequest,
};
use serde::Serialize;

/// The namespace the workloads use on Meridian: the default quorum namespace
/// homed at the first region.
pub const NS: &str = "eu";

/// Read consistency, for either system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Level {
    /// Meridian: at the leaseholder (a local read under a valid lease).
    Linearizable,
    /// Meridian: local if provably at most 1 s stale, else linearizable.
    Bounded,
    /// Meridian: whatever the region has applied.
    Stale,
    /// etcd: the default (ReadIndex through the leader).
    EtcdLinearizable,
    /// etcd: member-local.
    EtcdSerializable,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Linearizable => "linearizable",
            Level::Bounded => "bounded (1 s)",
            Level::Stale => "stale",
            Level::EtcdLinearizable => "linearizable",
            Level::EtcdSerializable => "serializable",
        }
    }
}

#[derive(Clone)]
pub enum Conn {
    Meridian(KvClient<AuthChannel>),
    Etcd(Box<etcd_client::KvClient>),
}

/// A gRPC channel to a Meridian region (`127.0.0.1:port`), TCP_NODELAY on.
pub async fn meridian(addr: &str) -> Result<Conn> {
    meridian_as(addr, None).await
}

/// `meridian`, each call carrying the API token `token`.
pub async fn meridian_as(addr: &str, token: Option<&str>) -> Result<Conn> {
    let ch = crate::harness::endpoint(addr)?
        .connect()
        .await
        .with_context(|| format!("connecting to Meridian at {addr}"))?;
    let bearer = meridian_proto::client::Bearer::new(token)?;
    Ok(Conn::Meridian(KvClient::new(AuthChannel::new(ch, bearer))))
}

/// An etcd client of the given endpoints (its own HTTP/2 connection).
pub async fn etcd(endpoints: &[String]) -> Result<Conn> {
    let c = etcd_client::Client::connect(
        endpoints,
        Some(etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2))),
    )
    .await
    .context("connecting to etcd")?;
    Ok(Conn::Etcd(Box::new(c.kv_client())))
}

impl Conn {
    /// Reads `key`; returns its value's length (None: not found).
    pub async fn get(&mut self, key: &str, level: Level) -> Result<Option<usize>> {
        match self {
            Conn::Meridian(c) => {
                let consistency = match level {
                    Level::Linearizable => Consistency::Linearizable,
                    Level::Bounded => Consistency::Bounded,
                    Level::Stale => Consistency::Stale,
                    other => anyhow::bail!("{other:?} is an etcd level"),
                };
                let r = c
                    .get(GetRequest {
                        namespace: NS.into(),
                        key: key.into(),
                        read: Some(ReadOptions {
                            consistency: consistency as i32,
                            max_staleness_ms: 1000,
                            token: None,
                        }),
                    })
                    .await?
                    .into_inner();
                Ok(if r.found {
                    r.kv.map(|kv| kv.value.len())
                } else {
                    None
                })
            }
            Conn::Etcd(c) => {
                let opts = match level {
                    Level::EtcdSerializable => {
                        Some(etcd_client::GetOptions::new().with_serializable())
                    }
                    Level::EtcdLinearizable => None,
                    other => anyhow::bail!("{other:?} is a Meridian level"),
                };
                let r = c.get(key, opts).await?;
                Ok(r.kvs().first().map(|kv| kv.value().len()))
            }
        }
    }

    pub async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<()> {
        match self {
            Conn::Meridian(c) => {
                c.put(PutRequest {
                    namespace: NS.into(),
                    key: key.into(),
                    value,
                    request_id: 0,
                })
                .await?;
            }
            Conn::Etcd(c) => {
                c.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Writes `value` only if the key's version is `expected` (0: absent).
    /// Both systems count a key's version the same way: 1 at creation, +1
    /// per change. Returns whether it wrote.
    pub async fn cas(&mut self, key: &str, expected: u64, value: Vec<u8>) -> Result<bool> {
        match self {
            Conn::Meridian(c) => Ok(c
                .compare_and_set(CompareAndSetRequest {
                    namespace: NS.into(),
                    key: key.into(),
                    expected_version: expected,
                    value,
                    delete: false,
                    request_id: 0,
                })
                .await?
                .into_inner()
                .succeeded),
            Conn::Etcd(c) => {
                let expected = i64::try_from(expected).context("version out of range")?;
                let txn = etcd_client::Txn::new()
                    .when([etcd_client::Compare::version(
                        key,
                        etcd_client::CompareOp::Equal,
                        expected,
                    )])
                    .and_then([etcd_client::TxnOp::put(key, value, None)]);
                Ok(c.txn(txn).await?.succeeded())
            }
        }
    }

    /// Puts every pair in one transaction.
    pub async fn load(&mut self, batch: Vec<(String, Vec<u8>)>) -> Result<()> {
        match self {
            Conn::Meridian(c) => {
                c.txn(TxnRequest {
                    namespace: NS.into(),
                    compares: Vec::new(),
                    ops: batch
                        .into_iter()
                        .map(|(key, value)| Op {
                            op: Some(op::Op::Put(op::Put { key, value })),
                        })
                        .collect(),
                    request_id: 0,
                })
                .await?;
            }
            Conn::Etcd(c) => {
                let ops: Vec<etcd_client::TxnOp> = batch
                    .into_iter()
                    .map(|(k, v)| etcd_client::TxnOp::put(k, v, None))
                    .collect();
                c.txn(etcd_client::Txn::new().and_then(ops)).await?;
            }
        }
        Ok(())
    }
}
