//! `shoal control-plane --store etcd://...`: one replica of a highly
//! available control plane. Replicas share the state and the cluster CA
//! through etcd; one of them, elected, leads; the others answer reads from
//! a cache etcd's watches keep current and pass writes to it (see
//! `shoal_scheduler::leader`, `shoal_scheduler::follower` and
//! `shoal_scheduler::replica`).

use crate::cluster::{ControlPlaneArgs, announce_first_start, api_tls, serve_until_stopped};
use anyhow::{Context, bail};
use shoal_scheduler::leader::{ElectionConfig, Role};
use shoal_scheduler::store::etcd::{Etcd, EtcdConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long one etcd request may take.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// The etcd members of `--store etcd://HOST:PORT[,HOST:PORT...]` (without
/// a scheme), or none for the embedded store.
pub fn etcd_endpoints(store: &str) -> anyhow::Result<Option<Vec<String>>> {
    if store == "redb" {
        return Ok(None);
    }
    let Some(members) = store.strip_prefix("etcd://") else {
        bail!("--store {store:?}: expected `redb` or `etcd://HOST:PORT[,HOST:PORT...]`");
    };
    let members: Vec<String> = members
        .split(',')
        .map(|m| m.trim().trim_end_matches('/').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if members.is_empty() {
        bail!("--store etcd:// names no etcd member (expected etcd://HOST:PORT[,HOST:PORT...])");
    }
    for m in &members {
        let port = m.rsplit_once(':').map(|(_, p)| p);
        if m.contains('/') || port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            bail!("--store: {m:?} is not HOST:PORT");
        }
    }
    Ok(Some(members))
}

fn read(path: &Option<PathBuf>, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    path.as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {what} {}", p.display())))
        .transpose()
}

/// The cluster CA every replica shares: the one in etcd if a replica put
/// it there first, else this data dir's (created if need be), put there
/// now. It is written to the data dir, so `ca.pem` there is what clients
/// trust.
async fn shared_ca(etcd: &Etcd, dir: &Path) -> anyhow::Result<shoal_pki::ClusterCa> {
    shoal_pki::ClusterCa::load_or_create(dir)
        .with_context(|| format!("the cluster CA in {}", dir.display()))?;
    let (cert_file, key_file) = (
        dir.join(shoal_pki::CA_CERT_FILE),
        dir.join(shoal_pki::CA_KEY_FILE),
    );
    let ours = (
        std::fs::read(&cert_file).with_context(|| format!("reading {}", cert_file.display()))?,
        std::fs::read(&key_file).with_context(|| format!("reading {}", key_file.display()))?,
    );
    let shared = etcd
        .adopt_ca(ours.clone())
        .await
        .context("sharing the cluster CA through etcd")?;
    if shared != ours {
        // The key first, as the CA's own files are made.
        shoal_pki::write_file(&key_file, &shared.1, 0o600)
            .with_context(|| format!("writing {}", key_file.display()))?;
        shoal_pki::write_file(&cert_file, &shared.0, 0o644)
            .with_context(|| format!("writing {}", cert_file.display()))?;
        crate::out::sayln!(
            "Using the cluster CA the other replicas share ({})",
            cert_file.display()
        );
    }
    let (ca, _) = shoal_pki::ClusterCa::load_or_create(dir)
        .with_context(|| format!("the cluster CA in {}", dir.display()))?;
    Ok(ca)
}

pub async fn replica(
    args: ControlPlaneArgs,
    dir: PathBuf,
    endpoints: Vec<String>,
    config: shoal_scheduler::state::Config,
) -> anyhow::Result<()> {
    let ca_pem = read(&args.etcd_ca, "--etcd-ca")?;
    let identity = match (
        read(&args.etcd_cert, "--etcd-cert")?,
        read(&args.etcd_key, "--etcd-key")?,
    ) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            Some(cert)
        }
        _ => None,
    };
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let etcd = Etcd::connect(&EtcdConfig {
        endpoints: endpoints
            .iter()
            .map(|m| format!("{scheme}://{m}"))
            .collect(),
        ca_pem,
        identity_pem: identity,
        prefix: args.etcd_prefix.clone(),
        request_timeout: ETCD_TIMEOUT,
    })
    .context("connecting to etcd")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = shared_ca(&etcd, &dir).await?;
    let ca_file = dir.join(shoal_pki::CA_CERT_FILE);
    let tls = api_tls(&args, &ca)?;
    let ca_pem = ca.cert_pem().as_bytes().to_vec();
    let config = shoal_scheduler::state::Config {
        ca: Some(Arc::new(ca)),
        ..config
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    // This replica says it is there, for `shoal get control-planes`.
    let members = Arc::new(shoal_scheduler::members::EtcdMembers::new(
        etcd.clone(),
        endpoints.clone(),
        args.etcd_prefix.clone(),
        advertise.clone(),
        shoal_api::objects::now_ms(),
        args.leader_lease.get(),
    ));
    let config = shoal_scheduler::state::Config {
        membership: shoal_scheduler::members::Membership::Etcd(members.clone()),
        ..config
    };
    let (roles_tx, roles) = tokio::sync::watch::channel(Role::vacant(false));
    // While this replica follows, it answers reads from a cache of the
    // state etcd keeps current.
    let follower = shoal_scheduler::follower::spawn(etcd.clone(), config.clone(), roles.clone());
    let router =
        shoal_scheduler::replica::router(roles, tls.is_some().then_some(&ca_pem[..]), follower)
            .context("the API of the replica")?;
    let start_dir = dir.clone();
    let start = move |store: shoal_scheduler::store::Store| {
        let cp = shoal_scheduler::state::ControlPlane::start(store, config.clone())
            .map_err(|e| format!("loading the state: {e}"))?;
        match shoal_scheduler::auth::first_start(cp.tokens(), &start_dir, cp.now_ms()) {
            Ok(Some(first)) => announce_first_start(&first),
            Ok(None) => {}
            Err(e) => return Err(format!("making the admin and join tokens: {e}")),
        }
        let router = shoal_scheduler::api::router(cp.clone());
        Ok((cp, router))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let presence = tokio::spawn(members.keep_presence(stop_rx.clone()));
    let election = tokio::spawn(shoal_scheduler::leader::run(
        etcd,
        ElectionConfig {
            advertise: advertise.clone(),
            lease: args.leader_lease.get(),
        },
        start,
        roles_tx,
        stop_rx,
    ));
    match &tls {
        Some(_) => crate::out::sayln!(
            "Control plane listening on https://{addr}/ (data dir {}, CA {}; replica on etcd {}, advertised as {advertise})",
            dir.display(),
            ca_file.display(),
            endpoints.join(",")
        ),
        None => crate::out::sayln!(
            "Control plane listening on http://{addr}/ (data dir {}; plain HTTP, no TLS; replica on etcd {}, advertised as {advertise})",
            dir.display(),
            endpoints.join(",")
        ),
    }
    // As for one control plane: the term ends (its control loop stops and
    // the lease is given up, so another replica leads at once) before the
    // API stops answering.
    let stop = crate::cluster::stop_requested(args.exit_with_parent);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        stop.await;
        let _ = stop_tx.send(true);
        let _ = election.await;
        let _ = presence.await;
        let _ = stopped_tx.send(());
    };
    let server = async move {
        match tls {
            Some(config) => {
                shoal_scheduler::tls::serve_tls_router(listener, router, config, shutdown).await
            }
            None => shoal_scheduler::api::serve_router(listener, router, shutdown).await,
        }
    };
    serve_until_stopped(server, stopped_rx).await?;
    // `main` says "Stopped." once the work on blocking threads is done.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!(etcd_endpoints("redb").unwrap(), None);
        assert_eq!(
            etcd_endpoints("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap(),
            Some(vec![
                "10.0.0.1:2379".to_string(),
                "10.0.0.2:2379".to_string()
            ])
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://h:99999",
            "postgres://x",
            "etcd://h:1/p",
        ] {
            assert!(etcd_endpoints(bad).is_err(), "{bad}");
        }
    }
}
