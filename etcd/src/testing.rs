//! For tests: real etcd processes on 127.0.0.1, each in a temporary directory.
//!
//! The etcd binary is the one on PATH, else `/usr/bin/etcd`, else the one
//! `scripts/install-etcd.sh` installs. Without one these helpers panic: a test
//! that needs etcd fails rather than skips.

use std::fs::File;
use std::net::TcpListener;
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::ClientConfig;

/// How long a cluster may take to elect a leader and answer, on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Clusters started again with new ports after etcd could not bind the reserved ones.
const PORT_RETRIES: usize = 5;

/// The etcd binary, installed by `scripts/install-etcd.sh` when none is found.
pub fn etcd_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn find_or_install() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
    {
        return path;
    }
    let usual = PathBuf::from("/usr/bin/etcd");
    if usual.is_file() {
        return usual;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-etcd.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or("").trim();
    if !out.status.success() || path.is_empty() || !Path::new(path).is_file() {
        panic!(
            "no etcd binary, and {} could not install one (exit {}); see its messages above",
            script.display(),
            out.status
        );
    }
    PathBuf::from(path)
}

/// Server TLS for a cluster's client URLs, with client certificates required.
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// One etcd process. Dropping it kills the process.
pub struct EtcdMember {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    client_url: String,
    peer_url: String,
    metrics_url: String,
    initial_cluster: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    child: Mutex<Option<Child>>,
}

impl EtcdMember {
    /// The URL clients use: `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP): it keeps its sockets but answers nothing, like a
    /// member cut off from the network.
    ///
    /// Returns once every thread of the process has stopped: the kernel stops a
    /// process only when one of its threads gets a core to take the signal, and on
    /// a loaded machine the others may answer a request or two meanwhile.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else {
            return;
        };
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd member {} did not stop within {READY_TIMEOUT:?} of SIGSTOP",
                self.name
            );
            std::thread::yield_now();
        }
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills the process if it runs and starts it again with the same data directory
    /// and ports. Returns at once: see `wait_ready`.
    pub fn restart(&self) {
        self.kill();
        let child = self.spawn();
        *self.lock() = Some(child);
    }

    /// Waits until the member says it is healthy (it has a leader and answers a
    /// read), panicking after a minute.
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.is_healthy(&http).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd member {} is not healthy after {READY_TIMEOUT:?}; its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn is_healthy(&self, http: &reqwest::Client) -> bool {
        let url = format!("{}/health", self.metrics_url);
        let Ok(resp) = http.get(url).timeout(Duration::from_secs(5)).send().await else {
            return false;
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            return false;
        };
        body.get("health").and_then(|h| h.as_str()) == Some("true") && self.is_itself(http).await
    }

    /// Whether the etcd answering on this member's ports is this member's
    /// process: the ports were free when reserved, but another test's etcd
    /// may have taken them since, and this one then exits while that one
    /// answers. The member id the process logged once it bound its ports
    /// must be the one its metrics port reports.
    async fn is_itself(&self, http: &reqwest::Client) -> bool {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let Some(logged) = log
            .rsplit("\"local-member-id\":\"")
            .next()
            .filter(|_| log.contains("\"local-member-id\":\""))
            .and_then(|rest| rest.split('"').next())
        else {
            return false;
        };
        let url = format!("{}/metrics", self.metrics_url);
        let Ok(resp) = http.get(url).timeout(Duration::from_secs(5)).send().await else {
            return false;
        };
        let Ok(metrics) = resp.text().await else {
            return false;
        };
        metrics.contains(&format!("etcd_server_id{{server_id=\"{logged}\"}} 1"))
    }

    /// Whether the process exited, and what it logged if so.
    fn exited(&self) -> Option<String> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(_)) => Some(std::fs::read_to_string(&self.log).unwrap_or_default()),
            _ => None,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with the pid of our own child, which we have not
            // reaped (it stays ours while `child` holds it).
            let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
            assert_eq!(rc, 0, "cannot signal etcd member {}", self.name);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--listen-metrics-urls")
            .arg(&self.metrics_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("shoal-test")
            // Quick elections, yet slow enough for a loaded two-core machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--snapshot-count", "10000"])
            .args(["--quota-backend-bytes", &(256u64 << 20).to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        // etcd dies with the test that started it, even one killed before it could
        // drop the member. (The signal comes when the spawning thread ends: a test's
        // own thread, or a runtime's worker, outlives its cluster.)
        // SAFETY: prctl is async-signal-safe and touches only the child.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_binary().display()))
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of etcd members on 127.0.0.1. Dropping it kills them and removes
/// their data.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    // Dropped after the members, which use it.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3 in practice) and waits until every one is healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None).await
    }

    /// Like `start`, serving clients over TLS with the given server certificate
    /// (which must name 127.0.0.1) and requiring client certificates signed by the CA
    /// (`--client-cert-auth`). etcd's JSON gateway dials etcd's own gRPC service with
    /// the server certificate as its client certificate: the certificate needs the
    /// client-auth extended key usage too.
    pub async fn start_tls(
        n: usize,
        ca_pem: &[u8],
        server_cert_pem: &[u8],
        server_key_pem: &[u8],
    ) -> EtcdCluster {
        Self::start_with(n, Some((ca_pem, server_cert_pem, server_key_pem))).await
    }

    async fn start_with(n: usize, tls: Option<(&[u8], &[u8], &[u8])>) -> EtcdCluster {
        assert!(n >= 1, "a cluster has at least one member");
        let mut last_log = String::new();
        for _ in 0..PORT_RETRIES {
            let cluster = Self::spawn(n, tls);
            match cluster.wait_all_ready().await {
                Ok(()) => return cluster,
                // Another process took a reserved port in the meantime: new ports.
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("etcd exited while starting; its log:\n{log}"),
            }
        }
        panic!("etcd could not bind its ports {PORT_RETRIES} times; the last log:\n{last_log}");
    }

    fn spawn(n: usize, tls: Option<(&[u8], &[u8], &[u8])>) -> EtcdCluster {
        // Data in memory where there is a tmpfs: etcd syncs every write.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("shoal-etcd-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("shoal-etcd-").tempdir()
        }
        .expect("a temporary directory for etcd");
        let tls_files = tls.map(|(ca, cert, key)| {
            let files = TlsFiles {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join("server.pem"),
                key: dir.path().join("server-key.pem"),
            };
            std::fs::write(&files.ca, ca).expect("write the CA");
            std::fs::write(&files.cert, cert).expect("write the server certificate");
            std::fs::write(&files.key, key).expect("write the server key");
            files
        });
        let client_scheme = if tls.is_some() { "https" } else { "http" };
        let ports = free_ports(3 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = (0..n)
            .map(|i| format!("{}=http://127.0.0.1:{}", names[i], ports[3 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..n)
            .map(|i| {
                let member = EtcdMember {
                    name: names[i].clone(),
                    data_dir: dir.path().join(format!("{}.etcd", names[i])),
                    log: dir.path().join(format!("{}.log", names[i])),
                    client_url: format!("{client_scheme}://127.0.0.1:{}", ports[3 * i]),
                    peer_url: format!("http://127.0.0.1:{}", ports[3 * i + 1]),
                    metrics_url: format!("http://127.0.0.1:{}", ports[3 * i + 2]),
                    initial_cluster: initial_cluster.clone(),
                    tls: tls_files
                        .as_ref()
                        .map(|f| (f.ca.clone(), f.cert.clone(), f.key.clone())),
                    child: Mutex::new(None),
                };
                let child = member.spawn();
                *member.lock() = Some(child);
                member
            })
            .collect();
        EtcdCluster { members, _dir: dir }
    }

    /// Waits until every member is healthy; the log of a member that exited instead.
    async fn wait_all_ready(&self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = vec![false; self.members.len()];
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if let Some(log) = m.exited() {
                    return Err(log);
                }
                if !ready[i] {
                    ready[i] = m.is_healthy(&http).await;
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("== {}\n{}", m.name, m.log_tail()))
                    .collect();
                panic!(
                    "etcd is not healthy after {READY_TIMEOUT:?}; the logs end with:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URLs of every member, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// A client configuration with every member's endpoint and a 5 s timeout.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.endpoints())
    }
}

/// Whether every thread of process `pid` is stopped (state `T`), or the process
/// is gone. (Linux: read from `/proc`.)
/// Whether every thread of process `pid` is stopped (or the process is gone):
/// what a test waits for after SIGSTOP before it counts on the silence.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        matches!(state, None | Some("T" | "t" | "Z" | "X"))
    })
}

/// Ports free right now: bound together on 127.0.0.1:0 (so they differ), then
/// released for etcd, which cannot be told to pick its own.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}
