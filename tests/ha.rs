//! A highly available control plane: replicas on a real etcd cluster, one
//! elected leader, real processes on loopback. etcd comes from
//! `scripts/install-etcd.sh` when it is not installed; without it these
//! tests fail, they never skip.

mod support;

use shoal_etcd::testing::EtcdCluster;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{CliOutput, Proc, cli_env, example, wait_until};

const T: Duration = Duration::from_secs(60);

/// etcd, control-plane replicas on it, and nodes.
struct Ha {
    rt: tokio::runtime::Runtime,
    etcd: EtcdCluster,
    dir: tempfile::TempDir,
    replicas: Vec<Proc>,
    urls: Vec<String>,
    ca: PathBuf,
    admin: String,
    join: String,
    nodes: Vec<Proc>,
    gateways: Vec<Proc>,
    /// The replicas' `--leader-lease`.
    lease: &'static str,
}

impl Ha {
    /// `members` etcd members and `replicas` control planes; the first
    /// replica starts alone, so it leads (and makes the CA and tokens).
    fn start(members: usize, replicas: usize) -> Ha {
        Ha::start_leased(members, replicas, "3s")
    }

    /// As [`Ha::start`], with the leader's lease `lease`.
    fn start_leased(members: usize, replicas: usize, lease: &'static str) -> Ha {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let etcd = rt.block_on(EtcdCluster::start(members));
        let dir = tempfile::tempdir().unwrap();
        let mut ha = Ha {
            rt,
            etcd,
            ca: dir.path().join("cp0").join("ca.pem"),
            dir,
            replicas: Vec::new(),
            urls: Vec::new(),
            admin: String::new(),
            join: String::new(),
            nodes: Vec::new(),
            gateways: Vec::new(),
            lease,
        };
        for i in 0..replicas {
            ha.spawn_replica(i);
            if i == 0 {
                wait_until(T, "the first replica to lead", || {
                    (ha.leader_url().as_deref() == Some(ha.urls[0].as_str())).then_some(())
                });
                let read = |f: &str| {
                    let p = ha.dir.path().join("cp0").join(f);
                    wait_until(T, "the first start's tokens", || {
                        std::fs::read_to_string(&p).ok()
                    })
                    .trim()
                    .to_string()
                };
                ha.admin = read("admin.token");
                ha.join = read("join.token");
            }
        }
        ha
    }

    fn store_arg(&self) -> String {
        let members: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        format!("etcd://{}", members.join(","))
    }

    fn spawn_replica(&mut self, i: usize) {
        self.spawn_replica_at(i, "127.0.0.1:0");
    }

    /// Kills replica `i` with SIGKILL and starts it again on the same
    /// address and data dir.
    fn restart_replica(&mut self, i: usize) {
        self.replicas[i].kill9();
        let listen = self.urls[i].trim_start_matches("https://").to_string();
        self.spawn_replica_at(i, &listen);
    }

    fn spawn_replica_at(&mut self, i: usize, listen: &str) {
        let data = self.dir.path().join(format!("cp{i}"));
        let store = self.store_arg();
        let data = data.display().to_string();
        let args = [
            "control-plane",
            "--listen",
            listen,
            "--data-dir",
            &data,
            "--store",
            &store,
            "--leader-lease",
            self.lease,
        ];
        let p = Proc::spawn(&args, &[]);
        let url = p.url_after("Control plane listening on");
        if i < self.urls.len() {
            self.replicas[i] = p;
            self.urls[i] = url;
        } else {
            self.replicas.push(p);
            self.urls.push(url);
        }
    }

    fn etcd_client(&self) -> shoal_etcd::Client {
        shoal_etcd::Client::new(self.etcd.client_config()).unwrap()
    }

    /// The URL the leader key names, if a replica leads.
    fn leader_url(&self) -> Option<String> {
        let client = self.etcd_client();
        let kv = self
            .rt
            .block_on(client.get(b"/shoal/leader"))
            .ok()
            .flatten()?;
        Some(String::from_utf8(kv.value).unwrap())
    }

    fn leader(&self) -> Option<usize> {
        let url = self.leader_url()?;
        self.urls.iter().position(|u| *u == url)
    }

    fn ca(&self) -> String {
        self.ca.display().to_string()
    }

    /// `shoal ARGS` as the admin, through replica `via`.
    fn cli(&self, via: usize, args: &[&str]) -> CliOutput {
        cli_env(
            &self.urls[via],
            Some(&self.admin),
            &[("SHOAL_CA", &self.ca())],
            args,
        )
    }

    /// `shoal apply -f PATH --wait` through replica `via`; it must succeed.
    fn apply_wait(&self, via: usize, path: &std::path::Path) {
        let path = path.to_str().unwrap();
        let out = self.cli(via, &["apply", "-f", path, "--wait", "--timeout", "60s"]);
        assert!(out.success, "apply through replica {via}: {}", out.stderr);
    }

    /// `shoal ARGS` through replica `via`, again while no replica leads
    /// (a failover under way answers `no_leader`, and says to try again).
    fn cli_until_led(&self, via: usize, args: &[&str]) -> CliOutput {
        wait_until(T, "a leader to answer", || {
            let out = self.cli(via, args);
            (!out.stderr.contains("no_leader")).then_some(out)
        })
    }

    /// Every replica's URL, for a process that moves between them.
    fn all_urls(&self) -> String {
        self.urls.join(",")
    }

    /// Starts node `i` joining through `join` (one URL, or a list).
    fn add_node(&mut self, i: usize, join: &str) {
        let name = format!("node-{}", i + 1);
        let cache = self.dir.path().join("cache").display().to_string();
        let args = [
            "node",
            "--join",
            join,
            "--name",
            &name,
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            &cache,
        ];
        let ca = self.ca();
        let p = Proc::spawn(
            &args,
            &[("SHOAL_JOIN_TOKEN", self.join.as_str()), ("SHOAL_CA", &ca)],
        );
        p.url_after("serving on");
        self.nodes.push(p);
    }

    fn start_gateway(&mut self, via: usize) -> String {
        let out = self.cli(
            via,
            &["token", "create", "gw", "--role", "gateway", "-o", "json"],
        );
        assert!(out.success, "gateway token: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let token = v["secret"].as_str().unwrap().to_string();
        let ca = self.ca();
        let p = Proc::spawn(
            &[
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--control-plane",
                &self.urls[via],
            ],
            &[("SHOAL_TOKEN", token.as_str()), ("SHOAL_CA", &ca)],
        );
        let url = p.url_after("Gateway listening on");
        self.gateways.push(p);
        url
    }

    fn manifest(&self, replicas: u32) -> PathBuf {
        self.app_manifest("web", replicas, "0")
    }

    /// A manifest of app `name` with `replicas`; a new `version` makes a
    /// new revision.
    fn app_manifest(&self, name: &str, replicas: u32, version: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("{name}-{version}-{replicas}.toml"));
        let text = format!(
            "name = \"{name}\"\nmodule = \"{}\"\nreplicas = {replicas}\nenv = {{ VERSION = \"{version}\" }}\n\n[[routes]]\npath = \"/{name}\"\n",
            example("http-component.wasm").display()
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    /// (id, node, running and ready) of the app's instances, read through
    /// replica `via`; none while it cannot answer.
    fn instances(&self, via: usize) -> Option<Vec<(String, String, bool)>> {
        let out = self.cli(via, &["get", "instances", "-A", "-o", "json"]);
        if !out.success {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter(|i| i["app"]["name"] == "web")
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_string(),
                        i["node"].as_str().unwrap_or_default().to_string(),
                        i["phase"] == "running" && i["ready"] == true,
                    )
                })
                .collect(),
        )
    }

    /// Waits until `n` instances of the app run and are ready; their ids.
    fn wait_running(&self, via: usize, n: usize) -> BTreeSet<String> {
        wait_until(T, &format!("{n} instances running"), || {
            let insts = self.instances(via)?;
            (insts.len() == n && insts.iter().all(|i| i.2))
                .then(|| insts.into_iter().map(|i| i.0).collect())
        })
    }

    /// An HTTP client that trusts the cluster CA.
    fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap()
    }

    /// `METHOD PATH` through replica `via`, with `token`: the status, the
    /// stale header and the body; none without an answer within 2 s.
    fn send(
        &self,
        http: &reqwest::Client,
        via: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> Option<(u16, Option<String>, String)> {
        let url = format!("{}{path}", self.urls[via]);
        self.rt.block_on(async {
            let mut req = http.request(method, &url).timeout(Duration::from_secs(2));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await.ok()?;
            let stale = r
                .headers()
                .get("x-shoal-stale")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let status = r.status().as_u16();
            Some((status, stale, r.text().await.ok()?))
        })
    }

    /// `GET PATH` through replica `via` (see [`Ha::send`]).
    fn get(
        &self,
        http: &reqwest::Client,
        via: usize,
        path: &str,
        token: Option<&str>,
    ) -> Option<(u16, Option<String>, String)> {
        self.send(http, via, reqwest::Method::GET, path, None, token)
    }

    /// A new token's secret, made through replica `via`.
    fn token(&self, via: usize, name: &str, role: &str, namespace: Option<&str>) -> String {
        let mut args = vec!["token", "create", name, "--role", role, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.cli(via, &args);
        assert!(out.success, "token {name}: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["secret"].as_str().unwrap().to_string()
    }

    fn replicas_of_web(&self, via: usize) -> Option<u64> {
        let out = self.cli(via, &["get", "apps", "-A", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["app"]["key"]["name"] == "web")
            .and_then(|a| a["app"]["replicas"].as_u64())
    }
}

impl Drop for Ha {
    /// A failed test shows what the replicas and nodes said.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, r) in self.replicas.iter().enumerate() {
            eprintln!("== replica {i} ({})", self.urls[i]);
            for l in r.out.all() {
                eprintln!("  {l}");
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            eprintln!("== node {i}");
            for l in n.out.all().iter().rev().take(40).rev() {
                eprintln!("  {l}");
            }
        }
    }
}

#[test]
fn the_leader_killed_another_leads_and_no_acknowledged_write_is_lost() {
    let mut ha = Ha::start(3, 3);
    assert_eq!(ha.leader(), Some(0));
    // Nodes know every replica; the CLI reaches followers, which pass
    // requests to the leader.
    for i in 0..3 {
        let all = ha.all_urls();
        ha.add_node(i, &all);
    }
    let m = ha.manifest(3);
    ha.apply_wait(2, &m);
    ha.wait_running(1, 3);

    // An acknowledged write, then the leader dies at once, and a node
    // with it.
    let out = ha.cli(1, &["scale", "app", "web", "--replicas", "4"]);
    assert!(out.success, "scale: {}", out.stderr);
    let kept: BTreeSet<String> = ha
        .instances(1)
        .unwrap()
        .into_iter()
        .filter(|i| i.1 != "node-3")
        .map(|i| i.0)
        .collect();
    let old = ha.leader_url().unwrap();
    let killed = Instant::now();
    ha.replicas[0].kill9();
    ha.nodes[2].kill9();

    let new = wait_until(T, "another replica to lead", || {
        ha.leader_url().filter(|u| *u != old)
    });
    eprintln!("a new leader ({new}) {:?} after the kill", killed.elapsed());
    assert!(ha.urls[1..].contains(&new));
    // The write survived; the new leader runs it out, moves what the lost
    // node ran, and did not start again what the others run.
    assert_eq!(
        wait_until(T, "the app through a survivor", || ha.replicas_of_web(1)),
        4
    );
    let after = wait_until(T, "4 instances off the lost node", || {
        let insts = ha.instances(2)?;
        (insts.len() == 4 && insts.iter().all(|i| i.2 && i.1 != "node-3"))
            .then(|| insts.into_iter().map(|i| i.0).collect::<BTreeSet<_>>())
    });
    assert!(
        kept.is_subset(&after),
        "instances were replaced: {kept:?} -> {after:?}"
    );

    // One etcd member of three lost: nothing stops.
    ha.etcd.member(2).kill();
    // The first writes may meet etcd electing a new leader of its own.
    let out = wait_until(T, "a write with a member down", || {
        let out = ha.cli_until_led(2, &["scale", "app", "web", "--replicas", "5"]);
        (!out.stderr.contains("store_unavailable")).then_some(out)
    });
    assert!(
        out.success,
        "scale with an etcd member down: {}",
        out.stderr
    );
    let five = ha.wait_running(1, 5);
    assert!(after.is_subset(&five));
}

#[test]
fn a_paused_leader_writes_nothing_after_it_wakes() {
    let mut ha = Ha::start(1, 2);
    let follower = ha.urls[1].clone();
    ha.add_node(0, &follower);
    let m = ha.manifest(1);
    ha.apply_wait(1, &m);
    ha.wait_running(1, 1);

    ha.replicas[0].pause();
    wait_until(T, "the other replica to lead", || {
        (ha.leader() == Some(1)).then_some(())
    });
    let out = ha.cli_until_led(1, &["scale", "app", "web", "--replicas", "3"]);
    assert!(out.success, "scale under the new leader: {}", out.stderr);
    let three = ha.wait_running(1, 3);

    // Watch the app's record and the instances from here on.
    let client = ha.etcd_client();
    let from = ha
        .rt
        .block_on(client.status())
        .expect("etcd status")
        .revision
        + 1;
    let mut watch = ha
        .rt
        .block_on(client.watch(b"/shoal/", true, from))
        .expect("a watch");
    ha.replicas[0].signal("-CONT");
    ha.replicas[0]
        .out
        .wait_for(T, |l| l.contains("stepping down"))
        .unwrap_or_else(|| panic!("the old leader never stepped down"));
    // A barrier: a write of the new leader, after the old one woke.
    let out = ha.cli_until_led(0, &["scale", "app", "web", "--replicas", "4"]);
    assert!(
        out.success,
        "scale through the woken replica: {}",
        out.stderr
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    'events: loop {
        let next = ha.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watch)).await
        });
        assert!(Instant::now() < deadline, "no barrier write seen: {seen:?}");
        let Ok(Some(Ok(events))) = next else { continue };
        for e in events {
            let key = String::from_utf8_lossy(&e.kv.key).into_owned();
            let value: serde_json::Value = serde_json::from_slice(&e.kv.value).unwrap_or_default();
            let put = matches!(e.kind, shoal_etcd::EventKind::Put);
            seen.push((key.clone(), put, value["replicas"].clone()));
            if key.starts_with("/shoal/apps/") && put {
                let replicas = value["replicas"].as_u64().unwrap_or(0);
                assert!(
                    replicas >= 3,
                    "the app was written back to {replicas} replicas"
                );
                if replicas == 4 {
                    break 'events;
                }
            }
            if key.starts_with("/shoal/instances/") && !put {
                let id = key.trim_start_matches("/shoal/instances/");
                assert!(!three.contains(id), "instance {id} was deleted");
            }
        }
    }
    let four = ha.wait_running(0, 4);
    assert!(three.is_subset(&four), "{three:?} -> {four:?}");
}

#[test]
fn without_quorum_writes_are_refused_and_the_data_plane_keeps_serving() {
    let mut ha = Ha::start(3, 2);
    let all = ha.all_urls();
    ha.add_node(0, &all);
    let m = ha.manifest(1);
    ha.apply_wait(0, &m);
    ha.wait_running(0, 1);
    let gateway = ha.start_gateway(0);
    wait_until(T, "the app through the gateway", || {
        (support::http("GET", &format!("{gateway}/web"), b"").0 == 200).then_some(())
    });

    ha.etcd.member(0).kill();
    ha.etcd.member(1).kill();
    // Writes are refused, saying why, once the leader finds etcd gone.
    let refused = wait_until(T, "a write refused for the store", || {
        let out = ha.cli(0, &["scale", "app", "web", "--replicas", "2"]);
        (!out.success && out.stderr.contains("store_unavailable")).then_some(out.stderr)
    });
    assert!(!refused.contains("127.0.0.1"), "{refused}");
    // Reads are still answered, from what the last leader knew, and say
    // they may be stale; through the follower too.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ha.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    for via in [0, 1] {
        let (status, stale, body) = wait_until(T, "a stale read", || {
            let url = format!("{}{}", ha.urls[via], shoal_api::endpoints::APPS);
            ha.rt.block_on(async {
                let r = http.get(&url).bearer_auth(&ha.admin).send().await.ok()?;
                let stale = r.headers().get("x-shoal-stale").cloned();
                let status = r.status().as_u16();
                let body = r.text().await.ok()?;
                // Until the leader's lease runs out it still leads (and
                // answers as such); then it steps down and says stale.
                (status == 200 && stale.is_some()).then_some((status, stale, body))
            })
        });
        assert_eq!(status, 200);
        assert_eq!(
            stale.as_ref().and_then(|v| v.to_str().ok()),
            Some("true"),
            "{body}"
        );
        assert!(body.contains("\"web\""), "{body}");
    }
    // The data plane does not need the control plane.
    for _ in 0..20 {
        let (status, body) = support::http("GET", &format!("{gateway}/web"), b"");
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn a_follower_answers_reads_from_its_cache_and_shows_a_client_its_own_writes() {
    // A lease longer than the test: the leader stopped below stays the
    // leader, so whatever answers then is the follower itself.
    let ha = Ha::start_leased(1, 2, "30s");
    assert_eq!(ha.leader(), Some(0));
    let http = ha.http();
    let admin = ha.admin.clone();
    let app = "/v1/namespaces/default/apps/web";
    let describe = |token: &str| -> serde_json::Value {
        let (status, stale, body) = ha
            .get(&http, 1, app, Some(token))
            .expect("the follower answers");
        assert_eq!((status, stale), (200, None), "{body}");
        serde_json::from_str(&body).unwrap()
    };

    // Read your writes: each write through the follower, then at once a
    // read through it, shows the write.
    for version in 1..=3u64 {
        let m = ha.app_manifest("web", 1, &version.to_string());
        let out = ha.cli(1, &["apply", "-f", m.to_str().unwrap()]);
        assert!(out.success, "apply through the follower: {}", out.stderr);
        let v = describe(&admin);
        assert_eq!(v["view"]["app"]["current-revision"], version, "{v}");
    }
    for replicas in 2..=5u64 {
        let body = serde_json::json!({ "replicas": replicas });
        let scale = format!("{app}/scale");
        let (status, _, answer) = ha
            .send(
                &http,
                1,
                reqwest::Method::POST,
                &scale,
                Some(body),
                Some(&admin),
            )
            .expect("the scale is answered");
        assert_eq!(status, 204, "{answer}");
        let v = describe(&admin);
        assert_eq!(v["view"]["app"]["replicas"], replicas, "{v}");
    }
    // Tokens too: made, used and revoked through the follower.
    let other_ns = ha.token(1, "other-viewer", "view", Some("other"));
    let gateway = ha.token(1, "gw", "gateway", None);
    let revoked = ha.token(1, "soon-revoked", "view", None);
    assert_eq!(describe(&revoked)["view"]["app"]["replicas"], 5);
    let out = ha.cli(1, &["token", "revoke", "soon-revoked"]);
    assert!(out.success, "revoke: {}", out.stderr);

    // The leader stops answering (it still holds the lease): the follower
    // answers reads all the same, as current, from its cache.
    ha.replicas[0].pause();
    let apps = wait_until(T, "the follower to answer with the leader stopped", || {
        ha.get(&http, 1, shoal_api::endpoints::APPS, Some(&admin))
    });
    assert_eq!(apps.0, 200, "{}", apps.2);
    assert_eq!(apps.1, None, "a read from the cache is current: {}", apps.2);
    assert!(apps.2.contains("\"web\""), "{}", apps.2);
    let instances = ha
        .get(&http, 1, "/v1/instances?namespace=default", Some(&admin))
        .expect("instances from the cache");
    assert_eq!(instances.0, 200, "{}", instances.2);
    let v = describe(&admin);
    assert_eq!(v["view"]["app"]["replicas"], 5, "{v}");

    // The same rules as the leader's, deny by default.
    let refused = |token: Option<&str>, path: &str, status: u16, code: &str| {
        let (got, _, body) = ha
            .get(&http, 1, path, token)
            .unwrap_or_else(|| panic!("no answer to {path}"));
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(code), "{path}: {body}");
    };
    refused(None, shoal_api::endpoints::APPS, 401, "unauthenticated");
    refused(Some("shoal_nonsense"), app, 401, "unauthenticated");
    refused(Some(&revoked), app, 401, "unauthenticated");
    refused(Some(&other_ns), app, 403, "forbidden");
    refused(
        Some(&other_ns),
        shoal_api::endpoints::APPS,
        403,
        "forbidden",
    );
    refused(
        Some(&gateway),
        shoal_api::endpoints::TOKENS,
        403,
        "forbidden",
    );
    // What the tokens may read, they read.
    let (status, _, body) = ha
        .get(&http, 1, "/v1/apps?namespace=other", Some(&other_ns))
        .expect("an answer");
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, _, body) = ha
        .get(&http, 1, shoal_api::endpoints::ROUTES, Some(&gateway))
        .expect("an answer");
    assert_eq!(status, 200, "{body}");

    // Every answer above came while the stopped replica still led: none
    // was the leader's.
    assert_eq!(ha.leader(), Some(0));
    // A write still needs the leader.
    let write = ha.send(
        &http,
        1,
        reqwest::Method::POST,
        &format!("{app}/scale"),
        Some(serde_json::json!({ "replicas": 1 })),
        Some(&admin),
    );
    assert!(
        write.is_none(),
        "a write answered without the leader: {write:?}"
    );
    ha.replicas[0].signal("-CONT");
}

/// What `shoal get control-planes -o json` through replica `via` says:
/// the leader's URL, each replica's (URL, state), and the store; none
/// while it cannot answer.
type ControlPlanesSeen = (
    Option<String>,
    BTreeSet<(String, String)>,
    serde_json::Value,
);

fn control_planes(ha: &Ha, via: usize) -> Option<ControlPlanesSeen> {
    let out = ha.cli(via, &["get", "control-planes", "-o", "json"]);
    if !out.success {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let replicas = v["replicas"].as_array()?;
    // The leader is listed first.
    if let Some(first) = replicas.first() {
        assert_eq!(first["state"] == "leader", v["leader"].is_string(), "{v:#}");
    }
    let states = replicas
        .iter()
        .map(|r| {
            (
                r["url"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Some((
        v["leader"].as_str().map(String::from),
        states,
        v["store"].clone(),
    ))
}

/// `shoal get control-planes` through any replica: which one leads, each
/// one's URL and state, and the store. A replica killed is unreachable
/// within its lease, one stopped cleanly leaves the list, one restarted
/// follows again. Read-only, for whoever may read the whole cluster.
#[test]
fn get_control_planes_shows_the_leader_each_replica_and_the_store() {
    let mut ha = Ha::start(1, 3);
    assert_eq!(ha.leader(), Some(0));
    let states = |ha: &Ha, list: &[(usize, &str)]| -> BTreeSet<(String, String)> {
        list.iter()
            .map(|(i, s)| (ha.urls[*i].clone(), s.to_string()))
            .collect()
    };
    let all_up = states(&ha, &[(0, "leader"), (1, "follower"), (2, "follower")]);
    // Each replica lists itself as it starts; any replica answers.
    for via in 0..3 {
        let (leader, seen, store) = wait_until(T, "every replica listed", || {
            control_planes(&ha, via).filter(|(_, s, _)| *s == all_up)
        });
        assert_eq!(leader.as_deref(), Some(ha.urls[0].as_str()));
        let endpoints: Vec<String> = ha
            .store_arg()
            .trim_start_matches("etcd://")
            .split(',')
            .map(String::from)
            .collect();
        assert_eq!(
            store,
            serde_json::json!({"kind": "etcd", "endpoints": endpoints, "prefix": "/shoal/"}),
            "{seen:?}"
        );
    }
    let out = ha.cli(2, &["get", "control-planes"]);
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("URL") && lines[0].contains("STATE"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with(&ha.urls[0])
            && lines[1].contains(" leader ")
            && lines[1].contains("etcd://"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches(" follower ").count(),
        2,
        "{}",
        out.stdout
    );

    // Deny by default: no token, a revoked one, a namespace's, a
    // gateway's; a cluster viewer reads it.
    let http = ha.http();
    let path = shoal_api::endpoints::CONTROL_PLANES;
    let viewer = ha.token(0, "viewer", "view", None);
    let tenant = ha.token(0, "tenant", "admin", Some("team-a"));
    let gateway = ha.token(0, "gw", "gateway", None);
    let revoked = ha.token(0, "revoked", "view", None);
    let out = ha.cli(0, &["token", "revoke", "revoked"]);
    assert!(out.success, "{}", out.stderr);
    for via in 0..3 {
        // A follower learns of new tokens through its watch.
        let (_, _, body) = wait_until(T, "the viewer's answer", || {
            ha.get(&http, via, path, Some(&viewer))
                .filter(|a| a.0 == 200)
        });
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["replicas"].as_array().map(Vec::len), Some(3), "{v}");
        for (token, status, code) in [
            (None, 401, "unauthenticated"),
            (Some(revoked.as_str()), 401, "unauthenticated"),
            (Some(tenant.as_str()), 403, "forbidden"),
            (Some(gateway.as_str()), 403, "forbidden"),
        ] {
            // ... and of the revocation.
            let (got, _, body) = wait_until(T, "the refusal", || {
                let a = ha.get(&http, via, path, token)?;
                (a.0 == status).then_some(a)
            });
            assert_eq!(got, status, "replica {via}: {body}");
            assert!(body.contains(code), "replica {via}: {body}");
        }
    }

    // A replica stopped cleanly is gone, not unreachable.
    ha.replicas[2].signal("-TERM");
    assert!(ha.replicas[2].wait(T).is_some(), "replica 2 did not stop");
    let two_up = states(&ha, &[(0, "leader"), (1, "follower")]);
    wait_until(T, "the stopped replica to leave the list", || {
        control_planes(&ha, 1).filter(|(_, s, _)| *s == two_up)
    });

    // The leader killed: another leads, and the killed one is unreachable.
    ha.replicas[0].kill9();
    let after = states(&ha, &[(1, "leader"), (0, "unreachable")]);
    let (leader, _, _) = wait_until(T, "a new leader and the killed one unreachable", || {
        control_planes(&ha, 1).filter(|(_, s, _)| *s == after)
    });
    assert_eq!(leader.as_deref(), Some(ha.urls[1].as_str()));
    let out = ha.cli(1, &["get", "control-planes"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&ha.urls[0]) && l.contains(" unreachable ")),
        "{}",
        out.stdout
    );

    // Back on its address, it follows.
    let listen = ha.urls[0].trim_start_matches("https://").to_string();
    ha.spawn_replica_at(0, &listen);
    let back = states(&ha, &[(1, "leader"), (0, "follower")]);
    wait_until(T, "the restarted replica to follow", || {
        control_planes(&ha, 0).filter(|(_, s, _)| *s == back)
    });
}

/// What a client asked of one app, in order, and whether it was answered
/// success (acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Apply { replicas: u64, version: u64 },
    Scale(u64),
    Delete,
}

/// Each app's operations, in order, and whether each was acknowledged.
type Histories = std::collections::BTreeMap<String, Vec<(Op, bool)>>;

/// What an app is: gone, or (replicas, version).
type AppState = Option<(u64, u64)>;

/// The state `op` leaves `state` in, if it can succeed there (scaling or
/// deleting an app that is gone fails).
fn step(state: AppState, op: Op) -> Option<AppState> {
    match op {
        Op::Apply { replicas, version } => Some(Some((replicas, version))),
        Op::Scale(r) => state.map(|(_, v)| Some((r, v))),
        Op::Delete => state.map(|_| None),
    }
}

/// The states an app may be in after `log`: an acknowledged operation
/// surely applied; one that failed may or may not have (its answer was
/// lost, or it was refused).
fn acceptable(log: &[(Op, bool)]) -> Vec<AppState> {
    let mut states: Vec<AppState> = vec![None];
    for (op, ack) in log {
        let applied: Vec<AppState> = states.iter().filter_map(|s| step(*s, *op)).collect();
        if *ack {
            states = applied;
        } else {
            states.extend(applied);
        }
        states.sort();
        states.dedup();
    }
    states
}

#[test]
fn a_history_of_concurrent_writes_survives_leaders_killed() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let mut ha = Ha::start(3, 3);
    for i in 0..2 {
        let all = ha.all_urls();
        ha.add_node(i, &all);
    }
    let servers = ha.all_urls();
    let (admin, ca) = (ha.admin.clone(), ha.ca());
    let done_ops = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Clients: three of them, three apps each, every app through apply,
    // scale, apply of a new version, then scale or delete.
    let plan = |j: usize| -> Vec<Op> {
        let mut ops = vec![
            Op::Apply {
                replicas: 1,
                version: 1,
            },
            Op::Scale(2),
            Op::Apply {
                replicas: 2,
                version: 2,
            },
            Op::Scale(1),
            Op::Apply {
                replicas: 1,
                version: 3,
            },
        ];
        if j == 2 {
            ops.push(Op::Delete);
        }
        ops
    };
    let total: usize = 3 * (0..3).map(|j| plan(j).len()).sum::<usize>();
    let logs: Arc<Mutex<Histories>> = Arc::default();
    let mut clients = Vec::new();
    for k in 0..3 {
        let (servers, admin, ca) = (servers.clone(), admin.clone(), ca.clone());
        let (logs, done_ops) = (logs.clone(), done_ops.clone());
        let dir = ha.dir.path().to_path_buf();
        let ops: Vec<(String, Vec<Op>)> = (0..3).map(|j| (format!("c{k}-{j}"), plan(j))).collect();
        clients.push(std::thread::spawn(move || {
            let longest = ops.iter().map(|(_, o)| o.len()).max().unwrap_or(0);
            for step in 0..longest {
                for (app, app_ops) in &ops {
                    let Some(op) = app_ops.get(step).copied() else {
                        continue;
                    };
                    let path;
                    let args: Vec<String> = match op {
                        Op::Apply { replicas, version } => {
                            path = dir.join(format!("{app}-{version}-{replicas}.toml"));
                            let text = format!(
                                "name = \"{app}\"\nmodule = \"{}\"\nreplicas = {replicas}\nenv = {{ VERSION = \"{version}\" }}\n",
                                example("http-component.wasm").display()
                            );
                            std::fs::write(&path, text).unwrap();
                            vec!["apply".into(), "-f".into(), path.display().to_string()]
                        }
                        Op::Scale(r) => vec![
                            "scale".into(),
                            "app".into(),
                            app.clone(),
                            "--replicas".into(),
                            r.to_string(),
                        ],
                        Op::Delete => vec!["delete".into(), "app".into(), app.clone()],
                    };
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    // As a careful client does: again while the cluster
                    // says it is between leaders (a failed attempt may
                    // still have been done: the history allows for it).
                    let out = wait_until(T, "a leader to answer a write", || {
                        let out = cli_env(&servers, Some(&admin), &[("SHOAL_CA", &ca)], &args);
                        let transient = ["no_leader", "store_unavailable", "leader_lost"]
                            .iter()
                            .any(|c| out.stderr.contains(c));
                        (out.success || !transient).then_some(out)
                    });
                    logs.lock()
                        .unwrap()
                        .entry(app.clone())
                        .or_default()
                        .push((op, out.success));
                    done_ops.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // An observer: revisions never go backwards; an instance id never
    // names two apps.
    let observer = {
        let (servers, admin, ca, stop) = (servers.clone(), admin.clone(), ca.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
            let mut owners: BTreeMap<String, String> = BTreeMap::new();
            let mut looks = 0;
            while !stop.load(Ordering::SeqCst) {
                let env = [("SHOAL_CA", ca.as_str())];
                let apps = cli_env(
                    &servers,
                    Some(&admin),
                    &env,
                    &["get", "apps", "-A", "-o", "json"],
                );
                let insts = cli_env(
                    &servers,
                    Some(&admin),
                    &env,
                    &["get", "instances", "-A", "-o", "json"],
                );
                let (Ok(apps), Ok(insts)) = (
                    serde_json::from_str::<serde_json::Value>(&apps.stdout),
                    serde_json::from_str::<serde_json::Value>(&insts.stdout),
                ) else {
                    continue;
                };
                looks += 1;
                let mut present = BTreeSet::new();
                for a in apps.as_array().into_iter().flatten() {
                    let name = a["app"]["key"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let rev = a["app"]["current-revision"].as_u64().unwrap_or(0);
                    let seen = revisions.entry(name.clone()).or_insert(rev);
                    assert!(rev >= *seen, "{name}: revision {rev} after {seen}");
                    *seen = rev;
                    present.insert(name);
                }
                // A deleted app may come back only as new: forget it.
                revisions.retain(|n, _| present.contains(n));
                for i in insts.as_array().into_iter().flatten() {
                    let id = i["id"].as_str().unwrap_or_default().to_string();
                    let app = i["app"]["name"].as_str().unwrap_or_default().to_string();
                    let owner = owners.entry(id.clone()).or_insert(app.clone());
                    assert_eq!(*owner, app, "instance {id} named two apps");
                }
            }
            looks
        })
    };
    // Two leaders killed while the clients write, each restarted.
    for share in [1, 2] {
        wait_until(Duration::from_secs(120), "the clients to get on", || {
            (done_ops.load(Ordering::SeqCst) * 3 >= total * share).then_some(())
        });
        let leader = wait_until(T, "a leader", || ha.leader());
        ha.restart_replica(leader);
    }
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let looks = observer.join().unwrap();
    assert!(looks > 0, "the observer never read the cluster");

    // Every acknowledged write is visible: each app is in a state its
    // history allows.
    let logs = logs.lock().unwrap().clone();
    let acknowledged = logs.values().flatten().filter(|(_, ack)| *ack).count();
    eprintln!("{acknowledged} of {total} operations acknowledged");
    assert!(
        acknowledged * 2 >= total,
        "too few writes got through: {logs:?}"
    );
    let final_states = wait_until(T, "the apps through a replica", || {
        let out = ha.cli_until_led(1, &["get", "apps", "-A", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|a| {
                    let name = a["app"]["key"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let replicas = a["app"]["replicas"].as_u64().unwrap_or(0);
                    let version = a["template"]["env"]["VERSION"]
                        .as_str()
                        .or_else(|| a["template"]["grants"]["env"]["VERSION"].as_str())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    (name, (replicas, version))
                })
                .collect::<BTreeMap<_, _>>(),
        )
    });
    for (app, log) in &logs {
        let state = final_states.get(app).copied();
        let allowed = acceptable(log);
        assert!(
            allowed.contains(&state),
            "{app} is {state:?}; its history {log:?} allows {allowed:?}"
        );
    }
    // The instances the survivors run have ids of their own.
    let insts = ha.instances(1).unwrap_or_default();
    let ids: BTreeSet<&String> = insts.iter().map(|i| &i.0).collect();
    assert_eq!(ids.len(), insts.len());
}

#[test]
fn histories_allow_what_may_have_happened() {
    let apply = |r, v| Op::Apply {
        replicas: r,
        version: v,
    };
    assert_eq!(acceptable(&[(apply(1, 1), true)]), vec![Some((1, 1))]);
    assert_eq!(
        acceptable(&[(apply(1, 1), true), (Op::Scale(2), false)]),
        vec![Some((1, 1)), Some((2, 1))]
    );
    assert_eq!(
        acceptable(&[
            (apply(1, 1), true),
            (Op::Delete, false),
            (Op::Scale(3), true)
        ]),
        vec![Some((3, 1))]
    );
    assert_eq!(
        acceptable(&[(apply(1, 1), false)]),
        vec![None, Some((1, 1))]
    );
}
