//! Watches: registering a watcher (with catch-up from the change ring or a
//! snapshot) and pushing applied changes to watchers in revision order.

use super::*;

impl Node {
    pub(super) fn watch(&mut self, req: RequestId, ns: String, prefix: String, start: Option<u64>) {
        if self.watchers.len() >= self.cfg.watchers_max {
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(ErrorCode::Overloaded),
            });
            return;
        }
        let g = self.home_group(&ns);
        let floor = self.ns_floor.get(&ns).copied().unwrap_or(0);
        let refuse = if self.sms[g as usize].revision() < floor {
            Some(ErrorCode::Unavailable)
        } else {
            self.ns_unservable(g as usize, &ns, Consistency::Stale)
        };
        if let Some(code) = refuse {
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(code),
            });
            return;
        }
        let sm = &self.sms[g as usize];
        // A frozen namespace's revisions stop at its freeze (see `read_now`);
        // the watcher moves to the new home once the move completes here.
        let rev = match sm.frozen(&ns) {
            Some((_, at)) => {
                self.watchers_misplaced = true;
                at.min(sm.revision())
            }
            None => sm.revision(),
        };
        let start = start.unwrap_or(rev);
        let last_revision = match sm.changes_since(&ns, &prefix, start) {
            Some(changes) => {
                for (revision, events) in group_by_revision(changes) {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::WatchEvents { events, revision },
                    });
                }
                rev.max(start)
            }
            None => {
                let snapshot = sm.scan(&ns, &prefix);
                self.out.push(Action::Reply {
                    req,
                    resp: ClientResponse::WatchResync {
                        snapshot,
                        revision: rev,
                    },
                });
                rev
            }
        };
        // An empty batch confirms the watch is live at `last_revision`.
        self.out.push(Action::Reply {
            req,
            resp: ClientResponse::WatchEvents {
                events: Vec::new(),
                revision: last_revision,
            },
        });
        self.watchers.insert(
            req,
            Watcher {
                ns,
                prefix,
                group: g,
                last_revision,
            },
        );
    }

    pub(super) fn notify_watchers(&mut self, g: GroupId, changes: &[Change], revision: u64) {
        for (id, w) in self.watchers.iter_mut() {
            if w.group != g || revision <= w.last_revision {
                continue;
            }
            w.last_revision = revision;
            let events: Vec<KeyValue> = changes
                .iter()
                .filter(|c| c.ns == w.ns && c.kv.key.starts_with(&w.prefix))
                .map(|c| c.kv.clone())
                .collect();
            if !events.is_empty() {
                self.out.push(Action::Reply {
                    req: *id,
                    resp: ClientResponse::WatchEvents { events, revision },
                });
            }
        }
    }
}

pub(super) fn group_by_revision(changes: Vec<Change>) -> Vec<(u64, Vec<KeyValue>)> {
    let mut out: Vec<(u64, Vec<KeyValue>)> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some((r, evs)) if *r == c.revision => evs.push(c.kv),
            _ => out.push((c.revision, vec![c.kv])),
        }
    }
    out
}
