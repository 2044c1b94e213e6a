//! A watched local copy of an environment's configuration in the client
//! library (`Client::subscribe`), so a service's hot reads never leave the
//! process: the effective (inherited, rendered) values under a path, kept
//! current by `Config.WatchConfig`, resumed by token across reconnects and
//! regions.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use crate::client::{Client, ClientError};
use crate::v1::config_client::ConfigClient;
use crate::v1::{NamespaceRef, WatchConfigRequest};

/// A watched local copy of the configuration under a path; cheap to clone.
#[derive(Clone)]
pub struct LocalConfig {
    state: Arc<RwLock<BTreeMap<String, Value>>>,
    changes: watch::Receiver<u64>,
}

impl LocalConfig {
    /// A key's effective value, from the local copy.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Every key and its value.
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the copy changes; how many events it has applied.
    pub async fn changed(&mut self) -> Result<u64, ClientError> {
        self.changes
            .changed()
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(*self.changes.borrow())
    }
}

fn ns_ref(ns: &str) -> Result<NamespaceRef, ClientError> {
    match ns.split_once('/') {
        Some((p, e)) if !p.is_empty() && !e.is_empty() => Ok(NamespaceRef {
            project: p.into(),
            environment: e.into(),
        }),
        _ => Err(ClientError::Invalid(format!(
            "{ns:?}: name an environment as project/environment"
        ))),
    }
}

impl Client {
    /// A local copy of environment `ns`'s effective configuration under
    /// `path` ("" for all), kept current by push. Returns once the first
    /// state arrived.
    pub async fn subscribe(&self, ns: &str, path: &str) -> Result<LocalConfig, ClientError> {
        let ns_ref = ns_ref(ns)?;
        let state = Arc::new(RwLock::new(BTreeMap::new()));
        let (tx, rx) = watch::channel(0u64);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), ClientError>>();
        let mut first_tx = Some(first_tx);
        let (client, path, st) = (self.clone(), path.to_string(), state.clone());
        tokio::spawn(async move {
            let mut token = String::new();
            let mut rc = client.reconnect();
            let mut applied = 0u64;
            loop {
                let req = WatchConfigRequest {
                    ns: Some(ns_ref.clone()),
                    path: path.clone(),
                    raw: false,
                    resume_token: token.clone(),
                };
                let status = match ConfigClient::new(rc.channel()).watch_config(req).await {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match crate::client::next_message(&mut stream).await {
                                Ok(ev) => {
                                    rc.delivered();
                                    {
                                        let mut s = st.write().unwrap_or_else(|e| e.into_inner());
                                        if ev.snapshot {
                                            s.clear();
                                        }
                                        for c in ev.changes {
                                            match serde_json::from_str::<Value>(&c.value_json) {
                                                Ok(v) if !c.value_json.is_empty() => {
                                                    s.insert(c.key, v);
                                                }
                                                _ => {
                                                    s.remove(&c.key);
                                                }
                                            }
                                        }
                                    }
                                    token = ev.token;
                                    applied += 1;
                                    tx.send_replace(applied);
                                    if let Some(f) = first_tx.take() {
                                        let _ = f.send(Ok(()));
                                    }
                                }
                                Err(s) => break s,
                            }
                        }
                    }
                    Err(s) => s,
                };
                if tx.is_closed() {
                    return;
                }
                // Refused before the first state (no permission, no such
                // environment): the caller hears why.
                if !crate::client::retryable(&status) && first_tx.is_some() {
                    if let Some(f) = first_tx.take() {
                        let _ = f.send(Err(ClientError::from_status(status)));
                    }
                    return;
                }
                rc.failed("config subscription", &status).await;
            }
        });
        first_rx.await.map_err(|_| ClientError::Stopped)??;
        let mut rx = rx;
        rx.mark_unchanged();
        Ok(LocalConfig { state, changes: rx })
    }
}
