//! Workers: supervised long-running programs.

mod common;

use common::*;
use shoal_api::objects::Phase;
use shoal_api::{Backoff, Duration as Dur, RestartPolicy, RunSpec, WorkloadKind};
use shoal_runtime::{ExitReason, LogBuffer};
use std::time::Duration;

fn worker_spec(env: &[(&str, &str)], policy: RestartPolicy) -> RunSpec {
    let mut s = RunSpec {
        kind: WorkloadKind::Worker,
        restart_policy: policy,
        backoff: Backoff {
            initial: Dur::from_millis(40),
            max: Dur::from_secs(5),
            reset_after: Dur::from_secs(30),
        },
        ..Default::default()
    };
    s.grants.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    s
}

/// `exit_code` is what the host sees of `exit(3)`: preview 1 passes the
/// code through; a wasi:cli component can only report failure (1).
async fn restarts_with_growing_delays(file: &str, exit_code: i32) {
    let bytes = std::fs::read(example(file)).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    assert_eq!(
        loaded.implied_kind,
        if file.contains("component") {
            WorkloadKind::Worker
        } else {
            WorkloadKind::Http
        }
    );
    let logs = LogBuffer::new(1000);
    let w = runtime()
        .worker(
            "ticker",
            worker_spec(
                &[("EXIT_AFTER", "1"), ("TICK_MS", "5"), ("EXIT_CODE", "3")],
                RestartPolicy::Always,
            ),
            &loaded,
            logs.clone(),
        )
        .unwrap();
    let h = w.start();
    let mut rx = h.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let delays = loop {
        let s = rx.borrow_and_update().clone();
        if s.recent_backoffs_ms.len() >= 4 {
            assert_eq!(s.last_exit, Some(ExitReason::Exited(exit_code)));
            break s.recent_backoffs_ms[..4].to_vec();
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("worker restarts in time")
            .unwrap();
    };
    assert_eq!(delays, vec![40, 80, 160, 320], "delays double");
    assert!(h.status().restarts >= 3);
    // After repeated failures the wait before each restart shows as
    // CrashLoopBackOff (it lasts hundreds of ms now, so polling sees it).
    assert!(
        eventually(Duration::from_secs(30), || h.status().state
            == Phase::CrashLoopBackOff)
        .await
    );
    let lines: Vec<String> = logs.snapshot().into_iter().map(|l| l.line).collect();
    assert!(lines.iter().any(|l| l == "tick 1"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "worker started"), "{lines:?}");
    h.stop();
}

#[tokio::test]
async fn module_worker_restarts_with_growing_delays() {
    restarts_with_growing_delays("worker.wasm", 3).await;
}

#[tokio::test]
async fn component_worker_restarts_with_growing_delays() {
    restarts_with_growing_delays("worker-component.wasm", 1).await;
}

#[tokio::test]
async fn on_failure_policy_does_not_restart_a_clean_exit() {
    let bytes = std::fs::read(example("worker.wasm")).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    let w = runtime()
        .worker(
            "once",
            worker_spec(
                &[("EXIT_AFTER", "2"), ("TICK_MS", "5"), ("EXIT_CODE", "0")],
                RestartPolicy::OnFailure,
            ),
            &loaded,
            LogBuffer::new(100),
        )
        .unwrap();
    let mut h = w.start();
    tokio::time::timeout(Duration::from_secs(30), h.wait())
        .await
        .expect("worker ends");
    let s = h.status();
    assert_eq!(s.state, Phase::Succeeded);
    assert_eq!(s.restarts, 0);
    assert_eq!(s.last_exit, Some(ExitReason::Completed));
    let ticks = h
        .logs()
        .snapshot()
        .iter()
        .filter(|l| l.line.starts_with("tick "))
        .count();
    assert_eq!(ticks, 2);
}

#[tokio::test]
async fn never_policy_reports_failure() {
    let bytes = std::fs::read(example("worker.wasm")).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    let w = runtime()
        .worker(
            "never",
            worker_spec(
                &[("EXIT_AFTER", "1"), ("TICK_MS", "5")],
                RestartPolicy::Never,
            ),
            &loaded,
            LogBuffer::new(100),
        )
        .unwrap();
    let mut h = w.start();
    tokio::time::timeout(Duration::from_secs(30), h.wait())
        .await
        .expect("worker ends");
    let s = h.status();
    assert_eq!(s.state, Phase::Failed);
    assert_eq!(s.last_exit, Some(ExitReason::Exited(1)));
}

#[tokio::test]
async fn a_long_running_worker_keeps_ticking_until_stopped() {
    let bytes = std::fs::read(example("worker.wasm")).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    let logs = LogBuffer::new(1000);
    let w = runtime()
        .worker(
            "forever",
            worker_spec(&[("TICK_MS", "5")], RestartPolicy::Always),
            &loaded,
            logs.clone(),
        )
        .unwrap();
    let h = w.start();
    assert!(
        eventually(Duration::from_secs(30), || logs
            .snapshot()
            .iter()
            .any(|l| l.line == "tick 5"))
        .await,
        "ticks keep coming"
    );
    assert_eq!(h.status().state, Phase::Running);
    assert_eq!(h.status().restarts, 0);
    h.stop();
}
