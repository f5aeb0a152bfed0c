//! The state task's timing under tokio's paused time: leases, drains,
//! rollout progress deadlines and the autoscaler's ticks pass in
//! microseconds.

use super::*;
use crate::clock::TokioClock;
use shoal_api::objects::{EventLevel, NodeState, Phase, RolloutState};
use shoal_api::protocol::InstanceReport;
use std::collections::BTreeMap;

/// A control plane on a fresh store, with default timing (a 2 s lease,
/// a 100 ms tick, a 1 s drain delay) and wall time that follows tokio's.
fn control_plane(dir: &std::path::Path) -> ControlPlane {
    let config = Config {
        clock: Arc::new(TokioClock::starting_at(1_700_000_000_000)),
        ..Config::default()
    };
    ControlPlane::start(Store::open(dir).unwrap(), config).unwrap()
}

async fn register(cp: &ControlPlane, name: &str) -> RegisterResponse {
    cp.register(RegisterRequest {
        name: name.into(),
        address: format!("127.0.0.1:{}", 9000 + name.len()),
        capacity: shoal_api::objects::NodeCapacity {
            memory: 1 << 30,
            instances: 10,
        },
        labels: BTreeMap::new(),
    })
    .await
    .unwrap()
}

/// Applies `manifest` (JSON) with `module` as its module.
async fn apply(cp: &ControlPlane, manifest: serde_json::Value, module: &[u8]) {
    let m: AppManifest = serde_json::from_value(manifest).unwrap();
    let digest = cp.keep_module_bytes(module).await.unwrap();
    cp.apply(vec![(m, digest)], None).await.unwrap();
}

/// What a node says of an instance.
fn report(id: &str, state: Phase, ready: bool, in_flight: u32) -> InstanceReport {
    InstanceReport {
        id: id.into(),
        state,
        ready,
        restarts: 0,
        message: None,
        in_flight,
    }
}

/// Lets `total` of time pass on tokio's paused clock while each of
/// `alive` heartbeats every 250 ms, as nodes do, with its reports.
async fn run_for(cp: &ControlPlane, total: Duration, alive: &[(&str, &[InstanceReport])]) {
    let step = Duration::from_millis(250);
    let mut passed = Duration::ZERO;
    while passed < total {
        for (n, reports) in alive {
            let hb = Heartbeat {
                generation: 0,
                instances: reports.to_vec(),
                brief: false,
            };
            cp.heartbeat(n.to_string(), hb).await.unwrap();
        }
        tokio::time::sleep(step).await;
        passed += step;
    }
}

fn states(cp: &ControlPlane) -> Vec<(String, NodeState)> {
    cp.snapshot()
        .nodes
        .values()
        .map(|n| (n.name.clone(), n.state))
        .collect()
}

fn has_event(cp: &ControlPlane, reason: &str, message: &str) -> bool {
    cp.snapshot()
        .events
        .iter()
        .any(|e| e.reason == reason && e.message == message)
}

const QUIET: &[InstanceReport] = &[];

/// The lease expiry the state task runs: a node silent alone for
/// longer than the lease is lost.
#[tokio::test(start_paused = true)]
async fn a_node_silent_past_its_lease_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    for n in ["a", "b", "c"] {
        register(&cp, n).await;
    }
    let others = [("b", QUIET), ("c", QUIET)];
    // Within the lease nothing changes.
    run_for(&cp, Duration::from_millis(1750), &others).await;
    assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
    run_for(&cp, Duration::from_millis(750), &others).await;
    assert_eq!(
        states(&cp),
        vec![
            ("a".into(), NodeState::Lost),
            ("b".into(), NodeState::Ready),
            ("c".into(), NodeState::Ready),
        ]
    );
    let lost = cp.snapshot().events.iter().any(|e| {
        e.reason == "NodeLost"
            && e.object == "node/a"
            && e.level == EventLevel::Warning
            && e.message
                == "node a missed heartbeats for 2s; its instances will be placed elsewhere"
    });
    assert!(lost, "{:?}", cp.snapshot().events);
    // A heartbeat brings it back.
    run_for(&cp, Duration::from_millis(250), &[("a", QUIET)]).await;
    assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
}

/// Most nodes silent at once are unreachable, not lost; and time the
/// control plane did not run (a long stall) counts against no node.
#[tokio::test(start_paused = true)]
async fn most_nodes_silent_together_are_unreachable_and_a_stall_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    for n in ["a", "b", "c"] {
        register(&cp, n).await;
    }
    run_for(&cp, Duration::from_millis(2500), &[("c", QUIET)]).await;
    assert_eq!(
        states(&cp),
        vec![
            ("a".into(), NodeState::Unreachable),
            ("b".into(), NodeState::Unreachable),
            ("c".into(), NodeState::Ready),
        ]
    );
    let all = [("a", QUIET), ("b", QUIET), ("c", QUIET)];
    run_for(&cp, Duration::from_millis(500), &all).await;
    assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));

    // The whole runtime stops for a minute (as under SIGSTOP): the
    // state task sees one long step, of at most five ticks.
    tokio::time::advance(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
}

/// A cut-off group heals a node at a time: the last to come back is not
/// lost to the first, unless it stays silent alone for a whole lease.
#[tokio::test(start_paused = true)]
async fn nodes_of_a_healing_cut_come_back_one_at_a_time_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    for n in ["a", "b", "c"] {
        register(&cp, n).await;
    }
    run_for(&cp, Duration::from_millis(3000), &[("c", QUIET)]).await;
    let unreachable = vec![
        ("a".into(), NodeState::Unreachable),
        ("b".into(), NodeState::Unreachable),
        ("c".into(), NodeState::Ready),
    ];
    assert_eq!(states(&cp), unreachable);
    // a comes back; b, silent for 3 s, is not judged alone at once.
    let without_b = [("a", QUIET), ("c", QUIET)];
    run_for(&cp, Duration::from_millis(1750), &without_b).await;
    assert_eq!(
        states(&cp),
        vec![
            ("a".into(), NodeState::Ready),
            ("b".into(), NodeState::Unreachable),
            ("c".into(), NodeState::Ready),
        ]
    );
    let all = [("a", QUIET), ("b", QUIET), ("c", QUIET)];
    run_for(&cp, Duration::from_millis(250), &all).await;
    assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
    assert!(!cp.snapshot().events.iter().any(|e| e.reason == "NodeLost"));

    // Cut off again, and this time b never comes back: it is lost a lease
    // after a returned.
    run_for(&cp, Duration::from_millis(3000), &[("c", QUIET)]).await;
    assert_eq!(states(&cp), unreachable);
    run_for(&cp, Duration::from_millis(2500), &without_b).await;
    assert_eq!(
        states(&cp),
        vec![
            ("a".into(), NodeState::Ready),
            ("b".into(), NodeState::Lost),
            ("c".into(), NodeState::Ready),
        ]
    );
}

/// Reconciles and the apps they planned, by scope, from `/metrics`.
fn planned(cp: &ControlPlane) -> [u64; 4] {
    let text =
        crate::metrics::render(&cp.snapshot(), cp.telemetry(), cp.stats(), cp.now_ms()).unwrap();
    let count = |name: &str, scope: &str| {
        let prefix = format!("{name}_total{{scope=\"{scope}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    [
        count("shoal_reconciles", "all"),
        count("shoal_reconcile_apps", "all"),
        count("shoal_reconciles", "changed"),
        count("shoal_reconcile_apps", "changed"),
    ]
}

/// Once everything serves, ticks plan nothing; a change to one app plans
/// that app, not the cluster; and every app is planned again now and
/// then.
#[tokio::test(start_paused = true)]
async fn a_tick_plans_the_apps_that_changed_not_every_app() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    for n in ["n1", "n2", "n3"] {
        register(&cp, n).await;
    }
    for i in 0..20 {
        let name = format!("app{i:02}");
        apply(
            &cp,
            serde_json::json!({"name": name, "module": "m.wasm"}),
            b"\0asm\x01\0\0\0",
        )
        .await;
    }
    let everyone = |cp: &ControlPlane| ["n1", "n2", "n3"].map(|n| (n, serving_on(cp, n)));
    let beat = |all: &[(&'static str, Vec<InstanceReport>); 3]| {
        all.iter().map(|(n, r)| (*n, r.clone())).collect::<Vec<_>>()
    };
    // Placed, then reported serving.
    run_for(
        &cp,
        Duration::from_millis(500),
        &[("n1", QUIET), ("n2", QUIET), ("n3", QUIET)],
    )
    .await;
    let reports = beat(&everyone(&cp));
    let alive: Vec<(&str, &[InstanceReport])> =
        reports.iter().map(|(n, r)| (*n, r.as_slice())).collect();
    assert_eq!(cp.snapshot().instances.len(), 20);
    run_for(&cp, Duration::from_millis(500), &alive).await;
    assert!(cp.snapshot().instances.values().all(|i| i.ready));

    // Settled: five seconds of ticks plan nothing.
    let before = planned(&cp);
    run_for(&cp, Duration::from_secs(5), &alive).await;
    assert_eq!(planned(&cp), before);

    // One app scaled: the ticks until it serves plan it alone.
    cp.scale(AppKey::new("default", "app07"), 2, None)
        .await
        .unwrap();
    run_for(&cp, Duration::from_millis(500), &alive).await;
    let reports = beat(&everyone(&cp));
    let alive: Vec<(&str, &[InstanceReport])> =
        reports.iter().map(|(n, r)| (*n, r.as_slice())).collect();
    run_for(&cp, Duration::from_millis(500), &alive).await;
    assert_eq!(cp.snapshot().instances.len(), 21);
    assert!(cp.snapshot().instances.values().all(|i| i.ready));
    let after = planned(&cp);
    let (reconciles, apps) = (after[2] - before[2], after[3] - before[3]);
    assert_eq!(after[..2], before[..2], "{after:?}");
    assert!(reconciles > 0 && apps == reconciles, "{before:?} {after:?}");
    run_for(&cp, Duration::from_secs(5), &alive).await;
    assert_eq!(planned(&cp), after);

    // Every 30 s, every app.
    run_for(&cp, Duration::from_secs(25), &alive).await;
    let late = planned(&cp);
    assert_eq!(late[0], after[0] + 1, "{late:?}");
    assert_eq!(late[1], after[1] + 20, "{late:?}");
}

/// An instance leaving service stays for the drain delay and while it
/// has requests in flight, then goes.
#[tokio::test(start_paused = true)]
async fn a_drained_instance_goes_after_the_drain_delay_once_idle() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "n1").await;
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm"}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    run_for(&cp, Duration::from_millis(250), &[("n1", QUIET)]).await;
    let id = cp.snapshot().instances.keys().next().cloned().unwrap();
    let serving = [report(&id, Phase::Running, true, 0)];
    run_for(&cp, Duration::from_millis(250), &[("n1", &serving)]).await;
    assert_eq!(cp.snapshot().instances[&id].phase, Phase::Running);

    cp.scale(AppKey::new("default", "web"), 0, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cp.snapshot().instances[&id].phase, Phase::Terminating);
    // Busy past the drain delay: it stays.
    let busy = [report(&id, Phase::Running, true, 2)];
    run_for(&cp, Duration::from_millis(1500), &[("n1", &busy)]).await;
    assert!(cp.snapshot().instances.contains_key(&id));
    // Idle: it goes at the next decision.
    run_for(&cp, Duration::from_millis(250), &[("n1", &serving)]).await;
    assert!(!cp.snapshot().instances.contains_key(&id));
    assert!(has_event(
        &cp,
        "Killing",
        &format!("stopping {id}: drained")
    ));
}

/// A rollout whose new instance never gets ready fails at its progress
/// deadline, and the stable revision keeps serving.
#[tokio::test(start_paused = true)]
async fn a_rollout_fails_at_its_progress_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "n1").await;
    let manifest = serde_json::json!({
        "name": "web", "module": "web.wasm",
        "rollout": {"progress-deadline": "3s"},
    });
    apply(&cp, manifest.clone(), b"\0asm\x01\0\0\0").await;
    run_for(&cp, Duration::from_millis(250), &[("n1", QUIET)]).await;
    let old = cp.snapshot().instances.keys().next().cloned().unwrap();
    let v1 = [report(&old, Phase::Running, true, 0)];
    run_for(&cp, Duration::from_millis(250), &[("n1", &v1)]).await;
    let key = AppKey::new("default", "web");
    assert!(matches!(
        cp.snapshot().apps[&key].rollout,
        RolloutState::Complete { .. }
    ));

    // Revision 2: its instance starts and never gets ready.
    apply(&cp, manifest, b"\0asm\x01\0\0\0\0\x02\x01a").await;
    run_for(&cp, Duration::from_millis(250), &[("n1", &v1)]).await;
    let new = cp
        .snapshot()
        .instances
        .values()
        .find(|i| i.revision == 2)
        .map(|i| i.id.clone())
        .unwrap();
    let both = [
        report(&old, Phase::Running, true, 0),
        report(&new, Phase::Starting, false, 0),
    ];
    run_for(&cp, Duration::from_millis(2250), &[("n1", &both)]).await;
    assert!(matches!(
        cp.snapshot().apps[&key].rollout,
        RolloutState::Progressing { .. }
    ));
    run_for(&cp, Duration::from_millis(1000), &[("n1", &both)]).await;
    assert!(matches!(
        cp.snapshot().apps[&key].rollout,
        RolloutState::Failed { .. }
    ));
    let failed =
        cp.snapshot().events.iter().any(|e| {
            e.reason == "RolloutFailed" && e.message.ends_with("; revision 1 keeps serving")
        });
    assert!(failed, "{:?}", cp.snapshot().events);
    assert!(cp.snapshot().instances.contains_key(&old));
}

fn replicas(cp: &ControlPlane, app: &str) -> u32 {
    cp.snapshot().apps[&AppKey::new("default", app)].replicas
}

/// The autoscaler decides on fresh load at the next tick, and an idle
/// app that may go to zero does so once quiet for its period.
#[tokio::test(start_paused = true)]
async fn the_autoscaler_follows_load_and_goes_to_zero_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "n1").await;
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm",
            "autoscale": {"min": 0, "max": 5, "target-concurrency": 1,
                "scale-to-zero-after": "5s"}}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    // Never asked for: zero at the autoscaler's next decision, within
    // a second.
    run_for(&cp, Duration::from_millis(1250), &[("n1", QUIET)]).await;
    assert_eq!(replicas(&cp, "web"), 0);

    // A request waits: one instance at once.
    cp.activate(AppKey::new("default", "web")).await.unwrap();
    assert_eq!(replicas(&cp, "web"), 1);
    // A gateway reports four requests in flight: the next tick decides,
    // not the next second.
    let report = GatewayMetrics {
        gateway: "g1".into(),
        interval_ms: 1000,
        apps: vec![shoal_api::rest::AppMetrics {
            app: AppKey::new("default", "web"),
            concurrency: 4.0,
            requests: 4,
            cold_starts_ms: vec![35],
            traffic: Default::default(),
        }],
    };
    cp.report_metrics(report).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(replicas(&cp, "web"), 4);
    assert!(has_event(
        &cp,
        "AutoScaled",
        "replicas 1 -> 4: panic: concurrency 4.0 over the last 6s needs 4 at 1 per instance"
    ));
    assert_eq!(
        cp.snapshot().cold_starts[&AppKey::new("default", "web")].count,
        1
    );

    // Quiet from now on: the scale-down delay (30 s) and then the
    // quiet period bring it back to zero, in no time at all.
    run_for(&cp, Duration::from_secs(120), &[("n1", QUIET)]).await;
    assert_eq!(replicas(&cp, "web"), 0);

    // Each change counted by direction and why.
    let text =
        crate::metrics::render(&cp.snapshot(), cp.telemetry(), cp.stats(), cp.now_ms()).unwrap();
    let count = |labels: &str| {
        let prefix = format!("shoal_autoscaler_decisions_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count(r#"direction="up",reason="activation""#), 1, "{text}");
    assert_eq!(count(r#"direction="up",reason="panic""#), 1, "{text}");
    assert!(
        count(r#"direction="down",reason="scale_to_zero""#) >= 2,
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("shoal_reconcile_duration_seconds_count ")
            && !l.ends_with(" 0")),
        "{text}"
    );
}

/// Reports of every instance placed on `node`, as serving (`Running`,
/// ready, idle), as a node that runs what it is given would send.
fn serving_on(cp: &ControlPlane, node: &str) -> Vec<InstanceReport> {
    cp.snapshot()
        .instances
        .values()
        .filter(|i| i.node.as_deref() == Some(node))
        .map(|i| report(&i.id, Phase::Running, true, 0))
        .collect()
}

/// Lets `total` pass while nodes `a` and `b` heartbeat, each reporting
/// whatever it is assigned as serving.
async fn serve_for(cp: &ControlPlane, total: Duration, nodes: &[&str]) {
    let step = Duration::from_millis(250);
    let mut passed = Duration::ZERO;
    while passed < total {
        for n in nodes {
            let hb = Heartbeat {
                generation: 0,
                instances: serving_on(cp, n),
                brief: false,
            };
            cp.heartbeat(n.to_string(), hb).await.unwrap();
        }
        tokio::time::sleep(step).await;
        passed += step;
    }
}

fn placed(cp: &ControlPlane) -> Vec<(String, Phase)> {
    cp.snapshot()
        .instances
        .values()
        .map(|i| (i.node.clone().unwrap_or_default(), i.phase))
        .collect()
}

/// A drain never leaves the app with fewer serving instances than it
/// asks for, and ends with every instance on the other node and the
/// drained node cordoned, which a restart of the control plane keeps.
#[tokio::test(start_paused = true)]
async fn a_drained_node_ends_empty_without_the_app_losing_a_serving_replica() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "a").await;
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm", "replicas": 2}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    serve_for(&cp, Duration::from_millis(500), &["a"]).await;
    assert_eq!(
        placed(&cp),
        vec![("a".into(), Phase::Running), ("a".into(), Phase::Running)]
    );
    // Registering b would start moving a replica there to restore spread;
    // the drain takes over at once.
    register(&cp, "b").await;

    let status = cp.drain("a".into(), None).await.unwrap();
    assert!(status.draining && status.cordoned, "{status:?}");
    assert_eq!(status.instances.len(), 2);
    assert!(status.blocked.is_empty(), "{status:?}");
    let key = AppKey::new("default", "web");
    let mut step = 0;
    while !cp.snapshot().drain_status("a").unwrap().done() {
        step += 1;
        assert!(step < 40, "still draining: {:?}", placed(&cp));
        serve_for(&cp, Duration::from_millis(250), &["a", "b"]).await;
        let snap = cp.snapshot();
        let serving = snap
            .instances
            .values()
            .filter(|i| i.app == key && crate::rollout::serving(i))
            .count();
        assert!(serving >= 2, "{serving} serving: {:?}", placed(&cp));
    }
    assert_eq!(
        placed(&cp),
        vec![("b".into(), Phase::Running), ("b".into(), Phase::Running)]
    );
    let node = cp.snapshot().nodes["a"].clone();
    assert!(node.cordoned && !node.draining, "{node:?}");
    assert!(has_event(
        &cp,
        "NodeDrained",
        "node a is drained: it runs nothing and stays cordoned"
    ));

    // The cordon is stored: a restarted control plane still places
    // nothing on a.
    cp.stop().await;
    drop(cp);
    let cp = control_plane(dir.path());
    assert!(cp.snapshot().nodes["a"].cordoned);
    cp.scale(key, 4, None).await.unwrap();
    serve_for(&cp, Duration::from_millis(250), &["a", "b"]).await;
    assert!(
        placed(&cp).iter().all(|(n, _)| n == "b"),
        "{:?}",
        placed(&cp)
    );
    let back = cp.cordon("a".into(), false, None).await.unwrap();
    assert!(!back.cordoned);
}

/// A deleted node's instances are placed elsewhere at once, and its next
/// heartbeat is refused as an unknown node's.
#[tokio::test(start_paused = true)]
async fn a_deleted_node_loses_its_instances_and_its_heartbeats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "a").await;
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm", "replicas": 2}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    serve_for(&cp, Duration::from_millis(500), &["a"]).await;
    register(&cp, "b").await;

    cp.delete_node("a".into(), false, None).await.unwrap();
    let snap = cp.snapshot();
    assert!(!snap.nodes.contains_key("a"));
    assert_eq!(
        placed(&cp),
        vec![
            ("b".into(), Phase::Scheduled),
            ("b".into(), Phase::Scheduled)
        ]
    );
    assert!(has_event(
        &cp,
        "NodeDeleted",
        "node a deleted; its 2 instance(s) will be placed elsewhere"
    ));
    let hb = Heartbeat {
        generation: 0,
        instances: Vec::new(),
        brief: false,
    };
    let refused = cp.heartbeat("a".into(), hb).await.unwrap_err();
    assert_eq!(refused.code(), "node_unknown");
    assert!(matches!(
        cp.delete_node("a".into(), false, None).await,
        Err(ApiError::NotFound(_))
    ));
    // Nothing comes back to it at the next ticks either.
    serve_for(&cp, Duration::from_secs(3), &["b"]).await;
    assert!(!cp.snapshot().nodes.contains_key("a"));
    assert_eq!(
        placed(&cp),
        vec![("b".into(), Phase::Running), ("b".into(), Phase::Running)]
    );
}

/// A node that asks for brief answers gets the assignment while it lacks
/// it, and an empty `unchanged` answer once it runs the current
/// generation with exactly its instances; a node that does not ask always
/// gets the whole assignment.
#[tokio::test(start_paused = true)]
async fn a_node_running_its_assignment_gets_a_brief_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "n1").await;
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm"}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hb = |generation: u64, instances: Vec<InstanceReport>, brief: bool| Heartbeat {
        generation,
        instances,
        brief,
    };
    // It runs nothing yet: the whole assignment, one instance.
    let first = cp
        .heartbeat("n1".into(), hb(0, vec![], true))
        .await
        .unwrap();
    assert!(!first.unchanged);
    assert_eq!(first.instances.len(), 1);
    let (generation, id) = (first.generation, first.instances[0].id.clone());
    let serving = vec![report(&id, Phase::Running, true, 0)];
    // It runs that generation with that instance: nothing to send.
    let brief = cp
        .heartbeat("n1".into(), hb(generation, serving.clone(), true))
        .await
        .unwrap();
    assert!(brief.unchanged);
    assert!(brief.instances.is_empty());
    assert_eq!(brief.generation, generation);
    // An older generation, a missing instance, or no ask: the whole thing.
    for (g, reports, ask) in [
        (generation - 1, serving.clone(), true),
        (generation, vec![], true),
        (generation, serving.clone(), false),
    ] {
        let full = cp
            .heartbeat("n1".into(), hb(g, reports, ask))
            .await
            .unwrap();
        assert!(!full.unchanged);
        assert_eq!(full.instances.len(), 1);
    }
}

/// A node lost and registered again gets its replicas back through the
/// state task: one move at a time, surge first, never fewer than the
/// replica count serving, with the events that say so.
#[tokio::test(start_paused = true)]
async fn a_node_that_comes_back_gets_its_replicas_back_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    for n in ["a", "b", "c"] {
        register(&cp, n).await;
    }
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm", "replicas": 3}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    serve_for(&cp, Duration::from_millis(500), &["a", "b", "c"]).await;
    // c falls silent past its lease: its replica runs on a or b.
    serve_for(&cp, Duration::from_secs(3), &["a", "b"]).await;
    let on = |cp: &ControlPlane, node: &str| {
        cp.snapshot()
            .instances
            .values()
            .filter(|i| i.node.as_deref() == Some(node) && i.phase != Phase::Terminating)
            .count()
    };
    assert_eq!(on(&cp, "c"), 0, "{:?}", placed(&cp));
    assert_eq!(on(&cp, "a") + on(&cp, "b"), 3, "{:?}", placed(&cp));

    register(&cp, "c").await;
    let mut step = 0;
    while on(&cp, "c") != 1 || cp.snapshot().instances.len() != 3 {
        step += 1;
        assert!(step < 40, "not spread again: {:?}", placed(&cp));
        serve_for(&cp, Duration::from_millis(250), &["a", "b", "c"]).await;
        let snap = cp.snapshot();
        let serving = snap
            .instances
            .values()
            .filter(|i| crate::rollout::serving(i))
            .count();
        let live = snap
            .instances
            .values()
            .filter(|i| i.phase != Phase::Terminating)
            .count();
        assert!(serving >= 3, "{serving} serving: {:?}", placed(&cp));
        assert!(live <= 4, "{live} live: {:?}", placed(&cp));
    }
    assert_eq!((on(&cp, "a"), on(&cp, "b")), (1, 1), "{:?}", placed(&cp));
    let reasons: Vec<String> = cp
        .snapshot()
        .events
        .iter()
        .filter(|e| e.reason.starts_with("Rebalanc"))
        .map(|e| e.reason.clone())
        .collect();
    assert_eq!(reasons, ["Rebalancing", "Rebalanced"]);
}

/// A leader that plans for fewer renewals than its nodes would send at
/// the configured interval asks them (at registration and in each
/// renewal's answer) to renew less often, never less than four times a
/// lease; nodes that renew that often stay ready (the leader does not
/// count their fewer renewals as its own lag), and one that stops is lost.
#[tokio::test(start_paused = true)]
async fn renewals_are_spaced_out_for_a_fleet_past_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        clock: Arc::new(TokioClock::starting_at(1_700_000_000_000)),
        // Two nodes at four renewals a second each: twice the budget.
        max_renewals_per_second: 4,
        ..Config::default()
    };
    let cp = ControlPlane::start(Store::open(dir.path()).unwrap(), config).unwrap();
    register(&cp, "a").await;
    let answer = register(&cp, "b").await;
    assert_eq!(answer.heartbeat_ms, 500, "{answer:?}");
    // Until the snapshot with both nodes is out, a renewal may still say 250.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let generation = |n: &str| cp.snapshot().nodes[n].generation;
    // Five leases' worth of renewals every 500 ms, both nodes.
    for _ in 0..20 {
        for n in ["a", "b"] {
            let answer = cp.renew_lease(n, generation(n)).unwrap();
            assert!(answer.renewed, "{n}: {answer:?}");
            assert_eq!(answer.heartbeat_ms, Some(500), "{n}: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let by_name: BTreeMap<String, NodeState> = states(&cp).into_iter().collect();
    assert_eq!(by_name["a"], NodeState::Ready);
    assert_eq!(by_name["b"], NodeState::Ready);
    // "b" falls silent; "a" renews on: "b" is lost, and "a" alone is
    // within the budget again, so it is asked for the configured 250 ms.
    for _ in 0..12 {
        let answer = cp.renew_lease("a", generation("a")).unwrap();
        assert!(answer.renewed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let by_name: BTreeMap<String, NodeState> = states(&cp).into_iter().collect();
    assert_eq!(by_name["a"], NodeState::Ready);
    assert_ne!(by_name["b"], NodeState::Ready);
    let answer = cp.renew_lease("a", generation("a")).unwrap();
    assert_eq!(answer.heartbeat_ms, Some(250), "{answer:?}");
}

/// Lease renewals, taken without the state task, keep a node that sends
/// no heartbeat alive; they count only for a ready node at its current
/// generation, and a node that stops renewing is lost as before.
#[tokio::test(start_paused = true)]
async fn lease_renewals_keep_a_node_alive_without_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "a").await;
    register(&cp, "b").await;
    let generation = cp.snapshot().nodes["a"].generation;
    // Five leases' worth of time: "a" only renews, "b" says nothing.
    for _ in 0..40 {
        let answer = cp.renew_lease("a", generation).unwrap();
        assert!(answer.renewed);
        assert_eq!(answer.generation, generation);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let by_name: BTreeMap<String, NodeState> = states(&cp).into_iter().collect();
    assert_eq!(by_name["a"], NodeState::Ready);
    assert_ne!(by_name["b"], NodeState::Ready);
    // A lost node is not brought back by a renewal: it must heartbeat.
    let b = cp.snapshot().nodes["b"].generation;
    assert!(!cp.renew_lease("b", b).unwrap().renewed);
    // Another generation: the node is told to send a full heartbeat.
    let stale = cp.renew_lease("a", generation + 7).unwrap();
    assert!(!stale.renewed);
    assert_eq!(stale.generation, generation);
    assert!(matches!(
        cp.renew_lease("nobody", 1),
        Err(ApiError::NodeUnknown(_))
    ));
    // Silent from now on: "a" is lost after its lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let by_name: BTreeMap<String, NodeState> = states(&cp).into_iter().collect();
    assert_ne!(by_name["a"], NodeState::Ready);
}

/// Instances that fit nowhere while nodes join one by one see their
/// reason change at every join ("0/1 nodes can run it", "0/2 ..."). They
/// make one `FailedScheduling` event per app, which counts the times, not
/// one event per instance and change: the list stays short however long
/// the cluster takes to fill. The count survives a restart, and the event
/// goes with its app.
#[tokio::test(start_paused = true)]
async fn pending_instances_in_a_filling_cluster_make_one_event_per_app_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let mut nodes = vec!["n0".to_string()];
    register(&cp, "n0").await;
    for app in ["web", "api"] {
        apply(
            &cp,
            serde_json::json!({"name": app, "module": "m.wasm", "replicas": 60}),
            b"\0asm\x01\0\0\0",
        )
        .await;
    }
    let alive = |nodes: &[String]| -> Vec<(String, &'static [InstanceReport])> {
        nodes.iter().map(|n| (n.clone(), QUIET)).collect()
    };
    let beat = async |cp: &ControlPlane, nodes: &[String]| {
        let alive = alive(nodes);
        let refs: Vec<(&str, &[InstanceReport])> =
            alive.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        run_for(cp, Duration::from_millis(500), &refs).await;
    };
    beat(&cp, &nodes).await;
    // Nodes join one at a time (10 instances each): never room for all
    // 120 instances.
    for i in 1..8 {
        let name = format!("n{i}");
        register(&cp, &name).await;
        nodes.push(name);
        beat(&cp, &nodes).await;
    }
    let failed = |cp: &ControlPlane| -> Vec<shoal_api::objects::Event> {
        cp.snapshot()
            .events
            .iter()
            .filter(|e| e.reason == "FailedScheduling")
            .cloned()
            .collect()
    };
    let pending = cp
        .snapshot()
        .instances
        .values()
        .filter(|i| i.phase == Phase::Pending)
        .count();
    assert_eq!(pending, 120 - 80, "8 nodes of 10 instances");
    let events = failed(&cp);
    let mut objects: Vec<&str> = events.iter().map(|e| e.object.as_str()).collect();
    objects.sort();
    assert_eq!(
        objects,
        ["app/api", "app/web"],
        "one event per app: {events:#?}"
    );
    let mut counted = 0;
    for e in &events {
        assert_eq!(e.level, EventLevel::Warning);
        let count = e.count.expect("a count");
        counted += count;
        // Seen at every join while the app waited, first at the apply.
        assert!(count >= 10, "{e:?}");
        assert!(e.first_at_ms.expect("first seen") < e.at_ms, "{e:?}");
    }
    // "api" fitted once six nodes were in; "web" waits still, and its
    // event says so with the cluster as it is now.
    let web = events.iter().find(|e| e.object == "app/web").unwrap();
    assert!(
        web.message.starts_with("web-")
            && web.message.ends_with(
                "and 39 more are pending: 0/8 nodes can run it: 8 have no free instance slots"
            ),
        "{}",
        web.message
    );
    // An event each time an instance's reason changed, as before, would
    // have been hundreds.
    assert!(counted > 200, "{counted}");

    // Stored as they are: a restart shows the same two, and counts on.
    cp.stop().await;
    drop(cp);
    let cp = control_plane(dir.path());
    assert_eq!(failed(&cp), events);
    register(&cp, "n8").await;
    nodes.push("n8".into());
    beat(&cp, &nodes).await;
    let again = failed(&cp);
    assert_eq!(again.len(), 2, "{again:#?}");
    let web_again = again.iter().find(|e| e.object == "app/web").unwrap();
    assert_eq!(
        web_again.count,
        Some(web.count.unwrap() + 30),
        "{web_again:?}"
    );
    assert!(web_again.seq > web.seq);
    assert_eq!(web_again.first_at_ms, web.first_at_ms);
    assert!(
        web_again.message.ends_with(
            "and 29 more are pending: 0/9 nodes can run it: 9 have no free instance slots"
        ),
        "{}",
        web_again.message
    );
    // Deleted with its app, from the store too.
    cp.delete(AppKey::new("default", "api"), None)
        .await
        .unwrap();
    beat(&cp, &nodes).await;
    let left: Vec<String> = failed(&cp).into_iter().map(|e| e.object).collect();
    assert_eq!(left, ["app/web"]);
    cp.stop().await;
    drop(cp);
    let cp = control_plane(dir.path());
    let left: Vec<String> = failed(&cp).into_iter().map(|e| e.object).collect();
    assert_eq!(left, ["app/web"]);
}

/// A leader that lags behind its nodes (its cores taken: every node's
/// renewals reach it 2.5 s apart instead of 250 ms) judges none of them
/// lost for it, while a node that really fell silent is still lost, after
/// twice its lease. Without the hold, the live nodes whose renewal came
/// past the lease were lost.
#[tokio::test(start_paused = true)]
async fn a_lagging_leader_holds_leases_and_still_finds_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let live: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    for n in &live {
        register(&cp, n).await;
    }
    register(&cp, "dead").await;
    // Staggered: node i's renewals arrive at i * 250 ms, then every 2.5 s.
    let step = Duration::from_millis(250);
    let mut judged_dead = None;
    for k in 1..=40u32 {
        let renewing = &live[(k % 10) as usize];
        let generation = cp.snapshot().nodes[renewing].generation;
        let hb = Heartbeat {
            generation,
            instances: Vec::new(),
            brief: false,
        };
        cp.heartbeat(renewing.clone(), hb).await.unwrap();
        tokio::time::sleep(step).await;
        let snap = cp.snapshot();
        for n in &live {
            assert_eq!(
                snap.nodes[n].state,
                NodeState::Ready,
                "{n} judged at {:?}",
                step * k
            );
        }
        if judged_dead.is_none() && snap.nodes["dead"].state != NodeState::Ready {
            judged_dead = Some(step * k);
        }
    }
    let at = judged_dead.expect("the dead node was never judged");
    assert!(
        at > Duration::from_secs(2) && at <= Duration::from_millis(4_500),
        "the dead node was judged at {at:?}"
    );
    assert_eq!(cp.snapshot().nodes["dead"].state, NodeState::Lost);
}

/// Where the wall clock of [`control_plane_ticking`] starts.
const START_MS: u64 = 1_700_000_000_000;

/// A control plane whose loop ticks every `tick` (lease 2 s as usual).
fn control_plane_ticking(dir: &std::path::Path, tick: Duration) -> ControlPlane {
    let config = Config {
        clock: Arc::new(TokioClock::starting_at(START_MS)),
        tick,
        ..Config::default()
    };
    ControlPlane::start(Store::open(dir).unwrap(), config).unwrap()
}

/// When (ms after `since_ms`, wall time) the control plane judged `node`
/// lost, by its event.
fn lost_after(cp: &ControlPlane, node: &str, since_ms: u64) -> Option<u64> {
    cp.snapshot()
        .events
        .iter()
        .find(|e| e.reason == "NodeLost" && e.object == format!("node/{node}"))
        .map(|e| e.at_ms - since_ms)
}

/// Waits (up to 10 s of the test's time) until `node` is lost.
async fn wait_until_lost(cp: &ControlPlane, node: &str) {
    let mut snapshots = cp.watch();
    tokio::time::timeout(Duration::from_secs(10), async {
        snapshots
            .wait_for(|s| s.nodes[node].state == NodeState::Lost)
            .await
            .map(|_| ())
    })
    .await
    .unwrap_or_else(|_| panic!("{node} is never judged"))
    .unwrap();
}

/// A node is judged at its own lease's end, not at the loop's next tick:
/// with a tick of a second, a node heard at 0 is lost just after 2 s (the
/// tick after its lease is at 3 s).
#[tokio::test(start_paused = true)]
async fn a_node_whose_lease_ends_between_ticks_is_judged_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane_ticking(dir.path(), Duration::from_secs(1));
    let start = START_MS;
    register(&cp, "a").await;
    wait_until_lost(&cp, "a").await;
    let at = lost_after(&cp, "a", start).expect("no NodeLost event");
    assert!(
        (2_000..2_100).contains(&at),
        "a was judged {at} ms after it was heard"
    );
}

/// A renewal that arrives between ticks, before the lease ends, is taken
/// when the loop wakes to judge the node: the node is not lost then, and
/// is lost a lease after the renewal was taken once silent (not at a
/// tick).
#[tokio::test(start_paused = true)]
async fn a_renewal_just_before_the_lease_ends_keeps_the_node() {
    let dir = tempfile::tempdir().unwrap();
    // Ticks at 0 and 10 s only: every judgment here is a deadline's.
    let t0 = tokio::time::Instant::now();
    let cp = control_plane_ticking(dir.path(), Duration::from_secs(10));
    let start = START_MS;
    register(&cp, "a").await;
    let generation = cp.snapshot().nodes["a"].generation;
    // Renewals every 250 ms (as nodes send them), the last at 1,900 ms.
    for at in [250, 500, 750, 1_000, 1_250, 1_500, 1_750, 1_900] {
        tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
        assert!(cp.renew_lease("a", generation).unwrap().renewed);
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(cp.snapshot().nodes["a"].state, NodeState::Ready);
    assert!(lost_after(&cp, "a", start).is_none());
    wait_until_lost(&cp, "a").await;
    let at = lost_after(&cp, "a", start).expect("no NodeLost event");
    assert!(
        (3_900..4_100).contains(&at),
        "a was judged {at} ms after it registered (renewed at 1,900, taken at 2,001)"
    );
}

/// A command is not queued behind the nodes' reports: while thousands of
/// heartbeats wait to be taken (a large fleet reporting the instances it
/// just started), a command is taken within a few of them. Queued in one
/// line with the reports, it was answered only after every report sent
/// before it.
#[tokio::test]
async fn a_command_passes_a_flood_of_reports() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const FLOOD: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "a").await;
    let (sending, taken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for _ in 0..FLOOD {
        let (cp, sending, taken) = (cp.clone(), sending.clone(), taken.clone());
        tokio::spawn(async move {
            sending.fetch_add(1, Ordering::SeqCst);
            let hb = Heartbeat {
                generation: 0,
                instances: Vec::new(),
                brief: false,
            };
            cp.heartbeat("a".into(), hb).await.unwrap();
            taken.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Until every report of the flood is queued or waits for room.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sending.load(Ordering::SeqCst) < FLOOD || cp.reports.capacity() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never queued"
        );
        tokio::task::yield_now().await;
    }
    let missing = AppKey::new("default", "missing");
    let answer = cp.scale(missing, 1, None).await;
    let queued_before_it = taken.load(Ordering::SeqCst);
    assert!(
        matches!(answer, Err(ApiError::NotFound(_))),
        "{:?}",
        answer.err()
    );
    assert!(
        queued_before_it <= FLOOD / 2,
        "the command was answered once {queued_before_it} of {FLOOD} reports were queued"
    );
}

/// A node that holds the whole assignment of its generation is sent only
/// what changed since, and that made whole is the whole assignment, at
/// every step: placing, scaling up and down, a new revision rolled out,
/// a node drained, an app deleted. A quota change (its limits are in
/// every entry) or a node too far behind gets the whole assignment.
#[tokio::test(start_paused = true)]
async fn a_long_poll_that_holds_its_generation_gets_only_the_changes() {
    use shoal_api::protocol::HeartbeatResponse;
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    register(&cp, "a").await;
    register(&cp, "b").await;
    let nodes = ["a", "b"];
    let whole = |cp: &ControlPlane, n: &str| {
        let snap = cp.snapshot();
        snap.assignment(&snap.nodes[n])
    };
    let since = |cp: &ControlPlane, n: &str, have: u64| {
        let snap = cp.snapshot();
        snap.assignment_since(&snap.nodes[n], have)
    };
    let mut held: BTreeMap<&str, HeartbeatResponse> =
        nodes.iter().map(|n| (*n, whole(&cp, n))).collect();
    // Checks every node's changes against its whole assignment, and
    // returns how many entries the changes carried.
    let check = |cp: &ControlPlane, held: &mut BTreeMap<&str, HeartbeatResponse>| {
        let mut sent: usize = 0;
        for n in nodes {
            let now = whole(cp, n);
            let delta = since(cp, n, held[n].generation);
            assert_eq!(delta.generation, now.generation);
            if delta.since.is_some() {
                sent = sent.saturating_add(delta.instances.len());
            } else {
                sent = usize::MAX;
            }
            let made = delta.applied_to(Some(&held[n])).unwrap();
            assert_eq!(made, now, "node {n}");
            held.insert(n, now);
        }
        sent
    };
    let web = serde_json::json!({"name": "web", "module": "web.wasm", "replicas": 4});
    apply(&cp, web, b"\0asm\x01\0\0\0").await;
    apply(
        &cp,
        serde_json::json!({"name": "api", "module": "api.wasm"}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    serve_for(&cp, Duration::from_millis(500), &nodes).await;
    // The first generation this control plane gives a node: whole (what
    // changed before it led is not known to it).
    assert_eq!(check(&cp, &mut held), usize::MAX);
    let key = AppKey::new("default", "web");
    cp.scale(key.clone(), 5, None).await.unwrap();
    serve_for(&cp, Duration::from_millis(500), &nodes).await;
    assert_eq!(check(&cp, &mut held), 1, "one more instance: one entry");
    cp.scale(key.clone(), 3, None).await.unwrap();
    serve_for(&cp, Duration::from_millis(2000), &nodes).await;
    assert_eq!(cp.snapshot().of_app(&key).count(), 3);
    check(&cp, &mut held);
    apply(
        &cp,
        serde_json::json!({"name": "web", "module": "web.wasm", "replicas": 3, "env": {"V": "2"}}),
        b"\0asm\x01\0\0\0",
    )
    .await;
    for _ in 0..20 {
        serve_for(&cp, Duration::from_millis(250), &nodes).await;
        check(&cp, &mut held);
    }
    assert!(cp.snapshot().of_app(&key).all(|i| i.revision == 2));
    cp.drain("a".into(), None).await.unwrap();
    for _ in 0..20 {
        serve_for(&cp, Duration::from_millis(250), &nodes).await;
        check(&cp, &mut held);
    }
    assert_eq!(cp.snapshot().on_node("a").count(), 0);
    cp.delete(AppKey::new("default", "api"), None)
        .await
        .unwrap();
    serve_for(&cp, Duration::from_millis(2000), &nodes).await;
    assert!(check(&cp, &mut held) < usize::MAX);
    // The namespace's quota is in every entry: the whole assignment.
    let quota: shoal_api::quota::Quota =
        serde_json::from_value(serde_json::json!({"cpu-weight": 300})).unwrap();
    cp.set_quota("default".into(), Some(quota), None)
        .await
        .unwrap();
    serve_for(&cp, Duration::from_millis(250), &nodes).await;
    let delta = since(&cp, "b", held["b"].generation);
    assert_eq!(delta.since, None);
    assert!(delta.instances.iter().all(|a| a.cpu_weight == Some(300)));
    check(&cp, &mut held);
    // Too far behind: the whole assignment.
    let old = held["b"].clone();
    let far = old.generation + super::snapshot::AssignLog::KEEP as u64;
    for round in 0.. {
        assert!(
            round < 200,
            "b stays at generation {}",
            whole(&cp, "b").generation
        );
        if whole(&cp, "b").generation > far {
            break;
        }
        cp.scale(key.clone(), 3 + round % 2, None).await.unwrap();
        serve_for(&cp, Duration::from_millis(250), &nodes).await;
    }
    let delta = since(&cp, "b", old.generation);
    assert_eq!(delta.since, None);
    assert_eq!(delta.applied_to(Some(&old)).unwrap(), whole(&cp, "b"));
    // Changes from a generation the node does not hold are not made whole.
    let recent = since(&cp, "b", whole(&cp, "b").generation - 1);
    assert!(recent.since.is_some());
    assert_eq!(recent.applied_to(Some(&old)), None);
}
