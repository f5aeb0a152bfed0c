//! `shoal control-plane` serves its API over TLS with the cluster CA it
//! creates at its first start (issue 11), real processes and real TLS.

mod support;

use std::path::Path;
use std::time::Duration;
use support::Proc;

const T: Duration = Duration::from_secs(60);

fn start(data: &Path) -> (Proc, String) {
    let data = data.display().to_string();
    let p = Proc::spawn(
        &[
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--tls-san",
            "cp.example",
        ],
        &[],
    );
    let line = p
        .out
        .wait_for(T, |l| {
            l.contains("Control plane listening on") && l.contains("https://")
        })
        .unwrap_or_else(|| panic!("no https URL; output: {:#?}", p.out.all()));
    let start = line.find("https://").unwrap();
    let url = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    (p, url)
}

fn stop(mut p: Proc) {
    p.signal("-TERM");
    assert!(p.wait(T).is_some_and(|s| s.success()), "{:#?}", p.out.all());
}

/// How many apps the control plane lists to a client built by `client`.
fn apps(client: shoal_client::Builder) -> Result<usize, shoal_client::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = client.timeout(T).build()?;
        Ok(client.apps(&Default::default()).await?.len())
    })
}

#[test]
fn the_api_is_served_over_tls_with_a_ca_made_at_first_start_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let (cp, url) = start(&data);
    let ca_file = data.join("ca.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        cp.out
            .all()
            .iter()
            .any(|l| l.contains("Created the cluster CA"))
    );
    let ca_pem = std::fs::read(&ca_file).unwrap();
    let admin = admin_token(&data);
    let trusting = || {
        shoal_client::Client::builder(&url)
            .ca_file(&ca_file)
            .token(&admin)
    };
    assert_eq!(apps(trusting()).unwrap(), 0);

    // A client that trusts another cluster's CA is refused, in words.
    let other = tempfile::tempdir().unwrap();
    let (other, _) = shoal_pki::ClusterCa::load_or_create(other.path()).unwrap();
    let err =
        apps(shoal_client::Client::builder(&url).ca_pem(other.cert_pem().to_string())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("not signed by the CA"), "{message}");

    // Plain HTTP to the TLS port gets nothing from the API.
    let plain = url.replacen("https://", "http://", 1);
    assert!(apps(shoal_client::Client::builder(&plain)).is_err());

    // A restart keeps the CA: the file clients already have still works.
    stop(cp);
    let (cp, url) = start(&data);
    assert_eq!(std::fs::read(&ca_file).unwrap(), ca_pem);
    assert!(
        !cp.out
            .all()
            .iter()
            .any(|l| l.contains("Created the cluster CA"))
    );
    assert_eq!(
        apps(
            shoal_client::Client::builder(&url)
                .ca_file(&ca_file)
                .token(&admin)
        )
        .unwrap(),
        0
    );
    stop(cp);
}

#[test]
fn plain_http_is_refused_off_the_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp").display().to_string();
    let mut p = Proc::spawn(
        &[
            "control-plane",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &data,
            "--plain-http",
        ],
        &[],
    );
    let status = p.wait(T).expect("control plane exits");
    assert!(!status.success());
    assert!(
        p.out
            .wait_for(T, |l| l.contains("--plain-http is only for a loopback"))
            .is_some(),
        "{:#?}",
        p.out.all()
    );
}

/// The admin token the control plane wrote into `data` at its first start.
fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// `shoal ARGS` against `server`, trusting `ca` through `$SHOAL_CA`.
fn cli_with_ca(server: &str, ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let data = ca.and_then(Path::parent);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
    if let Some(d) = data {
        cmd.env("SHOAL_TOKEN", admin_token(d));
    }
    cmd.args(args)
        .env("SHOAL_CONFIG", support::NO_CONFIG)
        .env("SHOAL_SERVER", server)
        .env("SHOAL_LOG", "warn")
        .env_remove("SHOAL_CA")
        .stdin(std::process::Stdio::null());
    if let Some(ca) = ca {
        cmd.env("SHOAL_CA", ca);
    }
    cmd.output().expect("run shoal")
}

#[test]
fn a_node_and_the_cli_given_the_ca_work_with_a_tls_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let (cp, url) = start(&data);
    let ca_file = data.join("ca.pem");
    let ca = ca_file.display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let node = Proc::spawn(
        &[
            "node",
            "--join",
            &url,
            "--ca",
            &ca,
            "--name",
            "node-1",
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            &cache,
        ],
        &[(
            "SHOAL_JOIN_TOKEN",
            std::fs::read_to_string(data.join("join.token"))
                .unwrap()
                .trim(),
        )],
    );
    node.url_after("serving on");
    support::wait_until(T, "the node to register over TLS", || {
        let out = cli_with_ca(&url, Some(&ca_file), &["get", "nodes", "-o", "json"]);
        let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "node-1" && n["state"] == "ready")
            .then_some(())
    });
    // Without the CA the CLI is refused, and says what to do.
    let out = cli_with_ca(&url, None, &["get", "nodes"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not signed by the CA"), "{stderr}");
    assert!(stderr.contains("SHOAL_CA"), "{stderr}");
    drop(node);
    stop(cp);
}
