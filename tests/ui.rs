//! The web dashboard end to end, in a real headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/install-chromium.sh` when missing: without them these tests
//! fail, they never skip).
//!
//! Each test signs in as a person would, reads what the page shows and
//! waits for it to change (polling the page's DOM under a deadline, never
//! a fixed sleep). A failing test leaves a screenshot of the page in
//! `target/ui-screenshots/`.

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::Cluster;

/// How long one step may take on a loaded machine.
const T: Duration = Duration::from_secs(90);

/// The demo app `shoal up` deploys: the example wasi:http component.
const DEMO: &str = r#"
name = "hello"
module = "$EXAMPLES/http-component.wasm"
replicas = REPLICAS

[[routes]]
path = "/"

[health]
path = "/healthz"
interval = "2s"
"#;

// ---- the browser -------------------------------------------------------

/// Chromium and ChromeDriver: on PATH or in /usr/bin, else what
/// `scripts/install-chromium.sh` installs. Panics when neither works.
fn browser_binaries() -> (PathBuf, PathBuf) {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .chain([PathBuf::from("/usr/bin").join(name)])
            .find(|p| p.is_file())
    };
    if let (Some(chromium), Some(driver)) = (find("chromium"), find("chromedriver")) {
        return (chromium, driver);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-chromium.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    match (out.status.success(), lines.as_slice()) {
        (true, [.., chromium, driver]) => (PathBuf::from(chromium), PathBuf::from(driver)),
        _ => panic!(
            "no Chromium, and {} could not install it (exit {}); see its messages above",
            script.display(),
            out.status
        ),
    }
}

/// A chromedriver process on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Driver {
    fn start() -> Driver {
        let (chromium, driver) = browser_binaries();
        // chromedriver takes no port 0: a port the OS just handed out,
        // tried again with another if something took it meanwhile.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Driver {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        chromium,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("chromedriver did not start");
    }

    /// A new headless browser with a profile of its own in `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // As root, Chromium runs only without its sandbox.
        if unsafe_is_root() {
            args.push("--no-sandbox".into());
        }
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium.display().to_string(),
                "args": args,
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `target/ui-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let path = screenshot_dir().join(format!("{name}.png"));
    match client.screenshot().await {
        Ok(png) => {
            let _ = std::fs::write(&path, png);
        }
        Err(e) => eprintln!("no screenshot {name}: {e}"),
    }
    path
}

/// Runs `body` with a browser; on a failure, saves a screenshot of the
/// page as `target/ui-screenshots/NAME-failure.png` and says so. The
/// browser is closed either way.
async fn with_browser<F>(name: &str, body: F)
where
    F: AsyncFnOnce(&Client),
{
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path()).await;
    let outcome = std::panic::AssertUnwindSafe(body(&client))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        let shot = screenshot(&client, &format!("{name}-failure")).await;
        eprintln!("the page at the failure: {}", shot.display());
        if let Ok(url) = client.current_url().await {
            eprintln!("its URL: {url}");
        }
        let _ = client.close().await;
        std::panic::resume_unwind(panic);
    }
    let _ = client.close().await;
}

/// Polls `probe` (every 100 ms) until it gives a value, or panics with
/// `what` after `limit`.
async fn wait_for<V>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<V>) -> V {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a script run in the page (`return ...;`).
async fn eval(client: &Client, script: &str) -> serde_json::Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or(serde_json::Value::Null)
}

/// The text of the first element `css` finds, if any.
async fn text(client: &Client, css: &str) -> Option<String> {
    let v = eval(
        client,
        &format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            serde_json::to_string(css).unwrap()
        ),
    )
    .await;
    v.as_str()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// How many elements `css` finds.
async fn count(client: &Client, css: &str) -> usize {
    eval(
        client,
        &format!(
            "return document.querySelectorAll({}).length;",
            serde_json::to_string(css).unwrap()
        ),
    )
    .await
    .as_u64()
    .unwrap_or(0) as usize
}

async fn path_of(client: &Client) -> String {
    client
        .current_url()
        .await
        .map(|u| u.path().to_string())
        .unwrap_or_default()
}

/// Waits until the browser is on `path`.
async fn wait_path(client: &Client, path: &str) {
    wait_for(&format!("the browser to be on {path}"), T, async || {
        (path_of(client).await == path).then_some(())
    })
    .await;
}

/// Fills the sign-in form with `token` and sends it.
async fn sign_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/ui/")).await.unwrap();
    wait_path(client, "/ui/sign-in").await;
    let field = client
        .wait()
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    client
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits for `css`'s text to satisfy `ok`; returns it.
async fn wait_text(client: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(&format!("the text of {css}"), T, async || {
        text(client, css).await.filter(|t| ok(t))
    })
    .await
}

// ---- the tests -----------------------------------------------------------

/// The admin's tour: a wrong token refused, sign in, the demo app and the
/// nodes, scale to 5 and watch five instances come up, a new revision
/// rolled out under the page's eyes, a killed node's event arriving live,
/// sign out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_and_steers_the_demo_app_in_a_browser() {
    let mut c = Cluster::start(3);
    let gateway = c.start_gateway(&[]);
    let m = c.manifest("hello.toml", &DEMO.replace("REPLICAS", "3"));
    c.apply_wait(&m);
    let base = c.api.clone();
    let admin = c.admin.clone();

    with_browser("admin", async |b: &Client| {
        // A wrong token: refused on the sign-in page, no session.
        sign_in(
            b,
            &base,
            "shoal_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab",
        )
        .await;
        let refusal = wait_text(b, "#sign-in-error", |t| !t.is_empty()).await;
        assert!(refusal.contains("unknown, revoked or expired"), "{refusal}");
        assert_eq!(path_of(b).await, "/ui/sign-in");
        assert!(b.get_named_cookie("shoal_session").await.is_err());
        b.goto(&format!("{base}/ui/apps")).await.unwrap();
        wait_path(b, "/ui/sign-in").await;

        // The admin's token: the apps page with the demo app, all ready.
        sign_in(b, &base, &admin).await;
        wait_path(b, "/ui/apps").await;
        wait_text(b, r#"tr[data-app="default/hello"] td.ready"#, |t| {
            t == "3/3"
        })
        .await;
        assert_eq!(text(b, "#who").await.as_deref(), Some("admin"));
        let cookie = b.get_named_cookie("shoal_session").await.unwrap();
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(cookie::SameSite::Strict));
        // The token is nowhere in the page or its address.
        let source = b.source().await.unwrap();
        assert!(!source.contains(&admin));
        assert!(!b.current_url().await.unwrap().as_str().contains(&admin));

        // The cluster: three nodes, ready.
        b.find(Locator::LinkText("Cluster"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(b, "/ui/cluster").await;
        wait_text(b, "#nodes-ready", |t| t == "3/3").await;
        assert_eq!(count(b, "#nodes tbody tr").await, 3);

        // The app's page; scale to 5 and watch five instances serve.
        b.find(Locator::LinkText("Apps"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .for_element(Locator::LinkText("hello"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(b, "/ui/apps/default/hello").await;
        wait_text(b, "#ready", |t| t == "3/3").await;
        let replicas = b.find(Locator::Id("replicas")).await.unwrap();
        replicas.clear().await.unwrap();
        replicas.send_keys("5").await.unwrap();
        b.find(Locator::Id("scale"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, "#flash", |t| t.contains("Scaled hello to 5 replicas.")).await;
        let serving = r#"#instances tr.instance[data-phase="Running"][data-ready="true"]"#;
        wait_for("five instances serving on the page", T, async || {
            (count(b, serving).await == 5).then_some(())
        })
        .await;
        wait_text(b, "#ready", |t| t == "5/5").await;

        // A new revision, applied with the CLI: the page follows the
        // rollout to its end.
        let v2 = c.manifest(
            "hello-v2.toml",
            &DEMO.replace("REPLICAS", "5").replace(
                "[[routes]]",
                "[env]\nGREETING_VERSION = \"2\"\n\n[[routes]]",
            ),
        );
        let out = c.cli(&["apply", "-f", v2.to_str().unwrap()]);
        assert!(out.success, "{}", out.stderr);
        assert!(out.stdout.contains("configured"), "{}", out.stdout);
        wait_text(b, "#revision", |t| t == "2").await;
        let v2_serving =
            r#"#instances tr.instance[data-revision="2"][data-phase="Running"][data-ready="true"]"#;
        wait_for("the rollout to complete on the page", T, async || {
            let complete = text(b, "#rollout").await.is_some_and(|t| t == "complete");
            (complete && count(b, v2_serving).await == 5).then_some(())
        })
        .await;
        wait_text(b, "#ready", |t| t == "5/5").await;

        // Traffic through the gateway: its rate is charted on the page
        // (the control plane's stats, from the gateway's reports).
        let load = support::Load::start(format!("{gateway}/"), 2);
        load.wait_more(20);
        wait_for("the request rate charted", T, async || {
            let peak = eval(
                b,
                "const f = document.querySelector('#requests-chart figure'); return f ? Number(f.dataset.peak) : 0;",
            )
            .await;
            let drawn = count(b, "#requests-chart svg polyline").await;
            (peak.as_f64().is_some_and(|p| p > 0.0) && drawn > 0).then_some(())
        })
        .await;
        wait_text(b, "#rps", |t| t.parse::<f64>().is_ok_and(|r| r > 0.0)).await;
        load.finish();
        screenshot(b, "app").await;

        // The events page, live: a node killed now shows up as lost.
        b.find(Locator::LinkText("Events"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(b, "/ui/events").await;
        wait_text(b, "#stream-state", |t| t == "live").await;
        assert!(count(b, "#events tr.event").await > 0);
        c.nodes[2].kill9();
        let lost = r#"#events tr.event.fresh"#;
        wait_for("the lost node's event to stream in", T, async || {
            let rows = eval(
                b,
                &format!(
                    "return Array.from(document.querySelectorAll({})).map(r => r.textContent);",
                    serde_json::to_string(lost).unwrap()
                ),
            )
            .await;
            rows.as_array()?
                .iter()
                .filter_map(|r| r.as_str())
                .find(|r| r.contains("node/node-3") && r.contains("NodeLost"))
                .map(str::to_string)
        })
        .await;
        screenshot(b, "events").await;
        // The cluster page says so too.
        b.find(Locator::LinkText("Cluster"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, r#"tr[data-node="node-3"]"#, |t| t.contains("lost")).await;
        wait_text(b, "#nodes-lost", |t| t == "1").await;
        screenshot(b, "cluster").await;

        // Sign out: the pages ask for a sign-in again.
        b.find(Locator::Id("sign-out"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_path(b, "/ui/sign-in").await;
        b.goto(&format!("{base}/ui/cluster")).await.unwrap();
        wait_path(b, "/ui/sign-in").await;
    })
    .await;
}

/// A tenant's token: its namespace's apps, events and logs only; the
/// cluster and other namespaces are refused; a token of a machine cannot
/// sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_namespace_in_a_browser() {
    let c = Cluster::start(1);
    let m = c.manifest("hello.toml", &DEMO.replace("REPLICAS", "1"));
    c.apply_wait(&m);
    let ticker = c.manifest(
        "ticker.toml",
        "name = \"ticker\"\nnamespace = \"team-a\"\nkind = \"worker\"\nmodule = \"$EXAMPLES/worker.wasm\"\nenv = { TICK_MS = \"200\" }\n",
    );
    let out = c.cli(&["apply", "-f", ticker.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let tenant = c.token("team-a-deployer", "deploy", Some("team-a"));
    let base = c.api.clone();
    let join = c.join.clone();

    with_browser("tenant", async |b: &Client| {
        // A join token is a machine's: refused.
        sign_in(b, &base, &join).await;
        let refusal = wait_text(b, "#sign-in-error", |t| !t.is_empty()).await;
        assert!(refusal.contains("not to a person"), "{refusal}");
        assert!(b.get_named_cookie("shoal_session").await.is_err());

        sign_in(b, &base, &tenant).await;
        wait_path(b, "/ui/apps").await;
        wait_text(b, r#"tr[data-app="team-a/ticker"] td.ready"#, |t| t == "1/1").await;
        assert_eq!(count(b, r#"tr[data-app^="default/"]"#).await, 0);
        assert!(!b.source().await.unwrap().contains("hello"));

        // Another namespace's app and the cluster: the API's refusal.
        for page in ["/ui/apps/default/hello", "/ui/cluster", "/ui/apps?ns=default"] {
            b.goto(&format!("{base}{page}")).await.unwrap();
            wait_text(b, "#problem", |t| t == "Not allowed").await;
            let why = text(b, "#problem-message").await.unwrap_or_default();
            assert!(why.contains("team-a-deployer") && why.contains("may not"), "{why}");
        }

        // Its events: its namespace's, none of the cluster's nodes.
        b.goto(&format!("{base}/ui/events")).await.unwrap();
        wait_text(b, "#stream-state", |t| t == "live").await;
        wait_for("the ticker's events", T, async || {
            (count(b, "#events tr.event").await > 0).then_some(())
        })
        .await;
        let objects = eval(
            b,
            "return Array.from(document.querySelectorAll('#events tr.event td:nth-child(2)')).map(td => td.textContent);",
        )
        .await;
        let objects: Vec<String> = serde_json::from_value(objects).unwrap();
        assert!(objects.iter().all(|o| !o.starts_with("node/")), "{objects:?}");
        assert!(objects.iter().any(|o| o == "app/ticker"), "{objects:?}");

        // An instance's log, followed live.
        b.goto(&format!("{base}/ui/apps/team-a/ticker")).await.unwrap();
        b.wait()
            .for_element(Locator::LinkText("logs"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, "#stream-state", |t| t == "following").await;
        let ticks_now = async || {
            eval(
                b,
                "return Array.from(document.querySelectorAll('#logs .line')).filter(l => l.textContent.includes('tick ')).length;",
            )
            .await
            .as_u64()
            .unwrap_or(0)
        };
        let first = wait_for("log lines", T, async || {
            let n = ticks_now().await;
            (n > 0).then_some(n)
        })
        .await;
        wait_for("more log lines as the worker ticks", T, async || {
            (ticks_now().await >= first + 3).then_some(())
        })
        .await;
        screenshot(b, "logs").await;

        // Without the session cookie: back to the sign-in page.
        b.delete_all_cookies().await.unwrap();
        b.goto(&format!("{base}/ui/apps/team-a/ticker")).await.unwrap();
        wait_path(b, "/ui/sign-in").await;
    })
    .await;
}
