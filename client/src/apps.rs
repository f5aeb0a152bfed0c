//! The calls people make through the CLI: apply, list, describe, scale,
//! delete, roll back, split traffic, and events.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints::{self, EventsQuery, LONG_POLL_HOLD, ListQuery};
use shoal_api::manifest::TrafficTarget;
use shoal_api::objects::{AppKey, Event, Instance, Node, Revision};
use shoal_api::rest::{
    AppDetail, AppView, ApplyOutcome, ApplyRequest, RollbackRequest, RollbackResponse,
    ScaleRequest, TrafficRequest,
};

/// What the control plane says of a module before an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleStatus {
    /// It has the module: no upload is needed.
    pub stored: bool,
    /// The largest module the namespace may upload, in bytes (when the
    /// control plane said).
    pub max_size: Option<u64>,
}

impl Client {
    /// Creates or updates apps, whose modules the control plane has
    /// ([`Client::upload_module_file`]) or pulls from their registries.
    pub async fn apply(&self, req: &ApplyRequest) -> Result<Vec<ApplyOutcome>, Error> {
        self.json(
            Method::POST,
            endpoints::APPLY,
            self.timeout(),
            Some(req),
            NO_QUERY,
        )
        .await
    }

    /// Whether the control plane already stores a module for apps of
    /// `ns`, and the largest module `ns` may upload. (A refusal reads as
    /// "not stored": the upload that follows says why.)
    pub async fn module_status(&self, ns: &str, digest: &str) -> Result<ModuleStatus, Error> {
        let req = self.request(Method::HEAD, &endpoints::namespace_blob(ns, digest));
        self.within(self.timeout(), async {
            let (resp, _) = self.send_from(req, false).await?;
            let max_size = resp
                .headers()
                .get(endpoints::MAX_MODULE_SIZE_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            Ok(ModuleStatus {
                stored: resp.status().is_success(),
                max_size,
            })
        })
        .await
    }

    /// Uploads the module `digest` for apps of `ns` from the file at
    /// `path`, streamed: neither side holds it whole in memory. The
    /// exchange may take the client's limit plus a second per MiB.
    pub async fn upload_module_file(
        &self,
        ns: &str,
        digest: &str,
        path: &std::path::Path,
    ) -> Result<(), Error> {
        let local = |e: std::io::Error| Error::Local(format!("{}: {e}", path.display()));
        let file = tokio::fs::File::open(path).await.map_err(local)?;
        let len = file.metadata().await.map_err(local)?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 << 10,
        ));
        self.upload_module(ns, digest, body, len).await
    }

    /// Uploads the module `digest` for apps of `ns` from memory.
    pub async fn upload_module_bytes(
        &self,
        ns: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        let len = bytes.len() as u64;
        self.upload_module(ns, digest, reqwest::Body::from(bytes), len)
            .await
    }

    async fn upload_module(
        &self,
        ns: &str,
        digest: &str,
        body: reqwest::Body,
        len: u64,
    ) -> Result<(), Error> {
        let req = self
            .request(Method::PUT, &endpoints::namespace_blob(ns, digest))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        let limit = self.timeout() + std::time::Duration::from_secs(len >> 20);
        self.within(limit, async { self.send(req).await.map(|_| ()) })
            .await
    }

    pub async fn apps(&self, q: &ListQuery) -> Result<Vec<AppView>, Error> {
        self.list(endpoints::APPS, q).await
    }

    pub async fn instances(&self, q: &ListQuery) -> Result<Vec<Instance>, Error> {
        self.list(endpoints::INSTANCES, q).await
    }

    pub async fn revisions(&self, q: &ListQuery) -> Result<Vec<Revision>, Error> {
        self.list(endpoints::REVISIONS, q).await
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        q: &ListQuery,
    ) -> Result<Vec<T>, Error> {
        self.json(Method::GET, path, self.timeout(), NO_BODY, Some(q))
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, Error> {
        self.json(
            Method::GET,
            endpoints::NODES,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// An app with its revisions, instances, nodes and events.
    pub async fn app(&self, key: &AppKey) -> Result<AppDetail, Error> {
        self.json(
            Method::GET,
            &endpoints::app(key),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    pub async fn delete_app(&self, key: &AppKey) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::app(key)))
            .await
    }

    pub async fn scale(&self, key: &AppKey, replicas: u32) -> Result<(), Error> {
        let req = self
            .request(Method::POST, &endpoints::app_scale(key))
            .json(&ScaleRequest { replicas });
        self.no_content(req).await
    }

    /// Rolls back to `to_revision`, or the revision before the current;
    /// answers the revision that is now current.
    pub async fn rollback(
        &self,
        key: &AppKey,
        to_revision: Option<u64>,
    ) -> Result<RollbackResponse, Error> {
        self.json(
            Method::POST,
            &endpoints::app_rollback(key),
            self.timeout(),
            Some(&RollbackRequest { to_revision }),
            NO_QUERY,
        )
        .await
    }

    /// Splits traffic between revisions; an empty split sends it all to
    /// the current one.
    pub async fn set_traffic(
        &self,
        key: &AppKey,
        traffic: Vec<TrafficTarget>,
    ) -> Result<(), Error> {
        let req = self
            .request(Method::PUT, &endpoints::app_traffic(key))
            .json(&TrafficRequest { traffic });
        self.no_content(req).await
    }

    /// Events matching `q`. With `wait`, the control plane holds the
    /// answer until there is one (up to [`LONG_POLL_HOLD`]), and the
    /// client's limit counts from the end of that hold.
    pub async fn events(&self, q: &EventsQuery) -> Result<Vec<Event>, Error> {
        let limit = if q.wait == Some(true) {
            LONG_POLL_HOLD + self.timeout()
        } else {
            self.timeout()
        };
        self.json(Method::GET, endpoints::EVENTS, limit, NO_BODY, Some(q))
            .await
    }
}
