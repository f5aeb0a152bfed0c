//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry, 2.8), installed by `scripts/install-registry.sh`
//! when it is not there, serving on a free loopback port from a temporary
//! directory, optionally with htpasswd authentication; killed when
//! dropped. Without the binary, the test fails.

use super::Output;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The registry binary: on PATH, else `/usr/bin/docker-registry`, else
/// what the install script installs.
pub fn registry_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-registry.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = stdout.lines().last().unwrap_or("").trim().to_string();
            if !out.status.success() || path.is_empty() || !PathBuf::from(&path).is_file() {
                panic!(
                    "no docker-registry binary, and {} could not install one (exit {}); see its messages above",
                    script.display(),
                    out.status
                );
            }
            PathBuf::from(path)
        })
        .clone()
}

/// A running registry.
pub struct Registry {
    child: Child,
    pub out: Output,
    /// `127.0.0.1:PORT`: what `oci://` references name.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// A registry anyone may push to and pull from.
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// A registry that asks for `username` and `password` (HTTP basic
    /// authentication, an htpasswd file with a bcrypt hash).
    pub fn with_auth(username: &str, password: &str) -> Registry {
        Self::start_inner(Some((username, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: shoal-tests\n",
            data.display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: shoal-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).unwrap();
        let mut child = Command::new(registry_binary())
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        let out = Output::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
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
        // It binds port 0 and says which port it got.
        let line = out
            .wait_for(Duration::from_secs(60), |l| l.contains("listening on "))
            .unwrap_or_else(|| panic!("the registry did not start: {:#?}", out.all()));
        let after = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        let addr = after
            .split(|c: char| c == '"' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string();
        Registry {
            child,
            out,
            addr,
            _dir: dir,
        }
    }

    /// `oci://ADDR/REPO_AND_TAG`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("oci://{}/{repo_and_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
