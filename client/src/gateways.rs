//! The calls a gateway makes: follow the route table, report load, ask for
//! an instance of an app that has none.

use crate::error::root_cause;
use crate::{Client, Error};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use shoal_api::endpoints;
use shoal_api::objects::AppKey;
use shoal_api::rest::GatewayMetrics;
use shoal_api::routes::RouteTable;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

/// One line of the route watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteUpdate {
    /// The whole table, as it is now.
    Table(RouteTable),
    /// The empty line the control plane sends when nothing changed for a
    /// while ([`endpoints::ROUTES_KEEPALIVE`]): the connection is alive.
    Keepalive,
}

/// The route watch's lines, until the stream ends. A line that is not a
/// table is an [`Error::Malformed`] item and the stream goes on; any other
/// error ends it.
pub type RouteWatch = BoxStream<'static, Result<RouteUpdate, Error>>;

impl Client {
    /// The route table (`GET /v1/routes`).
    pub async fn routes(&self) -> Result<RouteTable, Error> {
        self.json(
            Method::GET,
            endpoints::ROUTES,
            self.timeout(),
            crate::transport::NO_BODY,
            crate::transport::NO_QUERY,
        )
        .await
    }

    /// Opens the route watch: the whole table at once, again on every
    /// change, and keepalives in between. The client's limit applies to
    /// the answer's head only; noticing a silent stream is the caller's
    /// part. Once the stream is dropped, the next request (the caller's
    /// reconnection) starts at the control plane's next URL.
    pub async fn watch_routes(&self) -> Result<RouteWatch, Error> {
        let req = self.request(Method::GET, endpoints::ROUTES_WATCH);
        let (resp, at) = self
            .within(self.timeout(), self.send_from(req, true))
            .await?;
        let server = self.base_at(at).to_string();
        // When the caller drops the stream (it ended, broke or went
        // silent), its reconnection starts at the next URL.
        let from = self.stream_from(at);
        let body = resp.bytes_stream().map_err(std::io::Error::other);
        // A table has no size bound, so neither has a line; the control
        // plane is the one server the gateway trusts.
        let lines = FramedRead::new(StreamReader::new(body), LinesCodec::new());
        Ok(lines
            .map(move |line| {
                let _from = &from;
                match line {
                    Ok(l) if l.trim().is_empty() => Ok(RouteUpdate::Keepalive),
                    Ok(l) => serde_json::from_str(&l)
                        .map(RouteUpdate::Table)
                        .map_err(|e| Error::Malformed {
                            what: format!("GET {}", endpoints::ROUTES_WATCH),
                            cause: e.to_string(),
                        }),
                    Err(e) => Err(Error::Failed {
                        server: server.clone(),
                        cause: root_cause(&e),
                    }),
                }
            })
            .boxed())
    }

    /// Reports a gateway's load over its last interval.
    pub async fn report_metrics(&self, report: &GatewayMetrics) -> Result<(), Error> {
        self.no_content(self.request(Method::POST, endpoints::METRICS).json(report))
            .await
    }

    /// A client certificate for this gateway, signed by the cluster CA, to
    /// show nodes that serve mutual TLS.
    pub async fn gateway_certificate(&self) -> Result<shoal_api::protocol::IssuedCert, Error> {
        self.json(
            Method::POST,
            endpoints::GATEWAY_CERTIFICATE,
            self.timeout(),
            crate::transport::NO_BODY,
            crate::transport::NO_QUERY,
        )
        .await
    }

    /// Asks for an instance of an app that has none (scale from zero).
    pub async fn activate(&self, key: &AppKey) -> Result<(), Error> {
        self.no_content(self.request(Method::POST, &endpoints::app_activate(key)))
            .await
    }
}
