//! Where the control plane's time comes from.
//!
//! Two clocks, both given to the state task rather than read by it:
//! - wall time ([`Clock`]), for what is stored and compared across
//!   restarts (events, drains, rollout progress deadlines, the autoscaler's
//!   windows), injected through [`crate::state::Config::clock`];
//! - tokio's clock, for the loop's own timing (its tick, the autoscaler's
//!   period, lease judgement through [`AwakeClock`]).
//!
//! Tests run the loop under tokio's paused time with a [`TokioClock`], so
//! both move together and a two-second lease passes in microseconds.

use std::fmt;
use std::time::Duration;

/// Wall time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        shoal_api::objects::now_ms()
    }
}

/// Wall time that follows tokio's clock from a given start: paused when
/// tokio's time is paused, advanced when it is advanced.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin_ms: u64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `origin_ms` now.
    pub fn starting_at(origin_ms: u64) -> Self {
        Self {
            origin_ms,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.origin_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// Time the control plane was awake to see, by which node leases are
/// judged. While the process is stopped (SIGSTOP, a VM migration, an fsync
/// stalled on a busy disk) no heartbeat can reach it, so that time counts
/// against no node: a gap between two readings counts as `max_step` at
/// most.
#[derive(Debug)]
pub struct AwakeClock {
    last: tokio::time::Instant,
    awake: Duration,
    max_step: Duration,
}

impl AwakeClock {
    pub fn new(max_step: Duration) -> Self {
        Self {
            last: tokio::time::Instant::now(),
            awake: Duration::ZERO,
            max_step,
        }
    }

    /// Awake time since the clock was made.
    pub fn now(&mut self) -> Duration {
        let t = tokio::time::Instant::now();
        self.awake += t.saturating_duration_since(self.last).min(self.max_step);
        self.last = t;
        self.awake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_awake_clock_does_not_count_a_pause() {
        let mut c = AwakeClock::new(Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(c.now(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(c.now(), Duration::from_millis(400));
        // Stopped for 8 s: counts as one long step.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(c.now(), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let c = TokioClock::starting_at(1_000_000);
        assert_eq!(c.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_ms(), 1_001_500);
    }
}
