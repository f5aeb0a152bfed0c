//! `shoal up` and its children end to end: a child that dies is started
//! again, one that cannot start fails `up`, and `--exit-with-parent`
//! follows the parent process, not standard input.

mod support;

use shoal_api::endpoints;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Proc, wait_until};

/// Generous: the first `shoal up` of a test compiles the demo module.
const T: Duration = Duration::from_secs(240);

/// `shoal up` on free ports in a temp dir; waits until it says it is up.
fn up(dir: &std::path::Path, extra: &[&str]) -> Proc {
    let data = dir.display().to_string();
    let mut args = vec![
        "up",
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
    p.out
        .wait_for(T, |l| l.starts_with("Shoal is up"))
        .unwrap_or_else(|| panic!("not up: {:#?}", p.out.all()));
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

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// GET `url`; `None` when nothing answers.
fn try_get(url: &str) -> Option<(u16, String)> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    Some(support::parse_response(&raw))
}

#[test]
fn up_restarts_a_gateway_killed_with_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = up(dir.path(), &["--nodes", "1"]);
    let (gateway, pid) = member(&up, "gateway");
    let hello = (200, "Hello from a wasi:http component!\n".to_string());
    assert_eq!(try_get(&gateway), Some(hello.clone()));

    kill9(pid);
    up.out
        .wait_for(T, |l| {
            l.starts_with("gateway exited (signal: 9") && l.contains("restarting it in")
        })
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    let restarted = up
        .out
        .wait_for(T, |l| l.starts_with("gateway restarted (pid "))
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    assert!(
        restarted.ends_with(&format!(" on {gateway}")),
        "{restarted}"
    );
    assert!(!restarted.contains(&format!("(pid {pid})")), "{restarted}");
    // The same front door serves again.
    wait_until(T, "the restarted gateway to serve the demo", || {
        (try_get(&gateway) == Some(hello.clone())).then_some(())
    });
    // Its log goes on where the first one's ended.
    let log = std::fs::read_to_string(dir.path().join("logs/gateway.log")).unwrap();
    assert_eq!(log.matches("Gateway listening on").count(), 2, "{log}");

    up.signal("-INT");
    let status = up.wait(T).expect("up stops on Ctrl-C");
    assert!(status.success(), "{status:?}: {:#?}", up.out.all());
}

#[test]
fn up_gives_up_on_a_child_that_keeps_dying_right_after_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = up(dir.path(), &["--nodes", "0", "--no-demo"]);
    let (_, mut pid) = member(&up, "gateway");
    let restarted = |l: &str| l.starts_with("gateway restarted (pid ");
    for kills in 1.. {
        assert!(kills < 10, "never gave up: {:#?}", up.out.all());
        kill9(pid);
        let lines = wait_until(T, "a restart, or giving up", || {
            let all = up.out.all();
            let gave_up = all
                .iter()
                .any(|l| l.starts_with("error: gateway keeps exiting"));
            (gave_up || all.iter().filter(|l| restarted(l)).count() == kills).then_some(all)
        });
        let Some(line) = lines
            .iter()
            .rfind(|l| restarted(l))
            .filter(|_| !lines.iter().any(|l| l.starts_with("error:")))
        else {
            break;
        };
        pid = line["gateway restarted (pid ".len()..]
            .split(')')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
    }
    up.out
        .wait_for(T, |l| {
            l.starts_with("error: gateway keeps exiting right after it starts (5 times in a row")
        })
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    // The rest of the cluster went down with it.
    up.out
        .wait_for(T, |l| l == "Stopped.")
        .unwrap_or_else(|| panic!("{:#?}", up.out.all()));
    let status = up.wait(T).expect("up exits when it gives up");
    assert!(!status.success());
}

/// Runs `shoal up` to its end; returns its exit status and output.
fn up_fails(dir: &std::path::Path, api: &str, gateway: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["up", "--nodes", "0", "--no-demo", "--api", api])
        .args(["--gateway", gateway, "--data-dir"])
        .arg(dir)
        .env("SHOAL_CONFIG", dir.join("config.toml"))
        .stdin(Stdio::null())
        .output()
        .expect("run shoal up");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_second_up_on_a_taken_port_fails_and_says_why() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = up(first_dir.path(), &["--nodes", "0", "--no-demo"]);
    let (api, _) = member(&first, "control-plane");
    let api = api.trim_start_matches("https://").to_string();

    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = up_fails(dir.path(), &api, "127.0.0.1:0");
    assert!(!ok, "{out}");
    assert!(!out.contains("Shoal is up"), "{out}");
    assert!(
        out.contains(&format!(
            "error: control-plane exited (exit status: 1): binding {api}: Address already in use"
        )),
        "{out}"
    );

    // A gateway port another program holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = up_fails(dir.path(), "127.0.0.1:0", &taken);
    assert!(!ok, "{out}");
    assert!(!out.contains("Shoal is up"), "{out}");
    assert!(
        out.contains(&format!(
            "error: gateway exited (exit status: 1): cannot listen on {taken}: the address is already in use"
        )),
        "{out}"
    );
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

#[test]
fn exit_with_parent_ignores_a_closed_stdin_and_follows_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.txt");
    let file = std::fs::File::create(&log).unwrap();
    // Started by hand from a background shell, as a user restarting one of
    // `up`'s children would: the shell gives it /dev/null as stdin.
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" control-plane --listen 127.0.0.1:0 --data-dir "$1" --plain-http --exit-with-parent & echo "child $!"; wait"#)
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .arg(dir.path().join("cp"))
        .env("SHOAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("sh");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let (pid, url) = wait_until(T, "the control plane to start", || {
        let text = read();
        let pid: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("child "))?
            .parse()
            .ok()?;
        let line = text.lines().find(|l| l.contains("listening on http://"))?;
        let url = line[line.find("http://")?..].split_whitespace().next()?;
        Some((pid, url.trim_end_matches('/').to_string()))
    });
    // It keeps serving while its parent lives (before, it stopped at once).
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        assert!(
            try_get(&format!("{url}{}", endpoints::HEALTHZ)).is_some_and(|(s, _)| s == 200),
            "stopped while its parent lives: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!read().contains("Stopped."), "{}", read());

    let _ = shell.kill();
    let _ = shell.wait();
    wait_until(T, "the child to stop after its parent", || {
        (read().contains("Stopped.") && ended(pid)).then_some(())
    });
}

/// `shoal up`, then the client commands with no flags: `up` wrote a
/// context (the API's https URL, the cluster CA, the admin token) into the
/// client config and made it current.
#[test]
fn after_up_the_client_commands_work_with_no_flags_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let _up = up(dir.path(), &["--nodes", "1", "--no-demo"]);
    let config = dir.path().join("config.toml");
    let shoal = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args)
            .env("SHOAL_CONFIG", &config)
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CA")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("shoal");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = shoal(&["get", "nodes"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("node-1"), "{stdout}");
    let (ok, _, stderr) = shoal(&["get", "apps"], &[]);
    assert!(ok, "{stderr}");

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("current-context = \"shoal-up\""), "{text}");
    assert!(text.contains("server = \"https://127.0.0.1:"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config holds the admin token");
    }
    // The flags and the environment still win over the context.
    let (ok, _, stderr) = shoal(&["get", "nodes"], &[("SHOAL_TOKEN", "shoal_not-a-token")]);
    assert!(!ok);
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    let other_ca = tempfile::tempdir().unwrap();
    shoal_pki::ClusterCa::load_or_create(other_ca.path()).unwrap();
    let other = other_ca.path().join(shoal_pki::CA_CERT_FILE);
    let (ok, _, stderr) = shoal(&["get", "nodes"], &[("SHOAL_CA", other.to_str().unwrap())]);
    assert!(!ok, "a client trusting another CA got through");
    assert!(!stderr.contains("node-1"), "{stderr}");
    // No log of the cluster holds a token, nor the password of the Redis
    // that `up` runs for the nodes' key-value stores (in files only its
    // owner reads).
    let admin = std::fs::read_to_string(dir.path().join("control-plane/admin.token")).unwrap();
    let join = std::fs::read_to_string(dir.path().join("control-plane/join.token")).unwrap();
    let redis = std::fs::read_to_string(dir.path().join("redis/password")).unwrap();
    #[cfg(unix)]
    for file in ["redis/password", "redis/redis.conf"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Every node serves Prometheus metrics on the address `up` prints, to
    // the holder of the scrape token only.
    let metrics_token = std::fs::read_to_string(dir.path().join("metrics.token")).unwrap();
    let line = _up
        .out
        .wait_for(T, |l| l.starts_with("  node-1 ") && l.ends_with("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address: {:#?}", _up.out.all()));
    let url = line.split_whitespace().nth(1).unwrap().to_string();
    let bearer = format!("Bearer {}", metrics_token.trim());
    let (status, text) = support::http_with("GET", &url, &[("authorization", &bearer)], b"");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("shoal_node_instances"), "{text}");
    let (status, _) = support::http_with("GET", &url, &[], b"");
    assert_eq!(status, 401);
    let line = _up
        .out
        .wait_for(T, |l| {
            l.starts_with("  gateway ") && l.ends_with("/metrics")
        })
        .unwrap_or_else(|| panic!("no gateway metrics address: {:#?}", _up.out.all()));
    let url = line.split_whitespace().nth(1).unwrap().to_string();
    let (status, text) = support::http_with("GET", &url, &[("authorization", &bearer)], b"");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("shoal_gateway_"), "{text}");
    let (status, _) = support::http_with("GET", &url, &[], b"");
    assert_eq!(status, 401);
    let (redis_url, _) = member(&_up, "redis");
    assert!(redis_url.starts_with("redis://127.0.0.1:"), "{redis_url}");
    assert!(!redis_url.contains('@'), "{redis_url}");
    for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let log = std::fs::read_to_string(&path).unwrap();
        for secret in [
            admin.trim(),
            join.trim(),
            redis.trim(),
            metrics_token.trim(),
        ] {
            assert!(!log.contains(secret), "{} holds a token", path.display());
        }
    }
}
