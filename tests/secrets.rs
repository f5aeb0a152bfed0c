//! Configuration and secrets end to end: a control plane, a node and a
//! gateway, each a real process. An app reads a plain `[config]` value and
//! a secret through its environment; a new value of the secret rolls out a
//! new revision that answers it; and no output of any command, no log of
//! any process and no file on disk ever shows a value. A component reads
//! the same values through `wasi:config/store`.

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

/// Values no output may show.
const FIRST: &str = "first-hunter2-value";
const SECOND: &str = "second-correct-horse";
const USER: &str = "db-user-from-a-file";

const MANIFEST: &str = r#"
name = "cfg"
module = "$EXAMPLES/http-component.wasm"
env = { MODE = "plain", DB_USER = { secret = "db", key = "user" } }

[config]
greeting = "hello"
DB_PASSWORD = { secret = "db", key = "password" }

[[routes]]
path = "/env"
"#;

/// The environment the app's guest sees, through the gateway, once it
/// shows `want`.
fn env_showing(gw: &str, want: &str) -> String {
    wait_until(T, &format!("the app to show {want}"), || {
        let (status, body) = http("GET", &format!("{gw}/env"), b"");
        (status == 200 && body.contains(want)).then_some(body)
    })
}

#[test]
fn an_app_reads_config_and_secrets_and_a_new_value_rolls_out_without_ever_being_shown() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    let outside = tempfile::tempdir().unwrap();
    let user_file = outside.path().join("user");
    std::fs::write(&user_file, USER).unwrap();
    let from_file = format!("user={}", user_file.display());
    let mut shown = Vec::new();

    // An app reading a secret that is not there is refused.
    let m = c.manifest("cfg.toml", MANIFEST);
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("secret_not_found") && out.stderr.contains("config.DB_PASSWORD"),
        "{}",
        out.stderr
    );

    let literal = format!("password={FIRST}");
    let out = c.cli(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &literal,
        "--from-file",
        &from_file,
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("secret/db set (keys: password, user)"),
        "{}",
        out.stdout
    );
    shown.push(out.stdout);
    c.apply_wait(&m);

    // Plain config, a secret through [config] and one through env: all
    // in the guest's environment.
    let env = env_showing(&gw, FIRST);
    for line in [
        "greeting=hello\n".to_string(),
        "MODE=plain\n".to_string(),
        format!("DB_PASSWORD={FIRST}\n"),
        format!("DB_USER={USER}\n"),
    ] {
        assert!(env.contains(&line), "{line:?} in {env}");
    }

    // A new value: a new revision rolls out, and the app answers it.
    let literal = format!("password={SECOND}");
    let out = c.cli(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &literal,
        "--from-file",
        &from_file,
    ]);
    assert!(out.success, "{}", out.stderr);
    shown.push(out.stdout);
    let env = env_showing(&gw, SECOND);
    assert!(!env.contains(FIRST), "{env}");
    let app = c.cli(&["get", "app", "cfg", "-o", "json"]);
    assert!(app.success, "{}", app.stderr);
    let v: serde_json::Value = serde_json::from_str(&app.stdout).unwrap();
    assert_eq!(v["app"]["current-revision"], 2, "{}", app.stdout);

    // In use: it cannot be deleted.
    let out = c.cli(&["secret", "delete", "db"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("secret_in_use") && out.stderr.contains("default/cfg"),
        "{}",
        out.stderr
    );
    shown.push(out.stderr);

    // Everything a user can read about it: names and keys, never a value.
    for args in [
        &["describe", "app", "cfg"][..],
        &["get", "app", "cfg", "-o", "yaml"],
        &["get", "app", "cfg", "-o", "json"],
        &["get", "revisions", "-A", "-o", "yaml"],
        &["get", "instances", "-A", "-o", "json"],
        &["events"],
        &["secret", "get"],
        &["secret", "get", "db", "-o", "yaml"],
        &["logs", "app", "cfg"],
    ] {
        let out = c.cli(args);
        assert!(out.success, "{args:?}: {}", out.stderr);
        shown.push(format!("{args:?}\n{}\n{}", out.stdout, out.stderr));
    }
    let listed = c.cli(&["secret", "get"]);
    assert!(
        listed.stdout.contains("db") && listed.stdout.contains("password,user"),
        "{}",
        listed.stdout
    );
    let described = c.cli(&["describe", "app", "cfg"]);
    assert!(
        described
            .stdout
            .contains("DB_PASSWORD (secret db key password)"),
        "{}",
        described.stdout
    );

    // Once nothing reads it, it goes.
    let out = c.cli(&["delete", "app", "cfg"]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["secret", "delete", "db"]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["secret", "get", "db"]);
    assert!(!out.success);

    // The processes' own logs.
    let logs = [&c.cp, &c.nodes[0], &c.gateways[0]]
        .iter()
        .flat_map(|p| p.out.all())
        .collect::<Vec<_>>()
        .join("\n");
    // They are there to look at: the node started the instances.
    assert!(logs.contains("instance started"), "{logs}");
    assert!(logs.contains("SecretUpdated"), "{logs}");
    shown.push(logs);
    for text in &shown {
        for value in [FIRST, SECOND, USER] {
            assert!(!text.contains(value), "{value} shown in:\n{text}");
        }
    }

    // On disk: the control plane's data dir (its store, the secrets key,
    // compiled code) and the node's (credential, compiled code) hold no
    // value in the clear.
    c.cp.kill9();
    for p in &mut c.nodes {
        p.kill9();
    }
    let mut files = 0;
    let mut stack = vec![c.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for value in [FIRST, SECOND, USER] {
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{} holds {value}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "{files} files looked at");
}

/// Who may do what with secrets, through the CLI: a viewer lists names
/// and keys but sets nothing; a token of another namespace sees nothing.
#[test]
fn viewers_list_names_only_and_other_namespaces_see_nothing() {
    let c = Cluster::start(0);
    let viewer = c.token("viewer", "view", Some("default"));
    let other = c.token("other", "deploy", Some("other"));
    let out = c.cli(&["secret", "create", "api", "--from-literal", "token=t0p"]);
    assert!(out.success, "{}", out.stderr);

    let out = cli_as(&c.api, Some(&viewer), &["secret", "get"]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("api") && out.stdout.contains("token"));
    assert!(!out.stdout.contains("t0p"), "{}", out.stdout);
    let out = cli_as(
        &c.api,
        Some(&viewer),
        &["secret", "create", "api", "--from-literal", "token=x"],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    for args in [&["secret", "get"][..], &["secret", "delete", "api"]] {
        let out = cli_as(&c.api, Some(&other), args);
        assert!(!out.success, "{args:?}");
        assert!(out.stderr.contains("forbidden"), "{args:?}: {}", out.stderr);
    }
    let out = cli(&c.api, &["secret", "get"]);
    assert!(!out.success);
    assert!(out.stderr.contains("unauthenticated"), "{}", out.stderr);

    // Bad input is refused before anything is sent, without the value.
    let out = c.cli(&[
        "secret",
        "create",
        "x",
        "--from-literal",
        "no-equals-s3cr3t",
    ]);
    assert!(!out.success);
    assert!(!out.stderr.contains("s3cr3t"), "{}", out.stderr);
    let out = c.cli(&["secret", "create", "x"]);
    assert!(!out.success);
    assert!(out.stderr.contains("--from-literal"), "{}", out.stderr);
}

/// A component reads the same values through `wasi:config/store`, and a
/// rotation reaches it there too.
#[test]
fn a_component_reads_config_and_secrets_through_wasi_config() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    let put = |value: &str| {
        let literal = format!("token={value}");
        let out = c.cli(&["secret", "create", "api", "--from-literal", &literal]);
        assert!(out.success, "{}", out.stderr);
    };
    put(FIRST);
    let m = c.manifest(
        "probe.toml",
        "name = \"probe\"\nmodule = \"$EXAMPLES/capabilities.wasm\"\n\n[config]\ngreeting = \"hello\"\napi-token = { secret = \"api\", key = \"token\" }\n\n[[routes]]\npath = \"/config\"\n",
    );
    c.apply_wait(&m);
    let config = |key: &str, want: &str| {
        wait_until(T, &format!("wasi:config to give {key}={want}"), || {
            let (status, body) = http("GET", &format!("{gw}/config/{key}"), b"");
            (status == 200 && body == want).then_some(())
        })
    };
    config("greeting", "hello");
    config("api-token", FIRST);
    let (status, body) = http("GET", &format!("{gw}/config/absent"), b"");
    assert_eq!((status, body.as_str()), (404, "not found"));
    let (status, all) = http("GET", &format!("{gw}/config"), b"");
    assert_eq!(status, 200, "{all}");
    assert_eq!(all, format!("api-token={FIRST}\ngreeting=hello\n"));

    put(SECOND);
    config("api-token", SECOND);
}
