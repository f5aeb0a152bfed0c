//! Helpers for end-to-end tests: run the real `shoal` binary and watch what
//! it prints.
#![allow(dead_code)]

pub mod registry;

use shoal_api::endpoints;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm-apps")
        .join(name)
}

/// Everything a child process printed, line by line, from both streams.
#[derive(Clone, Default)]
pub struct Output {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Output {
    pub fn push(&self, line: String) {
        let (m, cv) = &*self.lines;
        m.lock().unwrap().push(line);
        cv.notify_all();
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits for a line matching `pred` and returns it.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let start = Instant::now();
        let (m, cv) = &*self.lines;
        let mut guard = m.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = limit.checked_sub(start.elapsed())?;
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Waits until `n` lines match `pred`, and returns them.
    pub fn wait_for_n(
        &self,
        n: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        let (m, cv) = &*self.lines;
        let mut guard = m.lock().unwrap();
        loop {
            let found: Vec<String> = guard.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let Some(left) = limit.checked_sub(start.elapsed()) else {
                return found;
            };
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// A running `shoal` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub out: Output,
}

/// The client config file of every process a test starts unless it names
/// one: none there, so a developer's own never reaches a test.
pub const NO_CONFIG: &str = "/nonexistent/shoal-tests/config.toml";

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("SHOAL_LOG", "info")
            .env("SHOAL_CONFIG", NO_CONFIG)
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_SERVER")
            .env_remove("SHOAL_CA")
            .env_remove("RUST_BACKTRACE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn shoal");
        let out = Output::default();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    match line {
                        Ok(l) => out.push(l),
                        Err(_) => break,
                    }
                }
            });
        }
        Proc { child, out }
    }

    /// Waits for the "Serving ... on http://ADDR/" line and returns the URL
    /// without its trailing slash.
    pub fn url(&self) -> String {
        let line = self
            .out
            .wait_for(Duration::from_secs(120), |l| {
                l.starts_with("Serving ") && l.contains("http://")
            })
            .unwrap_or_else(|| panic!("no URL printed; output: {:#?}", self.out.all()));
        let start = line.find("http://").unwrap();
        line[start..].trim_end().trim_end_matches('/').to_string()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Stops the process (SIGSTOP) and returns once every one of its threads
    /// has stopped: on a loaded machine the kernel delivers the stop only when
    /// a thread gets a core, and the others may go on answering meanwhile.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !shoal_etcd::testing::all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} did not stop within 60 s of SIGSTOP"
            );
            std::thread::yield_now();
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().ok().flatten() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 exchange over a fresh connection: returns status and
/// body.
pub fn http(method: &str, url: &str, body: &[u8]) -> (u16, String) {
    http_with(method, url, &[], body)
}

/// Like [`http`], with extra request headers.
pub fn http_with(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let host_header = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|_| String::new())
        .unwrap_or_else(|| format!("Host: {host}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{host_header}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// Parses a raw HTTP/1.1 response (with a chunked or plain body).
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Proc {
    /// Waits for a line containing `marker` followed by a URL, and returns
    /// the URL without its trailing slash.
    pub fn url_after(&self, marker: &str) -> String {
        let line = self
            .out
            .wait_for(Duration::from_secs(120), |l| {
                l.contains(marker) && l.contains("http")
            })
            .unwrap_or_else(|| panic!("no {marker:?} line; output: {:#?}", self.out.all()));
        // The first URL after the marker (a node's line also names the
        // control plane's).
        let after = line.find(marker).unwrap() + marker.len();
        let start = after + line[after..].find("http").unwrap();
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics with `what`
/// after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished CLI command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shoal ARGS` against the control plane at `server`.
pub fn cli(server: &str, args: &[&str]) -> CliOutput {
    cli_as(server, None, args)
}

/// Runs `shoal ARGS` against the control plane at `server` with `token`.
pub fn cli_as(server: &str, token: Option<&str>, args: &[&str]) -> CliOutput {
    cli_env(server, token, &[], args)
}

/// Runs `shoal ARGS` against `server` with `token` and more environment.
pub fn cli_env(
    server: &str,
    token: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> CliOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.envs(env.iter().copied());
    if let Some(t) = token {
        cmd.env("SHOAL_TOKEN", t);
    }
    let out = cmd
        .args(args)
        .env("SHOAL_CONFIG", NO_CONFIG)
        .env("SHOAL_SERVER", server)
        .env("SHOAL_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run shoal");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A control plane and nodes, each a real `shoal` process on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cp: Proc,
    pub api: String,
    /// The admin token the control plane wrote at its first start.
    pub admin: String,
    /// The join token it wrote then, which the nodes join with.
    pub join: String,
    pub nodes: Vec<Proc>,
    pub node_urls: Vec<String>,
    pub gateways: Vec<Proc>,
    extra_cp_args: Vec<String>,
    /// The cluster CA's file, for a control plane serving https (started
    /// with `--tls` among its arguments); none: plain HTTP.
    pub ca: Option<PathBuf>,
}

impl Cluster {
    pub fn start(nodes: usize) -> Cluster {
        Self::start_with(nodes, &[], |_| Vec::new())
    }

    /// Starts a cluster; `cp_args` go to the control plane, and
    /// `node_args(i)` to node `i` (0-based).
    pub fn start_with(
        nodes: usize,
        cp_args: &[&str],
        node_args: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let extra_cp_args: Vec<String> = cp_args.iter().map(|s| s.to_string()).collect();
        let ca = extra_cp_args
            .iter()
            .any(|a| a == "--tls")
            .then(|| dir.path().join("cp").join("ca.pem"));
        let cp = Self::spawn_cp(&dir, "127.0.0.1:0", &extra_cp_args);
        let api = cp.url_after("Control plane listening on");
        let read = |f: &str| {
            std::fs::read_to_string(dir.path().join("cp").join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .trim()
                .to_string()
        };
        let (admin, join) = (read("admin.token"), read("join.token"));
        let mut c = Cluster {
            dir,
            cp,
            api,
            admin,
            join,
            nodes: Vec::new(),
            node_urls: Vec::new(),
            gateways: Vec::new(),
            extra_cp_args,
            ca,
        };
        for i in 0..nodes {
            c.add_node(i, node_args(i));
        }
        c.wait_nodes_ready(nodes);
        c
    }

    fn spawn_cp(dir: &tempfile::TempDir, listen: &str, extra: &[String]) -> Proc {
        let data = dir.path().join("cp");
        let mut args = vec![
            "control-plane".to_string(),
            "--listen".into(),
            listen.into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        // Plain HTTP unless the test asks for TLS (`--tls`, the default of
        // `shoal control-plane`).
        if !extra.iter().any(|a| a == "--tls") {
            args.push("--plain-http".into());
        }
        args.extend(extra.iter().filter(|a| *a != "--tls").cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(&refs, &[])
    }

    pub fn add_node(&mut self, i: usize, extra: Vec<String>) {
        let api = self.api.clone();
        self.add_node_joining(i, "--join", &api, extra);
    }

    /// Adds node `i` given `control_plane` (one URL, or several separated
    /// by commas) with `flag` (`--join` or its alias `--control-plane`).
    pub fn add_node_joining(
        &mut self,
        i: usize,
        flag: &str,
        control_plane: &str,
        extra: Vec<String>,
    ) {
        let name = format!("node-{}", i + 1);
        let cache = self.dir.path().join("cache");
        let mut args = vec![
            "node".to_string(),
            flag.into(),
            control_plane.into(),
            "--name".into(),
            name,
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        // One cache for every node unless the test gives a node its own.
        if !extra.iter().any(|a| a == "--cache-dir") {
            args.extend(["--cache-dir".into(), cache.display().to_string()]);
        }
        // Plain HTTP unless the test asks for mutual TLS (`--tls`, which
        // is not a flag of `shoal node`: the default).
        if !extra.iter().any(|a| a == "--tls") {
            args.push("--plain-http".into());
        }
        args.extend(extra.into_iter().filter(|a| a != "--tls"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let ca = self.ca_env();
        let mut env = vec![("SHOAL_JOIN_TOKEN", self.join.as_str())];
        env.extend(ca.iter().map(|c| ("SHOAL_CA", c.as_str())));
        let p = Proc::spawn(&refs, &env);
        let url = p.url_after("serving on");
        self.nodes.push(p);
        self.node_urls.push(url);
    }

    /// Starts a gateway following this cluster's control plane; returns its
    /// URL.
    pub fn start_gateway(&mut self, extra: &[&str]) -> String {
        let api = self.api.clone();
        self.start_gateway_following(&api, extra)
    }

    /// Starts a gateway given `control_plane` (one URL, or several
    /// separated by commas); returns its URL.
    pub fn start_gateway_following(&mut self, control_plane: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            control_plane,
        ];
        args.extend_from_slice(extra);
        let token = self.token(&format!("gateway-{}", self.gateways.len()), "gateway", None);
        let ca = self.ca_env();
        let mut env = vec![("SHOAL_TOKEN", token.as_str())];
        env.extend(ca.iter().map(|c| ("SHOAL_CA", c.as_str())));
        let p = Proc::spawn(&args, &env);
        let url = p.url_after("Gateway listening on");
        self.gateways.push(p);
        url
    }

    /// Kills the control plane with SIGKILL and starts it again on the same
    /// address and data dir.
    pub fn restart_cp(&mut self) {
        self.cp.kill9();
        let listen = self
            .api
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        self.cp = Self::spawn_cp(&self.dir, &listen, &self.extra_cp_args);
        let api = self.cp.url_after("Control plane listening on");
        assert_eq!(api, self.api);
    }

    pub fn cli(&self, args: &[&str]) -> CliOutput {
        match self.ca_env() {
            Some(ca) => cli_env(&self.api, Some(&self.admin), &[("SHOAL_CA", &ca)], args),
            None => cli_as(&self.api, Some(&self.admin), args),
        }
    }

    /// The CA file's path for `SHOAL_CA`, for a control plane over TLS.
    fn ca_env(&self) -> Option<String> {
        self.ca.as_ref().map(|p| p.display().to_string())
    }

    /// What a CLI process needs to reach this cluster as its admin.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("SHOAL_SERVER", self.api.as_str()),
            ("SHOAL_TOKEN", self.admin.as_str()),
        ]
    }

    /// `METHOD <api>PATH` as the admin: (status, body).
    pub fn api_call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let auth = format!("Bearer {}", self.admin);
        http_with(
            method,
            &format!("{}{path}", self.api),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
    }

    /// Makes a token (`role`, in `namespace` or the cluster) through the
    /// API as the admin; returns its secret.
    pub fn token(&self, name: &str, role: &str, namespace: Option<&str>) -> String {
        if self.ca.is_some() {
            // Over TLS, through the CLI (which trusts the CA).
            let mut args = vec!["token", "create", name, "--role", role, "-o", "json"];
            if let Some(ns) = namespace {
                args.extend(["-n", ns]);
            }
            let out = self.cli(&args);
            assert!(out.success, "creating token {name}: {}", out.stderr);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("token JSON");
            return v["secret"].as_str().expect("a secret").to_string();
        }
        let req = serde_json::json!({ "name": name, "role": role, "namespace": namespace });
        let (status, body) = self.api_call(
            "POST",
            shoal_api::endpoints::TOKENS,
            req.to_string().as_bytes(),
        );
        assert_eq!(status, 201, "creating token {name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        v["secret"].as_str().expect("a secret").to_string()
    }

    /// `shoal get RESOURCE -A -o json`, parsed.
    pub fn get_json(&self, resource: &str) -> serde_json::Value {
        let out = self.cli(&["get", resource, "-A", "-o", "json"]);
        assert!(out.success, "get {resource} failed: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("get {resource}: not JSON ({e}): {}", out.stdout))
    }

    pub fn instances(&self) -> Vec<serde_json::Value> {
        self.get_json("instances")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn wait_nodes_ready(&self, n: usize) {
        wait_until(Duration::from_secs(60), "nodes to register", || {
            let nodes = self.get_json("nodes");
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "ready")
                .count();
            (ready >= n).then_some(())
        });
    }

    /// Writes a manifest into the cluster's temp dir (modules resolve
    /// against the examples folder) and returns its path.
    pub fn manifest(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(file);
        std::fs::write(&p, text.replace("$EXAMPLES", example("").to_str().unwrap())).unwrap();
        p
    }

    /// Applies a manifest and waits for all replicas to be ready.
    pub fn apply_wait(&self, path: &std::path::Path) -> CliOutput {
        let out = self.cli(&[
            "apply",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ]);
        assert!(out.success, "apply failed:\n{}\n{}", out.stdout, out.stderr);
        out
    }

    /// The id of the one instance node `i` runs, once it has one (nodes
    /// serve an instance only when a request names it, as the gateway
    /// does).
    pub fn instance_on(&self, i: usize) -> String {
        wait_until(Duration::from_secs(60), "an instance on the node", || {
            self.node_status(i)
                .first()
                .and_then(|r| r["id"].as_str().map(str::to_string))
        })
    }

    /// The instance ids a node reports running (its own status endpoint).
    pub fn node_status(&self, i: usize) -> Vec<serde_json::Value> {
        let (status, body) = http(
            "GET",
            &format!("{}{}", self.node_urls[i], endpoints::node::STATUS),
            b"",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Requests from `threads` threads until stopped; records every answer.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    pub answers: Arc<Mutex<Vec<(u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, answers, url) =
                    (stop.clone(), ok.clone(), answers.clone(), url.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = http("GET", &url, b"");
                        if status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        answers.lock().unwrap().push((status, body));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            answers,
            threads,
        }
    }

    pub fn served(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful requests.
    pub fn wait_more(&self, n: usize) {
        let base = self.served();
        wait_until(Duration::from_secs(60), "more requests to succeed", || {
            (self.served() >= base + n).then_some(())
        });
    }

    pub fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.answers)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

// ---- raw HTTP/1 and HTTP/2 clients ------------------------------------------

use http_body_util::BodyExt;

/// `host:port` of a URL.
pub fn authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

pub type TestBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// A body sent in pieces of 16 KiB with no length announced.
pub fn unsized_body(data: &[u8]) -> TestBody {
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = data
        .chunks(16 * 1024)
        .map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed()
}

/// What an HTTP/2 client got: the status, headers and body, or the error
/// that ended the exchange.
pub type H2Answer = Result<(http::StatusCode, http::HeaderMap, bytes::Bytes), String>;

/// Sends `req` over a fresh HTTP/2 connection (prior knowledge) to `addr`.
pub fn h2(addr: &str, req: http::Request<TestBody>) -> H2Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let io = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let exchange = async {
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?;
            Ok((parts.status, parts.headers, body.to_bytes()))
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 60 s".into()))
    })
}

/// Sends `raw` on a fresh connection and reads until the server closes it.
pub fn raw_exchange(addr: &str, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(raw);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// The status and JSON body of a raw answer.
pub fn json_answer(answer: &str) -> (u16, serde_json::Value) {
    let (status, body) = parse_response(answer.as_bytes());
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {answer:?}"));
    (status, json)
}

/// `shoal run APP --listen 127.0.0.1:0 --no-cache EXTRA...` (APP an example
/// by name, or a `.wat` path), and its URL.
pub fn shoal_run(app: &str, extra: &[&str]) -> (Proc, String) {
    let path = if app.ends_with(".wat") {
        app.to_string()
    } else {
        example(app).to_str().unwrap().to_string()
    };
    let mut args = vec![
        "run",
        path.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args, &[]);
    let url = p.url();
    (p, url)
}

/// Request heads a listener refuses before any handler sees them, each with
/// what it is and the status it gets: a malformed request line (400), a
/// head over 64 KiB and one of more than 100 headers (431).
pub fn refused_heads() -> Vec<(&'static str, Vec<u8>, u16)> {
    let many = (0..150)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect::<String>();
    vec![
        (
            "a malformed request line",
            b"GET / HTTP/1.1 junk\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a head over 64 KiB",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            431,
        ),
        (
            "more than 100 headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
            431,
        ),
    ]
}
