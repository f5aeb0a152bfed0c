//! The calls a node makes: register, heartbeat, long-poll its assignment,
//! fetch modules.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use bytes::Bytes;
use reqwest::Method;
use shoal_api::endpoints::{self, AssignmentQuery, LONG_POLL_HOLD};
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, RegisterRequest, RegisterResponse};

impl Client {
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, Error> {
        self.json(
            Method::POST,
            endpoints::NODE_REGISTER,
            self.timeout(),
            Some(req),
            NO_QUERY,
        )
        .await
    }

    /// Sends a node's status; the answer is its current assignment. A node
    /// the control plane does not know is answered 404 (`not_found`).
    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<HeartbeatResponse, Error> {
        self.json(
            Method::POST,
            &endpoints::node_heartbeat(node),
            self.timeout(),
            Some(hb),
            NO_QUERY,
        )
        .await
    }

    /// A node's assignment as soon as its generation differs from `have`,
    /// or its current one after the control plane's hold
    /// ([`LONG_POLL_HOLD`]); the client's limit counts from the end of the
    /// hold.
    pub async fn assignment(&self, node: &str, have: u64) -> Result<HeartbeatResponse, Error> {
        self.json(
            Method::GET,
            &endpoints::node_assignment(node),
            LONG_POLL_HOLD + self.timeout(),
            NO_BODY,
            Some(&AssignmentQuery {
                generation: Some(have),
            }),
        )
        .await
    }

    /// A module's bytes, by sha256 (hex), as the control plane has them:
    /// checking them against the digest is the caller's part.
    pub async fn blob(&self, digest: &str) -> Result<Bytes, Error> {
        let req = self.request(Method::GET, &endpoints::blob(digest));
        self.within(self.timeout(), async {
            let resp = self.send(req).await?;
            resp.bytes().await.map_err(|e| self.transport(&e))
        })
        .await
    }
}
