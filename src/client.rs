//! A typed client of the control plane's API, as the CLI uses it.

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_api::ErrorBody;

/// The control plane `shoal up` and `shoal control-plane` listen on by
/// default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("--server {server:?}: expected a URL such as {DEFAULT_SERVER}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base, http })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the control plane at {}: {} (start a cluster with `shoal up`, or point --server / SHOAL_SERVER at one)",
                    self.base,
                    root_cause(&e)
                )
            } else {
                anyhow!("request to {} failed: {}", self.base, root_cause(&e))
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(anyhow!("{} ({})", body.message, body.code)),
            Err(_) => Err(anyhow!("the control plane answered {status}: {text}")),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        resp.json()
            .await
            .with_context(|| format!("malformed answer to GET {path}"))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        resp.json()
            .await
            .with_context(|| format!("malformed answer to POST {path}"))
    }

    /// A POST whose answer has no body.
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.http.post(self.url(path)).json(body))
            .await
            .map(|_| ())
    }

    /// A PUT whose answer has no body.
    pub async fn send_put<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.http.put(self.url(path)).json(body))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(path)))
            .await
            .map(|_| ())
    }

    /// Whether the control plane already stores a module.
    pub async fn has_blob(&self, digest: &str) -> anyhow::Result<bool> {
        let resp = self
            .http
            .head(self.url(&format!("/v1/blobs/{digest}")))
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the control plane at {}: {}",
                    self.base,
                    root_cause(&e)
                )
            })?;
        Ok(resp.status().is_success())
    }
}

/// The innermost error's message (reqwest wraps hyper wraps io).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
