//! The in-memory replicated log of one group: entries after the last snapshot.

use std::collections::VecDeque;

use crate::storage::Entry;

#[derive(Clone, Debug, Default)]
pub struct Log {
    pub snap_index: u64,
    pub snap_term: u64,
    entries: VecDeque<Entry>,
    /// Sum of `size_bytes` over `entries`: what compaction would free.
    bytes: usize,
}

impl Log {
    pub fn new(snap_index: u64, snap_term: u64, entries: Vec<Entry>) -> Log {
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        Log {
            snap_index,
            snap_term,
            entries: entries.into(),
            bytes,
        }
    }

    /// Approximate bytes held by the entries after the snapshot.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snap_term, |e| e.term)
    }

    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        if index < self.snap_index {
            return None;
        }
        self.entries
            .get((index - self.snap_index - 1) as usize)
            .map(|e| e.term)
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        if index <= self.snap_index {
            return None;
        }
        self.entries.get((index - self.snap_index - 1) as usize)
    }

    /// Entries from `from` on, at most `max_n` of them and about `max_bytes`
    /// (always at least one if any exists, so progress never stalls).
    pub fn slice(&self, from: u64, max_n: usize, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from;
        while let Some(e) = self.get(i) {
            bytes += e.size_bytes();
            if !out.is_empty() && (out.len() >= max_n || bytes > max_bytes) {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        out
    }

    pub fn push(&mut self, e: Entry) {
        debug_assert_eq!(e.index, self.last_index() + 1, "log indexes are dense");
        self.bytes += e.size_bytes();
        self.entries.push_back(e);
    }

    /// Remove every entry at `index` and after.
    pub fn truncate_from(&mut self, index: u64) {
        debug_assert!(index > self.snap_index, "never truncate into the snapshot");
        let keep = (index.saturating_sub(self.snap_index + 1)) as usize;
        let gone: usize = self.entries.iter().skip(keep).map(Entry::size_bytes).sum();
        self.bytes -= gone;
        self.entries.truncate(keep);
    }

    /// Forget entries up to `index` (now covered by a snapshot with `term`).
    /// If the entry there has another term, the whole log goes.
    pub fn compact_to(&mut self, index: u64, term: u64) {
        if index <= self.snap_index {
            return;
        }
        if self.term_at(index) == Some(term) {
            let n = (index - self.snap_index) as usize;
            let gone: usize = self.entries.drain(..n).map(|e| e.size_bytes()).sum();
            self.bytes -= gone;
        } else {
            self.entries.clear();
            self.bytes = 0;
        }
        self.snap_index = index;
        self.snap_term = term;
    }

    pub fn iter_from(&self, index: u64) -> impl Iterator<Item = &Entry> {
        let skip = index.saturating_sub(self.snap_index + 1) as usize;
        self.entries.iter().skip(skip)
    }
}
