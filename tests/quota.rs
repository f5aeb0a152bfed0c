//! Quotas per namespace (issue 12), through the CLI and the API of a real
//! control plane: each limit reached, and one past it refused with
//! `403 quota_exceeded` naming the limit; only the cluster's admin sets a
//! quota; a tenant reads its own and no other.

mod support;

use support::{Cluster, cli_as};

fn web(c: &Cluster, ns: &str, name: &str, replicas: u32, limits: &str) -> std::path::PathBuf {
    c.manifest(
        &format!("{ns}-{name}.toml"),
        &format!(
            "name = \"{name}\"\nnamespace = \"{ns}\"\nmodule = \"$EXAMPLES/hello.wasm\"\nreplicas = {replicas}\n{limits}"
        ),
    )
}

/// `shoal quota set ARGS` as the admin succeeds and says `says`.
fn quota_set(c: &Cluster, args: &[&str], says: &str) {
    let mut all = vec!["quota", "set"];
    all.extend_from_slice(args);
    let out = c.cli(&all);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), says);
}

#[test]
fn a_namespace_is_held_to_its_quota_at_each_limit_through_the_cli() {
    let c = Cluster::start(0);
    let tenant = c.token("team-a-deploy", "deploy", Some("team-a"));
    let as_tenant = |args: &[&str]| cli_as(&c.api, Some(&tenant), args);

    // Only the cluster's admin sets a quota; the tenant's own token cannot
    // lift its limits.
    let out = as_tenant(&["quota", "set", "team-a", "--apps", "100"]);
    assert!(!out.success);
    assert!(out.stderr.contains("(forbidden)"), "{}", out.stderr);
    quota_set(
        &c,
        &[
            "team-a",
            "--apps",
            "1",
            "--instances",
            "3",
            "--memory",
            "192MiB",
            "--max-timeout",
            "10s",
        ],
        "quota/team-a set: apps=1 instances=3 memory=192MiB max-timeout=10s",
    );

    // A manifest asking for a longer timeout than the namespace may grant
    // (the default is 30s) is refused, naming the limit.
    let out = as_tenant(&[
        "apply",
        "-f",
        web(&c, "team-a", "web", 3, "").to_str().unwrap(),
    ]);
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "max-timeout is limited to 10s, and this asks for limits.timeout = 30s (quota_exceeded)"
        ),
        "{}",
        out.stderr
    );
    // At every limit at once: 1 app, 3 instances, 3 x 64 MiB.
    let at_limit = web(&c, "team-a", "web", 3, "[limits]\ntimeout = \"10s\"\n");
    let out = as_tenant(&["apply", "-f", at_limit.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);

    // One past each.
    let out = as_tenant(&["scale", "app/web", "-n", "team-a", "--replicas", "4"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("quota exceeded in namespace \"team-a\": instances is limited to 3, and this asks for 4 (in use: 3) (quota_exceeded)"),
        "{}",
        out.stderr
    );
    let second = web(&c, "team-a", "api", 0, "[limits]\ntimeout = \"1s\"\n");
    let out = as_tenant(&["apply", "-f", second.to_str().unwrap()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("apps is limited to 1, and this asks for 2"),
        "{}",
        out.stderr
    );
    let bigger = web(
        &c,
        "team-a",
        "web",
        3,
        "[limits]\ntimeout = \"10s\"\nmemory = \"65MiB\"\n",
    );
    let out = as_tenant(&["apply", "-f", bigger.to_str().unwrap()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("memory is limited to 192MiB, and this asks for 195MiB (in use: 192MiB)"),
        "{}",
        out.stderr
    );

    // Another namespace is not held to team-a's quota.
    let other = web(&c, "team-b", "web", 5, "");
    let out = c.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);

    // The tenant reads its own quota with what it holds, and no other's.
    let out = as_tenant(&["quota", "get", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    let line = |resource: &str| {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(resource))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(line("apps").as_deref(), Some("team-a apps 1 1"));
    assert_eq!(line("instances").as_deref(), Some("team-a instances 3 3"));
    assert_eq!(
        line("memory").as_deref(),
        Some("team-a memory 192MiB 192MiB")
    );
    assert_eq!(
        line("max-timeout").as_deref(),
        Some("team-a max-timeout - 10s")
    );
    let out = as_tenant(&["quota", "get", "team-b"]);
    assert!(!out.success);
    assert!(out.stderr.contains("(forbidden)"), "{}", out.stderr);
    let out = as_tenant(&["quota", "get", "-A"]);
    assert!(!out.success, "{}", out.stdout);

    // Lowered below what runs: nothing stops, the tenant may shrink, not
    // grow.
    let out = c.cli(&["quota", "set", "team-a", "--instances", "1"]);
    assert!(out.success, "{}", out.stderr);
    let apps = c.get_json("apps");
    let replicas = apps
        .as_array()
        .and_then(|a| a.iter().find(|v| v["app"]["key"]["namespace"] == "team-a"))
        .map(|v| v["app"]["replicas"].clone());
    assert_eq!(replicas, Some(serde_json::json!(3)));
    let out = as_tenant(&["scale", "app/web", "-n", "team-a", "--replicas", "2"]);
    assert!(out.success, "{}", out.stderr);
    let out = as_tenant(&["scale", "app/web", "-n", "team-a", "--replicas", "3"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("instances is limited to 1"),
        "{}",
        out.stderr
    );

    // `none` lifts one limit; the others stay.
    let out = c.cli(&["quota", "set", "team-a", "--instances", "none"]);
    assert_eq!(
        out.stdout.trim(),
        "quota/team-a set: apps=1 memory=192MiB max-timeout=10s"
    );
    let out = as_tenant(&["scale", "app/web", "-n", "team-a", "--replicas", "3"]);
    assert!(out.success, "{}", out.stderr);

    // Who set the quota is in the namespace's events, seen by its tenant.
    let out = as_tenant(&["events", "-n", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    let set = out
        .stdout
        .lines()
        .find(|l| l.contains("QuotaSet") && l.contains("instances=1"))
        .unwrap_or_else(|| panic!("no QuotaSet event:\n{}", out.stdout));
    assert!(set.contains("admin"), "{set}");

    // Removed: no limits at all.
    let out = c.cli(&["quota", "remove", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    let out = as_tenant(&["apply", "-f", second.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn the_api_answers_403_quota_exceeded_and_refuses_tenants_a_quota_of_their_own() {
    let c = Cluster::start(0);
    let path = shoal_api::endpoints::quota("team-a");
    let (status, body) = c.api_call("PUT", &path, br#"{"quota":{"instances":2}}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["quota"], serde_json::json!({"instances": 2}));
    assert_eq!(v["usage"]["instances"], 0);
    // A malformed quota loses nothing and says why.
    let (status, body) = c.api_call("PUT", &path, br#"{"quota":{"instance":2}}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown field `instance`"), "{body}");
    let (status, body) = c.api_call(
        "PUT",
        &shoal_api::endpoints::quota("Bad_NS"),
        br#"{"quota":{}}"#,
    );
    assert_eq!(status, 422, "{body}");

    let out = c.cli(&[
        "apply",
        "-f",
        web(&c, "team-a", "web", 2, "").to_str().unwrap(),
    ]);
    assert!(out.success, "{}", out.stderr);
    let scale = shoal_api::endpoints::app_scale(&shoal_api::objects::AppKey::new("team-a", "web"));
    let (status, body) = c.api_call("POST", &scale, br#"{"replicas":3}"#);
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "quota_exceeded");
    assert_eq!(
        v["message"],
        "quota exceeded in namespace \"team-a\": instances is limited to 2, and this asks for 3 (in use: 2)"
    );

    // Each verb on quotas by a namespace admin: read its own, nothing else.
    let admin_a = c.token("team-a-admin", "admin", Some("team-a"));
    let call = |method: &str, path: &str, body: &[u8]| {
        let auth = format!("Bearer {admin_a}");
        support::http_with(
            method,
            &format!("{}{path}", c.api),
            &[("authorization", auth.as_str())],
            body,
        )
        .0
    };
    assert_eq!(call("GET", &path, b""), 200);
    assert_eq!(call("PUT", &path, br#"{"quota":{}}"#), 403);
    assert_eq!(call("DELETE", &path, b""), 403);
    assert_eq!(
        call("GET", &shoal_api::endpoints::quota("team-b"), b""),
        403
    );
    assert_eq!(
        call(
            "GET",
            &format!("{}?namespace=*", shoal_api::endpoints::QUOTAS),
            b""
        ),
        403
    );
    assert_eq!(
        call(
            "GET",
            &format!("{}?namespace=team-a", shoal_api::endpoints::QUOTAS),
            b""
        ),
        200
    );
    // The quota survives a restart of the control plane.
    let mut c = c;
    c.restart_cp();
    let (status, body) = c.api_call("GET", &path, b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["quota"], serde_json::json!({"instances": 2}));
    assert_eq!(v["usage"]["instances"], 2);
}

/// A tenant's token reaches nothing of another namespace through any verb
/// of the CLI; it cannot take or nest in another namespace's routes (and
/// is not told whose they are); and another tenant filling its own quota
/// holds no capacity from it.
#[test]
fn a_tenant_cannot_see_route_to_or_hold_capacity_from_another_namespace() {
    let c = Cluster::start(0);
    let b_app = c.manifest(
        "team-b.toml",
        "name = \"web\"\nnamespace = \"team-b\"\nmodule = \"$EXAMPLES/hello.wasm\"\nroutes = [{ path = \"/b\" }]\n",
    );
    let out = c.cli(&["apply", "-f", b_app.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let tenant = c.token("team-a-admin", "admin", Some("team-a"));
    let as_a = |args: &[&str]| cli_as(&c.api, Some(&tenant), args);
    let b_file = b_app.to_str().unwrap();
    let verbs: &[&[&str]] = &[
        &["get", "apps", "-n", "team-b"],
        &["get", "instances", "-n", "team-b"],
        &["get", "revisions", "-n", "team-b"],
        &["get", "apps", "-A"],
        &["describe", "app/web", "-n", "team-b"],
        &["logs", "app/web", "-n", "team-b"],
        &["events", "-n", "team-b"],
        &["scale", "app/web", "-n", "team-b", "--replicas", "0"],
        &["rollout", "history", "app/web", "-n", "team-b"],
        &["rollout", "undo", "app/web", "-n", "team-b"],
        &[
            "rollout",
            "split",
            "app/web",
            "-n",
            "team-b",
            "--weight",
            "latest=100",
        ],
        &["delete", "app/web", "-n", "team-b"],
        &["apply", "-f", b_file],
        &["quota", "get", "team-b"],
        &["quota", "set", "team-a", "--apps", "100"],
        &["get", "nodes"],
    ];
    for args in verbs {
        let out = as_a(args);
        assert!(!out.success, "{args:?} succeeded:\n{}", out.stdout);
        assert!(
            out.stderr.contains("(forbidden)"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("team-b"), "{args:?}: {}", out.stdout);
    }
    // Team-b's app is as it was.
    let apps = c.get_json("apps");
    let b = apps
        .as_array()
        .and_then(|a| a.iter().find(|v| v["app"]["key"]["namespace"] == "team-b"))
        .cloned()
        .expect("team-b's app");
    assert_eq!(b["app"]["replicas"], 1);

    // Routes: neither the same path nor one under it; the refusal names
    // no app of team-b.
    for path in ["/b", "/b/admin"] {
        let m = c.manifest(
            "grab.toml",
            &format!(
                "name = \"grab\"\nnamespace = \"team-a\"\nmodule = \"$EXAMPLES/hello.wasm\"\nroutes = [{{ path = \"{path}\" }}]\n"
            ),
        );
        let out = as_a(&["apply", "-f", m.to_str().unwrap()]);
        assert!(!out.success, "{path}");
        assert!(
            out.stderr.contains("overlaps a route of another namespace")
                && out.stderr.contains("(route_conflict)"),
            "{path}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("team-b"), "{}", out.stderr);
    }

    // Capacity: team-a at its quota is refused more; team-b is not held
    // back by it.
    let out = c.cli(&["quota", "set", "team-a", "--instances", "2"]);
    assert!(out.success, "{}", out.stderr);
    let a_app = c.manifest(
        "team-a.toml",
        "name = \"web\"\nnamespace = \"team-a\"\nmodule = \"$EXAMPLES/hello.wasm\"\nreplicas = 2\n",
    );
    let out = as_a(&["apply", "-f", a_app.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let out = as_a(&["scale", "app/web", "-n", "team-a", "--replicas", "3"]);
    assert!(out.stderr.contains("(quota_exceeded)"), "{}", out.stderr);
    let out = c.cli(&["scale", "app/web", "-n", "team-b", "--replicas", "5"]);
    assert!(out.success, "{}", out.stderr);
}

/// The quota's request limits reach every gateway with the route table:
/// past them, a namespace's requests get `429 rate_limited` with
/// `Retry-After`, and another namespace's requests are served as before.
#[test]
fn a_namespace_past_its_request_limits_gets_429_at_the_gateway_and_others_do_not() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    // Each tenant on a host of its own (the app sees the whole path).
    for (ns, host) in [("team-a", "a.test"), ("team-b", "b.test")] {
        let m = c.manifest(
            &format!("{ns}.toml"),
            &format!(
                "name = \"web\"\nnamespace = \"{ns}\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nroutes = [{{ host = \"{host}\", path = \"/\" }}]\n"
            ),
        );
        c.apply_wait(&m);
    }
    let wait = |what: &str, host: &'static str, status: u16| {
        support::wait_until(std::time::Duration::from_secs(30), what, || {
            let raw = support::raw_exchange(
                support::authority(&gw),
                format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
            );
            raw.starts_with(&format!("HTTP/1.1 {status} "))
                .then_some(raw)
        })
    };
    // A rate of 0 admits nothing of team-a (once the gateway has the
    // route table with the limit), and nothing changes for team-b.
    let out = c.cli(&["quota", "set", "team-a", "--rate", "0"]);
    assert!(out.success, "{}", out.stderr);
    let refused = wait("a 429 for team-a", "a.test", 429);
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{refused}"
    );
    let (_, body) = support::json_answer(&refused);
    assert_eq!(body["code"], "rate_limited", "{refused}");
    assert!(
        !refused.contains("team-a") && !refused.contains("node-1"),
        "{refused}"
    );
    wait("team-b served", "b.test", 200);

    // One request in flight at a time: once the gateway has the new
    // limits, a slow request of team-a holds the one place...
    let out = c.cli(&[
        "quota",
        "set",
        "team-a",
        "--rate",
        "none",
        "--concurrency",
        "1",
    ]);
    assert!(out.success, "{}", out.stderr);
    wait("team-a served again", "a.test", 200);
    let slow_url = format!("{gw}/sleep?ms=4000");
    // (Sent again if the probe before it still held the place: a request
    // counts until its answer's last byte is gone.)
    let slow = std::thread::spawn(move || {
        loop {
            let answer = support::http_with("GET", &slow_url, &[("host", "a.test")], b"");
            if answer.0 != 429 {
                return answer;
            }
        }
    });
    // ...and the next is refused, while team-b's are served.
    let refused = wait("a 429 while one is in flight", "a.test", 429);
    assert!(refused.contains("requests in flight"), "{refused}");
    wait("team-b served", "b.test", 200);
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}");

    // Removing the quota lifts every limit.
    let out = c.cli(&["quota", "remove", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    wait("team-a served without limits", "a.test", 200);

    // Per app: the quota's bound is also the limit of apps that set none
    // (here a rate of 0, which admits nothing), told as the app's.
    let out = c.cli(&["quota", "set", "team-a", "--app-rate", "0"]);
    assert!(out.success, "{}", out.stderr);
    let refused = wait("a 429 for team-a's app", "a.test", 429);
    assert!(
        refused.contains("too many requests per second for this app (limit 0/s)"),
        "{refused}"
    );
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{refused}"
    );
    wait("team-b served", "b.test", 200);
}

#[test]
fn a_request_for_an_app_at_zero_held_by_its_quota_is_told_at_once() {
    let mut c = Cluster::start(1);
    // Long enough that an answer at the end of the wait could not pass for
    // the quota's answer, which names its cause.
    let gw = c.start_gateway(&["--activation-timeout", "120s"]);
    let out = c.cli(&["quota", "set", "team-a", "--instances", "1"]);
    assert!(out.success, "{}", out.stderr);
    let busy = c.manifest(
        "busy.toml",
        "name = \"busy\"\nnamespace = \"team-a\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n",
    );
    c.apply_wait(&busy);
    let cold = c.manifest(
        "cold.toml",
        "name = \"cold\"\nnamespace = \"team-a\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nreplicas = 0\nroutes = [{ host = \"cold.test\", path = \"/\" }]\n\n[autoscale]\nmin = 0\nmax = 2\n",
    );
    c.apply_wait(&cold);
    let get = || {
        support::raw_exchange(
            support::authority(&gw),
            b"GET / HTTP/1.1\r\nhost: cold.test\r\nconnection: close\r\n\r\n",
        )
    };
    // Once the gateway has the route: the namespace has no room for an
    // instance of `cold`, and the request is told so.
    let refused = support::wait_until(std::time::Duration::from_secs(60), "a refusal", || {
        let raw = get();
        (!raw.starts_with("HTTP/1.1 404 ")).then_some(raw)
    });
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    let (_, body) = support::json_answer(&refused);
    assert_eq!(body["code"], "quota_exceeded", "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{refused}"
    );
    assert!(!refused.contains("node-1"), "{refused}");

    // With room again, the same request wakes the app.
    let out = c.cli(&["quota", "set", "team-a", "--instances", "2"]);
    assert!(out.success, "{}", out.stderr);
    support::wait_until(std::time::Duration::from_secs(60), "cold served", || {
        let raw = get();
        raw.starts_with("HTTP/1.1 200 ").then_some(raw)
    });
}

/// The default quota (issue 12's extras): set, read and removed by the
/// cluster's admin only; it holds every namespace without a quota of its
/// own, at each limit and one past it; a namespace's own quota replaces it
/// whole; `quota get` says where the limits come from.
#[test]
fn the_default_quota_holds_every_namespace_without_its_own() {
    let mut c = Cluster::start(0);
    let tenant = c.token("team-a-admin", "admin", Some("team-a"));
    let as_tenant = |c: &Cluster, args: &[&str]| cli_as(&c.api, Some(&tenant), args);

    // Deny by default: a namespace's admin neither sets, reads nor
    // removes the default quota, through the CLI or the API.
    for args in [
        &["quota", "set", "--default", "--apps", "100"][..],
        &["quota", "get", "--default"],
        &["quota", "rm", "--default"],
    ] {
        let out = as_tenant(&c, args);
        assert!(!out.success, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("(forbidden)"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let path = shoal_api::endpoints::DEFAULT_QUOTA;
    let auth = format!("Bearer {tenant}");
    for (method, body) in [
        ("GET", &b""[..]),
        ("PUT", br#"{"quota":{}}"#),
        ("DELETE", b""),
    ] {
        let (status, body) = support::http_with(
            method,
            &format!("{}{path}", c.api),
            &[("authorization", auth.as_str())],
            body,
        );
        assert_eq!(status, 403, "{method}: {body}");
    }
    let out = c.cli(&["quota", "get", "--default"]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("No default quota"), "{}", out.stdout);

    quota_set(
        &c,
        &["--default", "--apps", "1", "--instances", "2"],
        "default quota set: apps=1 instances=2",
    );

    // team-a has no quota of its own: the default holds it, at the limit
    // and one past it.
    let out = as_tenant(
        &c,
        &[
            "apply",
            "-f",
            web(&c, "team-a", "web", 2, "").to_str().unwrap(),
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let out = as_tenant(&c, &["scale", "app/web", "-n", "team-a", "--replicas", "3"]);
    assert!(
        out.stderr.contains("quota exceeded in namespace \"team-a\": instances is limited to 2, and this asks for 3 (in use: 2) (quota_exceeded)"),
        "{}",
        out.stderr
    );
    let out = as_tenant(
        &c,
        &[
            "apply",
            "-f",
            web(&c, "team-a", "api", 0, "").to_str().unwrap(),
        ],
    );
    assert!(
        out.stderr
            .contains("apps is limited to 1, and this asks for 2"),
        "{}",
        out.stderr
    );
    // The tenant reads the limits it gets, and where they come from.
    let out = as_tenant(&c, &["quota", "get", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    let line = |text: &str, resource: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(resource))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        line(&out.stdout, "instances").as_deref(),
        Some("team-a instances 2 2 (default quota)"),
        "{}",
        out.stdout
    );
    let out = as_tenant(&c, &["quota", "get", "team-a", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["from-default"], true, "{v}");
    assert_eq!(v["quota"], serde_json::json!({"apps": 1, "instances": 2}));
    // Never another namespace's, even one the default holds too.
    let out = as_tenant(&c, &["quota", "get", "team-b"]);
    assert!(out.stderr.contains("(forbidden)"), "{}", out.stderr);

    // Its own quota replaces the default whole: set from the limits it
    // had, then looser.
    let out = c.cli(&["quota", "set", "team-a", "--instances", "3"]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "quota/team-a set: apps=1 instances=3");
    let out = as_tenant(&c, &["scale", "app/web", "-n", "team-a", "--replicas", "3"]);
    assert!(out.success, "{}", out.stderr);
    let out = as_tenant(&c, &["quota", "get", "team-a"]);
    assert_eq!(
        line(&out.stdout, "instances").as_deref(),
        Some("team-a instances 3 3"),
        "{}",
        out.stdout
    );
    // Another namespace is still held by the default.
    let other = web(&c, "team-b", "web", 3, "");
    let out = c.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(
        out.stderr
            .contains("namespace \"team-b\": instances is limited to 2"),
        "{}",
        out.stderr
    );

    // Stored and evented like any quota: it survives a restart, and the
    // admin sees who set it.
    c.restart_cp();
    let out = c.cli(&["quota", "get", "--default"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["instances", "2"]),
        "{}",
        out.stdout
    );
    let out = c.cli(&["events", "-A"]);
    let set = out
        .stdout
        .lines()
        .find(|l| l.contains("QuotaSet") && l.contains("default-quota"))
        .unwrap_or_else(|| panic!("no QuotaSet event of the default quota:\n{}", out.stdout));
    assert!(
        set.contains("apps=1 instances=2") && set.contains("admin"),
        "{set}"
    );

    // Without its own quota, team-a is the default's again; without the
    // default, nothing holds team-b.
    let out = c.cli(&["quota", "rm", "team-a"]);
    assert_eq!(
        out.stdout.trim(),
        "quota/team-a removed: the default quota holds it now"
    );
    let out = c.cli(&["quota", "rm", "--default"]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["quota", "rm", "--default"]);
    assert!(out.stderr.contains("(not_found)"), "{}", out.stderr);
}

/// The quota bounds what an app may ask of each gateway
/// (`--app-concurrency`, `--app-rate`): at the bound an apply passes, one
/// past it is refused, naming the limit.
#[test]
fn an_apps_gateway_limits_are_held_to_the_quota_at_apply() {
    let c = Cluster::start(0);
    let tenant = c.token("team-a-deploy", "deploy", Some("team-a"));
    quota_set(
        &c,
        &["team-a", "--app-concurrency", "20", "--app-rate", "10"],
        "quota/team-a set: app-concurrency=20 app-rate=10",
    );
    let apply = |limits: &str| {
        let m = web(&c, "team-a", "web", 1, &format!("[limits]\n{limits}\n"));
        cli_as(&c.api, Some(&tenant), &["apply", "-f", m.to_str().unwrap()])
    };
    let out = apply("gateway-concurrency = 20\ngateway-rate = 10");
    assert!(out.success, "{}", out.stderr);
    let out = apply("gateway-concurrency = 21\ngateway-rate = 10");
    assert!(
        out.stderr.contains("quota exceeded in namespace \"team-a\": app-concurrency is limited to 20, and this asks for limits.gateway-concurrency = 21 (quota_exceeded)"),
        "{}",
        out.stderr
    );
    let out = apply("gateway-concurrency = 20\ngateway-rate = 11");
    assert!(
        out.stderr
            .contains("app-rate is limited to 10, and this asks for limits.gateway-rate = 11"),
        "{}",
        out.stderr
    );
    let out = apply("gateway-rate = 0");
    assert!(
        out.stderr.contains("limits.gateway-rate") && out.stderr.contains("at least 1"),
        "{}",
        out.stderr
    );
    // A weight out of bounds is refused with what the bounds are, by the
    // CLI and by the API.
    let out = c.cli(&["quota", "set", "team-a", "--cpu-weight", "0"]);
    assert!(
        out.stderr
            .contains("cpu-weight 0 is out of range: give a relative weight from 1 to 10000"),
        "{}",
        out.stderr
    );
    let (status, body) = c.api_call(
        "PUT",
        &shoal_api::endpoints::quota("team-a"),
        br#"{"quota":{"cpu-weight":10001}}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("out of range"), "{body}");
}

/// What a node says of its fair shares, read from its metrics.
fn weight_on_node(metrics: &str, token: &str, ns: &str) -> Option<u64> {
    let (status, body) = support::http_with(
        "GET",
        metrics,
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let series = format!("shoal_node_fair_share_weight{{namespace=\"{ns}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// A weight set by `quota set --cpu-weight` reaches the nodes that run the
/// namespace: their metrics show it, and the default quota's for the
/// namespaces it holds.
#[test]
fn a_cpu_weight_set_by_the_quota_reaches_the_node() {
    const TOKEN: &str = "metrics-secret-8d2e71";
    let secrets = tempfile::tempdir().unwrap();
    let tf = secrets.path().join("metrics.token");
    std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
    let tf = tf.display().to_string();
    let c = Cluster::start_with(1, &[], |_| {
        vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-token-file".into(),
            tf.clone(),
        ]
    });
    let metrics = c.nodes[0].url_after("Metrics on");
    c.apply_wait(&web(&c, "team-a", "web", 1, ""));
    let t = std::time::Duration::from_secs(60);
    support::wait_until(t, "the default weight on the node", || {
        (weight_on_node(&metrics, TOKEN, "team-a") == Some(100)).then_some(())
    });
    let out = c.cli(&["quota", "set", "team-a", "--cpu-weight", "300"]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "quota/team-a set: cpu-weight=300");
    support::wait_until(t, "weight 300 on the node", || {
        (weight_on_node(&metrics, TOKEN, "team-a") == Some(300)).then_some(())
    });
    // Held by the default quota instead: its weight.
    let out = c.cli(&["quota", "set", "--default", "--cpu-weight", "40"]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["quota", "rm", "team-a"]);
    assert!(out.success, "{}", out.stderr);
    support::wait_until(t, "the default quota's weight on the node", || {
        (weight_on_node(&metrics, TOKEN, "team-a") == Some(40)).then_some(())
    });
}

/// Instances of `app` in `ns` that the control plane has (leaving ones
/// too), and their revisions.
fn instances_of(c: &Cluster, ns: &str, app: &str) -> Vec<(String, u64, String)> {
    c.instances()
        .into_iter()
        .filter(|i| i["app"]["namespace"] == ns && i["app"]["name"] == app)
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["revision"].as_u64().unwrap_or(0),
                i["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A rollout's extra instances count against the quota: a namespace at
/// its limit of instances still rolls out an app of 3 replicas, one
/// instance at a time, never holding more than its limit (as the control
/// plane and the node both see it); an app of 1 replica has nothing to
/// spare and is held, and says so, until the quota has room.
#[test]
fn a_rollout_at_the_instance_limit_replaces_one_at_a_time_or_is_held() {
    let c = Cluster::start(1);
    let t = std::time::Duration::from_secs(120);
    let out = c.cli(&["quota", "set", "team-a", "--instances", "3"]);
    assert!(out.success, "{}", out.stderr);
    c.apply_wait(&web(&c, "team-a", "web", 3, ""));
    let v2 = web(&c, "team-a", "web", 3, "env = { V = \"2\" }\n");
    let out = c.cli(&["apply", "-f", v2.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let mut most = 0;
    let done = support::wait_until(t, "the rollout to revision 2", || {
        let all = instances_of(&c, "team-a", "web");
        let on_node = c
            .node_status(0)
            .iter()
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with("web-")))
            .count();
        most = most.max(all.len()).max(on_node);
        assert!(
            all.len() <= 3 && on_node <= 3,
            "past the quota: {all:?}, {on_node} on the node"
        );
        let rolled = all.len() == 3
            && all
                .iter()
                .all(|(_, rev, phase)| *rev == 2 && phase == "running");
        rolled.then_some(all)
    });
    assert_eq!(most, 3, "{done:?}");
    let out = c.cli(&[
        "rollout",
        "status",
        "app/web",
        "-n",
        "team-a",
        "--timeout",
        "60s",
    ]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["events", "-n", "team-a"]);
    assert!(!out.stdout.contains("QuotaHeld"), "{}", out.stdout);

    // One replica, no room: held, and said in describe, rollout status
    // and an event; the old instance keeps serving.
    let out = c.cli(&["quota", "set", "team-b", "--instances", "1"]);
    assert!(out.success, "{}", out.stderr);
    c.apply_wait(&web(&c, "team-b", "solo", 1, ""));
    let v2 = web(&c, "team-b", "solo", 1, "env = { V = \"2\" }\n");
    let out = c.cli(&["apply", "-f", v2.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let why = "held: the namespace's quota on instances (1) leaves no room to start revision 2 beside the only ready replica";
    let describe = support::wait_until(t, "the hold in describe", || {
        let out = c.cli(&["describe", "app/solo", "-n", "team-b"]);
        out.stdout.contains(why).then_some(out.stdout)
    });
    assert!(describe.contains("Rollout:      in progress"), "{describe}");
    let out = c.cli(&[
        "rollout",
        "status",
        "app/solo",
        "-n",
        "team-b",
        "--no-watch",
    ]);
    assert!(out.stdout.contains(why), "{}", out.stdout);
    let out = c.cli(&["events", "-n", "team-b"]);
    let held: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("QuotaHeld"))
        .collect();
    assert_eq!(held.len(), 1, "{}", out.stdout);
    assert!(
        held[0].contains("rollout held: the namespace's quota on instances (1)"),
        "{}",
        held[0]
    );
    let solo = instances_of(&c, "team-b", "solo");
    assert_eq!(solo.len(), 1, "{solo:?}");
    assert_eq!((solo[0].1, solo[0].2.as_str()), (1, "running"), "{solo:?}");

    // Room again: the rollout goes on and completes.
    let out = c.cli(&["quota", "set", "team-b", "--instances", "2"]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&[
        "rollout",
        "status",
        "app/solo",
        "-n",
        "team-b",
        "--timeout",
        "60s",
    ]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let describe = c.cli(&["describe", "app/solo", "-n", "team-b"]).stdout;
    // (The event of the hold stays in the list of events.)
    assert!(
        !describe
            .lines()
            .any(|l| l.trim_start().starts_with("held:")),
        "{describe}"
    );
}
