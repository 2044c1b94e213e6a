//! Configuration watches: effective values under a path, re-rendered on
//! every change of any layer an environment inherits from, pushed as events
//! with a resume token that works in any region.

use super::*;
use crate::reason::Reason;

/// One event of a configuration watch.
#[derive(Clone, Debug, Serialize)]
pub struct WatchEvent {
    /// Keys under the watched path whose effective value changed (value None:
    /// removed).
    pub changes: Vec<Entry>,
    /// This event holds the whole state (first event without a resume token).
    pub snapshot: bool,
    /// Pass back as `resume_token` to continue after this event, in any region.
    pub token: String,
    /// Watched secret versions that expire within the region's expiry
    /// warning (`[secrets] expiry_warning_s`), or have expired: each told
    /// once per watch, in the first event or in one of their own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expiring: Vec<ExpiringSecret>,
}

/// A secret version whose reveals start failing at `expires_at_ms`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExpiringSecret {
    pub key: String,
    pub version: u64,
    pub expires_at_ms: u64,
}

/// The secret versions of `state` whose expiry warning is due at `now_ms`
/// and not yet told (now marked told), and when the next one falls due.
fn expiring(
    state: &BTreeMap<String, (Value, Option<KeyValue>)>,
    told: &mut BTreeSet<(String, u64)>,
    now_ms: u64,
    warning_ms: u64,
) -> (Vec<ExpiringSecret>, Option<u64>) {
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    // Forget versions no longer watched, so the set stays as small as the state.
    told.retain(|(k, v)| {
        state
            .get(k)
            .is_some_and(|(_, kv)| kv.as_ref().is_some_and(|kv| kv.version == *v))
    });
    for (k, (_, kv)) in state {
        let Some(kv) = kv else { continue };
        let Some(attrs) = kv.value.as_deref().and_then(secrets::stored_attrs) else {
            continue;
        };
        if attrs.expires_ms == 0 || told.contains(&(k.clone(), kv.version)) {
            continue;
        }
        let at = attrs.expires_ms.saturating_sub(warning_ms);
        if now_ms >= at {
            told.insert((k.clone(), kv.version));
            due.push(ExpiringSecret {
                key: k.clone(),
                version: kv.version,
                expires_at_ms: attrs.expires_ms,
            });
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (due, next)
}

/// Effective values waiting for a slow watcher, at most (then it is dropped
/// and resumes with its token).
const WATCH_EVENTS_BUFFER_MAX: usize = 1024;

fn encode_watch_token(chain: &[Layer]) -> String {
    chain
        .iter()
        .map(|l| format!("{}={}", l.ns, l.token.map_or(0, |t| t.revision)))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_watch_token(s: &str) -> Result<BTreeMap<String, u64>, CfgError> {
    let bad = || CfgError::invalid(format!("resume token {s:?} is not one this API issued"));
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (ns, rev) = part.rsplit_once('=').ok_or_else(bad)?;
        out.insert(ns.to_string(), rev.parse().map_err(|_| bad())?);
    }
    Ok(out)
}

/// The rendered (or raw) leaves under `path` of a fully loaded chain.
fn flat_state(
    chain: &[Layer],
    path: &str,
    raw: bool,
) -> Result<BTreeMap<String, (Value, Option<KeyValue>)>, CfgError> {
    let Some(own) = chain.first() else {
        return Ok(BTreeMap::new());
    };
    let (leaves, vars) = if raw {
        (own.leaves.clone(), Map::new())
    } else {
        effective(chain)
    };
    let secret_keys = effective_secrets(chain, &leaves);
    let mut r = Renderer::new(&leaves, &vars, true).with_secrets(&secret_keys);
    let mut out = BTreeMap::new();
    for k in leaves.keys().filter(|k| tree::is_under(k, path)) {
        let v = if raw { leaves[k].clone() } else { r.leaf(k)? };
        let kv = chain.iter().find_map(|l| l.kvs.get(k)).cloned();
        out.insert(k.clone(), (v, kv));
    }
    Ok(out)
}

/// What changed from `old` to `new`; a removed key carries the version and
/// revision of the delete that removed it if `chain` holds that tombstone
/// (else it was removed by inheritance or rendering, and has none).
fn state_changes(
    old: &BTreeMap<String, (Value, Option<KeyValue>)>,
    new: &BTreeMap<String, (Value, Option<KeyValue>)>,
    chain: &[Layer],
) -> Vec<Entry> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        match (old.get(k), new.get(k)) {
            (Some((a, _)), Some((b, _))) if a == b => {}
            (_, Some((b, kv))) => {
                let mut e = kv.as_ref().map(entry).unwrap_or_else(|| Entry::bare(k));
                e.value = Some(b.clone());
                e.deleted = false;
                out.push(e);
            }
            (Some(_), None) => {
                let tombstone = chain
                    .iter()
                    .find_map(|l| l.kvs.get(k).filter(|kv| kv.value.is_none()));
                out.push(match tombstone {
                    Some(kv) => entry(kv),
                    None => Entry {
                        deleted: true,
                        ..Entry::bare(k)
                    },
                })
            }
            (None, None) => {}
        }
    }
    out
}

fn apply_event(layer: &mut Layer, kv: KeyValue) {
    let is_meta = kv.key.starts_with('$');
    match decode(&kv) {
        Some(v) => {
            if is_meta {
                layer.meta.insert(kv.key.clone(), v);
            } else {
                if kv.value.as_deref().is_some_and(crate::secrets::is_envelope) {
                    layer.secrets.entry(kv.key.clone()).or_default();
                }
                layer.leaves.insert(kv.key.clone(), v);
            }
        }
        None => {
            layer.meta.remove(&kv.key);
            layer.leaves.remove(&kv.key);
        }
    }
    if !is_meta {
        layer.kvs.insert(kv.key.clone(), kv);
    }
}

impl ConfigStore {
    /// Put `key`'s tombstone (its deleting version) into the first layer of
    /// `chain` whose namespace holds one, as of that layer's token.
    async fn load_tombstone(&self, chain: &mut [Layer], key: &str) -> Result<(), CfgError> {
        for l in chain.iter_mut() {
            let q = ReadQuery::Get {
                key: key.to_string(),
            };
            if let ClientResponse::Value { kv, .. } =
                self.read(&l.ns, q, Consistency::Stale, l.token).await?
            {
                if kv.version > 0 && kv.value.is_none() {
                    l.kvs.insert(key.to_string(), kv);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Watch the effective values under `path`: a first event (the whole
    /// state, or with `resume_token` only what changed since that token),
    /// then one event per change that alters an effective value.
    pub async fn watch(
        &self,
        access: &Access,
        ns: &str,
        path: &str,
        raw: bool,
        resume_token: &str,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, CfgError>>, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        let resume = if resume_token.is_empty() {
            None
        } else {
            Some(decode_watch_token(resume_token)?)
        };
        let opts = ReadOpts {
            access: access.clone(),
            raw,
            as_of: AsOf::Latest,
            consistency: ReadConsistency::Linearizable,
            // A watch shows secrets as their redactions (a new version
            // reads as a changed redaction); a service reads the value
            // with reveal when told it changed.
            reveal: false,
        };
        let mut chain = self.load_chain(ns, "", &opts).await?;
        // Subscribe before computing the first event, from the revisions read,
        // so no change falls between the two.
        let (core_tx, mut core_rx) =
            mpsc::channel::<(usize, ClientResponse)>(WATCH_EVENTS_BUFFER_MAX);
        for (i, layer) in chain.iter().enumerate() {
            let request = ClientRequest::Watch {
                ns: layer.ns.clone(),
                prefix: String::new(),
                start_revision: layer.token.map(|t| t.revision),
            };
            let (_, mut rx) = self
                .core
                .watch(request, crate::driver::WATCH_BUFFER_MAX)
                .await
                .map_err(|_| CfgError::new(Reason::ShuttingDown, "the node is stopping"))?;
            let fwd = core_tx.clone();
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    if fwd.send((i, r)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(core_tx);
        let mut state = flat_state(&chain, path, raw)?;
        let first = match resume {
            None => WatchEvent {
                changes: state_changes(&BTreeMap::new(), &state, &chain),
                snapshot: true,
                token: encode_watch_token(&chain),
                expiring: Vec::new(),
            },
            Some(revs) => {
                let mut old_chain = Vec::new();
                let mut compacted = false;
                for l in &chain {
                    let layer = match revs.get(&l.ns) {
                        Some(&r) => match self
                            .load_layer(&l.ns, "", AsOf::Revision(r), ReadConsistency::Stale)
                            .await
                        {
                            Ok(x) => x,
                            Err(e) if e.reason == Reason::HistoryCompacted => {
                                compacted = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        },
                        None => Layer {
                            ns: l.ns.clone(),
                            ..Layer::default()
                        },
                    };
                    old_chain.push(layer);
                }
                // Retention dropped what the token points at: resync with the
                // whole state rather than guess at a delta.
                let old = if compacted {
                    None
                } else {
                    flat_state(&old_chain, path, raw).ok()
                };
                match old {
                    Some(old) => {
                        // The scans hold live keys only: look up the
                        // tombstones of the keys removed since the token.
                        for k in old.keys().filter(|k| !state.contains_key(*k)) {
                            self.load_tombstone(&mut chain, k).await?;
                        }
                        WatchEvent {
                            changes: state_changes(&old, &state, &chain),
                            snapshot: false,
                            token: encode_watch_token(&chain),
                            expiring: Vec::new(),
                        }
                    }
                    _ => WatchEvent {
                        changes: state_changes(&BTreeMap::new(), &state, &chain),
                        snapshot: true,
                        token: encode_watch_token(&chain),
                        expiring: Vec::new(),
                    },
                }
            }
        };
        let warning_ms = self.secrets.expiry_warning_ms();
        let mut told: BTreeSet<(String, u64)> = BTreeSet::new();
        let mut first = first;
        let (due, mut next_warning_ms) = expiring(&state, &mut told, now_ms(), warning_ms);
        first.expiring = due;
        let (out_tx, out_rx) = mpsc::channel(WATCH_EVENTS_BUFFER_MAX);
        let _ = out_tx.send(Ok(first)).await;
        let path = path.to_string();
        tokio::spawn(async move {
            loop {
                // The next expiry warning falls due while nothing changes:
                // wake for it (the wall clock, as the expiry itself).
                let warn_in = next_warning_ms
                    .map(|at| std::time::Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
                let step = tokio::select! {
                    r = core_rx.recv() => r,
                    _ = async {
                        match warn_in {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending::<()>().await,
                        }
                    } => {
                        let (due, next) = expiring(&state, &mut told, now_ms(), warning_ms);
                        next_warning_ms = next;
                        if !due.is_empty() {
                            let ev = WatchEvent {
                                changes: Vec::new(),
                                snapshot: false,
                                token: encode_watch_token(&chain),
                                expiring: due,
                            };
                            if out_tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                let Some((i, resp)) = step else {
                    return;
                };
                let Some(layer) = chain.get_mut(i) else {
                    return;
                };
                let group = layer.token.map_or(0, |t| t.group);
                let mut parent_changed = false;
                match resp {
                    ClientResponse::WatchEvents { events, revision } => {
                        for kv in events {
                            parent_changed |= kv.key == INHERITS_KEY;
                            apply_event(layer, kv);
                        }
                        layer.token = Some(RevisionToken { group, revision });
                    }
                    ClientResponse::WatchResync { snapshot, revision } => {
                        layer.leaves.clear();
                        layer.meta.clear();
                        layer.kvs.clear();
                        for kv in snapshot {
                            apply_event(layer, kv);
                        }
                        layer.token = Some(RevisionToken { group, revision });
                        parent_changed = true;
                    }
                    ClientResponse::Error(code) => {
                        let _ = out_tx.send(Err(CfgError::core(code))).await;
                        return;
                    }
                    _ => continue,
                }
                if parent_changed && !raw {
                    let _ = out_tx
                        .send(Err(CfgError::new(
                            Reason::Unavailable,
                            "the environment's inheritance changed; resume with the last token",
                        )))
                        .await;
                    return;
                }
                let new = match flat_state(&chain, &path, raw) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = out_tx.send(Err(e)).await;
                        return;
                    }
                };
                let changes = state_changes(&state, &new, &chain);
                state = new;
                // A new version with an expiry may be due for its warning at once.
                let (due, next) = expiring(&state, &mut told, now_ms(), warning_ms);
                next_warning_ms = next;
                if changes.is_empty() && due.is_empty() {
                    continue;
                }
                let ev = WatchEvent {
                    changes,
                    snapshot: false,
                    token: encode_watch_token(&chain),
                    expiring: due,
                };
                if out_tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        Ok(out_rx)
    }
}
