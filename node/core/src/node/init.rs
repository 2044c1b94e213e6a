//! Start and restart: a node rebuilt from what its storage holds (hard
//! state, log, snapshots, the metadata document), with every promise it might
//! have made before a crash kept.

use super::*;

impl Node {
    /// Start (or restart) node `id` from what its storage holds. A fresh node
    /// passes `Durable::new(regions)`.
    pub fn new(
        cfg: Config,
        id: NodeId,
        durable: Durable,
        now: u64,
        seed: u64,
    ) -> Result<Node, InitError> {
        cfg.validate().map_err(InitError::Config)?;
        if id >= cfg.regions {
            return Err(InitError::Config(format!(
                "node id {id} but {} regions",
                cfg.regions
            )));
        }
        if durable.groups.len() != cfg.regions as usize {
            return Err(InitError::GroupCount {
                got: durable.groups.len(),
                want: cfg.regions as usize,
            });
        }
        let mut rng = Rng::new(seed ^ ((id as u64) << 56) ^ durable.incarnation);
        let incarnation = durable.incarnation + 1;
        let boot = rng.next_u64();
        let mut meta = MetaDoc::load(&durable.meta_chunks, id, incarnation, cfg.regions)
            .map_err(|e| InitError::Corrupt(e.to_string()))?;
        if cfg.mutants.grant_wins_over_revoke {
            meta.plant_grant_wins();
        }
        let mut ns_index = BTreeMap::new();
        ns_index.insert(
            CATALOG_NS.to_string(),
            NsEntry {
                home: 0,
                mode: ReplicationMode::Quorum,
                retention: Retention::default(),
            },
        );
        for ns in &cfg.namespaces {
            ns_index.insert(
                ns.name.clone(),
                NsEntry {
                    home: ns.home,
                    mode: ns.mode,
                    retention: Retention::default(),
                },
            );
        }
        let mut groups = Vec::new();
        let mut sms = Vec::new();
        for (gi, dg) in durable.groups.iter().enumerate() {
            let names = cfg
                .namespaces
                .iter()
                .filter(|n| n.home as usize == gi)
                .map(|n| n.name.clone());
            let mut sm = GroupSm::new(
                names,
                cfg.history_versions_max,
                cfg.watch_history_max,
                cfg.idempotency_ids_max,
            )
            .with_audit_retention(cfg.audit_retention);
            let (si, st) = match &dg.snapshot {
                Some(s) => {
                    sm.restore(&s.data)
                        .map_err(|e| InitError::Corrupt(format!("group {gi} snapshot: {e}")))?;
                    (s.index, s.term)
                }
                None => (0, 0),
            };
            for (k, e) in dg.entries.iter().enumerate() {
                if e.index != si + 1 + k as u64 || e.term > dg.term {
                    return Err(InitError::Corrupt(format!(
                        "group {gi} log entry {} out of place",
                        e.index
                    )));
                }
            }
            let log = Log::new(si, st, dg.entries.clone());
            let last = log.last_index();
            let et = cfg.election_timeout_us;
            groups.push(Group {
                term: dg.term,
                vote: dg.vote,
                role: Role::Follower,
                leader: None,
                log,
                commit: si,
                applied: si,
                durable_index: last,
                election_deadline_us: now + rng.range(et, 2 * et),
                // A restarted node forgot whom it promised: keep every promise it
                // might have made by refusing votes for one election timeout.
                leader_contact_us: (!cfg.mutants.promise_forgotten_on_restart).then_some(now),
                leader_transferring_to: None,
                votes: BTreeSet::new(),
                snapshot: dg.snapshot.clone(),
                snap_recv: None,
                fresh_as_of_us: None,
                round: 0,
                next_heartbeat_us: 0,
                promised: (0, 0, 0),
                campaign_transfer: false,
                async_acked: VecDeque::new(),
            });
            sms.push(sm);
        }
        let mut node = Node {
            id,
            rng,
            now,
            groups,
            sms,
            static_ns: ns_index.clone(),
            ns_index,
            moves: BTreeMap::new(),
            ns_floor: BTreeMap::new(),
            watchers_misplaced: false,
            meta,
            meta_ready: false,
            next_meta_sync_us: now + cfg.meta_sync_interval_us,
            out: Vec::new(),
            step_ops: Vec::new(),
            step_sync: false,
            next_persist_id: 1,
            completed_persist: 0,
            deferred: VecDeque::new(),
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            token_waits: Vec::new(),
            forwarded: BTreeMap::new(),
            forward_check_us: None,
            parked: BTreeMap::new(),
            forward_heard_us: vec![0; cfg.regions as usize],
            probes: vec![None; cfg.regions as usize],
            next_probe_seq: 1,
            watchers: BTreeMap::new(),
            seen_forwards: BTreeSet::new(),
            seen_forwards_order: VecDeque::new(),
            boot,
            next_internal_req: INTERNAL_REQ_BASE,
            timer_at: None,
            halted: false,
            stats: Stats::default(),
            cfg,
        };
        node.refresh_catalog();
        node.persist(StorageOp::Incarnation { incarnation }, true);
        if durable.meta_chunks.is_empty() {
            let bytes = node.meta.take_unsaved();
            if !bytes.is_empty() {
                node.persist(StorageOp::MetaChunk { bytes }, true);
            }
        }
        node.defer(Deferred::MetaReady);
        if node.cfg.regions == 1 {
            node.groups[0].election_deadline_us = now;
        }
        node.finish_step();
        Ok(node)
    }
}
