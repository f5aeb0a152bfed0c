//! The eject stage: passive health of each node, learnt from the attempts
//! sent to it. A node that cannot be reached, or that broke off a request a
//! retry then took elsewhere, is out of rotation for a while that doubles
//! with each failure in a row; an answer from it brings it back at once.
//! Balancing ([`crate::balance`]) skips ejected nodes unless nothing else
//! is left.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First ejection of a failing node; doubled for each further failure in a
/// row.
const EJECT_BASE: Duration = Duration::from_millis(500);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// Passive health of one node, shared by all its endpoints.
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    /// Until when it gets no traffic, in ms since `epoch`.
    ejected_until: AtomicU64,
    epoch: Instant,
}

impl Health {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the node is out of rotation now. Balancing asks this of
    /// every candidate endpoint of every request: a node never ejected, or
    /// back since its last answer, costs a load and no clock read.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    #[cfg(test)]
    fn ejected_at(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Takes the node out of rotation: for how long.
    pub fn eject(&self) -> Duration {
        self.eject_at(self.now_ms())
    }

    fn eject_at(&self, now_ms: u64) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        let d = EJECT_BASE.saturating_mul(1 << n).min(EJECT_MAX);
        self.ejected_until
            .store(now_ms + d.as_millis() as u64, Ordering::Relaxed);
        d
    }

    /// The node answered: back in rotation, and the next failure starts the
    /// backoff over. Costs a load only, while the node is healthy.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// What an attempt's failure does to its node. A refused connection always
/// ejects; a failure after the request may have been sent ejects when the
/// request could go to another node instead (idempotent, its body in
/// memory, not already sent again), which keeps the retry off this node.
/// The retry budget plays no part here: a node that failed is ejected
/// whether or not a retry was allowed.
pub(crate) fn after_failure(
    health: &Health,
    connected: bool,
    could_resend: bool,
) -> Option<Duration> {
    (!connected || could_resend).then(|| health.eject())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_doubles_up_to_its_cap_and_an_answer_ends_it() {
        let h = Health::new(Instant::now());
        let mut now = 1_000;
        let mut got = Vec::new();
        for _ in 0..9 {
            got.push(h.eject_at(now).as_millis());
        }
        assert_eq!(
            got,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        assert!(h.ejected_at(now + 29_999));
        assert!(!h.ejected_at(now + 30_000), "back after its time");
        h.succeeded();
        assert!(!h.ejected_at(now));
        now += 1;
        assert_eq!(h.eject_at(now), EJECT_BASE, "the backoff starts over");
    }

    #[test]
    fn which_failures_eject() {
        let h = Health::new(Instant::now());
        assert_eq!(after_failure(&h, false, false), Some(EJECT_BASE));
        assert!(h.is_ejected());
        let h = Health::new(Instant::now());
        assert_eq!(after_failure(&h, true, false), None);
        assert!(!h.is_ejected());
        assert_eq!(after_failure(&h, true, true), Some(EJECT_BASE));
        assert!(h.is_ejected());
    }
}
