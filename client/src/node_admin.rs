//! An admin's calls on nodes: cordon, uncordon, drain (and its progress),
//! delete.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints;
use shoal_api::objects::Node;
use shoal_api::rest::DrainStatus;

impl Client {
    /// Nothing new is placed on the node; answers the node.
    pub async fn cordon(&self, node: &str) -> Result<Node, Error> {
        self.node_call(Method::POST, &endpoints::node_cordon(node))
            .await
    }

    /// New instances may go to the node again (a drain stops); answers the
    /// node.
    pub async fn uncordon(&self, node: &str) -> Result<Node, Error> {
        self.node_call(Method::POST, &endpoints::node_uncordon(node))
            .await
    }

    /// Starts draining the node (or goes on with its drain); answers where
    /// the drain stands.
    pub async fn drain(&self, node: &str) -> Result<DrainStatus, Error> {
        self.node_call(Method::POST, &endpoints::node_drain(node))
            .await
    }

    /// Where the node's drain stands.
    pub async fn drain_status(&self, node: &str) -> Result<DrainStatus, Error> {
        self.node_call(Method::GET, &endpoints::node_drain(node))
            .await
    }

    /// Removes the node: its credential is revoked and its instances are
    /// placed elsewhere.
    pub async fn delete_node(&self, node: &str) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::node_registration(node)))
            .await
    }

    async fn node_call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, Error> {
        self.json(method, path, self.timeout(), NO_BODY, NO_QUERY)
            .await
    }
}
