//! Compile once for the cluster, with real processes: the control plane
//! compiles a module when an apply brings it and signs the artifact with
//! the cluster CA; nodes load it instead of compiling, keep it on disk with
//! its signature, and refuse one whose signature does not check out.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Cluster, wait_until};

const T: Duration = Duration::from_secs(90);

fn web(replicas: u32) -> String {
    format!(
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nreplicas = {replicas}\n\n[[routes]]\npath = \"/\"\n"
    )
}

/// A TLS cluster whose nodes each have a cache dir of their own.
fn cluster(nodes: usize, node_extra: &[&str]) -> Cluster {
    let caches = tempfile::tempdir().unwrap().keep();
    let extra: Vec<String> = node_extra.iter().map(|s| s.to_string()).collect();
    Cluster::start_with(nodes, &["--tls"], move |i| {
        let mut args = vec![
            "--cache-dir".to_string(),
            caches.join(format!("node-{}", i + 1)).display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        args
    })
}

fn node_cache(c: &Cluster, i: usize) -> PathBuf {
    let args: Vec<String> =
        std::fs::read_to_string(format!("/proc/{}/cmdline", c.nodes[i].child.id()))
            .unwrap()
            .split('\0')
            .map(str::to_string)
            .collect();
    let at = args.iter().position(|a| a == "--cache-dir").unwrap();
    PathBuf::from(&args[at + 1])
}

/// The kept artifacts (`.cwasm`) in a cache dir, with whether each has its
/// signature file beside it.
fn kept(dir: &Path) -> Vec<(PathBuf, bool)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, bool)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .map(|p| {
            let mut sig = p.clone().into_os_string();
            sig.push(".sig");
            let signed = Path::new(&sig).exists();
            (p, signed)
        })
        .collect();
    out.sort();
    out
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| l.contains(what)).count()
}

/// Every node's start line of an instance says where its code came from.
fn sources(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i]
        .out
        .all()
        .into_iter()
        .filter(|l| l.contains("instance started"))
        .filter_map(|l| {
            let at = l.find("source=")?;
            Some(l[at + 7..].split_whitespace().next()?.to_string())
        })
        .collect()
}

#[test]
fn a_module_is_compiled_once_for_the_cluster_and_every_node_loads_it() {
    let mut c = cluster(3, &[]);
    let manifest = c.manifest("web.toml", &web(3));
    c.apply_wait(&manifest);
    // One replica a node, each started from the control plane's artifact.
    for i in 0..3 {
        wait_until(T, "a started instance on each node", || {
            (!sources(&c, i).is_empty()).then_some(())
        });
        assert_eq!(sources(&c, i), ["Fetched"], "node {i}");
        let lines = c.nodes[i].out.all();
        assert_eq!(
            count(&lines, "compile cache miss"),
            0,
            "node {i} compiled: {lines:#?}"
        );
        // Kept on disk with its signature (written after the start).
        wait_until(T, "the artifact kept with its signature", || {
            let kept = kept(&node_cache(&c, i));
            (kept.len() == 1 && kept[0].1).then_some(())
        });
    }
    // The control plane compiled it once, for all three.
    let cp = c.cp.out.all();
    assert_eq!(count(&cp, "artifact ready for the nodes"), 1, "{cp:#?}");
    let gw = c.start_gateway(&[]);
    wait_until(T, "the app to answer through the gateway", || {
        let (status, body) = support::http("GET", &format!("{gw}/"), b"");
        (status == 200).then_some(body)
    });
}

#[test]
fn a_node_refuses_a_kept_artifact_whose_signature_does_not_check_out() {
    let mut c = cluster(1, &[]);
    let manifest = c.manifest("web.toml", &web(1));
    c.apply_wait(&manifest);
    wait_until(T, "the instance to start", || {
        (!sources(&c, 0).is_empty()).then_some(())
    });
    let cache = node_cache(&c, 0);
    let artifact = wait_until(T, "the artifact kept with its signature", || {
        let kept = kept(&cache);
        (kept.len() == 1 && kept[0].1).then(|| kept[0].0.clone())
    });

    // Change one byte of the kept code: its hash no longer matches what
    // the CA signed. The restarted node must not run it.
    c.nodes[0].kill9();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    c.nodes.remove(0);
    c.node_urls.remove(0);
    c.add_node(0, vec!["--cache-dir".into(), cache.display().to_string()]);
    wait_until(T, "the restarted node to start the instance again", || {
        (!sources(&c, 0).is_empty()).then_some(())
    });
    let lines = c.nodes[0].out.all();
    assert_eq!(count(&lines, "discarding a kept artifact"), 1, "{lines:#?}");
    assert_eq!(sources(&c, 0), ["Fetched"]);
    // What it keeps now is the control plane's artifact again.
    wait_until(T, "the artifact kept again", || {
        let now = std::fs::read(&artifact).ok()?;
        (now != bytes).then_some(())
    });

    // Kept intact, it is loaded from disk at the next start.
    c.nodes[0].kill9();
    c.nodes.remove(0);
    c.node_urls.remove(0);
    c.add_node(0, vec!["--cache-dir".into(), cache.display().to_string()]);
    wait_until(T, "the node to start the instance from its disk", || {
        (!sources(&c, 0).is_empty()).then_some(())
    });
    assert_eq!(sources(&c, 0), ["Disk"]);
}

#[test]
fn a_node_told_to_compile_locally_never_asks_for_artifacts() {
    let c = cluster(1, &["--artifacts", "local"]);
    let manifest = c.manifest("web.toml", &web(1));
    c.apply_wait(&manifest);
    wait_until(T, "the instance to start", || {
        (!sources(&c, 0).is_empty()).then_some(())
    });
    assert_eq!(sources(&c, 0), ["Compiled"]);
    assert_eq!(count(&c.nodes[0].out.all(), "compile cache miss"), 1);
}

/// `GET /v1/artifacts/{digest}?engine=KEY` as `token`: the status and the
/// error code, if any.
fn ask(c: &Cluster, token: &str, digest: &str, engine: &str) -> (u16, String) {
    let ca = std::fs::read(c.ca.as_ref().unwrap()).unwrap();
    let client = shoal_client::Client::builder(&c.api)
        .ca_pem(ca)
        .token(token)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(client.artifact(digest, engine, Duration::from_secs(60))) {
        Ok(_) => (200, String::new()),
        Err(shoal_client::Error::Api { status, code, .. }) => (status.as_u16(), code),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_artifact_api_refuses_what_the_caller_may_not_have() {
    let c = cluster(1, &[]);
    let manifest = c.manifest("web.toml", &web(1));
    c.apply_wait(&manifest);
    let idle = c.manifest(
        "idle.toml",
        "name = \"idle\"\nmodule = \"$EXAMPLES/hello.wasm\"\nreplicas = 0\n",
    );
    c.apply_wait(&idle);
    let digest_of = |app: &str| {
        let revisions = c.get_json("revisions");
        let r = revisions
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["app"]["name"] == app)
            .unwrap_or_else(|| panic!("no revision of {app}: {revisions:#}"))
            .clone();
        r["template"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string()
    };
    let digest = digest_of("web");
    let engine = wait_until(T, "a kept artifact on the node", || {
        let (p, _) = kept(&node_cache(&c, 0)).into_iter().next()?;
        let name = p.file_name()?.to_str()?.to_string();
        // DIGEST-ENGINE.component.cwasm
        Some(name.split('.').next()?.rsplit('-').next()?.to_string())
    });
    assert_eq!(ask(&c, &c.admin, &digest, &engine).0, 200);
    // Another engine: the node would compile for itself.
    assert_eq!(
        ask(&c, &c.admin, &digest, "0123456789abcdef"),
        (409, "engine_mismatch".into())
    );
    // A module nobody applied.
    assert_eq!(
        ask(&c, &c.admin, &"ab".repeat(32), &engine),
        (404, "not_found".into())
    );
    // Not hex.
    assert_eq!(ask(&c, &c.admin, &digest, "zz"), (422, "invalid".into()));
    // Reading every module is an admin's (and a node's, for what it runs).
    for role in ["view", "deploy"] {
        let token = c.token(&format!("t-{role}"), role, None);
        assert_eq!(
            ask(&c, &token, &digest, &engine),
            (403, "forbidden".into()),
            "{role}"
        );
    }
    // A node's own credential: the module its instance runs, and no other.
    let credential = std::fs::read_to_string(node_cache(&c, 0).join("credentials/node-1.token"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(ask(&c, &credential, &digest, &engine).0, 200);
    assert_eq!(
        ask(&c, &credential, &digest_of("idle"), &engine),
        (403, "forbidden".into())
    );
    // The join token reads no module.
    let join = c.join.clone();
    assert_eq!(ask(&c, &join, &digest, &engine), (403, "forbidden".into()));
}
