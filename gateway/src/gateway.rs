//! The gateway as its workers share it: the routing table in force, the
//! state that outlives tables (endpoint load, node health, per-app counters
//! and retry budgets), and each worker's own connection pool.

use crate::table::{AppStats, Endpoints, Table};
use dashmap::DashMap;
use shoal_api::objects::AppKey;
use shoal_api::routes::RouteTable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long connecting to a node may take before it counts as failed.
    pub connect_timeout: Duration,
    /// The control plane, asked for an instance when a request arrives for
    /// an app that has none: its URL, or its replicas' separated by commas
    /// (the client moves to the next when one fails).
    pub control_plane: Option<String>,
    /// How long a request waits for an app with no ready instance to get
    /// one (capped by the app's timeout).
    pub activation_timeout: Duration,
    /// The CA (PEM) the control plane's TLS certificate must be signed by,
    /// for an `https` control plane URL.
    pub control_plane_ca: Option<Vec<u8>>,
    /// The gateway's token (role `gateway`) for the control plane.
    pub token: Option<shoal_api::auth::SecretToken>,
    /// Its client certificate for nodes that serve mutual TLS, shared by
    /// every worker (see [`Gateway::use_node_certificate`]).
    pub node_tls: Arc<crate::pool::NodeTls>,
    /// Proxies in front of the gateway whose `X-Forwarded-*` headers are
    /// passed on (see [`crate::headers::forward_headers`]); nobody's by
    /// default.
    pub trusted_proxies: crate::headers::TrustedProxies,
    /// Where each request's line goes ([`crate::access`]); none: no
    /// access log.
    pub access_log: Option<Arc<crate::access::AccessLog>>,
}

impl GatewayConfig {
    /// A client builder for the control plane at `base`, trusting
    /// `control_plane_ca` and sending `token`, if given.
    pub fn control_plane_client(&self, base: &str) -> shoal_client::Builder {
        let mut builder = shoal_client::Client::builder(base);
        if let Some(pem) = &self.control_plane_ca {
            builder = builder.ca_pem(pem.clone());
        }
        if let Some(t) = &self.token {
            builder = builder.token(t.expose());
        }
        builder
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            control_plane: None,
            activation_timeout: Duration::from_secs(30),
            control_plane_ca: None,
            token: None,
            node_tls: Arc::default(),
            trusted_proxies: Default::default(),
            access_log: None,
        }
    }
}

/// What all of a gateway's workers share: the routing table, endpoint and
/// node health, load counters.
pub(crate) struct Shared {
    table: RwLock<Arc<Table>>,
    endpoints: Endpoints,
    stats: DashMap<AppKey, Arc<AppStats>>,
    /// Namespaces' request limits and what they use of them.
    tenants: crate::limit::Tenants,
    /// Whether a route table has arrived since start.
    has_table: AtomicBool,
    table_updates: tokio::sync::watch::Sender<u64>,
    /// When the last table arrived.
    table_updated: Mutex<Option<Instant>>,
    /// Answers to requests no app took (404, 400).
    pub(crate) unrouted: crate::observe::Counters,
    pub(crate) config: GatewayConfig,
    /// The control plane, for activation requests (none without one, or
    /// when its address cannot make a client).
    pub(crate) control: Option<shoal_client::Client>,
    /// The calls entry's TLS configuration, once the gateway has its
    /// certificate ([`Gateway::use_node_certificate`]).
    calls_tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
}

/// The gateway, as one worker sees it: the shared state and a connection
/// pool of its own (so a worker's requests and its connections to nodes
/// stay on its thread).
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: Arc<crate::pool::Pool>,
}

impl Gateway {
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    pub fn new(config: GatewayConfig) -> Arc<Self> {
        let pool = crate::pool::Pool::with_tls(config.connect_timeout, config.node_tls.clone());
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(Table::default())),
            endpoints: Endpoints::new(),
            stats: DashMap::new(),
            tenants: Default::default(),
            has_table: AtomicBool::new(false),
            table_updates: tokio::sync::watch::channel(0).0,
            table_updated: Mutex::new(None),
            unrouted: Default::default(),
            calls_tls: RwLock::new(None),
            control: config.control_plane.as_deref().and_then(|cp| {
                config
                    .control_plane_client(cp)
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .build()
                    .inspect_err(|e| {
                        tracing::error!(error = %e, "cannot make the client that asks for instances")
                    })
                    .ok()
            }),
            config,
        });
        Arc::new(Self { shared, pool })
    }

    /// Another handle on the same gateway with its own connection pool, for
    /// a worker thread.
    pub fn worker(&self) -> Arc<Self> {
        Arc::new(Self {
            shared: self.shared.clone(),
            pool: crate::pool::Pool::with_tls(
                self.shared.config.connect_timeout,
                self.shared.config.node_tls.clone(),
            ),
        })
    }

    /// Asks the control plane for this gateway's certificate and uses it
    /// for `https://` nodes, and to serve the calls entry, from now on;
    /// tries again every second until it has one.
    pub async fn use_node_certificate(&self) {
        let Some(control) = &self.shared.control else {
            return;
        };
        let mut warned = false;
        loop {
            match control.gateway_certificate().await {
                Ok(issued) => {
                    let pki = shoal_pki::Issued {
                        cert_pem: issued.cert_pem,
                        key_pem: issued.key_pem,
                    };
                    let configs = pki
                        .mtls_client_config(&issued.ca_pem, &[b"http/1.1"])
                        .and_then(|nodes| Ok((nodes, calls_config(&pki, &issued.ca_pem)?)));
                    match configs {
                        Ok((nodes, calls)) => {
                            self.shared.config.node_tls.set(nodes);
                            *self
                                .shared
                                .calls_tls
                                .write()
                                .unwrap_or_else(|p| p.into_inner()) = Some(calls);
                            tracing::info!(
                                "certificate for nodes and the calls entry in place (mutual TLS)"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the certificate the control plane issued is unusable")
                        }
                    }
                }
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "cannot get a client certificate for nodes yet; retrying");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The calls entry's TLS configuration; none until the gateway has its
    /// certificate.
    pub fn calls_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.shared
            .calls_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn table(&self) -> Arc<Table> {
        self.shared
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new route table.
    pub fn set_table(&self, rt: &RouteTable) {
        let t = Arc::new(Table::build(
            rt,
            &self.shared.endpoints,
            &self.shared.stats,
            &self.shared.tenants,
        ));
        tracing::debug!(
            apps = t.apps.len(),
            endpoints = t.endpoint_count(),
            "route table updated"
        );
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = t;
        *self
            .shared
            .table_updated
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.shared.has_table.store(true, Ordering::Relaxed);
        self.shared.table_updates.send_modify(|v| *v += 1);
    }

    /// How long ago the last route table arrived (none yet: `None`), and
    /// how many have.
    pub fn table_age(&self) -> (Option<Duration>, u64) {
        let at = *self
            .shared
            .table_updated
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (at.map(|t| t.elapsed()), *self.shared.table_updates.borrow())
    }

    /// Answers to requests no app took.
    pub fn unrouted(&self) -> &crate::observe::Counters {
        &self.shared.unrouted
    }

    pub fn has_table(&self) -> bool {
        self.shared.has_table.load(Ordering::Relaxed)
    }

    /// Resolves after each table update.
    pub fn table_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.table_updates.subscribe()
    }

    /// Calls `f` with each app's request counters, copying nothing (the
    /// load reporter samples every app ten times a second).
    pub fn each_stats(&self, mut f: impl FnMut(&AppKey, &AppStats)) {
        for e in self.shared.stats.iter() {
            f(e.key(), e.value());
        }
    }

    /// Request counters by app.
    pub fn stats(&self) -> Vec<(AppKey, Arc<AppStats>)> {
        self.shared
            .stats
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

/// The calls entry's TLS: the gateway's certificate, and client
/// certificates of the cluster CA `ca_pem` that name a node.
fn calls_config(
    issued: &shoal_pki::Issued,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, shoal_pki::PkiError> {
    let cert = Arc::new(shoal_pki::SwappableCert::default());
    cert.set(issued)?;
    // Nodes speak HTTP/2 (one connection carries all their calls).
    shoal_pki::mtls_server_config(
        ca_pem,
        cert,
        &[b"h2", b"http/1.1"],
        &[shoal_pki::Role::Node],
    )
}
