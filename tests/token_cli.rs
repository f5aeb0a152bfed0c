//! `shoal token create|list|revoke` against a real control plane that asks
//! every request for a token (issue 11).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::{CliOutput, Proc};

/// A control plane with auth enforced, over plain HTTP on the loopback;
/// its URL and the admin token it wrote at its first start.
fn start(data: &Path) -> (Proc, String, String) {
    let data_arg = data.display().to_string();
    let p = Proc::spawn(
        &[
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
            "--plain-http",
            "--auth",
            "enforce",
        ],
        &[],
    );
    let url = p.url_after("Control plane listening on");
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (p, url, admin)
}

/// Runs `shoal ARGS` against `server` with `token` (or none).
fn shoal(server: &str, token: Option<&str>, args: &[&str]) -> CliOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.args(args)
        .env("SHOAL_SERVER", server)
        .env("SHOAL_LOG", "warn")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_CA")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("SHOAL_TOKEN", t);
    }
    let out = cmd.output().expect("run shoal");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn manifest(dir: &Path, ns: &str) -> PathBuf {
    let p = dir.join(format!("{ns}.toml"));
    let module = support::example("hello.wasm");
    std::fs::write(
        &p,
        format!(
            "name = \"web\"\nnamespace = \"{ns}\"\nmodule = {:?}\n",
            module.display().to_string()
        ),
    )
    .unwrap();
    p
}

#[test]
fn an_admin_makes_a_namespace_token_that_deploys_there_only_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, url, admin) = start(&dir.path().join("cp"));

    // No token: refused in words.
    let out = shoal(&url, None, &["token", "list"]);
    assert!(!out.success);
    assert!(out.stderr.contains("unauthenticated"), "{}", out.stderr);

    // The secret alone on stdout, a note on stderr.
    let out = shoal(
        &url,
        Some(&admin),
        &[
            "token", "create", "ci", "--role", "deploy", "-n", "team-a", "--ttl", "30d",
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let secret = out.stdout.trim().to_string();
    assert!(
        secret.starts_with("shoal_") && !secret.contains(char::is_whitespace),
        "{:?}",
        out.stdout
    );
    assert!(out.stderr.contains("shown this once"), "{}", out.stderr);
    assert!(!out.stderr.contains(&secret), "{}", out.stderr);

    // The same name again is a conflict, shown as API errors are.
    let out = shoal(
        &url,
        Some(&admin),
        &["token", "create", "ci", "--role", "view"],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("(exists)"), "{}", out.stderr);

    // It deploys into team-a ...
    let out = shoal(
        &url,
        Some(&secret),
        &[
            "apply",
            "-f",
            manifest(dir.path(), "team-a").to_str().unwrap(),
        ],
    );
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("created"), "{}", out.stdout);
    // ... and nowhere else, nor does it manage tokens.
    let out = shoal(
        &url,
        Some(&secret),
        &[
            "apply",
            "-f",
            manifest(dir.path(), "team-b").to_str().unwrap(),
        ],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    let out = shoal(&url, Some(&secret), &["token", "list"]);
    assert!(!out.success);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);

    // Listed, in every format, without a secret or a hash.
    let out = shoal(&url, Some(&admin), &["token", "list"]);
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES"]);
    let ci = lines
        .iter()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let cells: Vec<&str> = ci.split_whitespace().collect();
    assert_eq!(cells[..3], ["ci", "deploy", "namespace/team-a"], "{ci}");
    assert!(ci.ends_with("in 29d") || ci.ends_with("in 30d"), "{ci}");
    assert!(lines.iter().any(|l| l.starts_with("admin ")), "{lines:?}");
    for format in ["json", "yaml"] {
        let out = shoal(&url, Some(&admin), &["token", "list", "-o", format]);
        assert!(out.success, "{}", out.stderr);
        assert!(out.stdout.contains("team-a"), "{}", out.stdout);
        for leak in ["shoal_", "sha256", &admin] {
            assert!(!out.stdout.contains(leak), "{format}: {}", out.stdout);
        }
    }

    // Who changed what: the token's name (BY), never its secret.
    let out = shoal(&url, Some(&admin), &["events", "-A"]);
    assert!(out.success, "{}", out.stderr);
    let by = |object: &str, reason: &str| -> String {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(object) && l.contains(reason))
            .unwrap_or_else(|| panic!("no {reason} of {object}: {}", out.stdout));
        // NAMESPACE, LAST SEEN, TYPE, REASON, OBJECT, BY, MESSAGE
        line.split_whitespace()
            .nth(5)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(by("app/web", "Created"), "ci", "{}", out.stdout);
    assert_eq!(by("token/ci", "TokenCreated"), "admin", "{}", out.stdout);
    assert!(!out.stdout.contains("shoal_"), "{}", out.stdout);

    // Revoked: its next request is refused, and revoking again says why.
    let out = shoal(&url, Some(&admin), &["token", "revoke", "ci"]);
    assert!(out.success, "{}", out.stderr);
    let out = shoal(&url, Some(&secret), &["get", "apps", "-n", "team-a"]);
    assert!(!out.success);
    assert!(out.stderr.contains("unauthenticated"), "{}", out.stderr);
    let out = shoal(&url, Some(&admin), &["events", "-A"]);
    let revoked = out
        .stdout
        .lines()
        .find(|l| l.contains("TokenRevoked"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert_eq!(
        revoked.split_whitespace().nth(5),
        Some("admin"),
        "{revoked}"
    );
    let out = shoal(&url, Some(&admin), &["token", "revoke", "ci"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("no token named \"ci\"") && out.stderr.contains("not_found"),
        "{}",
        out.stderr
    );

    // `-o json` at creation is the created token, secret included.
    let out = shoal(
        &url,
        Some(&admin),
        &["token", "create", "viewer", "--role", "view", "-o", "json"],
    );
    assert!(out.success, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["token"]["name"], "viewer");
    assert_eq!(v["token"]["scope"], "cluster");
    assert!(v["secret"].as_str().unwrap().starts_with("shoal_"));

    cp.kill9();
}
