//! The control plane's own replicas: which one leads, and its store.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints;
use shoal_api::rest::ControlPlanes;

impl Client {
    /// The control plane's replicas (each one's URL and state), which one
    /// leads, and where the state lives.
    pub async fn control_planes(&self) -> Result<ControlPlanes, Error> {
        self.json(
            Method::GET,
            endpoints::CONTROL_PLANES,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }
}
