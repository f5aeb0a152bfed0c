//! Modules from OCI registries (issue 15), against a real registry (Debian's
//! `docker-registry`, the CNCF distribution registry 2.8, started by the
//! tests): `shoal push` writes a wasm artifact, an app names it as
//! `oci://...`, the control plane resolves the tag when the app is applied
//! and pins the digest in the revision, so a tag moved afterwards changes
//! nothing running and a rollback runs what was applied; a wrong digest is
//! refused; a registry that asks for credentials gets them from the secret
//! the app names, and errors never show them.

mod support;

use std::time::Duration;
use support::registry::Registry;
use support::{CliOutput, Cluster, cli_env, wait_until};

const T: Duration = Duration::from_secs(60);

/// A CGI module that answers `text`.
fn cgi(text: &str) -> String {
    let body = format!("Content-Type: text/plain\n\n{text}\n");
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#,
        body.replace('\n', "\\n"),
        body.len()
    )
}

/// `shoal push FILE REF --plain-http` with `env`.
fn push(c: &Cluster, file: &str, reference: &str, env: &[(&str, &str)]) -> CliOutput {
    let path = c.dir.path().join(file);
    cli_env(
        &c.api,
        None,
        env,
        &["push", path.to_str().unwrap(), reference, "--plain-http"],
    )
}

/// The digest `shoal push` printed.
fn pushed(out: &CliOutput) -> String {
    assert!(out.success, "push failed: {}{}", out.stdout, out.stderr);
    let digest = out.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest:?}"
    );
    digest
}

/// What the gateway answers at `/` (the status and the body).
fn get(gw: &str) -> (u16, String) {
    support::http("GET", &format!("{gw}/"), b"")
}

/// Waits until every one of 20 requests in a row is answered `text`.
fn serves_only(gw: &str, text: &str) {
    wait_until(T, &format!("the app to answer only {text:?}"), || {
        (0..20)
            .all(|_| get(gw) == (200, format!("{text}\n")))
            .then_some(())
    });
}

fn web(reference: &str, extra: &str) -> String {
    format!("name = \"web\"\nmodule = \"{reference}\"\n{extra}\n[[routes]]\npath = \"/\"\n")
}

#[test]
fn a_tag_is_pinned_at_apply_and_moving_it_changes_nothing_running() {
    let reg = Registry::start();
    let mut c = Cluster::start_with(1, &["--insecure-registry", &reg.addr], |_| Vec::new());
    std::fs::write(c.dir.path().join("v1.wat"), cgi("Hello v1")).unwrap();
    std::fs::write(c.dir.path().join("v2.wat"), cgi("Hello v2")).unwrap();
    let tag = reg.reference("apps/web:stable");

    let d1 = pushed(&push(&c, "v1.wat", &tag, &[]));
    let m = c.manifest("web.toml", &web(&tag, ""));
    let out = c.apply_wait(&m);
    assert!(
        out.stdout.contains("app/web created (revision 1)"),
        "{}",
        out.stdout
    );
    let gw = c.start_gateway(&[]);
    serves_only(&gw, "Hello v1");
    let pinned_v1 = format!("{tag}@{d1}");
    let out = c.cli(&["describe", "app", "web"]);
    assert!(
        out.stdout.contains(&format!("Source:       {pinned_v1}")),
        "{}",
        out.stdout
    );

    // The tag moves to another module. Nothing running changes: a new
    // replica (as a rollout or a lost node would start) runs the pinned
    // module too.
    let d2 = pushed(&push(&c, "v2.wat", &tag, &[]));
    assert_ne!(d1, d2);
    let out = c.cli(&["scale", "app/web", "--replicas", "2"]);
    assert!(out.success, "{}", out.stderr);
    wait_until(T, "two instances serving", || {
        let ready = c
            .instances()
            .iter()
            .filter(|i| i["phase"] == "running" && i["ready"] == true)
            .count();
        (ready == 2).then_some(())
    });
    serves_only(&gw, "Hello v1");
    let apps = c.get_json("apps");
    assert_eq!(apps[0]["app"]["current-revision"], 1, "{apps}");

    // Applied again, the tag resolves anew: a changed module, a new
    // revision.
    let out = c.apply_wait(&m);
    assert!(
        out.stdout.contains("app/web configured (revision 2)"),
        "{}",
        out.stdout
    );
    serves_only(&gw, "Hello v2");
    let out = c.cli(&["describe", "app", "web"]);
    assert!(
        out.stdout.contains(&format!("Source:       {tag}@{d2}")),
        "{}",
        out.stdout
    );

    // A rollback runs what revision 1 pinned, whatever the tag says now.
    let out = c.cli(&["rollout", "undo", "app/web"]);
    assert!(out.success, "{}", out.stderr);
    serves_only(&gw, "Hello v1");
    let out = c.cli(&["describe", "app", "web"]);
    assert!(
        out.stdout.contains(&format!("Source:       {pinned_v1}")),
        "{}",
        out.stdout
    );

    // A digest the registry does not have is refused, and nothing changes.
    let wrong = format!("{}@sha256:{}", reg.reference("apps/web"), "0".repeat(64));
    let bad = c.manifest("bad.toml", &web(&wrong, ""));
    let out = c.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("app default/web: module {wrong}"))
            && out.stderr.contains("not found in the registry")
            && out.stderr.contains("(module_not_found)"),
        "{}",
        out.stderr
    );
    // A registry the control plane was not given: refused, nothing
    // connected to.
    let elsewhere = c.manifest("elsewhere.toml", &web("oci://127.0.0.1:9/apps/web:v1", ""));
    let out = c.cli(&["apply", "-f", elsewhere.to_str().unwrap()]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("(registry_not_allowed)")
            && out
                .stderr
                .contains("registry 127.0.0.1:9 is not one this cluster pulls from"),
        "{}",
        out.stderr
    );
    // The tag with the digest revision 1 pinned, while the tag names
    // another: the digest is what counts (the tag is for people), and it
    // is what runs now.
    let pinned = format!("{tag}@{d1}");
    let m1 = c.manifest("pinned.toml", &web(&pinned, ""));
    let out = c.apply_wait(&m1);
    assert!(out.stdout.contains("app/web unchanged"), "{}", out.stdout);
    serves_only(&gw, "Hello v1");

    // A reference to something that is not a wasm artifact, and one to a
    // repository that does not exist.
    let missing = reg.reference("apps/none:v1");
    let out = c.cli(&[
        "apply",
        "-f",
        c.manifest("missing.toml", &web(&missing, ""))
            .to_str()
            .unwrap(),
    ]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("not found in the registry"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_registry_that_asks_for_credentials_gets_them_from_the_apps_secret() {
    let password = "pw-9f1c2e";
    let reg = Registry::with_auth("alice", password);
    let c = Cluster::start_with(0, &["--insecure-registry", &reg.addr], |_| Vec::new());
    // Registry credentials are secrets with the keys `username` and
    // `password`, in the app's namespace.
    for (ns, name, pw) in [
        ("default", "reg", password),
        ("default", "stale", "old-8d7a"),
        ("other", "theirs", password),
    ] {
        let pw = format!("password={pw}");
        let out = c.cli(&[
            "secret",
            "create",
            name,
            "-n",
            ns,
            "--from-literal",
            "username=alice",
            "--from-literal",
            &pw,
        ]);
        assert!(out.success, "{}", out.stderr);
    }
    std::fs::write(c.dir.path().join("v1.wat"), cgi("Hello v1")).unwrap();
    let tag = reg.reference("private/web:v1");

    // `shoal push` without credentials, and with wrong ones.
    let out = push(&c, "v1.wat", &tag, &[]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("asks for credentials"),
        "{}",
        out.stderr
    );
    let out = push(
        &c,
        "v1.wat",
        &tag,
        &[
            ("SHOAL_REGISTRY_USERNAME", "alice"),
            ("SHOAL_REGISTRY_PASSWORD", "wrong-3b5d"),
        ],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("refused the credentials") && !out.stderr.contains("wrong-3b5d"),
        "{}",
        out.stderr
    );
    let digest = pushed(&push(
        &c,
        "v1.wat",
        &tag,
        &[
            ("SHOAL_REGISTRY_USERNAME", "alice"),
            ("SHOAL_REGISTRY_PASSWORD", password),
        ],
    ));

    let apply = |file: &str, extra: &str| {
        let m = c.manifest(file, &web(&tag, &format!("replicas = 0\n{extra}")));
        c.cli(&["apply", "-f", m.to_str().unwrap()])
    };
    // No credentials: refused, saying how to give them.
    let out = apply("none.toml", "");
    assert!(!out.success);
    assert!(
        out.stderr.contains("asks for credentials")
            && out.stderr.contains("registry-auth")
            && out.stderr.contains("(registry_auth_required)"),
        "{}",
        out.stderr
    );
    // A secret that is not there, or is another namespace's.
    for secret in ["missing", "theirs"] {
        let out = apply(
            &format!("{secret}.toml"),
            &format!("registry-auth = {{ secret = \"{secret}\" }}\n"),
        );
        assert!(!out.success);
        assert!(
            out.stderr.contains(&format!(
                "no secret \"{secret}\" with registry credentials in namespace \"default\""
            )),
            "{}",
            out.stderr
        );
    }
    // Credentials the registry refuses: the message names the secret,
    // never its values.
    let out = apply("stale.toml", "registry-auth = { secret = \"stale\" }\n");
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("refused the credentials of secret \"stale\" (registry_auth_refused)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("old-8d7a"), "{}", out.stderr);
    assert!(c.get_json("apps").as_array().unwrap().is_empty());

    // With them, the module is pulled and pinned.
    let out = apply("reg.toml", "registry-auth = { secret = \"reg\" }\n");
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("app/web created (revision 1)"),
        "{}",
        out.stdout
    );
    let out = c.cli(&["describe", "app", "web"]);
    assert!(
        out.stdout
            .contains(&format!("Source:       {tag}@{digest}")),
        "{}",
        out.stdout
    );
    // No password anywhere the control plane wrote or shows.
    let yaml = c.cli(&["get", "revisions", "-o", "yaml"]).stdout;
    let events = c.cli(&["events"]).stdout;
    let logs = c.cp.out.all().join("\n");
    for (what, text) in [("revisions", &yaml), ("events", &events), ("logs", &logs)] {
        assert!(
            !text.contains(password) && !text.contains("old-8d7a"),
            "a password in the {what}: {text}"
        );
    }
}
