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

impl Client {
    /// Creates or updates apps; modules the control plane lacks travel in
    /// the request.
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

    /// Whether the control plane already stores a module.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, Error> {
        let req = self.request(Method::HEAD, &endpoints::blob(digest));
        self.within(self.timeout(), async {
            let (resp, _) = self.send_from(req, false).await?;
            Ok(resp.status().is_success())
        })
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
