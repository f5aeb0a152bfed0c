//! Following the control plane's route table: a long-lived streaming
//! request (`GET /v1/routes/watch`, through `shoal_client`) that carries
//! the whole table, one JSON line per change. When the control plane is
//! unreachable the gateway keeps routing with the last table it had and
//! reconnects with backoff. Given several control-plane URLs (replicas),
//! the client moves to the next when one fails, and a watch that ended or
//! broke reconnects at the next one.

use crate::proxy::Gateway;
use futures::StreamExt;
use shoal_client::{RouteUpdate, RouteWatch};
use std::sync::Arc;
use std::time::Duration;

/// The control plane sends an empty line at least this often; silence for
/// three times as long means the connection is dead.
pub const KEEPALIVE: Duration = shoal_api::endpoints::ROUTES_KEEPALIVE;

/// Follows the route table of the control plane at `base` (one URL, or
/// several separated by commas) forever.
pub async fn follow(gateway: Arc<Gateway>, base: String) {
    // The control plane answers the watch's head at once; one that does
    // not within a keepalive's silence is as dead as a silent stream.
    let client = match gateway
        .config()
        .control_plane_client(&base)
        .connect_timeout(Duration::from_secs(2))
        .timeout(KEEPALIVE * 3)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for the route watch");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match client.watch_routes().await {
            Ok(watch) => {
                if warned {
                    tracing::info!(control_plane = %client.base(), "route watch connected again");
                    warned = false;
                }
                backoff = Duration::from_millis(100);
                read_stream(&gateway, watch).await;
            }
            Err(e) if e.status().is_some() => {
                if !warned {
                    tracing::warn!(error = %e, "the control plane refused the route watch; retrying");
                    warned = true;
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(control_plane = %base, error = %e, "control plane unreachable; routing with the last table");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn read_stream(gateway: &Gateway, mut watch: RouteWatch) {
    loop {
        match tokio::time::timeout(KEEPALIVE * 3, watch.next()).await {
            Ok(Some(Ok(RouteUpdate::Table(t)))) => gateway.set_table(&t),
            Ok(Some(Ok(RouteUpdate::Keepalive))) => {}
            Ok(Some(Err(e @ shoal_client::Error::Malformed { .. }))) => {
                tracing::warn!(error = %e, "malformed route table; ignored");
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "route watch broke; reconnecting");
                return;
            }
            Ok(None) => {
                tracing::warn!("route watch ended; reconnecting");
                return;
            }
            Err(_) => {
                tracing::warn!("route watch went silent; reconnecting");
                return;
            }
        }
    }
}
