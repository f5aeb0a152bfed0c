//! Following the control plane's route table: a long-lived streaming
//! request (`GET /v1/routes/watch`) that carries the whole table, one JSON
//! line per change. When the control plane is unreachable the gateway keeps
//! routing with the last table it had and reconnects with backoff.

use crate::proxy::Gateway;
use futures::StreamExt;
use shoal_api::routes::RouteTable;
use std::sync::Arc;
use std::time::Duration;

/// The control plane sends an empty line at least this often; silence for
/// three times as long means the connection is dead.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Follows the route table of the control plane at `base` forever.
pub async fn follow(gateway: Arc<Gateway>, base: String) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for the route watch");
            return;
        }
    };
    let url = format!("{}/v1/routes/watch", base.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                if warned {
                    tracing::info!(control_plane = %base, "route watch connected again");
                    warned = false;
                }
                backoff = Duration::from_millis(100);
                read_stream(&gateway, resp).await;
            }
            Ok(resp) => {
                if !warned {
                    tracing::warn!(status = %resp.status(), "the control plane refused the route watch; retrying");
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

async fn read_stream(gateway: &Gateway, resp: reqwest::Response) {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(KEEPALIVE * 3, body.next()).await {
            Ok(Some(Ok(c))) => c,
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
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<RouteTable>(line) {
                Ok(t) => gateway.set_table(&t),
                Err(e) => tracing::warn!(error = %e, "malformed route table; ignored"),
            }
        }
    }
}
