//! Impressions, for experiments: how many times each flag served each
//! variant, per time window. Counting happens where evaluation happens and
//! must cost next to nothing there: an `Evaluator` holds one atomic counter
//! per variant of each flag, and an evaluation that serves a variant adds
//! one to it (no lock, no allocation, no clock). Whoever owns the evaluator
//! (the client library before it reports, a region before it persists)
//! drains the counters into a `Tally`, which files them under time windows.
//!
//! Windows come from draining: the owner drains at least at every window
//! boundary, so everything drained at once was counted within one window
//! (the one the period began in). Assignment is deterministic (the same
//! context gets the same variant everywhere), so an analysis joins
//! impressions to outcomes on the targeting key; impressions themselves are
//! counts, not a log of who saw what.

use std::collections::BTreeMap;

/// Bytes of a flag key or variant name a report may carry (flag keys are at
/// most 128 bytes; a variant name is a JSON object key, bounded here).
pub const NAME_BYTES_MAX: usize = 256;
/// One cell's count at most in one report (a bound on garbage, far above
/// what a process evaluates in a window).
pub const COUNT_MAX: u64 = 1 << 40;

/// One cell: a flag served a variant `count` times in the window that
/// begins at `window_start_s` (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impression {
    pub window_start_s: u64,
    pub flag: String,
    pub variant: String,
    pub count: u64,
}

/// Counts filed by window, bounded: once it holds `cells_max` cells, counts
/// for new cells are dropped and counted as dropped (a report or a flush
/// that cannot be delivered must not grow memory without end).
#[derive(Debug)]
pub struct Tally {
    window_s: u64,
    cells_max: usize,
    cells: BTreeMap<(u64, String, String), u64>,
    dropped: u64,
}

impl Tally {
    /// `window_s` at least 1.
    pub fn new(window_s: u64, cells_max: usize) -> Tally {
        Tally {
            window_s: window_s.max(1),
            cells_max,
            cells: BTreeMap::new(),
            dropped: 0,
        }
    }

    pub fn window_s(&self) -> u64 {
        self.window_s
    }

    /// The start of the window `t_s` falls in.
    pub fn window_of(&self, t_s: u64) -> u64 {
        t_s - t_s % self.window_s
    }

    /// The first window boundary after `t_s`: the latest a drain may come.
    pub fn next_boundary_s(&self, t_s: u64) -> u64 {
        self.window_of(t_s) + self.window_s
    }

    /// Adds `n` to a cell of the window `t_s` falls in.
    pub fn add(&mut self, t_s: u64, flag: &str, variant: &str, n: u64) {
        if n == 0 {
            return;
        }
        let key = (self.window_of(t_s), flag.to_string(), variant.to_string());
        if let Some(c) = self.cells.get_mut(&key) {
            *c = c.saturating_add(n);
        } else if self.cells.len() >= self.cells_max {
            self.dropped = self.dropped.saturating_add(n);
        } else {
            self.cells.insert(key, n);
        }
    }

    /// Moves everything `ev` counted into the window `period_start_s` falls
    /// in (the drain that ends a period files the whole period there).
    pub fn drain_from(&mut self, ev: &crate::Evaluator, period_start_s: u64) {
        ev.drain_counts(|flag, variant, n| self.add(period_start_s, flag, variant, n));
    }

    /// Every cell, emptied out of the tally (in window, flag, variant order).
    pub fn take(&mut self) -> Vec<Impression> {
        std::mem::take(&mut self.cells)
            .into_iter()
            .map(|((window_start_s, flag, variant), count)| Impression {
                window_start_s,
                flag,
                variant,
                count,
            })
            .collect()
    }

    /// Puts back cells a flush or report could not deliver.
    pub fn restore(&mut self, cells: Vec<Impression>) {
        for c in cells {
            self.add(c.window_start_s, &c.flag, &c.variant, c.count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Impressions dropped because the tally was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Checks one reported cell from outside (an SDK's report): names in
/// bounds, a count above zero and in bounds.
pub fn check_reported(c: &Impression) -> Result<(), String> {
    if c.flag.is_empty() || c.flag.len() > NAME_BYTES_MAX {
        return Err(format!(
            "a flag key is 1 to {NAME_BYTES_MAX} bytes, got {}",
            c.flag.len()
        ));
    }
    if c.variant.is_empty() || c.variant.len() > NAME_BYTES_MAX {
        return Err(format!(
            "flag {:?}: a variant name is 1 to {NAME_BYTES_MAX} bytes, got {}",
            c.flag,
            c.variant.len()
        ));
    }
    if c.count == 0 || c.count > COUNT_MAX {
        return Err(format!(
            "flag {:?} variant {:?}: a count is 1 to {COUNT_MAX}, got {}",
            c.flag, c.variant, c.count
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_filed_by_window_and_bounded() {
        let mut t = Tally::new(60, 2);
        t.add(125, "f", "on", 2);
        t.add(179, "f", "on", 3);
        t.add(180, "f", "on", 1);
        t.add(181, "f", "off", 7);
        assert_eq!(t.dropped(), 7, "a third cell does not fit");
        let cells = t.take();
        assert_eq!(
            cells,
            vec![
                Impression {
                    window_start_s: 120,
                    flag: "f".into(),
                    variant: "on".into(),
                    count: 5
                },
                Impression {
                    window_start_s: 180,
                    flag: "f".into(),
                    variant: "on".into(),
                    count: 1
                },
            ]
        );
        assert!(t.is_empty());
        t.restore(cells);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next_boundary_s(181), 240);
    }

    #[test]
    fn reported_cells_out_of_bounds_are_refused() {
        let ok = Impression {
            window_start_s: 0,
            flag: "f".into(),
            variant: "v".into(),
            count: 1,
        };
        assert!(check_reported(&ok).is_ok());
        for bad in [
            Impression {
                count: 0,
                ..ok.clone()
            },
            Impression {
                count: COUNT_MAX + 1,
                ..ok.clone()
            },
            Impression {
                flag: String::new(),
                ..ok.clone()
            },
            Impression {
                variant: "x".repeat(NAME_BYTES_MAX + 1),
                ..ok.clone()
            },
        ] {
            assert!(check_reported(&bad).is_err(), "{bad:?}");
        }
    }
}
