//! For tests: real `redis-server` processes on 127.0.0.1, each with its
//! own temporary directory.
//!
//! The binary is the one on PATH, else `/usr/bin/redis-server`, else the
//! one `scripts/install-redis.sh` installs. Without one these helpers
//! panic: a test that needs Redis fails rather than skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to answer, on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Servers started again on another port after one could not bind.
const PORT_TRIES: usize = 5;

/// The redis-server binary, installed by `scripts/install-redis.sh` when
/// none is found.
pub fn redis_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn find_or_install() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
    {
        return path;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-redis.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or("").trim();
    if !out.status.success() || path.is_empty() || !Path::new(path).is_file() {
        panic!(
            "no redis-server, and {} could not install one (exit {}); see its messages above",
            script.display(),
            out.status
        );
    }
    PathBuf::from(path)
}

/// One redis-server. Dropping it kills the process and removes its data.
pub struct RedisServer {
    port: u16,
    durable: bool,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// A server that keeps nothing on disk.
    pub fn start() -> Self {
        Self::spawn_new(false)
    }

    /// A server that appends every write to its log and syncs it before it
    /// answers (`appendonly yes`, `appendfsync always`).
    pub fn start_durable() -> Self {
        Self::spawn_new(true)
    }

    fn spawn_new(durable: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("shoal-redis-")
            .tempdir()
            .expect("a temporary directory for redis");
        let mut server = Self {
            port: 0,
            durable,
            dir,
            child: Mutex::new(None),
        };
        for _ in 0..PORT_TRIES {
            server.port = free_port();
            if server.run() {
                return server;
            }
        }
        panic!(
            "redis-server did not start after {PORT_TRIES} ports; its log ends with:\n{}",
            server.log_tail()
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same
    /// directory; returns once it answers.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        // The port may take a moment to be free again.
        while !self.run() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}; its log ends with:\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    /// The last lines the server logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the process; whether it came up and answers PING.
    fn run(&self) -> bool {
        let log = self.dir.path().join("redis.log");
        let (appendonly, fsync) = if self.durable {
            ("yes", "always")
        } else {
            ("no", "no")
        };
        let mut cmd = Command::new(redis_binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", fsync, "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", redis_binary().display()));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                // Exited: most likely the port was taken.
                return false;
            }
            if self.answers(child.id()) {
                *self.lock() = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server does not answer on port {} after {READY_TIMEOUT:?}; its log ends with:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server on the port answers, and is process `pid` (not
    /// another test's server that took the port first).
    fn answers(&self, pid: u32) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"INFO server\r\n").is_err() {
            return false;
        }
        let want = format!("process_id:{pid}\r\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 1 << 16 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if text.contains(&want) {
                return true;
            }
            if text.contains("process_id:") && text.contains("\r\nrun_id:") {
                return false;
            }
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address").port()
}
