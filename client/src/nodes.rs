//! The calls a node makes: register, heartbeat, long-poll its assignment,
//! fetch modules and their compiled artifacts, report its usage.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use bytes::Bytes;
use reqwest::Method;
use shoal_api::artifact;
use shoal_api::endpoints::{self, ArtifactQuery, AssignmentQuery, LONG_POLL_HOLD};
use shoal_api::protocol::{
    Heartbeat, HeartbeatResponse, LeaseAnswer, LeaseRenewal, RegisterRequest, RegisterResponse,
};
use shoal_api::stats::NodeUsage;

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

    /// Renews a node's lease while nothing it reports changed. A node the
    /// control plane does not know is answered 404 (`not_found`).
    pub async fn renew_lease(&self, node: &str, generation: u64) -> Result<LeaseAnswer, Error> {
        self.json(
            Method::POST,
            &endpoints::node_lease(node),
            self.timeout(),
            Some(&LeaseRenewal { generation }),
            NO_QUERY,
        )
        .await
    }

    /// Reports what a node used over its last interval (its process's CPU
    /// and memory, its apps' guest CPU time and linear memory). A control
    /// plane that does not take usage reports answers 404.
    pub async fn report_usage(&self, node: &str, usage: &NodeUsage) -> Result<(), Error> {
        self.no_content(
            self.request(Method::POST, &endpoints::node_usage(node))
                .json(usage),
        )
        .await
    }

    /// A node's assignment as soon as its generation differs from `have`,
    /// or its current one after the control plane's hold
    /// ([`LONG_POLL_HOLD`]); the client's limit counts from the end of the
    /// hold.
    /// With `delta`, the node holds the whole assignment at `have`, and
    /// the answer may be what changed since (see
    /// [`HeartbeatResponse::applied_to`]).
    pub async fn assignment(
        &self,
        node: &str,
        have: u64,
        delta: bool,
    ) -> Result<HeartbeatResponse, Error> {
        self.json(
            Method::GET,
            &endpoints::node_assignment(node),
            LONG_POLL_HOLD + self.timeout(),
            NO_BODY,
            Some(&AssignmentQuery {
                generation: Some(have),
                delta,
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

    /// A module's artifact compiled for `engine`, as the control plane
    /// signed it: checking the signature is the caller's part. Waits for
    /// the compile if the control plane is still at it (up to `limit`).
    pub async fn artifact(
        &self,
        digest: &str,
        engine: &str,
        limit: std::time::Duration,
    ) -> Result<SignedArtifact, Error> {
        let req = self
            .request(Method::GET, &endpoints::artifact(digest))
            .query(&ArtifactQuery {
                engine: engine.to_string(),
            });
        self.within(limit, async {
            let resp = self.send(req).await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| Error::Malformed {
                        what: "an artifact".into(),
                        cause: format!("no {name} header"),
                    })
            };
            let (sha256, signature, kind) = (
                header(artifact::SHA256_HEADER)?,
                header(artifact::SIGNATURE_HEADER)?,
                header(artifact::KIND_HEADER)?,
            );
            let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
            Ok(SignedArtifact {
                bytes,
                sha256,
                signature,
                kind,
            })
        })
        .await
    }
}

/// An artifact as the control plane sent it, not yet checked.
#[derive(Debug, Clone)]
pub struct SignedArtifact {
    pub bytes: Bytes,
    /// The artifact's sha256 as the control plane says (hex).
    pub sha256: String,
    /// The CA's signature, base64.
    pub signature: String,
    /// `component` or `module`.
    pub kind: String,
}
