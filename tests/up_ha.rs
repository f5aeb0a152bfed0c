//! `shoal up --ha` end to end: etcd, three control-plane replicas, nodes,
//! the gateway and the demo in one command; the leading replica killed,
//! the CLI (through the config `up` wrote), writes and the demo go on; a
//! second `up` on the same data dir finds the cluster again. etcd comes
//! from `scripts/install-etcd.sh` when it is not installed; without it
//! this test fails, it never skips.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Proc, wait_until};

/// Generous: the first `shoal up` compiles the demo module, and etcd syncs
/// every write to disk.
const T: Duration = Duration::from_secs(240);

const HELLO: &str = "Hello from a wasi:http component!\n";

/// `shoal up --ha` on free ports in `dir`; waits until it says it is up.
fn up_ha(dir: &Path, extra: &[&str]) -> Proc {
    // `shoal up` finds etcd on PATH, where the script puts it.
    shoal_etcd::testing::etcd_binary();
    let data = dir.join("data").display().to_string();
    let mut args = vec![
        "up",
        "--ha",
        "--api",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ];
    args.extend_from_slice(extra);
    let config = dir.join("config.toml").display().to_string();
    let p = Proc::spawn(&args, &[("SHOAL_CONFIG", config.as_str())]);
    let said = p.out.wait_for(T, |l| {
        l.starts_with("Shoal is up") || l.starts_with("error:")
    });
    assert!(
        said.is_some_and(|l| l.starts_with("Shoal is up")),
        "not up: {:#?}",
        p.out.all()
    );
    p
}

/// The URL and pid `up` lists for a child: `  NAME  URL  pid N  log: ...`.
fn member(up: &Proc, name: &str) -> (String, u32) {
    let line = up
        .out
        .wait_for(T, |l| {
            l.starts_with(&format!("  {name} ")) && l.contains(" pid ")
        })
        .unwrap_or_else(|| panic!("no {name}: {:#?}", up.out.all()));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[1].to_string(), cols[3].parse().expect("a pid"))
}

/// `shoal ARGS` with nothing but the client config `up` wrote.
fn shoal(config: &Path, args: &[&str]) -> support::CliOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("SHOAL_CONFIG", config)
        .env("SHOAL_LOG", "warn")
        .env_remove("SHOAL_SERVER")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_CA")
        .env_remove("SHOAL_CONTEXT")
        .stdin(Stdio::null())
        .output()
        .expect("run shoal");
    support::CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `shoal ARGS` again while no replica leads (an election under way
/// answers `no_leader`, and says to try again); fails on any other error.
fn shoal_until_led(config: &Path, args: &[&str]) -> support::CliOutput {
    wait_until(T, "a leader to answer", || {
        let out = shoal(config, args);
        (!out.stderr.contains("no_leader")).then_some(out)
    })
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn gateway_get(gateway: &str) -> (u16, String) {
    support::http("GET", &format!("{gateway}/"), b"")
}

/// A client of `up`'s etcd, with the client certificate `up` made for
/// the replicas (`identity`), or with none.
fn etcd_client(dir: &Path, etcd: &[String], identity: bool) -> shoal_etcd::Client {
    let pki = dir.join("data/etcd/pki");
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let mut config = shoal_etcd::ClientConfig::new(etcd.to_vec());
    config.ca_pem = Some(read("ca.pem"));
    if identity {
        let mut pem = read("client.pem");
        pem.push(b'\n');
        pem.extend(read("client-key.pem"));
        config.identity_pem = Some(pem);
    }
    shoal_etcd::Client::new(config).unwrap()
}

/// The URL the leader key names, read from etcd itself.
fn leader_url(rt: &tokio::runtime::Runtime, etcd: &shoal_etcd::Client) -> Option<String> {
    let kv = rt.block_on(etcd.get(b"/shoal/leader")).ok()??;
    String::from_utf8(kv.value).ok()
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

const CHILDREN: [&str; 9] = [
    "etcd-0",
    "etcd-1",
    "etcd-2",
    "control-plane-0",
    "control-plane-1",
    "control-plane-2",
    "node-1",
    "node-2",
    "gateway",
];

#[test]
fn up_ha_survives_the_leading_replica_killed_and_finds_its_state_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let mut up = up_ha(dir.path(), &["--nodes", "2"]);
    let etcd: Vec<String> = (0..3)
        .map(|i| member(&up, &format!("etcd-{i}")).0)
        .collect();
    let replicas: Vec<(String, u32)> = (0..3)
        .map(|i| member(&up, &format!("control-plane-{i}")))
        .collect();
    let (gateway, _) = member(&up, "gateway");
    assert_eq!(gateway_get(&gateway), (200, HELLO.to_string()));

    // The client config names every replica.
    let text = std::fs::read_to_string(&config).unwrap();
    for (url, _) in &replicas {
        assert!(text.contains(&format!("\"{url}\"")), "{url}: {text}");
    }

    // etcd answers only those with a certificate `up` made.
    for url in &etcd {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }
    let anonymous = etcd_client(dir.path(), &etcd, false);
    assert!(rt.block_on(anonymous.get(b"/shoal/leader")).is_err());
    let etcd_client = etcd_client(dir.path(), &etcd, true);

    // The leader, as etcd names it and as `up` says.
    let leader = wait_until(T, "a leader", || leader_url(&rt, &etcd_client));
    let led = replicas
        .iter()
        .position(|(url, _)| *url == leader)
        .unwrap_or_else(|| panic!("{leader} is none of {replicas:?}"));
    let says = format!(
        "control-plane-{led} leads the control plane (the etcd key /shoal/leader names the leader's URL)."
    );
    up.out
        .wait_for(T, |l| l == says)
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    let out = shoal(&config, &["get", "apps"]);
    assert!(out.success && out.stdout.contains("hello"), "{out:?}");
    // A secret sealed by this leader, with the one key `up` gives every
    // replica (kept beside them, readable by its owner only).
    let key = dir.path().join("data/secrets.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let out = shoal(
        &config,
        &[
            "secret",
            "create",
            "db",
            "--from-literal",
            "pw=sealed-by-the-first-leader",
        ],
    );
    assert!(out.success, "{out:?}");

    kill9(replicas[led].1);
    // The data plane does not wait for the control plane.
    for _ in 0..20 {
        assert_eq!(gateway_get(&gateway), (200, HELLO.to_string()));
    }
    // Reads and writes through the config, once another term starts.
    let out = shoal_until_led(&config, &["get", "apps"]);
    assert!(out.success && out.stdout.contains("hello"), "{out:?}");
    let out = shoal_until_led(&config, &["scale", "app", "hello", "--replicas", "4"]);
    assert!(out.success, "scale after the leader died: {out:?}");
    wait_until(T, "4 replicas of hello ready", || {
        let out = shoal(&config, &["get", "apps"]);
        out.stdout.contains("4/4").then_some(())
    });
    // Another leader opens what the first sealed: an app reading the
    // secret starts (its node got the value from the new leader).
    let manifest = dir.path().join("reader.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"reader\"\nmodule = \"{}\"\n[config]\npw = {{ secret = \"db\", key = \"pw\" }}\n",
            support::example("http-component.wasm").display()
        ),
    )
    .unwrap();
    let out = shoal_until_led(
        &config,
        &[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert!(
        out.success,
        "an app reading a secret after the leader died: {out:?}"
    );
    assert_eq!(gateway_get(&gateway), (200, HELLO.to_string()));
    // A replica leads again (the one `up` restarted may win the election:
    // it listens where the dead one did).
    let again = wait_until(T, "a leader again", || leader_url(&rt, &etcd_client));
    assert!(replicas.iter().any(|(url, _)| *url == again), "{again}");
    up.out
        .wait_for(T, |l| {
            l.starts_with(&format!("control-plane-{led} exited (signal: 9"))
        })
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    let restarted = up
        .out
        .wait_for(T, |l| {
            l.starts_with(&format!("control-plane-{led} restarted (pid "))
        })
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    let restarted: u32 = restarted
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{restarted}"));

    // Ctrl-C stops every child, etcd included; the replicas stopped
    // cleanly, which they cannot without etcd.
    let mut pids: Vec<(&str, u32)> = CHILDREN.iter().map(|n| (*n, member(&up, n).1)).collect();
    pids.push(("the restarted replica", restarted));
    up.signal("-INT");
    let status = up.wait(T).expect("up stops on Ctrl-C");
    assert!(status.success(), "{status:?}: {:#?}", up.out.all());
    for (name, pid) in pids {
        assert!(ended(pid), "{name} (pid {pid}) still runs");
    }
    let logs = dir.path().join("data/logs");
    for i in 0..3 {
        let log = std::fs::read_to_string(logs.join(format!("control-plane-{i}.log"))).unwrap();
        assert_eq!(
            log.lines().last(),
            Some("Stopped."),
            "control-plane-{i}: {log}"
        );
    }

    // A second `up` on the same data dir: the same etcd members, the app
    // as it was left.
    let up = up_ha(dir.path(), &["--nodes", "2", "--no-demo"]);
    let etcd_again: Vec<String> = (0..3)
        .map(|i| member(&up, &format!("etcd-{i}")).0)
        .collect();
    assert_eq!(etcd_again, etcd);
    let (gateway, _) = member(&up, "gateway");
    wait_until(T, "4 replicas of hello ready again", || {
        let out = shoal_until_led(&config, &["get", "apps"]);
        out.stdout.contains("4/4").then_some(())
    });
    wait_until(T, "the demo through the new gateway", || {
        (gateway_get(&gateway) == (200, HELLO.to_string())).then_some(())
    });
}
