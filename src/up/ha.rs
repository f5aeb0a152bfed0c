//! `shoal up --ha`: the control plane as three replicas on a three-member
//! etcd cluster, every process a child of `shoal up` on the loopback. etcd
//! keeps its data under DATA/etcd, and the ports its members use in
//! DATA/etcd/ports.json, so that a later `shoal up --ha` finds the same
//! cluster again.

use super::{ChildSpec, ControlPlane, Member, Ready, UpArgs, add, exited};
use crate::out::errln;
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// etcd members: three, so that one may fail.
pub(super) const MEMBERS: usize = 3;
/// Control-plane replicas: three, so that one may fail while another is
/// being restarted.
pub(super) const REPLICAS: usize = 3;
/// The key the leading replica's URL is kept under (with the replicas'
/// default `--etcd-prefix`).
pub(super) const LEADER_KEY: &[u8] = b"/shoal/leader";
/// Where the members' ports are kept, in DATA/etcd.
const PORTS_FILE: &str = "ports.json";
/// How long etcd may take to be healthy, and a replica to lead.
const LIMIT: Duration = Duration::from_secs(60);

/// The ports of one etcd member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ports {
    client: u16,
    peer: u16,
    metrics: u16,
}

/// The members' ports: those of the first start, kept in `dir`, else
/// free ones now. etcd cannot be told to pick its own (port 0), and the
/// members know each other by their peer URLs, which their data records:
/// a later start must use the same ports.
/// Also whether they were picked now.
fn etcd_ports(dir: &Path) -> anyhow::Result<(Vec<Ports>, bool)> {
    let file = dir.join(PORTS_FILE);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let ports: Vec<Ports> = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", file.display()))?;
            if ports.len() != MEMBERS {
                bail!(
                    "{} names {} etcd members, not {MEMBERS}",
                    file.display(),
                    ports.len()
                );
            }
            return Ok((ports, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    // Bound together, so that they differ, then released for etcd.
    let listeners = (0..3 * MEMBERS)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports for etcd")?;
    let free = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports for etcd")?;
    let ports: Vec<Ports> = free
        .chunks(3)
        .map(|p| Ports {
            client: p[0],
            peer: p[1],
            metrics: p[2],
        })
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&file, serde_json::to_vec_pretty(&ports)?)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok((ports, true))
}

/// etcd's own CA and certificates, in DATA/etcd/pki. etcd serves its
/// clients and its peers over TLS and asks each for a certificate of this
/// CA: no other local user can read or change the cluster's state, the
/// cluster CA's key among it.
struct EtcdTls {
    ca: PathBuf,
    /// The members' certificate: they serve with it and dial their peers
    /// with it.
    member_cert: PathBuf,
    member_key: PathBuf,
    /// The replicas' (and `shoal up`'s) client certificate.
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl EtcdTls {
    /// The files in `dir`, made at the first start.
    fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let (ca, _) = shoal_pki::ClusterCa::load_or_create(dir)
            .with_context(|| format!("etcd's CA in {}", dir.display()))?;
        let tls = EtcdTls {
            ca: dir.join(shoal_pki::CA_CERT_FILE),
            member_cert: dir.join("member.pem"),
            member_key: dir.join("member-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        let issue_member = || ca.issue_peer("Shoal etcd member");
        let issue_client =
            || ca.issue_client("Shoal control plane", &shoal_pki::Holder::ControlPlane);
        let issued: [(&PathBuf, &PathBuf, &dyn Fn() -> _); 2] = [
            (&tls.member_cert, &tls.member_key, &issue_member),
            (&tls.client_cert, &tls.client_key, &issue_client),
        ];
        for (cert, key, issue) in issued {
            if cert.is_file() && key.is_file() {
                continue;
            }
            let made = issue().with_context(|| format!("issuing {}", cert.display()))?;
            // The key first, as the CA's own files are made.
            shoal_pki::write_file(key, made.key_pem.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", key.display()))?;
            shoal_pki::write_file(cert, made.cert_pem.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", cert.display()))?;
        }
        Ok(tls)
    }

    /// A client of etcd with the client certificate.
    fn client(&self, endpoints: Vec<String>) -> anyhow::Result<shoal_etcd::Client> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut identity = read(&self.client_cert)?;
        identity.push(b'\n');
        identity.extend_from_slice(&read(&self.client_key)?);
        let config = shoal_etcd::ClientConfig {
            ca_pem: Some(read(&self.ca)?),
            identity_pem: Some(identity),
            ..shoal_etcd::ClientConfig::new(endpoints)
        };
        shoal_etcd::Client::new(config).context("a client of etcd")
    }
}

/// How to install etcd, for the errors that find none.
const INSTALL_HINT: &str = "install it (`sudo apt-get install etcd-server` on Debian and Ubuntu, or scripts/install-etcd.sh in Shoal's repository), or put an etcd 3.4 or later binary on PATH";

/// The etcd binary: on PATH, else the one `scripts/install-etcd.sh`
/// finds or installs when `shoal` runs from its repository.
async fn etcd_binary() -> anyhow::Result<PathBuf> {
    super::server_binary(
        "etcd",
        "install-etcd.sh",
        "`shoal up --ha` runs etcd",
        INSTALL_HINT,
    )
    .await
}

/// The address of replica `i`: `--api` for the first, the ports after it
/// for the others (port 0: a free port for each).
fn replica_addr(api: SocketAddr, i: usize) -> anyhow::Result<SocketAddr> {
    if api.port() == 0 {
        return Ok(api);
    }
    let port = u16::try_from(i)
        .ok()
        .and_then(|i| api.port().checked_add(i))
        .ok_or_else(|| anyhow!("--api {api}: replica {i} would need a port past 65535"))?;
    Ok(SocketAddr::new(api.ip(), port))
}

/// Starts etcd and the replicas on it; the first replica starts alone and
/// leads, so that at the cluster's first start it makes the cluster CA and
/// the tokens.
pub(super) async fn control_plane(
    members: &mut Vec<Member>,
    args: &UpArgs,
    dir: &Path,
    logs: &Path,
) -> anyhow::Result<ControlPlane> {
    let etcd_dir = dir.join("etcd");
    let binary = etcd_binary().await?;
    let tls = EtcdTls::load_or_create(&etcd_dir.join("pki"))?;
    let (mut ports, mut fresh) = etcd_ports(&etcd_dir)?;
    let mut tries = 1;
    let endpoints = loop {
        match start_etcd(
            members,
            &binary,
            &tls,
            &etcd_dir,
            logs,
            &ports,
            args.verbose,
        )
        .await
        {
            Ok(endpoints) => break endpoints,
            // Another process took a port between the moment it was
            // picked and etcd's start: new ports, and a cluster made anew.
            Err(e)
                if fresh
                    && tries < PORT_TRIES
                    && e.to_string().contains("address already in use") =>
            {
                errln!("etcd could not bind the ports picked for it; picking others");
                super::stop_all(members).await;
                members.clear();
                for i in 0..MEMBERS {
                    let data = etcd_dir.join(format!("m{i}"));
                    if data.exists() {
                        std::fs::remove_dir_all(&data)
                            .with_context(|| format!("removing {}", data.display()))?;
                    }
                }
                let file = etcd_dir.join(PORTS_FILE);
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
                (ports, fresh) = etcd_ports(&etcd_dir)?;
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    };

    let etcd = tls.client(endpoints)?;
    let store = format!(
        "etcd://{}",
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.client))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lease = args.lease.to_string();
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let dirs: Vec<PathBuf> = (0..REPLICAS)
        .map(|i| dir.join(format!("control-plane-{i}")))
        .collect();
    // One secrets key for every replica (a leader opens what another
    // sealed), made at the first start and kept beside them; never in
    // etcd, beside the values it seals.
    let secrets_key = dir.join("secrets.key");
    if !secrets_key.exists() {
        shoal_scheduler::secrets::new_key_file(&secrets_key)
            .context("making the control plane's secrets key")?;
    }
    let secrets_key = secrets_key.display().to_string();
    let mut urls = Vec::new();
    for (i, data) in dirs.iter().enumerate() {
        let listen = replica_addr(args.api, i)?.to_string();
        let data = data.display().to_string();
        let spec = ChildSpec::new(
            format!("control-plane-{i}"),
            &[
                "control-plane",
                "--listen",
                &listen,
                "--data-dir",
                &data,
                "--lease",
                &lease,
                "--store",
                &store,
                "--etcd-ca",
                &ca,
                "--etcd-cert",
                &cert,
                "--etcd-key",
                &key,
                "--secrets-key-file",
                &secrets_key,
                "--exit-with-parent",
            ],
            logs.join(format!("control-plane-{i}.log")),
        );
        urls.push(add_replica(members, spec, args.verbose).await?);
        if i == 0 {
            wait_until(members, "control-plane-0 to lead", async || {
                leader(&etcd).await.filter(|l| *l == urls[0])
            })
            .await?;
        }
    }
    // The first leader wrote the tokens to its data dir: control-plane-0's,
    // unless another replica led first (a cluster started otherwise).
    let (token_dir, admin, join) = wait_until(members, "the admin and join tokens", async || {
        dirs.iter().find_map(|d| {
            let admin = shoal_scheduler::auth::read_admin_token(d).ok()?;
            let join = shoal_scheduler::auth::read_join_token(d).ok()?;
            Some((d.clone(), admin, join))
        })
    })
    .await?;
    Ok(ControlPlane {
        urls,
        token_dir,
        // Every replica writes the CA they share to its data dir.
        ca_file: dirs[0].join(shoal_pki::CA_CERT_FILE),
        admin,
        join,
        etcd: Some(etcd),
    })
}

/// Starts the etcd members on `ports` and waits until they are healthy;
/// their client URLs.
async fn start_etcd(
    members: &mut Vec<Member>,
    binary: &Path,
    tls: &EtcdTls,
    etcd_dir: &Path,
    logs: &Path,
    ports: &[Ports],
    verbose: bool,
) -> anyhow::Result<Vec<String>> {
    let url = |port: u16| format!("https://127.0.0.1:{port}");
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={}", url(p.peer)))
        .collect::<Vec<_>>()
        .join(",");
    let mut endpoints = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        // Health only, on the metrics port: plain HTTP.
        let metrics = format!("http://127.0.0.1:{}", p.metrics);
        let (client, peer) = (url(p.client), url(p.peer));
        let (ca, cert, key) = (
            tls.ca.display().to_string(),
            tls.member_cert.display().to_string(),
            tls.member_key.display().to_string(),
        );
        let data = etcd_dir.join(format!("m{i}")).display().to_string();
        let mut spec = ChildSpec::new(
            format!("etcd-{i}"),
            &[
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &data,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--listen-metrics-urls",
                &metrics,
                "--initial-cluster",
                &cluster,
                // Ignored once a member has data: a later start rejoins.
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "shoal-up",
                // A member that starts late does not depose the leader the
                // others elected meanwhile.
                "--pre-vote",
                // Old revisions go after an hour: the data stays small.
                "--auto-compaction-retention",
                "1",
                "--trusted-ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--client-cert-auth",
                "--peer-trusted-ca-file",
                &ca,
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--peer-client-cert-auth",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ],
            logs.join(format!("etcd-{i}.log")),
        );
        spec.program = Some(binary.to_path_buf());
        spec.ready = Ready::Port(SocketAddr::from(([127, 0, 0, 1], p.client)), client.clone());
        spec.stop_last = true;
        add(members, spec, verbose).await?;
        endpoints.push(client);
    }
    wait_etcd_healthy(members, ports).await?;
    Ok(endpoints)
}

/// How many times etcd is given new ports at its first start.
const PORT_TRIES: u32 = 3;

/// Starts a replica, again if it exits at once: etcd may still be
/// settling (members that start at different times can hold another
/// election), and a replica that cannot reach it at its start exits.
async fn add_replica(
    members: &mut Vec<Member>,
    spec: ChildSpec,
    verbose: bool,
) -> anyhow::Result<String> {
    let mut wait = Duration::from_millis(500);
    for _ in 1..START_TRIES {
        match add(members, spec.clone(), verbose).await {
            Ok(url) => return Ok(url),
            Err(e) => {
                let e = e.to_string();
                errln!(
                    "{} did not start ({}); trying again in {}",
                    spec.name,
                    e.lines().next().unwrap_or_default(),
                    shoal_api::Duration::from(wait)
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    add(members, spec, verbose).await
}

/// How many times a replica is started before `shoal up` gives up.
const START_TRIES: u32 = 4;

/// The URL of the leading replica, if one leads.
pub(super) async fn leader(etcd: &shoal_etcd::Client) -> Option<String> {
    let kv = etcd.get(LEADER_KEY).await.ok()??;
    String::from_utf8(kv.value).ok()
}

/// Polls `found` until it gives a value; fails when a child exits
/// meanwhile, or after [`LIMIT`].
async fn wait_until<T>(
    members: &mut [Member],
    what: &str,
    mut found: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        for m in members.iter_mut() {
            if let Ok(Some(status)) = m.proc.child.try_wait() {
                return Err(exited(
                    &m.spec,
                    &format!("exited during startup ({status})"),
                ));
            }
        }
        if let Some(v) = found().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for {what} (the logs are in the data dir)",
                LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every etcd member says it is healthy: the cluster has a
/// leader and answers reads.
async fn wait_etcd_healthy(members: &mut [Member], ports: &[Ports]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()?;
    let healthy = async |port: u16| {
        let Ok(resp) = http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        else {
            return false;
        };
        resp.json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v["health"] == "true")
    };
    wait_until(members, "etcd to be healthy", async || {
        for p in ports {
            if !healthy(p.metrics).await {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// Calls `f` again while the control plane answers 503 (no replica leads
/// yet, or etcd is being elected), for up to [`LIMIT`].
pub(super) async fn while_no_leader<T, F>(mut f: impl FnMut() -> F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match f().await {
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && e.downcast_ref::<shoal_client::Error>()
                        .and_then(shoal_client::Error::status)
                        == Some(http::StatusCode::SERVICE_UNAVAILABLE) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_listen_on_the_ports_after_api_or_each_on_a_free_one() {
        let api: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let ports: Vec<u16> = (0..3)
            .map(|i| replica_addr(api, i).unwrap().port())
            .collect();
        assert_eq!(ports, [7070, 7071, 7072]);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(replica_addr(any, 2).unwrap(), any);
        let top: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        assert!(replica_addr(top, 1).is_err());
    }

    #[test]
    fn etcd_ports_are_kept_for_later_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (first, fresh) = etcd_ports(dir.path()).unwrap();
        assert!(fresh);
        assert_eq!(first.len(), MEMBERS);
        let mut all: Vec<u16> = first
            .iter()
            .flat_map(|p| [p.client, p.peer, p.metrics])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3 * MEMBERS, "{first:?}");
        assert_eq!(etcd_ports(dir.path()).unwrap(), (first, false));
    }
}
