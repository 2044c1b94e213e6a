//! Feature flags in an environment (docs/flags.md). A flag is the meta key
//! `$flag:<key>` holding its definition (flagd's format plus Meridian's
//! prerequisites, off variant and schedule); a segment is `$segment:<name>`
//! holding a JsonLogic rule that flags use as `{"$ref": name}` (flagd's
//! `$evaluators`). Being keys of the namespace, flags are versioned,
//! diffed, rolled back, audited and pushed to watchers like any
//! configuration, and inherited: an environment sees its parents' flags and
//! segments unless it defines the same key itself (a flag is replaced
//! whole). Every write validates the environments it affects as a set
//! (`meridian_flags::validate::validate_set`), so what is stored always
//! compiles.

use super::*;
use crate::configstore::tree::{FLAG_KEY_PREFIX, SEGMENT_KEY_PREFIX};
use meridian_flags::validate;
use meridian_flags::{Definition, FlagError, FlagSet, State};

/// A refused definition as the API says it: INVALID_FLAG with the reason's code.
pub(crate) fn flag_err(e: FlagError) -> CfgError {
    CfgError::new(Reason::InvalidFlag, e.message.clone())
        .with_details(serde_json::json!({"code": e.kind.code()}))
}

/// One flag as listed: its definition and where it comes from.
#[derive(Clone, Debug, Serialize)]
pub struct FlagEntry {
    pub key: String,
    pub definition: Value,
    /// The environment it is inherited from; None for the environment's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<String>,
    pub version: u64,
}

/// An environment's flags as evaluators and the sync service use them.
#[derive(Clone, Debug)]
pub struct FlagsView {
    /// flagd's form, prerequisites and schedules compiled in.
    pub set: FlagSet,
    /// The definitions as stored, with where each comes from.
    pub flags: Vec<FlagEntry>,
    pub segments: BTreeMap<String, Value>,
    /// The environment's revision this view was read at, and its token.
    pub revision: u64,
    pub token: String,
}

/// A change to one flag's definition made on the stored one, inside the
/// write's read-validate-write cycle (so it composes with other writers).
#[derive(Clone, Debug, Serialize)]
pub enum FlagEdit {
    /// The kill switch: DISABLED answers every evaluation with the caller's default.
    State { enabled: bool },
    /// A percentage roll-out of `variant` (None: the variant whose value is
    /// `true`) against the default variant, as the rule's fallthrough: a
    /// `fractional` split replaces the final `else` of a top-level `if`,
    /// or the whole rule when it is a split or absent. Thousandths of a
    /// percent; a grown roll-out keeps everyone who was in.
    Rollout {
        variant: Option<String>,
        percent_milli: u32,
    },
    /// Serve `variant` to the contexts a segment matches, ahead of every
    /// other rule ("target beta users").
    Target { segment: String, variant: String },
}

/// Effective definitions and segments of a chain (child first): a child's
/// flag or segment replaces its parents' of the same name.
pub(super) fn effective_flags(
    chain: &[Layer],
) -> (BTreeMap<String, (Value, usize)>, BTreeMap<String, Value>) {
    let mut flags = BTreeMap::new();
    let mut segments = BTreeMap::new();
    for (depth, l) in chain.iter().enumerate().rev() {
        for (k, v) in &l.meta {
            if let Some(key) = k.strip_prefix(FLAG_KEY_PREFIX) {
                flags.insert(key.to_string(), (v.clone(), depth));
            } else if let Some(name) = k.strip_prefix(SEGMENT_KEY_PREFIX) {
                segments.insert(name.to_string(), v.clone());
            }
        }
    }
    (flags, segments)
}

/// Whether a chain holds any flag or segment (no set to validate otherwise).
pub(super) fn has_flags(chain: &[Layer]) -> bool {
    chain.iter().any(|l| {
        l.meta
            .keys()
            .any(|k| k.starts_with(FLAG_KEY_PREFIX) || k.starts_with(SEGMENT_KEY_PREFIX))
    })
}

/// The flagd form of a chain's effective flags, every cross-flag check run.
pub(super) fn compile_chain(chain: &[Layer]) -> Result<FlagSet, CfgError> {
    let (flags, segments) = effective_flags(chain);
    let defs = flags
        .iter()
        .map(|(k, (v, _))| Ok((k.clone(), Definition::from_json(k, v).map_err(flag_err)?)))
        .collect::<Result<BTreeMap<_, _>, CfgError>>()?;
    let ns = chain.first().map(|l| l.ns.as_str()).unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("flagSetId".into(), Value::String(ns.to_string()));
    validate::validate_set(&defs, &segments, metadata).map_err(|e| {
        let mut err = flag_err(e);
        err.message = format!("{ns}: {}", err.message);
        err
    })
}

fn stored_key(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

impl ConfigStore {
    /// Applies a flag or segment operation to a write's working copy.
    pub(super) fn apply_flag_op(&self, work: &mut Layer, op: &Op) -> Result<(), CfgError> {
        match op {
            Op::SetFlag { key, definition } => {
                let def = validate::validate_definition(key, definition).map_err(flag_err)?;
                let stored = def.to_json();
                let k = stored_key(FLAG_KEY_PREFIX, key);
                self.check_value(&k, &stored)?;
                work.meta.insert(k, stored);
            }
            Op::DeleteFlag { key } => {
                if work
                    .meta
                    .remove(&stored_key(FLAG_KEY_PREFIX, key))
                    .is_none()
                {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!("{} defines no flag {key:?} (an inherited flag is deleted where it is defined)", work.ns),
                    ));
                }
            }
            Op::EditFlag { key, edit } => {
                let k = stored_key(FLAG_KEY_PREFIX, key);
                let Some(stored) = work.meta.get(&k) else {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!("{} defines no flag {key:?} (to change an inherited flag here, define it here first)", work.ns),
                    ));
                };
                let mut def = Definition::from_json(key, stored).map_err(flag_err)?;
                edit_definition(&mut def, edit)?;
                let v = def.to_json();
                validate::validate_definition(key, &v).map_err(flag_err)?;
                work.meta.insert(k, v);
            }
            Op::SetSegment { name, rule } => {
                validate::validate_segment(name, rule).map_err(flag_err)?;
                let k = stored_key(SEGMENT_KEY_PREFIX, name);
                self.check_value(&k, rule)?;
                work.meta.insert(k, rule.clone());
            }
            Op::DeleteSegment { name } => {
                if work
                    .meta
                    .remove(&stored_key(SEGMENT_KEY_PREFIX, name))
                    .is_none()
                {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!("{} defines no segment {name:?}", work.ns),
                    ));
                }
            }
            _ => {
                return Err(CfgError::new(
                    Reason::Internal,
                    "apply_flag_op called with an operation that is not about flags",
                ))
            }
        }
        Ok(())
    }

    /// An environment's flags, inherited ones included, compiled.
    pub async fn flags(&self, ns: &str, opts: &ReadOpts) -> Result<FlagsView, CfgError> {
        opts.access.check_namespace_read(ns)?;
        let chain = self.load_chain(ns, "$", opts).await?;
        let set = compile_chain(&chain)?;
        let (effective, segments) = effective_flags(&chain);
        let flags = effective
            .into_iter()
            .map(|(key, (definition, depth))| {
                let layer = &chain[depth];
                FlagEntry {
                    version: layer
                        .kvs
                        .get(&stored_key(FLAG_KEY_PREFIX, &key))
                        .map_or(0, |kv| kv.version),
                    inherited_from: (depth > 0).then(|| layer.ns.clone()),
                    key,
                    definition,
                }
            })
            .collect();
        let first = chain.first();
        Ok(FlagsView {
            set,
            flags,
            segments,
            revision: first.map_or(0, |l| l.ns_revision),
            token: token_str(first.and_then(|l| l.token)),
        })
    }
}

/// Applies an edit to a definition.
fn edit_definition(def: &mut Definition, edit: &FlagEdit) -> Result<(), CfgError> {
    match edit {
        FlagEdit::State { enabled } => {
            def.flag.state = if *enabled {
                State::Enabled
            } else {
                State::Disabled
            };
        }
        FlagEdit::Rollout {
            variant,
            percent_milli,
        } => {
            const WHOLE: u32 = 100_000;
            if *percent_milli > WHOLE {
                return Err(CfgError::invalid("a roll-out is 0 to 100 %"));
            }
            let on = match variant {
                Some(v) => v.clone(),
                None => def
                    .flag
                    .variants
                    .iter()
                    .find(|(_, v)| **v == Value::Bool(true))
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| CfgError::invalid("name the variant to roll out (the flag has no variant whose value is true)"))?,
            };
            let off = def.flag.default_variant.clone().ok_or_else(|| {
                CfgError::invalid("a roll-out splits between a variant and the default variant; the flag has no default")
            })?;
            if on == off {
                return Err(CfgError::invalid(format!(
                    "{on:?} is the default variant; roll out another variant"
                )));
            }
            let split = serde_json::json!({"fractional": [[on, percent_milli], [off, WHOLE - percent_milli]]});
            def.flag.targeting = Some(match def.flag.targeting.take() {
                Some(Value::Object(mut o)) if o.len() == 1 && o.contains_key("if") => {
                    if let Some(Value::Array(args)) = o.get_mut("if") {
                        if args.len() % 2 == 1 {
                            // if/else-if chain with an else: replace the else.
                            if let Some(last) = args.last_mut() {
                                *last = split;
                            }
                        } else {
                            args.push(split);
                        }
                    }
                    Value::Object(o)
                }
                _ => split,
            });
        }
        FlagEdit::Target { segment, variant } => {
            if !def.flag.variants.contains_key(variant) {
                return Err(CfgError::invalid(format!(
                    "the flag has no variant {variant:?}"
                )));
            }
            let mut args = vec![
                serde_json::json!({ "$ref": segment }),
                Value::String(variant.clone()),
            ];
            match def.flag.targeting.take() {
                Some(Value::Object(o)) if o.len() == 1 && o.contains_key("if") => {
                    if let Some(Value::Array(old)) = o.get("if") {
                        args.extend(old.iter().cloned());
                    }
                }
                Some(other) => args.push(other),
                None => args.push(Value::Null),
            }
            def.flag.targeting = Some(serde_json::json!({ "if": args }));
        }
    }
    Ok(())
}

/// An environment's flags compiled for evaluation, and what they were
/// compiled from.
pub struct CompiledFlags {
    pub evaluator: meridian_flags::Evaluator,
    pub set: FlagSet,
    /// `set` as flagd's JSON, serialized once for every stream that sends it.
    pub flagd_json: String,
    /// FNV-1a of `flagd_json`: equal digests, the same set to a watcher.
    digest: u64,
    /// Each layer of the chain (itself, then what it inherits) and its
    /// revision: the cache's key to freshness.
    layers: Vec<(String, u64)>,
}

impl CompiledFlags {
    /// The environment's own revision the set was read at.
    pub fn revision(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.1)
    }
}

/// Compiled flag sets by environment, reused while no layer of the chain
/// has a new revision. Bounded: cleared when it would hold more.
#[derive(Default)]
pub struct FlagCache {
    map: std::sync::Mutex<BTreeMap<String, Arc<CompiledFlags>>>,
    /// Sets replaced in `map` whose evaluators may still hold impressions
    /// (a request may be evaluating with one): drained until nobody else
    /// holds them (`drain_list`).
    retired: std::sync::Mutex<Vec<(String, Arc<CompiledFlags>)>>,
}

/// Environments whose compiled flags are kept at most.
const FLAG_CACHE_ENTRIES_MAX: usize = 4096;
/// Replaced sets awaiting their last drain at most (beyond, the oldest is
/// forgotten with whatever it counted since the last drain).
const FLAG_CACHE_RETIRED_MAX: usize = 2 * FLAG_CACHE_ENTRIES_MAX;

impl FlagCache {
    fn insert(&self, ns: &str, compiled: Arc<CompiledFlags>) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone: Vec<(String, Arc<CompiledFlags>)> = Vec::new();
        if m.len() >= FLAG_CACHE_ENTRIES_MAX && !m.contains_key(ns) {
            gone.extend(std::mem::take(&mut *m));
        }
        if let Some(old) = m.insert(ns.to_string(), compiled) {
            gone.push((ns.to_string(), old));
        }
        drop(m);
        if !gone.is_empty() {
            let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            r.extend(gone);
            let excess = r.len().saturating_sub(FLAG_CACHE_RETIRED_MAX);
            r.drain(..excess);
        }
    }

    /// Every set whose evaluator may hold impressions, to drain now: the
    /// current ones, and the replaced ones (each replaced set is listed
    /// for the last time once nobody else holds it, so nothing can count
    /// into it after this drain).
    pub(super) fn drain_list(&self) -> Vec<(String, Arc<CompiledFlags>)> {
        let mut out: Vec<(String, Arc<CompiledFlags>)> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = Vec::new();
        for (ns, c) in r.drain(..) {
            if Arc::strong_count(&c) > 1 {
                kept.push((ns.clone(), c.clone()));
            }
            out.push((ns, c));
        }
        *r = kept;
        out
    }
}

impl ConfigStore {
    /// The environment's flags ready to evaluate, as this region holds them
    /// (a stale read: evaluation is served by the nearest region). Compiled
    /// again only when a layer's revision moved.
    pub async fn compiled_flags(
        &self,
        ns: &str,
        access: &Access,
    ) -> Result<Arc<CompiledFlags>, CfgError> {
        access.check_namespace_read(ns)?;
        let cached = self
            .flag_cache
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(ns).cloned());
        // The hot path (every OFREP and flagd request): the cached set is
        // fresh if no layer of its chain has a new revision, which a read
        // of one key per layer tells without loading and decoding every
        // definition.
        if let Some(c) = &cached {
            if self.layers_unchanged(&c.layers).await? {
                return Ok(c.clone());
            }
        }
        let opts = ReadOpts {
            access: access.clone(),
            raw: false,
            as_of: AsOf::Latest,
            consistency: ReadConsistency::Stale,
            reveal: false,
        };
        let chain = self.load_chain(ns, "$", &opts).await?;
        let layers: Vec<(String, u64)> = chain
            .iter()
            .map(|l| (l.ns.clone(), l.ns_revision))
            .collect();
        if let Some(c) = cached.filter(|c| c.layers == layers) {
            return Ok(c);
        }
        let set = compile_chain(&chain)?;
        let flagd_json = set.to_json().to_string();
        let compiled = Arc::new(CompiledFlags {
            evaluator: meridian_flags::Evaluator::new(&set),
            digest: fnv1a(flagd_json.as_bytes()),
            flagd_json,
            set,
            layers,
        });
        self.flag_cache.insert(ns, compiled.clone());
        Ok(compiled)
    }
}

impl ConfigStore {
    /// Whether every layer still has the revision it had (this region's
    /// replica, as the cached set was read).
    async fn layers_unchanged(&self, layers: &[(String, u64)]) -> Result<bool, CfgError> {
        for (ns, revision) in layers {
            let (_, now, _) = self.scan(ns, INHERITS_KEY, AsOf::Latest, None).await?;
            if now != *revision {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Changes a flags watch may have waiting before the core drops it.
const FLAG_WATCH_BUFFER_MAX: usize = 64;

/// One watcher of an environment's flags: the set now, then every new one.
pub struct FlagWatch {
    first: Option<Arc<CompiledFlags>>,
    last: Arc<CompiledFlags>,
    hub: tokio::sync::watch::Receiver<HubState>,
    ended: bool,
}

impl FlagWatch {
    /// The next set (the first call: the set now); an error ends the watch;
    /// None once it ended.
    pub async fn next(&mut self) -> Option<Result<Arc<CompiledFlags>, CfgError>> {
        if let Some(f) = self.first.take() {
            return Some(Ok(f));
        }
        loop {
            if self.ended || self.hub.changed().await.is_err() {
                return None;
            }
            let next = self.hub.borrow_and_update().clone();
            match next {
                None => continue,
                // By digest, not a deep comparison: a change wakes every
                // watcher of the environment at once.
                Some(Ok(c)) if c.digest == self.last.digest => continue,
                Some(Ok(c)) => {
                    self.last = c.clone();
                    return Some(Ok(c));
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// What a hub holds: the environment's compiled flags (None until read).
type HubState = Option<Result<Arc<CompiledFlags>, CfgError>>;

/// One task per watched environment: it follows the core's changes, compiles
/// the set once per change, and hands it to every watcher (10,000 sync
/// streams cost one read and one compile per change, not 10,000).
#[derive(Default)]
pub struct FlagHubs {
    map: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::watch::Sender<HubState>>>>,
}

impl ConfigStore {
    /// The environment's compiled flags now, then again after every change
    /// to a flag, a segment or the inheritance of any environment it
    /// inherits from (only when the compiled set differs; under a burst,
    /// the latest). For flagd's sync and event streams: no task of its
    /// own, the stream pulls.
    pub async fn watch_flags(&self, ns: &str, access: &Access) -> Result<FlagWatch, CfgError> {
        // The caller's own read, checked and served now.
        let first = self.compiled_flags(ns, access).await?;
        let hub = self.flag_hub(ns, access, first.clone());
        Ok(FlagWatch {
            first: Some(first.clone()),
            last: first,
            hub,
            ended: false,
        })
    }

    /// A receiver of `ns`'s hub, started if there is none.
    fn flag_hub(
        &self,
        ns: &str,
        access: &Access,
        first: Arc<CompiledFlags>,
    ) -> tokio::sync::watch::Receiver<HubState> {
        let mut map = self.flag_hubs.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(ns) {
            return tx.subscribe();
        }
        let (tx, rx) = tokio::sync::watch::channel(Some(Ok(first.clone())));
        let tx = Arc::new(tx);
        map.insert(ns.to_string(), tx.clone());
        drop(map);
        let (store, ns, access) = (self.clone(), ns.to_string(), access.clone());
        tokio::spawn(async move {
            let mut last = first;
            loop {
                // Subscribe to the `$` keys of every layer, from the
                // revision the set was read at, so no change falls between.
                let (core_tx, mut core_rx) = mpsc::channel::<ClientResponse>(FLAG_WATCH_BUFFER_MAX);
                for (layer_ns, revision) in &last.layers {
                    let request = ClientRequest::Watch {
                        ns: layer_ns.clone(),
                        prefix: "$".to_string(),
                        start_revision: Some(*revision),
                    };
                    let Ok((_, mut events)) = store
                        .core
                        .watch(request, crate::driver::WATCH_BUFFER_MAX)
                        .await
                    else {
                        store.end_hub(
                            &ns,
                            &tx,
                            Some(CfgError::new(Reason::ShuttingDown, "the node is stopping")),
                        );
                        return;
                    };
                    let fwd = core_tx.clone();
                    tokio::spawn(async move {
                        while let Some(r) = events.recv().await {
                            if fwd.send(r).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                drop(core_tx);
                loop {
                    let event = tokio::select! {
                        e = core_rx.recv() => e,
                        _ = tx.closed() => {
                            if store.end_hub(&ns, &tx, None) {
                                return;
                            }
                            continue;
                        }
                    };
                    match event {
                        None => {
                            store.end_hub(
                                &ns,
                                &tx,
                                Some(CfgError::new(
                                    Reason::Unavailable,
                                    "the core ended the watch",
                                )),
                            );
                            return;
                        }
                        Some(ClientResponse::Error(code)) => {
                            store.end_hub(&ns, &tx, Some(CfgError::core(code)));
                            return;
                        }
                        Some(_) => {}
                    }
                    // A burst of changes is read once.
                    while core_rx.try_recv().is_ok() {}
                    let next = match store.compiled_flags(&ns, &access).await {
                        Ok(c) => c,
                        Err(e) => {
                            store.end_hub(&ns, &tx, Some(e));
                            return;
                        }
                    };
                    let rechain = next
                        .layers
                        .iter()
                        .map(|l| &l.0)
                        .ne(last.layers.iter().map(|l| &l.0));
                    if next.set != last.set {
                        tx.send_replace(Some(Ok(next.clone())));
                    }
                    last = next;
                    if rechain {
                        // The environment inherits from others now: watch those.
                        break;
                    }
                }
            }
        });
        rx
    }

    /// Ends `ns`'s hub: tells its watchers `err` if any, and forgets it.
    /// Without an error, only if no watcher is left (one may have joined
    /// since it noticed they were gone); whether it ended.
    fn end_hub(
        &self,
        ns: &str,
        tx: &Arc<tokio::sync::watch::Sender<HubState>>,
        err: Option<CfgError>,
    ) -> bool {
        let mut map = self.flag_hubs.map.lock().unwrap_or_else(|e| e.into_inner());
        if err.is_none() && tx.receiver_count() > 0 {
            return false;
        }
        if map.get(ns).is_some_and(|t| Arc::ptr_eq(t, tx)) {
            map.remove(ns);
        }
        if let Some(e) = err {
            tx.send_replace(Some(Err(e)));
        }
        true
    }
}
