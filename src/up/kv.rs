//! The key-value stores of `shoal up`'s nodes: one `redis-server`, a child
//! of `shoal up` on the loopback, that every node uses, so that an app's
//! replicas on different nodes see the same data. It keeps its data under
//! DATA/redis (an append-only file synced once a second) and asks for a
//! password, made at the first start and kept in DATA/redis (mode 0600):
//! other local users cannot read the stores. Its configuration file holds
//! the password, so no command line shows it; nodes get the URL in their
//! environment.

use super::{ChildSpec, Member, Ready, add};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How `shoal up`'s nodes keep their apps' key-value stores.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvChoice {
    /// One redis-server that every node shares (installed with
    /// scripts/install-redis.sh when none is on PATH).
    Redis,
    /// An embedded file per node: replicas on different nodes see
    /// different data.
    Embedded,
}

/// How to install Redis, for the errors that find none.
const INSTALL_HINT: &str = "install it (`sudo apt-get install redis-server` on Debian and Ubuntu, or scripts/install-redis.sh in Shoal's repository), put a redis-server (or Valkey's, named redis-server) on PATH, or run `shoal up --kv embedded` for a store per node";

/// Ports tried when redis-server cannot bind the one picked.
const PORT_TRIES: usize = 3;

/// The redis-server binary: on PATH, else the one
/// `scripts/install-redis.sh` finds or installs when `shoal` runs from its
/// repository.
async fn redis_binary() -> anyhow::Result<PathBuf> {
    super::server_binary(
        "redis-server",
        "install-redis.sh",
        "`shoal up` runs Redis for its nodes' key-value stores",
        INSTALL_HINT,
    )
    .await
}

/// The password of the cluster's Redis, made at the first start.
fn password(dir: &Path) -> anyhow::Result<String> {
    super::secret_file(&dir.join("password"), "a password for Redis")
}

/// Starts redis-server under `dir` (DATA/redis) and waits until it
/// accepts connections; the URL nodes use (with the password: for their
/// environment only).
pub(super) async fn start_redis(
    members: &mut Vec<Member>,
    dir: &Path,
    logs: &Path,
    verbose: bool,
) -> anyhow::Result<String> {
    let binary = redis_binary().await?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let password = password(dir)?;
    let conf = dir.join("redis.conf");
    let mut last = None;
    for _ in 0..PORT_TRIES {
        let port = super::free_addr("Redis")?.port();
        // Quoted as redis.conf reads strings: the directory may hold spaces.
        let text = format!(
            "bind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\nlogfile \"\"\n\
             dir \"{}\"\nsave \"\"\nappendonly yes\nappendfsync everysec\nrequirepass \"{password}\"\n",
            dir.display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        );
        shoal_pki::write_file(&conf, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", conf.display()))?;
        let conf_arg = conf.display().to_string();
        let url = format!("redis://127.0.0.1:{port}");
        let mut spec = ChildSpec::new("redis", &[&conf_arg], logs.join("redis.log"));
        spec.program = Some(binary.clone());
        spec.ready = Ready::Port(SocketAddr::from(([127, 0, 0, 1], port)), url);
        // After the nodes, which write to it until they stop.
        spec.stop_last = true;
        match add(members, spec, verbose).await {
            Ok(_) => return Ok(format!("redis://:{password}@127.0.0.1:{port}")),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("Redis did not start")))
}
