//! A namespace moving between home groups, as the state machine sees it:
//! frozen in its old home, copied chunk by chunk into the new one (adopted),
//! and dropped from the old home once the copy is complete.

use super::*;

impl GroupSm {
    /// (new home, revision at freeze) if `ns` is frozen here.
    pub fn frozen(&self, ns: &str) -> Option<(GroupId, u64)> {
        self.state.frozen.get(ns).copied()
    }

    /// Namespaces frozen here, with their new home and freeze revision.
    pub fn frozen_namespaces(&self) -> impl Iterator<Item = (&String, GroupId, u64)> {
        self.state.frozen.iter().map(|(n, &(to, rev))| (n, to, rev))
    }

    /// (old home, its freeze revision, last version copied) while `ns` is
    /// being copied in.
    pub fn adopting(&self, ns: &str) -> Option<&Adopting> {
        self.state.adopting.get(ns)
    }

    /// The revision at which this group's copy of `ns` became its home (0:
    /// created here, or not held).
    pub fn tenure(&self, ns: &str) -> u64 {
        self.state.adopted.get(ns).map_or(0, |a| a.2)
    }

    /// (old home, its freeze revision, revision of the last chunk) once `ns`
    /// was copied in.
    pub fn adopted(&self, ns: &str) -> Option<(GroupId, u64, u64)> {
        self.state.adopted.get(ns).copied()
    }

    /// The earlier homes of a namespace copied in here, newest first, with
    /// the revision of each that holds every write it took there.
    pub fn lineage(&self, ns: &str) -> &[(GroupId, u64)] {
        self.state.lineage.get(ns).map_or(&[], |l| l.as_slice())
    }

    /// Whether `ns`'s data still sits here (false once a move dropped it).
    pub fn holds_data(&self, ns: &str) -> bool {
        self.state.namespaces.contains_key(ns)
    }

    /// The next chunk of a frozen namespace's versions after `after`, at most
    /// `bytes_max` of them (always at least one version), and whether it is
    /// the last chunk.
    pub fn adopt_chunk(
        &self,
        ns: &str,
        after: Option<&(String, u64)>,
        bytes_max: usize,
    ) -> (Vec<AdoptVersion>, bool) {
        let Some(n) = self.state.namespaces.get(ns) else {
            return (Vec::new(), true);
        };
        let start = match after {
            Some((k, _)) => std::ops::Bound::Included(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, s) in n.range((start, std::ops::Bound::Unbounded)) {
            let older = s.history.iter().map(|o| AdoptVersion {
                key: k.clone(),
                revision: o.revision,
                version: o.version,
                value: o.value.clone(),
                meta: o.meta.clone(),
            });
            let current = AdoptVersion {
                key: k.clone(),
                revision: s.mod_revision,
                version: s.version,
                value: s.value.clone(),
                meta: s.meta.clone(),
            };
            for v in older.chain(std::iter::once(current)) {
                if after.is_some_and(|(ak, av)| ak == k && v.version <= *av) {
                    continue;
                }
                let size = v.size_bytes();
                if !out.is_empty() && bytes + size > bytes_max {
                    return (out, false);
                }
                bytes += size;
                out.push(v);
            }
        }
        (out, true)
    }

    /// Stop accepting `ns` here: it is moving to group `to`. A no-op unless
    /// `tenure` names this group's current tenure of the namespace (a stale
    /// catalog's move) and it is not frozen already.
    pub fn freeze(&mut self, ns: &str, to: GroupId, tenure: u64) {
        if self.state.frozen.contains_key(ns) || self.tenure(ns) != tenure {
            return;
        }
        let rev = self.state.revision;
        // A namespace never written here has no entry yet; it gets one so the
        // copy (empty) is told apart from a copy dropped after its move.
        self.state.namespaces.entry(ns.to_string()).or_default();
        self.state.frozen.insert(ns.to_string(), (to, rev));
        self.state.adopting.remove(ns);
        self.state.adopted.remove(ns);
    }

    /// Drop a frozen namespace's data (its freeze marker stays), if the freeze
    /// at `freeze_revision` is still this group's latest.
    pub fn drop_namespace(&mut self, ns: &str, freeze_revision: u64) {
        if self.state.frozen.get(ns).map(|f| f.1) != Some(freeze_revision) {
            return;
        }
        self.state.namespaces.remove(ns);
        self.state.ns_revisions.remove(ns);
        // Watches of the namespace here can no longer resume from this
        // group's ring: its changes are gone with the data.
    }

    /// Apply one chunk of a namespace copied in from its old home. A chunk of
    /// a move older than what this group knows of the namespace (proposed from
    /// a stale catalog), or of a copy not under way, only takes its revision.
    /// Ok(true): this chunk completed the copy.
    pub fn adopt(&mut self, a: &AdoptEffect) -> Result<bool, ApplyError> {
        if a.revision <= self.state.revision {
            return Err(ApplyError::RevisionGap {
                expected: self.state.revision + 1,
                got: a.revision,
            });
        }
        self.state.revision = a.revision;
        self.state.time_ms = self.state.time_ms.max(a.time_ms);
        if a.first {
            // Every later move of a namespace freezes it at a higher revision
            // than anything of an earlier move: see `AdoptEffect::revision`.
            let known = [
                self.state.frozen.get(&a.ns).map(|f| f.1),
                self.state.adopted.get(&a.ns).map(|x| x.2),
                self.state.adopting.get(&a.ns).map(|x| x.1),
            ];
            if known.iter().flatten().any(|&k| k >= a.freeze_revision) {
                return Ok(false);
            }
            self.state.namespaces.insert(a.ns.clone(), BTreeMap::new());
            self.state.ns_revisions.remove(&a.ns);
            self.state.frozen.remove(&a.ns);
            self.state.adopted.remove(&a.ns);
            self.state
                .adopting
                .insert(a.ns.clone(), (a.from, a.freeze_revision, None));
        }
        let Some((_, _, cursor)) = self
            .state
            .adopting
            .get_mut(&a.ns)
            .filter(|x| (x.0, x.1) == (a.from, a.freeze_revision))
        else {
            return Ok(false);
        };
        let ns = self.state.namespaces.entry(a.ns.clone()).or_default();
        for v in &a.versions {
            ns.entry(v.key.clone()).or_default().supersede(
                v.revision,
                v.version,
                v.value.clone(),
                v.meta.clone(),
            );
            *cursor = Some((v.key.clone(), v.version));
        }
        if let Some(ns_rev) = a.last_ns_revision {
            if let Some((from, _, _)) = self.state.adopting.remove(&a.ns) {
                if ns_rev > 0 {
                    self.state.ns_revisions.insert(a.ns.clone(), ns_rev);
                }
                self.state
                    .adopted
                    .insert(a.ns.clone(), (from, ns_rev, a.revision));
                self.state.lineage.insert(a.ns.clone(), a.lineage.clone());
            }
        }
        Ok(a.last_ns_revision.is_some())
    }
}
