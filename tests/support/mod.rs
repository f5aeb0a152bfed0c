//! Helpers for end-to-end tests: run the real `shoal` binary and watch what
//! it prints.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    fn push(&self, line: String) {
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

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("SHOAL_LOG", "info")
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
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
