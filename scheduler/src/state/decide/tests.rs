//! Table tests of the deciders: each row a snapshot, an input and the
//! changes (or the refusal) expected, written as short lines.

// A table's row type is the table's header, read once, right above it.
#![allow(clippy::type_complexity)]

use super::app::{self, ApplyInput};
use super::node::{self, Leases};
use super::{plan, rollout};
use crate::reconcile::{Action, DeleteReason, Plan};
use crate::state::{ApiError, Change, Snapshot};
use shoal_api::manifest::{AppManifest, TrafficTarget};
use shoal_api::objects::{AppKey, Instance, Node, NodeCapacity, NodeState, Phase, RolloutState};
use shoal_api::protocol::{Heartbeat, InstanceReport, RegisterRequest};
use shoal_api::rest::ApplyResult;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn key(name: &str) -> AppKey {
    AppKey::new("default", name)
}

fn manifest(json: serde_json::Value) -> AppManifest {
    serde_json::from_value(json).unwrap()
}

/// One line per change, as the tables expect them.
fn lines(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::PutApp(a) => {
                let rollout = match &a.rollout {
                    RolloutState::Progressing { .. } => "progressing",
                    RolloutState::Complete { .. } => "complete",
                    RolloutState::Failed { .. } => "failed",
                };
                format!(
                    "app {} x{} rev {} stable {} {rollout}",
                    a.key.name, a.replicas, a.current_revision, a.stable_revision
                )
            }
            Change::DeleteApp(k) => format!("delete app {}", k.name),
            Change::PutRevision(r) => format!("revision {} {}", r.app.name, r.number),
            Change::PutNode(n) => {
                let mut line = format!("node {} {:?}", n.name, n.state);
                if n.cordoned {
                    line.push_str(" cordoned");
                }
                if n.draining {
                    line.push_str(" draining");
                }
                line
            }
            Change::DeleteNode(n) => format!("delete node {n}"),
            Change::Heard(n) => format!("heard {}", n.name),
            Change::PutInstance(i) => {
                let mut line = format!(
                    "instance {} {:?} on {} ready {}",
                    i.id,
                    i.phase,
                    i.node.as_deref().unwrap_or("-"),
                    i.ready
                );
                if let Some(r) = &i.replaces {
                    line.push_str(&format!(" replaces {r}"));
                }
                line
            }
            Change::Observed(i) => format!("observed {} in flight {}", i.id, i.in_flight),
            Change::DeleteInstance(id) => format!("delete instance {id}"),
            Change::PutSecret(s) => {
                format!("secret {}/{} {}", s.namespace, s.name, s.keys.join(","))
            }
            Change::DeleteSecret(ns, name) => format!("delete secret {ns}/{name}"),
            Change::Bump(n) => format!("bump {n}"),
            Change::NextSeq(n) => format!("next seq {n}"),
            Change::ScaleMemory(k, _) => format!("memory {}", k.name),
            Change::AutoscaleView(k, v) => format!("view {} {}", k.name, v.desired),
            Change::Active { app, at_ms } => format!("active {} at {}", app.name, at_ms - T0),
            Change::SetQuota(ns, q) => format!(
                "quota {ns} {}",
                q.map(|q| q.summary()).unwrap_or_else(|| "removed".into())
            ),
            Change::Event(e) => format!("{}: {}", e.reason(), e.message()),
        })
        .collect()
}

/// Makes the changes to the snapshot the way the executor does (without a
/// store), so a table can start from an earlier decision.
fn run(snap: &mut Snapshot, changes: Vec<Change>) {
    for c in changes {
        match c {
            Change::PutApp(a) => {
                snap.apps.insert(a.key.clone(), *a);
            }
            Change::DeleteApp(k) => {
                snap.apps.remove(&k);
                snap.revisions = snap
                    .revisions
                    .iter()
                    .filter(|((a, _), _)| *a != k)
                    .map(|(key, r)| (key.clone(), r.clone()))
                    .collect();
            }
            Change::PutRevision(r) => {
                snap.revisions.insert((r.app.clone(), r.number), *r);
            }
            Change::PutNode(n) | Change::Heard(n) => {
                snap.nodes.insert(n.name.clone(), n);
            }
            Change::DeleteNode(n) => {
                snap.nodes.remove(&n);
            }
            Change::PutInstance(i) | Change::Observed(i) => {
                snap.put_instance(i);
            }
            Change::DeleteInstance(id) => {
                snap.instances.remove(&id);
            }
            Change::PutSecret(sec) => {
                snap.secrets
                    .insert((sec.namespace.clone(), sec.name.clone()), *sec);
            }
            Change::DeleteSecret(ns, name) => {
                snap.secrets.remove(&(ns, name));
            }
            _ => {}
        }
    }
}

fn apply_one(snap: &mut Snapshot, m: serde_json::Value, digest: &str, now_ms: u64) {
    let input = ApplyInput {
        apps: vec![(manifest(m), digest.into())],
        stored: BTreeSet::from([digest.to_string()]),
    };
    let (_, changes) = app::apply(snap, input, now_ms).unwrap();
    run(snap, changes);
}

fn node(name: &str, state: NodeState) -> Node {
    Node {
        name: name.into(),
        address: format!("http://{name}"),
        capacity: NodeCapacity {
            memory: 1 << 30,
            instances: 10,
        },
        labels: BTreeMap::new(),
        state,
        last_heartbeat_ms: T0,
        generation: 1,
        cordoned: false,
        draining: false,
    }
}

fn instance(id: &str, app: &str, revision: u64, node: &str, phase: Phase, ready: bool) -> Instance {
    let mut i = Instance::new(id.into(), key(app), revision, Some(node.into()), None, T0);
    i.phase = phase;
    i.ready = ready;
    i
}

/// `web` (2 replicas, revision 1 of module `aaa`, route `/web`) and
/// `api` (revisions 1 and 2, at 2, autoscaled between 1 and 5), node n1.
fn world() -> Snapshot {
    let mut snap = Snapshot::default();
    apply_one(
        &mut snap,
        serde_json::json!({"name": "web", "module": "w.wasm", "replicas": 2,
            "routes": [{"path": "/web"}]}),
        "aaa",
        T0,
    );
    let api = serde_json::json!({"name": "api", "module": "a.wasm",
        "autoscale": {"min": 1, "max": 5}});
    apply_one(&mut snap, api.clone(), "b1", T0);
    apply_one(&mut snap, api, "b2", T0);
    snap.nodes.insert("n1".into(), node("n1", NodeState::Ready));
    snap
}

fn code(e: &ApiError) -> String {
    format!("{}: {e}", e.code())
}

#[test]
fn apply_table() {
    let web = |extra: serde_json::Value| {
        let mut m = serde_json::json!({"name": "web", "module": "w.wasm", "replicas": 2,
            "routes": [{"path": "/web"}]});
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    };
    let cases: Vec<(
        &str,
        Vec<(serde_json::Value, &str)>,
        &[&str],
        Result<(ApplyResult, u64), &str>,
        &[&str],
    )> = vec![
        (
            "a new app is created at revision 1",
            vec![(
                serde_json::json!({"name": "new", "module": "n.wasm"}),
                "nnn",
            )],
            &["nnn"],
            Ok((ApplyResult::Created, 1)),
            &[
                "revision new 1",
                "app new x1 rev 1 stable 0 progressing",
                "Created: app default/new created at revision 1 with 1 replicas",
            ],
        ),
        (
            "the same manifest changes nothing",
            vec![(web(serde_json::json!({})), "aaa")],
            &[],
            Ok((ApplyResult::Unchanged, 1)),
            &[],
        ),
        (
            "another count scales",
            vec![(web(serde_json::json!({"replicas": 3})), "aaa")],
            &[],
            Ok((ApplyResult::Scaled, 1)),
            &[
                "app web x3 rev 1 stable 0 progressing",
                "Scaled: replicas 2 -> 3",
            ],
        ),
        (
            "other settings configure",
            vec![(
                web(serde_json::json!({"load-balancing": "round-robin"})),
                "aaa",
            )],
            &[],
            Ok((ApplyResult::Configured, 1)),
            &[
                "app web x2 rev 1 stable 0 progressing",
                "Configured: settings changed (load balancing, rollout or traffic)",
            ],
        ),
        (
            "another module is a new revision",
            vec![(web(serde_json::json!({})), "ccc")],
            &["ccc"],
            Ok((ApplyResult::Configured, 2)),
            &[
                "revision web 2",
                "app web x2 rev 2 stable 0 progressing",
                "RolloutStarted: rolling out revision 2 (from revision 1)",
            ],
        ),
        (
            "an autoscaled app keeps its count within bounds",
            vec![(
                serde_json::json!({"name": "api", "module": "a.wasm", "replicas": 9,
                "autoscale": {"min": 1, "max": 5}}),
                "b2",
            )],
            &[],
            Ok((ApplyResult::Unchanged, 2)),
            &[],
        ),
        (
            "a module never uploaded is refused",
            vec![(
                serde_json::json!({"name": "new", "module": "n.wasm"}),
                "zzz",
            )],
            &[],
            Err("invalid: app default/new: module sha256:zzz was not uploaded"),
            &[],
        ),
        (
            "a route another app serves is refused",
            vec![(
                serde_json::json!({"name": "new", "module": "n.wasm",
                "routes": [{"path": "/web"}]}),
                "nnn",
            )],
            &["nnn"],
            Err(
                "route_conflict: app default/new: route path \"/web\" (any host) is already served by app default/web; remove it from default/web first",
            ),
            &[],
        ),
        (
            "a split naming a missing revision is refused",
            vec![(
                web(serde_json::json!({"traffic": [{"revision": 7, "percent": 100}]})),
                "aaa",
            )],
            &[],
            Err("invalid: app default/web: traffic[0] names revision 7, which does not exist"),
            &[],
        ),
        (
            "the same app twice is refused",
            vec![
                (web(serde_json::json!({})), "aaa"),
                (web(serde_json::json!({})), "aaa"),
            ],
            &[],
            Err("invalid: app default/web appears twice"),
            &[],
        ),
    ];
    for (name, apps, uploaded, want, want_changes) in cases {
        let snap = world();
        let input = ApplyInput {
            apps: apps
                .into_iter()
                .map(|(m, d)| (manifest(m), d.to_string()))
                .collect(),
            stored: ["aaa", "b1", "b2"]
                .iter()
                .chain(uploaded)
                .map(|d| d.to_string())
                .collect(),
        };
        match (app::apply(&snap, input, T0 + 5), want) {
            (Ok((outcomes, changes)), Ok((result, revision))) => {
                assert_eq!(outcomes.len(), 1, "{name}");
                assert_eq!(outcomes[0].result, result, "{name}");
                assert_eq!(outcomes[0].revision, revision, "{name}");
                assert_eq!(lines(&changes), want_changes, "{name}");
            }
            (Err(e), Err(want)) => assert_eq!(code(&e), want, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

/// One app decider's answer: the changes, or the refusal.
fn outcome(r: Result<Vec<Change>, ApiError>) -> Result<Vec<String>, String> {
    r.map(|c| lines(&c)).map_err(|e| code(&e))
}

#[test]
fn scale_table() {
    let cases: &[(&str, &str, u32, Result<&[&str], &str>)] = &[
        (
            "web",
            "up",
            4,
            Ok(&[
                "app web x4 rev 1 stable 0 progressing",
                "Scaled: replicas 2 -> 4",
            ]),
        ),
        (
            "web",
            "to zero",
            0,
            Ok(&[
                "app web x0 rev 1 stable 0 progressing",
                "Scaled: replicas 2 -> 0",
            ]),
        ),
        ("web", "to the same count", 2, Ok(&[])),
        (
            "web",
            "beyond the maximum",
            10_001,
            Err("invalid: replicas 10001 is more than the maximum of 10000"),
        ),
        (
            "nope",
            "an unknown app",
            1,
            Err("not_found: app default/nope not found"),
        ),
        (
            "api",
            "outside the autoscaler's bounds",
            6,
            Err(
                "invalid: app default/api autoscales between 1 and 5 replicas, so 6 would not last; scale within those bounds or change [autoscale] in its manifest",
            ),
        ),
        (
            "api",
            "within them",
            3,
            Ok(&[
                "app api x3 rev 2 stable 0 progressing",
                "Scaled: replicas 1 -> 3",
            ]),
        ),
    ];
    let snap = world();
    for (app, name, replicas, want) in cases {
        let got = outcome(app::scale(&snap, &key(app), *replicas, T0));
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn delete_table() {
    let snap = world();
    let cases: &[(&str, Result<&[&str], &str>)] = &[
        (
            "web",
            Ok(&["delete app web", "Deleted: app default/web deleted"]),
        ),
        ("nope", Err("not_found: app default/nope not found")),
    ];
    for (app, want) in cases {
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(outcome(app::delete(&snap, &key(app))), want, "{app}");
    }
}

#[test]
fn rollback_table() {
    let snap = world();
    let cases: &[(&str, Option<u64>, Result<(u64, &[&str]), &str>)] = &[
        (
            "api",
            None,
            Ok((
                1,
                &[
                    "app api x1 rev 1 stable 0 progressing",
                    "RolloutStarted: rolling back to revision 1 (from revision 2)",
                ],
            )),
        ),
        (
            "api",
            Some(1),
            Ok((
                1,
                &[
                    "app api x1 rev 1 stable 0 progressing",
                    "RolloutStarted: rolling back to revision 1 (from revision 2)",
                ],
            )),
        ),
        (
            "api",
            Some(2),
            Err("invalid: app default/api already runs revision 2"),
        ),
        (
            "api",
            Some(9),
            Err("not_found: app default/api has no revision 9"),
        ),
        (
            "web",
            None,
            Err("invalid: app default/web has no revision before 1"),
        ),
        ("nope", None, Err("not_found: app default/nope not found")),
    ];
    for (app, to, want) in cases {
        let got = app::rollback(&snap, &key(app), *to, T0)
            .map(|(n, c)| (n, lines(&c)))
            .map_err(|e| code(&e));
        let want = want
            .map(|(n, l)| (n, l.iter().map(|s| s.to_string()).collect()))
            .map_err(String::from);
        assert_eq!(got, want, "{app} {to:?}");
    }
}

#[test]
fn traffic_table() {
    let t = |revision: Option<u64>, percent| TrafficTarget {
        revision,
        latest: revision.is_none(),
        percent,
    };
    let snap = world();
    let cases: Vec<(&str, Vec<TrafficTarget>, Result<&[&str], &str>)> = vec![
        (
            "a split",
            vec![t(Some(1), 90), t(None, 10)],
            Ok(&[
                "app api x1 rev 2 stable 0 progressing",
                "TrafficSplit: revision 1: 90%, latest: 10%",
            ]),
        ),
        (
            "none",
            vec![],
            Ok(&[
                "app api x1 rev 2 stable 0 progressing",
                "TrafficSplit: all traffic to the current revision",
            ]),
        ),
        (
            "not 100",
            vec![t(Some(1), 50), t(None, 10)],
            Err("invalid: app default/api: the traffic percents add up to 60, not 100"),
        ),
        (
            "a missing revision",
            vec![t(Some(3), 100)],
            Err("invalid: app default/api: traffic[0] names revision 3, which does not exist"),
        ),
        (
            "one revision twice",
            vec![t(Some(1), 50), t(Some(1), 50)],
            Err(
                "invalid: app default/api: traffic[1] names revision 1 again (traffic[0] has it); give each revision one share",
            ),
        ),
        (
            "neither revision nor latest",
            vec![TrafficTarget {
                revision: None,
                latest: false,
                percent: 100,
            }],
            Err("invalid: traffic[0]: name either a revision or latest"),
        ),
    ];
    for (name, traffic, want) in cases {
        let got = outcome(app::traffic(&snap, &key("api"), traffic, T0));
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn activation_table() {
    let mut snap = world();
    for a in ["web", "api"] {
        let changes = app::scale(&snap, &key(a), if a == "web" { 0 } else { 1 }, T0).unwrap();
        run(&mut snap, changes);
    }
    let mut at_zero = snap.clone();
    if let Some(a) = at_zero.apps.get_mut(&key("api")) {
        a.replicas = 0;
        if let Some(s) = a.settings.autoscale.as_mut() {
            s.min = 0;
        }
    }
    let cases: &[(&str, &Snapshot, &str, Result<&[&str], &str>)] = &[
        (
            "an app at zero starts one",
            &snap,
            "web",
            Ok(&[
                "active web at 7",
                "app web x1 rev 1 stable 0 progressing",
                "Activated: a request is waiting: scaling from 0 to 1",
            ]),
        ),
        (
            "a running app only counts the activity",
            &snap,
            "api",
            Ok(&["active api at 7"]),
        ),
        (
            "an autoscaled app at zero starts one",
            &at_zero,
            "api",
            Ok(&[
                "active api at 7",
                "app api x1 rev 2 stable 0 progressing",
                "Activated: a request is waiting: scaling from 0 to 1",
            ]),
        ),
        (
            "an unknown app",
            &snap,
            "nope",
            Err("not_found: app default/nope not found"),
        ),
    ];
    for (name, snap, app, want) in cases {
        let got = outcome(app::activate(snap, &key(app), T0 + 7));
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn register_table() {
    let mut snap = world();
    snap.nodes
        .insert("gone".into(), node("gone", NodeState::Lost));
    let req = |name: &str| RegisterRequest {
        name: name.into(),
        address: format!("http://{name}:1"),
        capacity: NodeCapacity {
            memory: 1 << 30,
            instances: 10,
        },
        labels: BTreeMap::new(),
    };
    let cases: &[(&str, Result<&[&str], &str>)] = &[
        (
            "n2",
            Ok(&[
                "Registered: node n2 registered at http://n2:1",
                "heard n2",
                "node n2 Ready",
            ]),
        ),
        ("n1", Ok(&["heard n1", "node n1 Ready"])),
        (
            "gone",
            Ok(&[
                "NodeReady: node gone is back",
                "heard gone",
                "node gone Ready",
            ]),
        ),
        ("", Err("invalid: node name is empty")),
    ];
    for (name, want) in cases {
        let got = outcome(node::register(&snap, req(name), T0));
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(got, want, "{name:?}");
    }
}

#[test]
fn heartbeat_table() {
    let mut snap = world();
    snap.nodes
        .insert("n2".into(), node("n2", NodeState::Unreachable));
    for i in [
        instance("web-0", "web", 1, "n1", Phase::Scheduled, false),
        instance("web-1", "web", 1, "n1", Phase::Running, true),
        instance("web-2", "web", 1, "n1", Phase::Terminating, false),
        instance("web-3", "web", 1, "n2", Phase::Running, true),
    ] {
        snap.put_instance(i);
    }
    let r = |id: &str, state, ready, restarts, in_flight| InstanceReport {
        id: id.into(),
        state,
        ready,
        restarts,
        message: Some("boom".into()).filter(|_| state == Phase::CrashLoopBackOff),
        in_flight,
    };
    let cases: Vec<(&str, &str, Vec<InstanceReport>, Result<&[&str], &str>)> = vec![
        ("nothing to say", "n1", vec![], Ok(&["heard n1"])),
        (
            "an instance starts",
            "n1",
            vec![r("web-0", Phase::Running, true, 0, 0)],
            Ok(&[
                "heard n1",
                "Started: web-0 started on n1",
                "instance web-0 Running on n1 ready true",
            ]),
        ),
        (
            "only requests in flight moved",
            "n1",
            vec![r("web-1", Phase::Running, true, 0, 4)],
            Ok(&["heard n1", "observed web-1 in flight 4"]),
        ),
        (
            "nothing moved",
            "n1",
            vec![r("web-1", Phase::Running, true, 0, 0)],
            Ok(&["heard n1"]),
        ),
        (
            "it restarted",
            "n1",
            vec![r("web-1", Phase::Running, true, 1, 0)],
            Ok(&[
                "heard n1",
                "Restarted: web-1 restarted on n1 (restarts: 1)",
                "instance web-1 Running on n1 ready true",
            ]),
        ),
        (
            "it keeps failing",
            "n1",
            vec![r("web-1", Phase::CrashLoopBackOff, false, 5, 0)],
            Ok(&[
                "heard n1",
                "BackOff: web-1 keeps failing on n1 (restarts: 5): boom",
                "instance web-1 CrashLoopBackOff on n1 ready false",
            ]),
        ),
        (
            "a draining instance stays out of service",
            "n1",
            vec![r("web-2", Phase::Running, true, 0, 1)],
            Ok(&["heard n1", "observed web-2 in flight 1"]),
        ),
        (
            "another node's instance is not its to report",
            "n1",
            vec![r("web-3", Phase::Failed, false, 0, 0)],
            Ok(&["heard n1"]),
        ),
        (
            "an unknown instance is ignored",
            "n1",
            vec![r("zzz", Phase::Running, true, 0, 0)],
            Ok(&["heard n1"]),
        ),
        (
            "an unreachable node is ready again",
            "n2",
            vec![],
            Ok(&[
                "heard n2",
                "NodeReady: node n2 is heartbeating again",
                "node n2 Ready",
            ]),
        ),
        (
            "an unknown node",
            "n9",
            vec![],
            Err("node_unknown: node n9 is not registered"),
        ),
    ];
    for (name, from, reports, want) in cases {
        let hb = Heartbeat {
            generation: 1,
            instances: reports,
            brief: false,
        };
        let got = outcome(node::heartbeat(&snap, from, hb, T0));
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(String::from);
        assert_eq!(got, want, "{name}");
    }
}

/// How often nodes renew, by fleet size: the configured interval until
/// the fleet would send more than the budget, then longer, up to a
/// quarter of the lease.
#[test]
fn renewals_are_spaced_out_as_the_fleet_grows() {
    let leases = Leases {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
    };
    let ms = |nodes, max| leases.renew_every(nodes, max).as_millis();
    let cases: &[(usize, u32, u128)] = &[
        (0, 10_000, 250),
        (1, 10_000, 250),
        (2_500, 10_000, 250),
        (2_501, 10_000, 260),
        (3_000, 10_000, 300),
        (5_000, 10_000, 500),
        // At most a quarter of the lease: four renewals a lease.
        (100_000, 10_000, 500),
        // No budget: always the configured interval.
        (100_000, 0, 250),
        (2, 4, 500),
    ];
    for &(nodes, max, want) in cases {
        assert_eq!(ms(nodes, max), want, "{nodes} nodes, {max} a second");
    }
    // A configured interval longer than a quarter of the lease stands.
    let slow = Leases {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_secs(1),
    };
    assert_eq!(slow.renew_every(50_000, 10_000), Duration::from_secs(1));
}

#[test]
fn lease_table() {
    let leases = Leases {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
    };
    let s = Duration::from_millis;
    // Nodes with their state and when they were last heard; now is 10 s.
    let cases: &[(&str, &[(&str, NodeState, u64)], &[&str])] = &[
        (
            "all heard within the lease",
            &[
                ("a", NodeState::Ready, 8_500),
                ("b", NodeState::Ready, 9_900),
            ],
            &[],
        ),
        (
            "exactly the lease is not past it",
            &[
                ("a", NodeState::Ready, 8_000),
                ("b", NodeState::Ready, 9_900),
                ("c", NodeState::Ready, 9_900),
            ],
            &[],
        ),
        (
            "one silent alone is lost",
            &[
                ("a", NodeState::Ready, 7_000),
                ("b", NodeState::Ready, 9_900),
                ("c", NodeState::Ready, 9_900),
            ],
            &[
                "node a Lost",
                "NodeLost: node a missed heartbeats for 2s; its instances will be placed elsewhere",
            ],
        ),
        (
            "most silent together are unreachable",
            &[
                ("a", NodeState::Ready, 7_000),
                ("b", NodeState::Ready, 7_000),
                ("c", NodeState::Ready, 9_900),
            ],
            &[
                "node a Unreachable",
                "NodeUnreachable: node a missed heartbeats for 2s, as did 2 of 3 nodes at once; the control plane may be cut off from them, so their instances stay where they are",
                "node b Unreachable",
                "NodeUnreachable: node b missed heartbeats for 2s, as did 2 of 3 nodes at once; the control plane may be cut off from them, so their instances stay where they are",
            ],
        ),
        (
            "one nearly out of its lease counts as silent with another",
            &[
                ("a", NodeState::Ready, 7_000),
                ("b", NodeState::Ready, 8_400),
                ("c", NodeState::Ready, 9_900),
            ],
            &[
                "node a Unreachable",
                "NodeUnreachable: node a missed heartbeats for 2s, as did 2 of 3 nodes at once; the control plane may be cut off from them, so their instances stay where they are",
            ],
        ),
        (
            "unreachable, then silent alone, is lost",
            &[
                ("a", NodeState::Unreachable, 1_000),
                ("b", NodeState::Ready, 9_900),
                ("c", NodeState::Ready, 9_900),
            ],
            &[
                "node a Lost",
                "NodeLost: node a missed heartbeats for 2s; its instances will be placed elsewhere",
            ],
        ),
        (
            "still unreachable changes nothing",
            &[
                ("a", NodeState::Unreachable, 1_000),
                ("b", NodeState::Unreachable, 1_000),
            ],
            &[],
        ),
        (
            "a lost node is not watched",
            &[("a", NodeState::Lost, 0), ("b", NodeState::Ready, 9_900)],
            &[],
        ),
    ];
    for (name, nodes, want) in cases {
        let mut snap = Snapshot::default();
        let mut seen = BTreeMap::new();
        for (n, state, heard) in *nodes {
            snap.nodes.insert(n.to_string(), node(n, *state));
            seen.insert(n.to_string(), s(*heard));
        }
        let got = lines(&node::expire_leases(
            &snap,
            &seen,
            s(10_000),
            leases,
            false,
            None,
        ));
        assert_eq!(got, *want, "{name}");
    }
    // A cut-off group heals a node at a time: one still silent when
    // another came back (at 9 s) is lost only a lease after that.
    let mut snap = Snapshot::default();
    let mut seen = BTreeMap::new();
    for (n, state, heard) in [
        ("a", NodeState::Ready, 9_900),
        ("b", NodeState::Unreachable, 1_000),
        ("c", NodeState::Ready, 9_900),
    ] {
        snap.nodes.insert(n.to_string(), node(n, state));
        seen.insert(n.to_string(), s(heard));
    }
    let judge = |now: u64| {
        lines(&node::expire_leases(
            &snap,
            &seen,
            s(now),
            leases,
            false,
            Some(s(9_000)),
        ))
    };
    assert_eq!(judge(10_000), Vec::<String>::new());
    assert_eq!(judge(11_000), Vec::<String>::new());
    assert_eq!(
        judge(11_001),
        [
            "node b Lost",
            "NodeLost: node b missed heartbeats for 2s; its instances will be placed elsewhere"
        ]
    );
    // A node never heard (none since a restart) is silent for ever.
    let mut snap = Snapshot::default();
    snap.nodes.insert("a".into(), node("a", NodeState::Ready));
    assert_eq!(
        lines(&node::expire_leases(
            &snap,
            &BTreeMap::new(),
            s(0),
            leases,
            false,
            None
        )),
        [
            "node a Lost",
            "NodeLost: node a missed heartbeats for 2s; its instances will be placed elsewhere"
        ]
    );
}

/// Whether the leader lags behind its nodes: renewals per node heard,
/// against one each heartbeat interval (250 ms, so four in the half-lease
/// window), and how late its own loop came.
#[test]
fn pace_tells_a_lagging_leader_from_dead_nodes() {
    let leases = Leases {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
    };
    let pace = |arrivals: u64, heard: usize, late_ms: u64| node::Pace {
        window: Duration::from_secs(1),
        arrivals,
        heard,
        loop_late: Duration::from_millis(late_ms),
    };
    let cases = [
        (
            "every node renews every 250 ms",
            pace(4_000, 1_000, 0),
            false,
        ),
        ("a round trip of 50 ms", pace(3_300, 1_000, 0), false),
        // Dead nodes are not among those heard in the window: the live
        // ones renew at the usual pace.
        ("a tenth of the nodes dead", pace(3_600, 900, 0), false),
        ("most nodes dead", pace(400, 100, 0), false),
        ("none heard (all dead, or cut off)", pace(0, 0, 0), false),
        ("half the renewals", pace(2_000, 1_000, 0), false),
        ("a 750 ms round trip: a third", pace(1_333, 1_000, 0), true),
        // Renewals 2.5 s apart: 2 in 5 nodes heard in the window, once.
        ("past the lease, some heard once", pace(400, 400, 0), true),
        ("its loop 400 ms late", pace(4_000, 1_000, 400), false),
        ("its loop 600 ms late", pace(4_000, 1_000, 600), true),
    ];
    for (name, p, lags) in cases {
        assert_eq!(p.lags(leases), lags, "{name}: {p:?}");
    }
}

/// While the leader lags, a node is judged after two leases, not one: a
/// live node whose renewals come late is not lost, a dead one still is.
#[test]
fn lease_expiry_is_held_while_the_leader_lags() {
    let leases = Leases {
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
    };
    let s = Duration::from_millis;
    let mut snap = Snapshot::default();
    let mut seen = BTreeMap::new();
    // Now is 10 s: "late" was heard 3.6 s ago, "dead" 4.5 s ago, the
    // others just now.
    for (n, heard) in [("dead", 5_500), ("late", 6_400), ("a", 9_900), ("b", 9_900)] {
        snap.nodes.insert(n.into(), node(n, NodeState::Ready));
        seen.insert(n.to_string(), s(heard));
    }
    assert_eq!(
        lines(&node::expire_leases(
            &snap,
            &seen,
            s(10_000),
            leases,
            false,
            None
        )),
        [
            "node dead Lost",
            "NodeLost: node dead missed heartbeats for 2s; its instances will be placed elsewhere",
            "node late Lost",
            "NodeLost: node late missed heartbeats for 2s; its instances will be placed elsewhere",
        ]
    );
    assert_eq!(
        lines(&node::expire_leases(
            &snap,
            &seen,
            s(10_000),
            leases,
            true,
            None
        )),
        [
            "node dead Lost",
            "NodeLost: node dead missed heartbeats for 4s; its instances will be placed elsewhere",
        ]
    );
    // Most nodes silent at once are still unreachable, not lost.
    seen.insert("a".into(), s(5_000));
    let held = lines(&node::expire_leases(
        &snap,
        &seen,
        s(10_000),
        leases,
        true,
        None,
    ));
    assert!(
        held.iter().all(|l| !l.contains("Lost")) && held.len() == 4,
        "{held:?}"
    );
}

#[test]
fn rollout_progress_table() {
    // `web` (2 replicas) started rolling out revision 1 at T0, with the
    // default progress deadline (a minute).
    let deadline = 60_000;
    let serving = |n: usize| -> Vec<Instance> {
        (0..n)
            .map(|k| instance(&format!("web-{k}"), "web", 1, "n1", Phase::Running, true))
            .collect()
    };
    let mut starting = serving(1);
    let mut stuck = instance("web-1", "web", 1, "n1", Phase::CrashLoopBackOff, false);
    stuck.reason = Some("trap".into());
    starting.push(stuck);
    let cases: Vec<(&str, Vec<Instance>, u64, Vec<&str>)> = vec![
        (
            "every replica serves: complete",
            serving(2),
            1_000,
            vec![
                "RolloutComplete: revision 1 serves every replica",
                "app web x2 rev 1 stable 1 complete",
            ],
        ),
        (
            "not yet, before the deadline",
            starting.clone(),
            deadline - 1,
            vec![],
        ),
        (
            "not at the deadline: failed",
            starting,
            deadline,
            vec![
                "RolloutFailed: revision 1 had 1/2 ready instances after 1m (web-1 CrashLoopBackOff: trap)",
                "app web x2 rev 1 stable 0 failed",
            ],
        ),
    ];
    for (name, instances, after, want) in cases {
        let mut snap = world();
        snap.apps = snap
            .apps
            .iter()
            .filter(|(k, _)| k.name == "web")
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        for i in instances {
            snap.put_instance(i);
        }
        let apps = snap.desired_apps();
        let got = lines(&rollout::progress(&snap, &apps, T0 + after));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn plan_changes_table() {
    let mut snap = world();
    for i in [
        instance("web-0", "web", 1, "n1", Phase::Running, true),
        instance("web-1", "web", 1, "n1", Phase::Terminating, false),
    ] {
        snap.put_instance(i);
    }
    let mut pending = Instance::new("web-2".into(), key("web"), 1, None, Some("full".into()), T0);
    pending.phase = Phase::Pending;
    snap.put_instance(pending);
    let cases: Vec<(&str, Vec<Action>, Vec<&str>)> = vec![
        ("nothing to do", vec![], vec![]),
        (
            "a new instance on a node",
            vec![Action::Create {
                id: "web-9".into(),
                app: key("web"),
                revision: 1,
                node: Some("n1".into()),
                reason: None,
                replaces: None,
            }],
            vec![
                "Scheduled: web-9 (revision 1) placed on n1",
                "bump n1",
                "instance web-9 Scheduled on n1 ready false",
                "next seq 10",
            ],
        ),
        (
            "a new instance that fits nowhere",
            vec![Action::Create {
                id: "web-9".into(),
                app: key("web"),
                revision: 1,
                node: None,
                reason: Some("no node has 1 GiB".into()),
                replaces: None,
            }],
            vec![
                "instance web-9 Pending on - ready false",
                "FailedScheduling: web-9 is pending: no node has 1 GiB",
                "next seq 10",
            ],
        ),
        (
            "an existing id is not created again",
            vec![Action::Create {
                id: "web-0".into(),
                app: key("web"),
                revision: 1,
                node: Some("n1".into()),
                reason: None,
                replaces: None,
            }],
            vec!["next seq 10"],
        ),
        (
            "a pending instance is placed",
            vec![Action::Place {
                id: "web-2".into(),
                node: "n1".into(),
            }],
            vec![
                "Scheduled: web-2 placed on n1",
                "instance web-2 Scheduled on n1 ready false",
                "bump n1",
                "next seq 10",
            ],
        ),
        (
            "still pending, for a new reason",
            vec![Action::StillPending {
                id: "web-2".into(),
                reason: "no node matches".into(),
            }],
            vec![
                "instance web-2 Pending on - ready false",
                "FailedScheduling: web-2 is pending: no node matches",
                "next seq 10",
            ],
        ),
        (
            "a serving instance drains",
            vec![Action::Drain {
                id: "web-0".into(),
                why: DeleteReason::ScaledDown,
            }],
            vec![
                "Draining: web-0 left the route table (scaled down); finishing its requests",
                "instance web-0 Terminating on n1 ready false",
                "bump n1",
                "next seq 10",
            ],
        ),
        (
            "a drained instance goes",
            vec![Action::Delete {
                id: "web-1".into(),
                why: DeleteReason::Drained,
            }],
            vec![
                "Killing: stopping web-1: drained",
                "delete instance web-1",
                "bump n1",
                "next seq 10",
            ],
        ),
        (
            "a gone instance is not deleted twice",
            vec![
                Action::Delete {
                    id: "web-1".into(),
                    why: DeleteReason::Drained,
                },
                Action::Delete {
                    id: "web-1".into(),
                    why: DeleteReason::Drained,
                },
            ],
            vec![
                "Killing: stopping web-1: drained",
                "delete instance web-1",
                "bump n1",
                "next seq 10",
            ],
        ),
    ];
    for (name, actions, want) in cases {
        let plan = Plan {
            actions,
            next_seq: 10,
            held: Vec::new(),
        };
        let changes = plan::changes(&snap, plan, T0 + 1);
        assert_eq!(lines(&changes), want, "{name}");
        if let Some(Change::PutInstance(i)) = changes
            .iter()
            .find(|c| matches!(c, Change::PutInstance(i) if i.phase == Phase::Terminating))
        {
            assert_eq!(i.terminating_since_ms, Some(T0 + 1), "{name}");
        }
    }
}

/// The reconcile decider, end to end on a snapshot: an app with no
/// instances gets them on the ready node, and deciding again on the
/// result changes nothing.
#[test]
fn reconcile_places_then_settles() {
    let mut snap = world();
    snap.apps = snap
        .apps
        .iter()
        .filter(|(k, _)| k.name == "web")
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    let clock = crate::reconcile::Clock {
        now_ms: T0,
        drain_delay_ms: 1000,
    };
    let apps = snap.desired_apps();
    let p = plan::plan(&snap, &apps, 0, clock);
    let changes = plan::changes(&snap, p.clone(), T0);
    assert_eq!(
        lines(&changes),
        [
            "Scheduled: web-0 (revision 1) placed on n1",
            "bump n1",
            "instance web-0 Scheduled on n1 ready false",
            "Scheduled: web-1 (revision 1) placed on n1",
            "bump n1",
            "instance web-1 Scheduled on n1 ready false",
            "next seq 2",
        ]
    );
    run(&mut snap, changes);
    let again = plan::plan(&snap, &apps, p.next_seq, clock);
    assert!(plan::changes(&snap, again, T0).is_empty());
}

#[test]
fn autoscale_table() {
    use crate::autoscale::{Sample, ScaleState};
    use std::collections::HashMap;
    let snap = world();
    let sample = |concurrency: f64| Sample {
        at_ms: T0,
        concurrency,
        requests: 1,
    };
    let seen_view = {
        let mut s = snap.clone();
        let changes = super::autoscale::autoscale(&s, &HashMap::new(), &HashMap::new(), T0);
        for c in changes {
            if let Change::AutoscaleView(k, v) = c {
                s.autoscale.insert(k, v);
            }
        }
        s
    };
    // `api` runs 1 replica, between 1 and 5, at 10 requests in flight per
    // instance; `web` has no autoscaling and is never decided.
    let cases: Vec<(&str, &Snapshot, Vec<Sample>, Vec<&str>)> = vec![
        (
            "no load: the view is published once",
            &snap,
            vec![],
            vec!["memory api", "view api 1"],
        ),
        (
            "no load, nothing new",
            &seen_view,
            vec![],
            vec!["memory api"],
        ),
        (
            "steady load within one instance: a new view",
            &seen_view,
            vec![sample(8.0)],
            vec!["memory api", "view api 1"],
        ),
        (
            "a burst scales up to the maximum",
            &snap,
            vec![sample(300.0)],
            vec![
                "memory api",
                "view api 5",
                "app api x5 rev 2 stable 0 progressing",
                "AutoScaled: replicas 1 -> 5: panic: concurrency 300.0 over the last 6s needs 30 at 10 per instance; bounded to 5 (min 1, max 5)",
            ],
        ),
    ];
    for (name, snap, samples, want) in cases {
        let load = HashMap::from([(key("api"), samples)]);
        let memory: HashMap<AppKey, ScaleState> = HashMap::new();
        let got = lines(&super::autoscale::autoscale(snap, &load, &memory, T0 + 500));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn cordon_drain_and_delete_table() {
    let mut snap = world();
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    let mut n3 = node("n3", NodeState::Ready);
    n3.cordoned = true;
    n3.draining = true;
    snap.nodes.insert("n3".into(), n3);
    let i = instance("web-0", "web", 1, "n1", Phase::Running, true);
    snap.put_instance(i);
    let cases: &[(&str, &str, &str, Result<&[&str], &str>)] = &[
        (
            "cordon",
            "cordon",
            "n1",
            Ok(&[
                "node n1 Ready cordoned",
                "NodeCordoned: node n1 cordoned: nothing new is placed on it",
            ]),
        ),
        ("cordon again", "cordon", "n3", Ok(&[])),
        ("uncordon what is not cordoned", "uncordon", "n2", Ok(&[])),
        (
            "uncordon cancels a drain",
            "uncordon",
            "n3",
            Ok(&[
                "node n3 Ready",
                "NodeUncordoned: node n3 uncordoned: instances may be placed on it again; its drain is cancelled",
            ]),
        ),
        (
            "drain",
            "drain",
            "n1",
            Ok(&[
                "node n1 Ready cordoned draining",
                "NodeDraining: draining node n1: its 1 instance(s) move elsewhere, each once its replacement is ready",
            ]),
        ),
        ("drain again", "drain", "n3", Ok(&[])),
        (
            "delete",
            "delete",
            "n1",
            Ok(&[
                "delete node n1",
                "NodeDeleted: node n1 deleted; its 1 instance(s) will be placed elsewhere; its credential is revoked",
                "Killing: stopping web-0: its node was deleted",
                "delete instance web-0",
            ]),
        ),
        (
            "an unknown node",
            "cordon",
            "n9",
            Err("not_found: node n9 not found"),
        ),
        (
            "an unknown node is not drained",
            "drain",
            "n9",
            Err("not_found: node n9 not found"),
        ),
        (
            "an unknown node is not deleted",
            "delete",
            "n9",
            Err("not_found: node n9 not found"),
        ),
    ];
    for (name, op, n, want) in cases {
        let got = outcome(match *op {
            "cordon" => node::cordon(&snap, n, true),
            "uncordon" => node::cordon(&snap, n, false),
            "drain" => node::drain(&snap, n),
            "delete" => node::delete(&snap, n, true),
            other => panic!("{other}"),
        });
        let want = want
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{name}");
    }
}

const CLOCK: crate::reconcile::Clock = crate::reconcile::Clock {
    now_ms: T0,
    drain_delay_ms: 1000,
};

/// The plan for `snap` at `T0 + after` ms, as lines, and the snapshot
/// after it.
fn plan_at(snap: &mut Snapshot, seq: u64, after: u64) -> Vec<String> {
    let clock = crate::reconcile::Clock {
        now_ms: T0 + after,
        ..CLOCK
    };
    let apps = snap.desired_apps();
    let p = plan::plan(snap, &apps, seq, clock);
    let changes = plan::changes(snap, p, T0 + after);
    let l = lines(&changes);
    run(snap, changes);
    l
}

fn serve(snap: &mut Snapshot, id: &str) {
    if let Some(i) = snap.instances.get_mut(id) {
        i.phase = Phase::Running;
        i.ready = true;
    }
}

#[test]
fn a_cordoned_node_gets_no_new_instances_and_keeps_its_own() {
    let mut snap = world();
    snap.apps = snap
        .apps
        .iter()
        .filter(|(k, _)| k.name == "web")
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    snap.nodes.get_mut("n1").unwrap().cordoned = true;
    // Nowhere else to go: pending, and the reason says why.
    assert_eq!(
        plan_at(&mut snap, 0, 0),
        [
            "instance web-0 Pending on - ready false",
            "instance web-1 Pending on - ready false",
            "FailedScheduling: web-0 and 1 more are pending: 0/1 nodes can run it: 1 cordoned",
            "next seq 2",
        ]
    );
    snap.instances.clear();
    // What runs on the cordoned node stays; what is missing goes to n2.
    let i = instance("web-0", "web", 1, "n1", Phase::Running, true);
    snap.put_instance(i);
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    assert_eq!(
        plan_at(&mut snap, 1, 0),
        [
            "Scheduled: web-1 (revision 1) placed on n2",
            "bump n2",
            "instance web-1 Scheduled on n2 ready false",
            "next seq 2",
        ]
    );
    serve(&mut snap, "web-1");
    assert_eq!(plan_at(&mut snap, 2, 0), Vec::<String>::new());
    assert!(node::drains_done(&snap).is_empty());
}

/// A drain starts the replacements first; each instance of the node
/// leaves the route table only once a replacement serves, and the drain
/// is over once the node is empty.
#[test]
fn a_drain_places_replacements_before_its_instances_leave() {
    let mut snap = world();
    snap.apps = snap
        .apps
        .iter()
        .filter(|(k, _)| k.name == "web")
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    for id in ["web-0", "web-1"] {
        let i = instance(id, "web", 1, "n1", Phase::Running, true);
        snap.put_instance(i);
    }
    let starting = instance("web-9", "other", 1, "n1", Phase::Starting, false);
    snap.put_instance(starting);
    let drain = node::drain(&snap, "n1").unwrap();
    run(&mut snap, drain);
    assert_eq!(
        plan_at(&mut snap, 2, 0),
        [
            // web-9's app is gone: it goes, as it would anyway.
            "Killing: stopping web-9: app deleted",
            "delete instance web-9",
            "bump n1",
            "Scheduled: web-2 (revision 1) placed on n2",
            "bump n2",
            "instance web-2 Scheduled on n2 ready false",
            "Scheduled: web-3 (revision 1) placed on n2",
            "bump n2",
            "instance web-3 Scheduled on n2 ready false",
            "next seq 4",
        ]
    );
    // Nothing serves elsewhere yet: both stay.
    assert_eq!(plan_at(&mut snap, 4, 10), Vec::<String>::new());
    serve(&mut snap, "web-2");
    assert_eq!(
        plan_at(&mut snap, 4, 20),
        [
            "Draining: web-0 left the route table (its node is being drained); finishing its requests",
            "instance web-0 Terminating on n1 ready false",
            "bump n1",
            "next seq 4",
        ]
    );
    let status = snap.drain_status("n1").unwrap();
    assert!(status.draining && !status.done() && status.blocked.is_empty());
    serve(&mut snap, "web-3");
    assert_eq!(
        plan_at(&mut snap, 4, 30),
        [
            "Draining: web-1 left the route table (its node is being drained); finishing its requests",
            "instance web-1 Terminating on n1 ready false",
            "bump n1",
            "next seq 4",
        ]
    );
    assert!(node::drains_done(&snap).is_empty());
    // After the drain delay, idle: they stop, and the drain is over.
    assert_eq!(
        plan_at(&mut snap, 4, 2000),
        [
            "Killing: stopping web-0: drained",
            "delete instance web-0",
            "bump n1",
            "Killing: stopping web-1: drained",
            "delete instance web-1",
            "bump n1",
            "next seq 4",
        ]
    );
    assert!(snap.drain_status("n1").unwrap().done());
    assert_eq!(
        lines(&node::drains_done(&snap)),
        [
            "node n1 Ready cordoned",
            "NodeDrained: node n1 is drained: it runs nothing and stays cordoned",
        ]
    );
}

/// A starting instance on a draining node serves nothing: it goes at
/// once. With nowhere to place replacements, the serving ones stay and
/// the drain says what blocks it.
#[test]
fn a_drain_with_nowhere_to_go_keeps_serving_and_says_why() {
    let mut snap = world();
    snap.apps = snap
        .apps
        .iter()
        .filter(|(k, _)| k.name == "web")
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    let i = instance("web-0", "web", 1, "n1", Phase::Running, true);
    snap.put_instance(i);
    let i = instance("web-1", "web", 1, "n1", Phase::Starting, false);
    snap.put_instance(i);
    let drain = node::drain(&snap, "n1").unwrap();
    run(&mut snap, drain);
    assert_eq!(
        plan_at(&mut snap, 2, 0),
        [
            "Killing: stopping web-1: its node is being drained",
            "delete instance web-1",
            "bump n1",
            "instance web-2 Pending on - ready false",
            "instance web-3 Pending on - ready false",
            "FailedScheduling: web-2 and 1 more are pending: 0/1 nodes can run it: 1 cordoned",
            "next seq 4",
        ]
    );
    assert_eq!(plan_at(&mut snap, 4, 5000), Vec::<String>::new());
    let status = snap.drain_status("n1").unwrap();
    assert_eq!(status.instances.len(), 1);
    assert_eq!(
        status.blocked,
        [
            "app default/web: web-2 is pending: 0/1 nodes can run it: 1 cordoned",
            "app default/web: web-3 is pending: 0/1 nodes can run it: 1 cordoned",
        ]
    );
    // Room elsewhere, but a replacement keeps failing there: the drain
    // says that too.
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    plan_at(&mut snap, 4, 5100);
    serve(&mut snap, "web-3");
    if let Some(i) = snap.instances.get_mut("web-2") {
        i.phase = Phase::CrashLoopBackOff;
        i.reason = Some("trap".into());
    }
    assert_eq!(
        snap.drain_status("n1").unwrap().blocked,
        ["app default/web: web-2 on n2 is CrashLoopBackOff: trap"]
    );
}

/// `world()` with a quota on its namespace (`default`, which holds 2 apps,
/// 3 instances and 192 MiB: web 2 x 64 MiB, api 1 x 64 MiB).
fn with_quota(quota: serde_json::Value) -> Snapshot {
    let mut snap = world();
    snap.quotas
        .insert("default".into(), serde_json::from_value(quota).unwrap());
    snap
}

fn apply_outcome(snap: &Snapshot, m: serde_json::Value, digest: &str) -> Result<String, String> {
    let input = ApplyInput {
        apps: vec![(manifest(m), digest.into())],
        stored: BTreeSet::from([digest.to_string()]),
    };
    app::apply(snap, input, T0)
        .map(|(out, _)| format!("{:?}", out[0].result))
        .map_err(|e| code(&e))
}

#[test]
fn quota_table_for_apply() {
    let web = |replicas: u32, digest_extra: serde_json::Value| {
        let mut m = serde_json::json!({"name": "web", "module": "w.wasm", "replicas": replicas,
            "routes": [{"path": "/web"}]});
        if let (Some(m), Some(extra)) = (m.as_object_mut(), digest_extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    };
    let new_app = serde_json::json!({"name": "new", "module": "n.wasm"});
    let none = serde_json::json!({});
    let cases: Vec<(
        &str,
        serde_json::Value,
        serde_json::Value,
        &str,
        Result<&str, &str>,
    )> = vec![
        (
            "a new app within the apps quota",
            serde_json::json!({"apps": 3}),
            new_app.clone(),
            "nnn",
            Ok("Created"),
        ),
        (
            "a new app one past the apps quota",
            serde_json::json!({"apps": 2}),
            new_app.clone(),
            "nnn",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": apps is limited to 2, and this asks for 3 (in use: 2)",
            ),
        ),
        (
            "instances at the limit",
            serde_json::json!({"instances": 5}),
            web(4, none.clone()),
            "aaa",
            Ok("Scaled"),
        ),
        (
            "instances one past the limit",
            serde_json::json!({"instances": 5}),
            web(5, none.clone()),
            "aaa",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": instances is limited to 5, and this asks for 6 (in use: 3)",
            ),
        ),
        (
            "memory at the limit",
            serde_json::json!({"memory": "320MiB"}),
            web(4, none.clone()),
            "aaa",
            Ok("Scaled"),
        ),
        (
            "memory one instance past the limit",
            serde_json::json!({"memory": "320MiB"}),
            web(5, none.clone()),
            "aaa",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": memory is limited to 320MiB, and this asks for 384MiB (in use: 192MiB)",
            ),
        ),
        (
            "a new revision that reserves more memory counts it",
            serde_json::json!({"memory": "320MiB"}),
            web(2, serde_json::json!({"limits": {"memory": "128MiB"}})),
            "aaa",
            Ok("Configured"),
        ),
        (
            "and one byte more does not fit",
            serde_json::json!({"memory": "320MiB"}),
            web(2, serde_json::json!({"limits": {"memory": "129MiB"}})),
            "aaa",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": memory is limited to 320MiB, and this asks for 322MiB (in use: 192MiB)",
            ),
        ),
        (
            "a quota lowered below what runs: the same apply still passes",
            serde_json::json!({"instances": 1, "memory": "1MiB"}),
            web(2, none.clone()),
            "aaa",
            Ok("Unchanged"),
        ),
        (
            "and so does a new revision that asks for no more",
            serde_json::json!({"instances": 1}),
            web(2, none.clone()),
            "bbb",
            Ok("Configured"),
        ),
        (
            "but not growth",
            serde_json::json!({"instances": 1}),
            web(3, none.clone()),
            "aaa",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": instances is limited to 1, and this asks for 4 (in use: 3)",
            ),
        ),
        (
            "a sandbox at the largest memory allowed",
            serde_json::json!({"max-memory": "64MiB"}),
            web(2, serde_json::json!({"limits": {"memory": "64MiB"}})),
            "bbb",
            Ok("Configured"),
        ),
        (
            "a sandbox past the largest memory allowed",
            serde_json::json!({"max-memory": "64MiB"}),
            web(2, serde_json::json!({"limits": {"memory": "65MiB"}})),
            "bbb",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": max-memory is limited to 64MiB, and this asks for limits.memory = 65MiB",
            ),
        ),
        (
            "the default timeout is past a lower largest timeout",
            serde_json::json!({"max-timeout": "10s"}),
            web(2, none.clone()),
            "bbb",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": max-timeout is limited to 10s, and this asks for limits.timeout = 30s",
            ),
        ),
        (
            "so the manifest sets one within it",
            serde_json::json!({"max-timeout": "10s"}),
            web(2, serde_json::json!({"limits": {"timeout": "10s"}})),
            "bbb",
            Ok("Configured"),
        ),
        (
            "a body past the largest allowed",
            serde_json::json!({"max-body": "1MiB"}),
            web(2, serde_json::json!({"limits": {"max-body": "2MiB"}})),
            "bbb",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": max-body is limited to 1MiB, and this asks for limits.max-body = 2MiB",
            ),
        ),
        (
            "an unchanged revision keeps running after the limit is lowered",
            serde_json::json!({"max-timeout": "1s"}),
            web(2, none.clone()),
            "aaa",
            Ok("Unchanged"),
        ),
        (
            "an app's gateway limits at the quota's bound: no new revision",
            serde_json::json!({"app-concurrency": 10, "app-rate": 5}),
            web(
                2,
                serde_json::json!({"limits": {"gateway-concurrency": 10, "gateway-rate": 5}}),
            ),
            "aaa",
            Ok("Configured"),
        ),
        (
            "an app's gateway concurrency one past the quota's bound",
            serde_json::json!({"app-concurrency": 10, "app-rate": 5}),
            web(
                2,
                serde_json::json!({"limits": {"gateway-concurrency": 11}}),
            ),
            "aaa",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": app-concurrency is limited to 10, and this asks for limits.gateway-concurrency = 11",
            ),
        ),
        (
            "an app's gateway rate one past the quota's bound, with a new revision",
            serde_json::json!({"app-rate": 5}),
            web(2, serde_json::json!({"limits": {"gateway-rate": 6}})),
            "a2",
            Err(
                "quota_exceeded: quota exceeded in namespace \"default\": app-rate is limited to 5, and this asks for limits.gateway-rate = 6",
            ),
        ),
        (
            "an app that sets no gateway limits gets the quota's",
            serde_json::json!({"app-concurrency": 10, "app-rate": 5}),
            new_app.clone(),
            "nnn",
            Ok("Created"),
        ),
        (
            "another namespace's quota does not apply",
            serde_json::json!({"apps": 0}),
            serde_json::json!({"name": "other", "namespace": "team-b", "module": "o.wasm"}),
            "ooo",
            Ok("Created"),
        ),
    ];
    for (name, quota, m, digest, want) in cases {
        let got = apply_outcome(&with_quota(quota), m, digest);
        assert_eq!(got, want.map(String::from).map_err(String::from), "{name}");
    }
}

#[test]
fn quota_table_for_scale_rollback_and_activation() {
    let scale = |quota: serde_json::Value, app: &str, replicas: u32| {
        outcome(app::scale(&with_quota(quota), &key(app), replicas, T0)).map(|l| l.len())
    };
    assert_eq!(scale(serde_json::json!({"instances": 4}), "web", 3), Ok(2));
    assert_eq!(
        scale(serde_json::json!({"instances": 4}), "web", 4),
        Err("quota_exceeded: quota exceeded in namespace \"default\": instances is limited to 4, and this asks for 5 (in use: 3)".into())
    );
    assert_eq!(
        scale(serde_json::json!({"memory": "256MiB"}), "api", 3),
        Err("quota_exceeded: quota exceeded in namespace \"default\": memory is limited to 256MiB, and this asks for 320MiB (in use: 192MiB)".into())
    );
    // Over a lowered quota: shrinking is always allowed.
    assert_eq!(scale(serde_json::json!({"instances": 1}), "web", 1), Ok(2));

    // Rolling back to a revision that reserves more memory is growth.
    let mut snap = with_quota(serde_json::json!({"memory": "150MiB"}));
    apply_one(
        &mut snap,
        serde_json::json!({"name": "web", "module": "w.wasm", "replicas": 2,
            "routes": [{"path": "/web"}], "limits": {"memory": "32MiB"}}),
        "small",
        T0,
    );
    assert_eq!(
        app::rollback(&snap, &key("web"), None, T0).map(|(r, _)| r).map_err(|e| code(&e)),
        Err("quota_exceeded: quota exceeded in namespace \"default\": memory is limited to 150MiB, and this asks for 192MiB (in use: 128MiB)".to_string())
    );

    // An app at zero is not woken past its namespace's quota.
    let mut snap = with_quota(serde_json::json!({"instances": 3}));
    let changes = app::scale(&snap, &key("web"), 0, T0).unwrap();
    run(&mut snap, changes);
    let changes = app::scale(&snap, &key("api"), 3, T0).unwrap();
    run(&mut snap, changes);
    assert_eq!(
        outcome(app::activate(&snap, &key("web"), T0)),
        Err("quota_exceeded: quota exceeded in namespace \"default\": instances is limited to 3, and this asks for 4 (in use: 3)".into())
    );
}

#[test]
fn the_autoscaler_is_held_to_the_quota_and_says_so_once() {
    use crate::autoscale::{Sample, ScaleState};
    use std::collections::HashMap;
    // web holds 2 of 4 instances: api (at 1, up to 5) may grow to 2.
    let mut snap = with_quota(serde_json::json!({"instances": 4}));
    let burst = vec![Sample {
        at_ms: T0,
        concurrency: 300.0,
        requests: 1,
    }];
    let load = HashMap::from([(key("api"), burst)]);
    let memory: HashMap<AppKey, ScaleState> = HashMap::new();
    let changes = super::autoscale::autoscale(&snap, &load, &memory, T0 + 500);
    assert_eq!(
        lines(&changes),
        vec![
            "memory api",
            "view api 2",
            "QuotaHeld: autoscaler held at 2 by the quota on instances (4), wanted 5",
            "app api x2 rev 2 stable 0 progressing",
            "AutoScaled: replicas 1 -> 2: panic: concurrency 300.0 over the last 6s needs 30 at 10 per instance; bounded to 5 (min 1, max 5)",
        ]
    );
    let held = changes.iter().find_map(|c| match c {
        Change::AutoscaleView(_, v) => v.held.clone(),
        _ => None,
    });
    assert_eq!(
        held.as_deref(),
        Some("held at 2 by the quota on instances (4), wanted 5")
    );
    for c in &changes {
        if let Change::AutoscaleView(k, v) = c {
            snap.autoscale.insert(k.clone(), v.clone());
        }
    }
    run(&mut snap, changes);
    // Still held at the next pass: no new event, no change of count.
    let again = lines(&super::autoscale::autoscale(
        &snap,
        &load,
        &memory,
        T0 + 1000,
    ));
    assert_eq!(again, vec!["memory api"]);
}

#[test]
fn a_namespace_cannot_take_or_nest_in_another_namespaces_routes() {
    // `default/web` serves `/web` on any host.
    let snap = world();
    let other = |routes: serde_json::Value| serde_json::json!({"name": "x", "namespace": "team-b", "module": "x.wasm", "routes": routes});
    let refused = |path: &str, host: Option<&str>| {
        let what = match host {
            Some(h) => format!("host {h:?} path {path:?}"),
            None => format!("path {path:?} (any host)"),
        };
        Err(format!(
            "route_conflict: app team-b/x: route {what} overlaps a route of another namespace; a namespace serves only paths no other namespace serves on the same host"
        ))
    };
    let cases: Vec<(&str, serde_json::Value, Result<String, String>)> = vec![
        (
            "the same route",
            serde_json::json!([{"path": "/web"}]),
            refused("/web", None),
        ),
        (
            "a path under it",
            serde_json::json!([{"path": "/web/login"}]),
            refused("/web/login", None),
        ),
        (
            "a prefix over it",
            serde_json::json!([{"path": "/"}]),
            refused("/", None),
        ),
        (
            "a sibling path",
            serde_json::json!([{"path": "/webx"}]),
            Ok("Created".into()),
        ),
        (
            "the same path on a host of its own",
            serde_json::json!([{"path": "/web", "host": "b.example"}]),
            Ok("Created".into()),
        ),
    ];
    for (name, routes, want) in cases {
        assert_eq!(apply_outcome(&snap, other(routes), "xxx"), want, "{name}");
    }
    // Within one namespace, apps may still nest (the longest prefix wins).
    let inner = serde_json::json!({"name": "inner", "module": "i.wasm", "routes": [{"path": "/web/inner"}]});
    assert_eq!(apply_outcome(&snap, inner, "iii"), Ok("Created".into()));
}

/// `web` (2 replicas, its rollout complete) with both replicas serving on
/// n1, and n2 ready and empty: as after n2 was lost and came back.
fn piled() -> Snapshot {
    let mut snap = world();
    snap.apps = snap
        .apps
        .iter()
        .filter(|(k, _)| k.name == "web")
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    if let Some(a) = snap.apps.get_mut(&key("web")) {
        a.rollout = RolloutState::Complete { at_ms: T0 };
        a.stable_revision = 1;
    }
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    for id in ["web-0", "web-1"] {
        let i = instance(id, "web", 1, "n1", Phase::Running, true);
        snap.put_instance(i);
    }
    snap
}

/// When a move starts, and when it does not.
#[test]
fn rebalance_start_table() {
    let surge = vec![
        "Rebalancing: moving replica web-1 from n1 to n2 to restore spread: web-2 starts on n2, then web-1 leaves",
        "Scheduled: web-2 (revision 1) placed on n2",
        "bump n2",
        "instance web-2 Scheduled on n2 ready false replaces web-1",
        "next seq 3",
    ];
    let cases: Vec<(&str, fn(&mut Snapshot), Vec<&str>)> = vec![
        (
            "piled after a node came back: one surge",
            |_| {},
            surge.clone(),
        ),
        (
            "one replica per node: nothing to do",
            |s| {
                if let Some(i) = s.instances.get_mut("web-1") {
                    i.node = Some("n2".into());
                }
            },
            vec![],
        ),
        (
            "off by one (2 and 1): nothing to do",
            |s| {
                if let Some(a) = s.apps.get_mut(&key("web")) {
                    a.replicas = 3;
                }
                let i = instance("web-2", "web", 1, "n2", Phase::Running, true);
                s.put_instance(i);
            },
            vec![],
        ),
        (
            "a rollout progresses: no move",
            |s| {
                if let Some(a) = s.apps.get_mut(&key("web")) {
                    a.rollout = RolloutState::started(T0);
                }
            },
            vec![],
        ),
        (
            "a replica is not ready: no move",
            |s| {
                if let Some(i) = s.instances.get_mut("web-0") {
                    i.phase = Phase::Starting;
                    i.ready = false;
                }
            },
            vec![],
        ),
        (
            "a replica is still leaving: no move",
            |s| {
                let mut i = instance("web-7", "web", 1, "n1", Phase::Terminating, false);
                i.terminating_since_ms = Some(T0);
                s.put_instance(i);
            },
            vec![],
        ),
        (
            "the emptier node is cordoned: no move",
            |s| {
                if let Some(n) = s.nodes.get_mut("n2") {
                    n.cordoned = true;
                }
            },
            vec![],
        ),
        (
            "the emptier node is not ready: no move",
            |s| {
                if let Some(n) = s.nodes.get_mut("n2") {
                    n.state = NodeState::Unreachable;
                }
            },
            vec![],
        ),
        (
            "the emptier node has no free slot: no move",
            |s| {
                if let Some(n) = s.nodes.get_mut("n2") {
                    n.capacity.instances = 0;
                }
            },
            vec![],
        ),
        (
            "the emptier node has too little memory: no move",
            |s| {
                if let Some(n) = s.nodes.get_mut("n2") {
                    n.capacity.memory = 1 << 20;
                }
            },
            vec![],
        ),
        (
            "the fuller node is cordoned: what runs there stays",
            |s| {
                if let Some(n) = s.nodes.get_mut("n1") {
                    n.cordoned = true;
                }
            },
            vec![],
        ),
        (
            "under a traffic split: no move",
            |s| {
                if let Some(a) = s.apps.get_mut(&key("web")) {
                    a.settings.traffic = vec![TrafficTarget {
                        revision: Some(1),
                        latest: false,
                        percent: 100,
                    }];
                }
            },
            vec![],
        ),
        (
            "a third node, empty too: still one move at a time",
            |s| {
                s.nodes.insert("n3".into(), node("n3", NodeState::Ready));
            },
            surge,
        ),
    ];
    for (name, setup, want) in cases {
        let mut snap = piled();
        setup(&mut snap);
        assert_eq!(plan_at(&mut snap, 2, 0), want, "{name}");
    }
}

/// A move from start to end: the surge serves first, then the replaced
/// instance drains and stops; the spread is then one per node and nothing
/// more moves. Never fewer than 2 replicas serve.
#[test]
fn a_move_surges_first_and_drains_after() {
    let mut snap = piled();
    let serving = |s: &Snapshot| {
        s.instances
            .values()
            .filter(|i| crate::rollout::serving(i))
            .count()
    };
    assert_eq!(plan_at(&mut snap, 2, 0).len(), 5);
    // Starting: the app is planned without it, so nothing goes.
    assert_eq!(plan_at(&mut snap, 3, 100), Vec::<String>::new());
    if let Some(i) = snap.instances.get_mut("web-2") {
        i.phase = Phase::Starting;
    }
    assert_eq!(plan_at(&mut snap, 3, 200), Vec::<String>::new());
    assert_eq!(serving(&snap), 2);
    serve(&mut snap, "web-2");
    assert_eq!(
        plan_at(&mut snap, 3, 300),
        [
            "Rebalanced: moved replica web-1 from n1 to n2: web-2 serves there, web-1 leaves",
            "Draining: web-1 left the route table (moved to another node to restore the spread); finishing its requests",
            "instance web-1 Terminating on n1 ready false",
            "bump n1",
            "next seq 3",
        ]
    );
    assert_eq!(serving(&snap), 2);
    // Within the drain delay it stays; after it, idle, it stops.
    assert_eq!(plan_at(&mut snap, 3, 800), Vec::<String>::new());
    assert_eq!(
        plan_at(&mut snap, 3, 1300),
        [
            "Killing: stopping web-1: drained",
            "delete instance web-1",
            "bump n1",
            "next seq 3",
        ]
    );
    let mut on: Vec<(&str, &str)> = snap
        .instances
        .values()
        .map(|i| (i.id.as_str(), i.node.as_deref().unwrap_or("-")))
        .collect();
    on.sort();
    assert_eq!(on, [("web-0", "n1"), ("web-2", "n2")]);
    assert_eq!(plan_at(&mut snap, 3, 5000), Vec::<String>::new());
}

/// A surge that does not serve within the progress deadline (1m) goes
/// again, and the replaced instance stays; a surge whose replaced instance
/// went some other way is an instance like any other.
#[test]
fn a_surge_that_never_serves_is_given_up() {
    let mut snap = piled();
    plan_at(&mut snap, 2, 0);
    if let Some(i) = snap.instances.get_mut("web-2") {
        i.phase = Phase::CrashLoopBackOff;
    }
    assert_eq!(plan_at(&mut snap, 3, 59_999), Vec::<String>::new());
    assert_eq!(
        plan_at(&mut snap, 3, 60_000),
        [
            "RebalanceFailed: web-2 did not get ready on n2 within 1m: it stops and web-1 stays; the move is tried again",
            "Killing: stopping web-2: it did not get ready in time",
            "delete instance web-2",
            "bump n2",
            "next seq 3",
        ]
    );
    let mut ids: Vec<&String> = snap.instances.keys().collect();
    ids.sort();
    assert_eq!(ids, ["web-0", "web-1"]);

    // The replaced instance is gone (its node lost it, say): the surge
    // is simply one of the app's replicas.
    let mut snap = piled();
    plan_at(&mut snap, 2, 0);
    snap.instances.remove("web-1");
    assert_eq!(plan_at(&mut snap, 3, 100), Vec::<String>::new());
    // Scaled down during the move: scaling chooses as it always does.
    let mut snap = piled();
    plan_at(&mut snap, 2, 0);
    if let Some(a) = snap.apps.get_mut(&key("web")) {
        a.replicas = 1;
    }
    let got = plan_at(&mut snap, 3, 100);
    assert_eq!(
        got.iter().filter(|l| l.starts_with("Killing")).count()
            + got.iter().filter(|l| l.starts_with("Draining")).count(),
        1,
        "{got:?}"
    );
}

/// At most `MOVES_AT_ONCE` moves run across the cluster; the next app
/// waits until one is over.
#[test]
fn moves_across_the_cluster_are_bounded() {
    let mut snap = piled();
    snap.instances.clear();
    snap.apps.clear();
    let apps = ["a", "b", "c"];
    for name in apps {
        apply_one(
            &mut snap,
            serde_json::json!({"name": name, "module": "m.wasm", "replicas": 2}),
            "mmm",
            T0,
        );
        if let Some(a) = snap.apps.get_mut(&key(name)) {
            a.rollout = RolloutState::Complete { at_ms: T0 };
            a.stable_revision = 1;
        }
        for n in 0..2 {
            let id = format!("{name}-{n}");
            let i = instance(&id, name, 1, "n1", Phase::Running, true);
            snap.put_instance(i);
        }
    }
    let starts = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("Rebalancing"))
            .count()
    };
    let first = plan_at(&mut snap, 10, 0);
    assert_eq!(starts(&first), crate::rebalance::MOVES_AT_ONCE, "{first:?}");
    assert_eq!(starts(&plan_at(&mut snap, 12, 100)), 0);
    // One move ends (its surge serves, the replaced instance drains and
    // stops): the third app's starts.
    serve(&mut snap, "a-10");
    plan_at(&mut snap, 12, 200);
    assert_eq!(starts(&plan_at(&mut snap, 12, 300)), 0, "still draining");
    let gone = plan_at(&mut snap, 12, 1500);
    assert!(
        gone.contains(&"delete instance a-1".to_string()),
        "{gone:?}"
    );
    let last = plan_at(&mut snap, 12, 1600);
    assert!(
        last.iter()
            .any(|l| l.starts_with("Rebalancing: moving replica c-1")),
        "{last:?}"
    );
}

/// Secrets: what a put and a delete change, and when they are refused.
#[test]
fn secret_table() {
    use super::secret;
    let sealer = crate::secrets::SecretBox::ephemeral().unwrap();
    let seal = |data: &[(&str, &str)]| {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        sealer.seal("default", "db", &data, T0).unwrap()
    };
    let reader = serde_json::json!({"name": "web", "module": "w.wasm",
        "config": {"pw": {"secret": "db", "key": "pw"}}});
    let mut snap = world();
    let cases: Vec<(&str, &[(&str, &str)], Result<&[&str], &str>)> = vec![
        (
            "new, nothing reads it",
            &[("pw", "one"), ("user", "u")],
            Ok(&[
                "secret default/db pw,user",
                "SecretCreated: secret default/db created (keys: pw, user)",
            ]),
        ),
        (
            "the same values: nothing rolls",
            &[("pw", "one"), ("user", "u")],
            Ok(&[
                "secret default/db pw,user",
                "SecretUpdated: secret default/db updated (keys: pw, user)",
            ]),
        ),
    ];
    for (what, data, want) in cases {
        let got = secret::put(&snap, seal(data), T0 + 1).map(|(_, c)| c);
        match (got, want) {
            (Ok(changes), Ok(want)) => {
                assert_eq!(lines(&changes), want, "{what}");
                run(&mut snap, changes);
            }
            (got, want) => panic!("{what}: {:?} / {want:?}", got.map(|c| lines(&c))),
        }
    }
    // An app reads pw: a new pw rolls it, a new user does not.
    apply_one(&mut snap, reader.clone(), "aaa", T0 + 2);
    let web = key("web");
    let rev = snap.apps[&web].current_revision;
    let (_, changes) = secret::put(&snap, seal(&[("pw", "one"), ("user", "v")]), T0 + 3).unwrap();
    assert!(
        !lines(&changes).iter().any(|l| l.starts_with("revision")),
        "{:?}",
        lines(&changes)
    );
    run(&mut snap, changes);
    let (_, changes) = secret::put(&snap, seal(&[("pw", "two"), ("user", "v")]), T0 + 4).unwrap();
    let next = rev + 1;
    assert_eq!(
        lines(&changes)[2..],
        [
            format!("revision web {next}"),
            format!("app web x1 rev {next} stable 0 progressing"),
            format!(
                "RolloutStarted: secret db changed: rolling out revision {next} (from revision {rev})"
            ),
        ],
    );
    run(&mut snap, changes);
    // Dropping the key it reads, or deleting the secret: refused.
    let e = secret::put(&snap, seal(&[("user", "v")]), T0 + 5).unwrap_err();
    assert!(
        code(&e).starts_with("secret_in_use: app default/web reads key pw"),
        "{}",
        code(&e)
    );
    let e = secret::delete(&snap, "default", "db").unwrap_err();
    assert!(code(&e).starts_with("secret_in_use"), "{}", code(&e));
    // An apply reading a key it lacks: refused, naming the field.
    let lacking = serde_json::json!({"name": "web", "module": "w.wasm",
        "config": {"pw": {"secret": "db", "key": "nope"}}});
    let input = ApplyInput {
        apps: vec![(manifest(lacking), "aaa".into())],
        stored: BTreeSet::from(["aaa".to_string()]),
    };
    let e = app::apply(&snap, input, T0 + 6).unwrap_err();
    assert!(
        code(&e).starts_with("secret_not_found: app default/web: config.pw refers to secret db, key nope, but secret db has no key nope"),
        "{}",
        code(&e)
    );
    // Once no app reads it, it goes.
    let changes = app::delete(&snap, &web).unwrap();
    run(&mut snap, changes);
    let changes = secret::delete(&snap, "default", "db").unwrap();
    assert_eq!(
        lines(&changes),
        [
            "delete secret default/db",
            "SecretDeleted: secret default/db deleted"
        ]
    );
    run(&mut snap, changes);
    assert!(matches!(
        secret::delete(&snap, "default", "db"),
        Err(ApiError::NotFound(_))
    ));
}

#[test]
fn a_change_of_key_value_limits_reaches_the_nodes_running_the_namespace() {
    let mut snap = world();
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    snap.nodes.insert("n3".into(), node("n3", NodeState::Ready));
    snap.put_instance(instance("web-1", "web", 1, "n1", Phase::Running, true));
    snap.put_instance(instance("web-2", "web", 1, "n2", Phase::Running, true));
    let mut other = instance("x-1", "x", 1, "n3", Phase::Running, true);
    other.app.namespace = "other".into();
    snap.put_instance(other);
    let set = |snap: &Snapshot, q: serde_json::Value| {
        lines(
            &super::quota::set(snap, "default", Some(serde_json::from_value(q).unwrap())).unwrap(),
        )
    };
    assert_eq!(
        set(&snap, serde_json::json!({"kv-keys": 10})),
        [
            "quota default kv-keys=10",
            "QuotaSet: quota of namespace default: kv-keys=10",
            "bump n1",
            "bump n2",
        ]
    );
    // Limits the nodes do not enforce move no generation.
    assert_eq!(
        set(&snap, serde_json::json!({"apps": 10})),
        [
            "quota default apps=10",
            "QuotaSet: quota of namespace default: apps=10",
        ]
    );
    snap.quotas.insert(
        "default".into(),
        serde_json::from_value(serde_json::json!({"kv-bytes": "1MiB"})).unwrap(),
    );
    let a = snap.assignment(snap.nodes.get("n1").unwrap());
    assert_eq!(a.instances[0].kv_limits.bytes, Some(1 << 20));
    let removed = lines(&super::quota::set(&snap, "default", None).unwrap());
    assert_eq!(removed[2..], ["bump n1", "bump n2"]);
}

/// The default quota holds every namespace without a quota of its own, at
/// its limit and one past it; a namespace's own quota replaces it whole.
#[test]
fn the_default_quota_holds_namespaces_without_their_own() {
    let mut snap = world();
    let q =
        |v: serde_json::Value| -> shoal_api::quota::Quota { serde_json::from_value(v).unwrap() };
    assert_eq!(
        outcome(super::quota::set_default(
            &snap,
            Some(q(serde_json::json!({"instances": 4})))
        )),
        Ok(vec![
            "quota * instances=4".to_string(),
            "QuotaSet: default quota, for namespaces without a quota of their own: instances=4"
                .to_string(),
        ])
    );
    snap.put_quota(
        crate::store::DEFAULT_QUOTA_KEY,
        Some(q(serde_json::json!({"instances": 4}))),
    );
    assert_eq!(snap.quota("default"), snap.default_quota.as_ref());
    // web 2 -> 3 reaches the limit (api holds 1); 4 is one past it.
    assert_eq!(
        outcome(app::scale(&snap, &key("web"), 3, T0)).map(|l| l.len()),
        Ok(2)
    );
    assert_eq!(
        outcome(app::scale(&snap, &key("web"), 4, T0)),
        Err("quota_exceeded: quota exceeded in namespace \"default\": instances is limited to 4, and this asks for 5 (in use: 3)".into())
    );
    // The same apply elsewhere: every namespace is held apart.
    let other = |n: u32| serde_json::json!({"name": "o", "namespace": "team-b", "module": "o.wasm", "replicas": n});
    assert_eq!(apply_outcome(&snap, other(4), "ooo"), Ok("Created".into()));
    assert!(
        apply_outcome(&snap, other(5), "ooo")
            .unwrap_err()
            .contains("namespace \"team-b\": instances is limited to 4, and this asks for 5")
    );
    // A namespace's own quota overrides the default, looser or tighter.
    snap.put_quota("default", Some(q(serde_json::json!({"apps": 10}))));
    assert_eq!(
        outcome(app::scale(&snap, &key("web"), 40, T0)).map(|l| l.len()),
        Ok(2)
    );
    // Removing a namespace's quota hands it back to the default; there is
    // nothing to remove where it has none.
    assert_eq!(
        outcome(super::quota::set(&snap, "team-b", None)),
        Err(
            "not_found: namespace team-b has no quota of its own (the default quota holds it)"
                .into()
        )
    );
    assert_eq!(
        outcome(super::quota::set_default(&snap, None)),
        Ok(vec![
            "quota * removed".to_string(),
            "QuotaRemoved: default quota removed: namespaces without a quota of their own have no limits".to_string(),
        ])
    );
    snap.put_quota(crate::store::DEFAULT_QUOTA_KEY, None);
    assert!(snap.quota("team-b").is_none());
    assert!(matches!(
        super::quota::set_default(&snap, None),
        Err(ApiError::NotFound(_))
    ));
}

/// A namespace's CPU weight goes to the nodes that run it (a new
/// generation, and the weight in their assignments), its own or the
/// default quota's; a weight out of bounds is refused.
#[test]
fn a_cpu_weight_reaches_the_nodes_running_the_namespace() {
    let mut snap = world();
    snap.nodes.insert("n2".into(), node("n2", NodeState::Ready));
    apply_one(
        &mut snap,
        serde_json::json!({"name": "x", "namespace": "other", "module": "x.wasm"}),
        "xxx",
        T0,
    );
    snap.put_instance(instance("web-1", "web", 1, "n1", Phase::Running, true));
    let mut other = instance("x-1", "x", 1, "n2", Phase::Running, true);
    other.app.namespace = "other".into();
    snap.put_instance(other);
    let q =
        |v: serde_json::Value| -> shoal_api::quota::Quota { serde_json::from_value(v).unwrap() };
    assert_eq!(
        outcome(super::quota::set(
            &snap,
            "default",
            Some(q(serde_json::json!({"cpu-weight": 200})))
        )),
        Ok(vec![
            "quota default cpu-weight=200".to_string(),
            "QuotaSet: quota of namespace default: cpu-weight=200".to_string(),
            "bump n1".to_string(),
        ])
    );
    for bad in [0, 10_001] {
        assert_eq!(
            outcome(super::quota::set(
                &snap,
                "default",
                Some(q(serde_json::json!({"cpu-weight": bad})))
            )),
            Err(format!(
                "invalid: cpu-weight {bad} is out of range: give a relative weight from 1 to 10000 (the default is 100)"
            ))
        );
        assert!(
            super::quota::set_default(&snap, Some(q(serde_json::json!({"cpu-weight": bad}))))
                .is_err()
        );
    }
    snap.put_quota("default", Some(q(serde_json::json!({"cpu-weight": 200}))));
    let a = snap.assignment(snap.nodes.get("n1").unwrap());
    assert_eq!(a.instances[0].cpu_weight, Some(200));
    // The default quota's weight reaches the namespaces without their own
    // only.
    assert_eq!(
        outcome(super::quota::set_default(
            &snap,
            Some(q(serde_json::json!({"cpu-weight": 50})))
        ))
        .map(|l| l[2..].to_vec()),
        Ok(vec!["bump n2".to_string()])
    );
    snap.put_quota(
        crate::store::DEFAULT_QUOTA_KEY,
        Some(q(serde_json::json!({"cpu-weight": 50}))),
    );
    let a = snap.assignment(snap.nodes.get("n2").unwrap());
    assert_eq!(a.instances[0].cpu_weight, Some(50));
    // Back to the default weight: the nodes are told (none in the
    // assignment is the default).
    let removed = outcome(super::quota::set(
        &snap,
        "default",
        Some(q(serde_json::json!({"apps": 9}))),
    ));
    assert_eq!(
        removed.map(|l| l[2..].to_vec()),
        Ok(vec!["bump n1".to_string()])
    );
}

/// A rollout held by its namespace's quota says so once, in its state and
/// a `QuotaHeld` event; once it may go on, its deadline starts again.
#[test]
fn a_held_rollout_says_so_once_and_its_deadline_starts_when_it_ends() {
    let mut snap = world();
    let mut web = snap.apps.get(&key("web")).unwrap().clone();
    web.rollout = RolloutState::started(T0);
    snap.apps.insert(web.key.clone(), web);
    let why = "the namespace's quota on instances (2) leaves no room".to_string();
    let held = Plan {
        actions: Vec::new(),
        next_seq: 10,
        held: vec![(key("web"), why.clone())],
    };
    let changes = plan::changes(&snap, held.clone(), T0 + 5);
    assert_eq!(
        lines(&changes),
        [
            "app web x2 rev 1 stable 0 progressing",
            &format!("QuotaHeld: rollout held: {why}"),
        ]
    );
    run(&mut snap, changes);
    assert_eq!(
        snap.apps.get(&key("web")).unwrap().rollout.held(),
        Some(why.as_str())
    );
    // Held still: nothing new to say.
    assert!(plan::changes(&snap, held, T0 + 6).is_empty());
    // Held past its deadline, it does not fail.
    let app = snap.apps.get(&key("web")).unwrap().clone();
    let apps = snap.desired_apps();
    let later = lines(&rollout::progress(&snap, &apps, T0 + 3_600_000));
    assert!(!later.iter().any(|l| l.contains("app web")), "{later:?}");
    assert!(later.iter().any(|l| l.contains("app api")), "{later:?}");
    // Free to go on: the hold ends and the deadline counts from now.
    let free = Plan {
        actions: Vec::new(),
        next_seq: 10,
        held: Vec::new(),
    };
    let changes = plan::changes(&snap, free, T0 + 7);
    assert_eq!(lines(&changes), ["app web x2 rev 1 stable 0 progressing"]);
    let Change::PutApp(after) = &changes[0] else {
        panic!("{changes:?}");
    };
    assert_eq!(after.rollout, RolloutState::started(T0 + 7));
    assert_eq!(app.key, after.key);
}
