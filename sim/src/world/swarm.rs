//! Swarm testing, in the manner of FoundationDB's BUGGIFY and of Groce et
//! al.'s "swarm testing": rather than every seed running every fault at
//! its average rate, each seed draws its own mix. Which fault classes and
//! buggify sites may start, whether episodes overlap (a crash inside a
//! partition, restarts in turn while another region is cut off), whether
//! crashed regions come back at once, and the core's limits (appends cut
//! into a few entries, frequent or rare compaction, long election
//! timeouts: see `Options::core_config`). A bug that needs two rare things
//! together is reached by the seeds that turn both up, instead of by none.
//!
//! The draw uses a stream of its own, so the world's stream, and so a
//! standard (non-swarm) seed, is untouched by it.

use meridian_core::rng::Rng;

use crate::history::EpisodeKind;

/// Episodes running at once at most: every region may be out together.
pub(super) const EPISODES_CONCURRENT_MAX: usize = 3;

#[derive(Clone, Debug)]
pub struct Swarm {
    /// The fault classes and buggify sites episodes are drawn from.
    pub kinds: Vec<EpisodeKind>,
    /// Chance that an episode has another start while it runs.
    pub overlap_p: f64,
    /// Chance that a crash is a quick restart: back within a second, while
    /// the election it caused may still be running.
    pub quick_restart_p: f64,
    /// Buggify site: a node that a (pre-)vote request is on its way to
    /// restarts just before it arrives, so the request meets a node that
    /// may have promised another leader before it went down.
    pub restart_before_vote_p: f64,
}

impl Swarm {
    /// The standard scenario: every classic fault class, one at a time.
    pub fn standard() -> Swarm {
        Swarm {
            kinds: EpisodeKind::CLASSIC.to_vec(),
            overlap_p: 0.0,
            quick_restart_p: 0.0,
            restart_before_vote_p: 0.0,
        }
    }

    /// Seed `seed`'s own mix.
    pub fn draw(seed: u64) -> Swarm {
        let mut rng = Rng::new(seed ^ 0x5357_4152_4d00_0002);
        let mut kinds: Vec<EpisodeKind> = EpisodeKind::all().filter(|_| rng.chance(0.75)).collect();
        if kinds.is_empty() {
            kinds.push(EpisodeKind::Crash);
        }
        Swarm {
            kinds,
            overlap_p: *rng.pick(&[0.0, 0.3, 0.6]),
            quick_restart_p: *rng.pick(&[0.0, 0.0, 0.5]),
            restart_before_vote_p: *rng.pick(&[0.0, 0.0, 0.05]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_draw_different_mixes_and_every_kind_is_drawn() {
        let mixes: Vec<Swarm> = (1..=200).map(Swarm::draw).collect();
        for k in EpisodeKind::all() {
            let with = mixes.iter().filter(|m| m.kinds.contains(&k)).count();
            assert!((100..200).contains(&with), "{k:?} in {with} of 200 mixes");
        }
        assert!(mixes.iter().any(|m| m.overlap_p == 0.0));
        assert!(mixes.iter().any(|m| m.overlap_p > 0.0));
        assert!(mixes.iter().all(|m| !m.kinds.is_empty()));
        assert_eq!(Swarm::draw(7).kinds, Swarm::draw(7).kinds, "a seed replays");
    }
}
