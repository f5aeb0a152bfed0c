//! The autoscaler (pure): from an app's recent load and its settings to a
//! desired replica count, with the reason.
//!
//! Load arrives as one [`Sample`] per second (the sum over gateways).
//! Decisions follow Knative's: the average over a stable window sets the
//! count; the average over a short panic window reacts to bursts, and while
//! panicking the count never goes down; a lower count takes effect only
//! after it has been wanted for the whole scale-down delay; an app with
//! `min = 0` goes to zero only after a quiet period.

use shoal_api::manifest::AutoscaleSpec;
use std::collections::VecDeque;

/// Load in one second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Start of the second, ms since the epoch.
    pub at_ms: u64,
    /// Average requests in flight during the second.
    pub concurrency: f64,
    /// Requests that arrived during the second.
    pub requests: u64,
}

/// What the autoscaler remembers about one app between decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleState {
    /// Panic mode lasts until then.
    pub panic_until_ms: Option<u64>,
    /// Counts wanted recently, newest last (for the scale-down delay).
    pub recent: VecDeque<(u64, u32)>,
    /// When the app last had a request (or was asked to start).
    pub last_active_ms: u64,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: String,
    pub panicking: bool,
}

fn average(samples: &[Sample], from_ms: u64, value: impl Fn(&Sample) -> f64) -> Option<f64> {
    let inside: Vec<f64> = samples
        .iter()
        .filter(|s| s.at_ms >= from_ms)
        .map(value)
        .collect();
    (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
}

/// Decides the replica count for an app that runs `current` replicas now.
pub fn decide(
    spec: &AutoscaleSpec,
    samples: &[Sample],
    current: u32,
    state: &mut ScaleState,
    now_ms: u64,
) -> Decision {
    let stable_ms = spec.stable_window.get().as_millis() as u64;
    let panic_ms = spec.panic_window.get().as_millis() as u64;
    let (metric, target, value): (&str, u32, fn(&Sample) -> f64) = match spec.target_rps {
        Some(rps) => ("requests/s", rps, |s| s.requests as f64),
        None => (
            "concurrency",
            spec.target_concurrency
                .unwrap_or(AutoscaleSpec::DEFAULT_TARGET_CONCURRENCY),
            |s| s.concurrency,
        ),
    };
    if let Some(last) = samples
        .iter()
        .rev()
        .find(|s| s.requests > 0 || s.concurrency > 0.0)
    {
        state.last_active_ms = state.last_active_ms.max(last.at_ms);
    }
    let stable = average(samples, now_ms.saturating_sub(stable_ms), value).unwrap_or(0.0);
    let burst = average(samples, now_ms.saturating_sub(panic_ms), value).unwrap_or(0.0);
    let need = |load: f64| (load / f64::from(target.max(1))).ceil().max(0.0) as u32;
    let (want_stable, want_panic) = (need(stable), need(burst));

    // Panic when the burst needs `threshold`% of what runs; stay in panic
    // for a stable window after the last time that held.
    let threshold = f64::from(spec.panic_threshold) / 100.0;
    if current > 0 && f64::from(want_panic) / f64::from(current) >= threshold {
        state.panic_until_ms = Some(now_ms + stable_ms);
    }
    let panicking = state.panic_until_ms.is_some_and(|t| now_ms < t);
    if !panicking {
        state.panic_until_ms = None;
    }
    let (mut want, mut reason) = if panicking {
        let w = want_panic.max(current);
        (
            w,
            format!(
                "panic: {metric} {burst:.1} over the last {} needs {want_panic} at {target} per instance",
                spec.panic_window
            ),
        )
    } else {
        (
            want_stable,
            format!(
                "{metric} {stable:.1} over the last {} needs {want_stable} at {target} per instance",
                spec.stable_window
            ),
        )
    };
    // Zero instances with load waiting: start at once.
    if current == 0 && want == 0 && want_panic > 0 {
        want = want_panic;
    }

    // Scale down only to the highest count wanted over the delay.
    let delay_ms = spec.scale_down_delay.get().as_millis() as u64;
    state.recent.push_back((now_ms, want));
    while state
        .recent
        .front()
        .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > delay_ms)
    {
        state.recent.pop_front();
    }
    let held = state.recent.iter().map(|(_, w)| *w).max().unwrap_or(want);
    if want < current && held > want {
        let to = held.min(current);
        reason = if to == current {
            format!(
                "{reason}; holding {to} for the scale-down delay ({})",
                spec.scale_down_delay
            )
        } else {
            format!(
                "{reason}; down only to {to}, the most wanted within the scale-down delay ({})",
                spec.scale_down_delay
            )
        };
        want = to;
    }

    // Zero only after a quiet period.
    if want == 0 {
        let quiet_ms = now_ms.saturating_sub(state.last_active_ms);
        let after_ms = spec.scale_to_zero_after.get().as_millis() as u64;
        if spec.min > 0 {
            // The bounds below raise it to `min`.
        } else if quiet_ms < after_ms {
            // Keep the last instance through the quiet period (and leave
            // an app that is at zero there).
            want = current.min(1);
            reason = format!(
                "idle for {}s; scales to zero after {}",
                quiet_ms / 1000,
                spec.scale_to_zero_after
            );
        } else {
            reason = format!("no requests for {}s: scaled to zero", quiet_ms / 1000);
        }
    }
    let bounded = want.clamp(spec.min, spec.max.max(spec.min));
    if bounded != want {
        reason = format!(
            "{reason}; bounded to {bounded} (min {}, max {})",
            spec.min, spec.max
        );
    }
    Decision {
        replicas: bounded,
        reason,
        panicking,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::Duration;

    fn spec() -> AutoscaleSpec {
        AutoscaleSpec {
            min: 1,
            max: 10,
            target_concurrency: Some(10),
            target_rps: None,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 200,
            scale_down_delay: Duration::from_secs(30),
            scale_to_zero_after: Duration::from_secs(30),
        }
    }

    /// Feeds one sample a second from `load(t)` (t in seconds) and lets the
    /// replica count follow each decision; returns the counts.
    fn simulate(
        spec: &AutoscaleSpec,
        start: u32,
        seconds: u64,
        load: impl Fn(u64) -> f64,
    ) -> Vec<u32> {
        let mut samples: Vec<Sample> = Vec::new();
        let mut state = ScaleState::default();
        let mut current = start;
        let mut out = Vec::new();
        for t in 0..seconds {
            let c = load(t);
            samples.push(Sample {
                at_ms: t * 1000,
                concurrency: c,
                requests: (c * 10.0) as u64,
            });
            let d = decide(spec, &samples, current, &mut state, t * 1000 + 999);
            current = d.replicas;
            out.push(current);
        }
        out
    }

    #[test]
    fn a_ramp_grows_replicas_to_the_load_and_never_beyond_max() {
        let counts = simulate(&spec(), 1, 200, |t| (t as f64).min(150.0));
        assert_eq!(
            *counts.last().unwrap(),
            10,
            "150 concurrent at 10 each, capped at max"
        );
        assert!(counts.iter().all(|c| *c <= 10));
        // It grows step by step, never shrinking on the way up.
        assert!(counts.windows(2).all(|w| w[1] >= w[0]), "{counts:?}");
        // At a steady 45 it settles on 5.
        let steady = simulate(&spec(), 1, 120, |_| 45.0);
        assert_eq!(*steady.last().unwrap(), 5);
    }

    #[test]
    fn a_spike_triggers_panic_within_seconds() {
        // Quiet at 10 concurrent, then a jump to 80.
        let counts = simulate(&spec(), 1, 70, |t| if t < 60 { 10.0 } else { 80.0 });
        // The 60-second average barely moves, the 6-second one does.
        let after = &counts[60..];
        assert!(
            after[0] > counts[59],
            "no reaction in the first second: {after:?}"
        );
        // The full count within the 6 s panic window, where the 60 s
        // average alone would take about a minute.
        let reached = after.iter().position(|c| *c >= 8).expect("reaches 8");
        assert!(reached < 6, "took {reached}s: {after:?}");
    }

    #[test]
    fn flapping_load_does_not_oscillate() {
        // Load alternating every 5 s between 35 and 15.
        let counts = simulate(
            &spec(),
            4,
            180,
            |t| if (t / 5) % 2 == 0 { 35.0 } else { 15.0 },
        );
        let tail = &counts[90..];
        let changes = tail.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 1, "changed {changes} times: {tail:?}");
    }

    #[test]
    fn scale_down_waits_for_the_delay() {
        let s = spec();
        // 50 concurrent for 2 minutes (5 replicas), then nothing.
        let counts = simulate(&s, 5, 240, |t| if t < 120 { 50.0 } else { 0.0 });
        assert_eq!(counts[119], 5);
        // The stable average falls over the next 60 s; each lower count
        // waits 30 s.
        assert!(
            counts[125..150].iter().all(|c| *c == 5),
            "{:?}",
            &counts[120..160]
        );
        assert_eq!(*counts.last().unwrap(), 1, "back to min");
    }

    #[test]
    fn a_step_down_says_where_it_goes_not_that_it_holds() {
        let s = spec();
        let mut state = ScaleState::default();
        let mut samples = Vec::new();
        let mut current = 5;
        let mut said = Vec::new();
        // 50 concurrent (5 wanted), then 40 (4), then 20 (2): each lower
        // count waits for the delay, so steps go 5 -> 4 -> 2 or so.
        for t in 0..400u64 {
            let c = if t < 60 {
                50.0
            } else if t < 180 {
                40.0
            } else {
                20.0
            };
            samples.push(Sample {
                at_ms: t * 1000,
                concurrency: c,
                requests: 0,
            });
            let d = decide(&s, &samples, current, &mut state, t * 1000 + 999);
            if d.replicas != current {
                said.push((current, d.replicas, d.reason.clone()));
            }
            current = d.replicas;
        }
        let downs: Vec<_> = said.iter().filter(|(from, to, _)| to < from).collect();
        assert!(!downs.is_empty(), "{said:?}");
        for (from, to, reason) in downs {
            // An event reads "replicas 5 -> 4: <reason>": the reason must
            // not claim to hold a count it just left or went to.
            assert!(
                !reason.contains(&format!("holding {to}"))
                    && !reason.contains(&format!("holding {from}")),
                "{from} -> {to}: {reason}"
            );
        }
    }

    #[test]
    fn scale_to_zero_after_quiet_and_back_on_a_request() {
        let mut s = spec();
        s.min = 0;
        s.stable_window = Duration::from_secs(10);
        s.panic_window = Duration::from_secs(2);
        s.scale_down_delay = Duration::from_secs(5);
        s.scale_to_zero_after = Duration::from_secs(20);
        let counts = simulate(&s, 1, 60, |t| if t < 5 { 5.0 } else { 0.0 });
        let zero_at = counts.iter().position(|c| *c == 0).expect("reaches zero");
        assert!(zero_at >= 24, "zero at {zero_at}s: {counts:?}");
        // Load arriving at zero instances brings one back at once.
        let mut state = ScaleState::default();
        let samples = [Sample {
            at_ms: 100_000,
            concurrency: 3.0,
            requests: 3,
        }];
        let d = decide(&s, &samples, 0, &mut state, 100_500);
        assert_eq!(d.replicas, 1, "{}", d.reason);
    }

    #[test]
    fn requests_per_second_can_be_the_metric() {
        let mut s = spec();
        s.target_concurrency = None;
        s.target_rps = Some(100);
        // 450 requests a second: 5 instances.
        let counts = simulate(&s, 1, 90, |_| 45.0);
        assert_eq!(*counts.last().unwrap(), 5);
    }
}
