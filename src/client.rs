//! A typed client of the control plane's API, as the CLI uses it.

use anyhow::anyhow;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_api::ErrorBody;
use std::future::Future;
use std::time::Duration;

/// The control plane `shoal up` and `shoal control-plane` listen on by
/// default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// How long a request may take by default (`--request-timeout`).
pub const DEFAULT_TIMEOUT: &str = "30s";

/// An error the control plane answered with: `message (code)`, as every
/// error of the CLI is printed.
#[derive(Debug)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: "not_found".into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

/// Whether `e` is the control plane saying the thing asked for does not
/// exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.code == "not_found")
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The longest a request may wait for its answer (for a stream: for the
    /// answer's head).
    timeout: Duration,
}

impl Client {
    pub fn new(server: &str, timeout: Duration) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("--server {server:?}: expected a URL such as {DEFAULT_SERVER}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| anyhow!("building the HTTP client: {}", root_cause(&e)))?;
        Ok(Self {
            base,
            http,
            timeout,
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Runs one exchange with the control plane, giving up after `limit`.
    /// Requests carry no timeout of their own: reqwest's would also cut a
    /// stream that is still flowing.
    async fn within<T>(
        &self,
        limit: Duration,
        exchange: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(limit, exchange).await.map_err(|_| {
            anyhow!(
                "the control plane at {} did not answer within {} (--request-timeout)",
                self.base,
                shoal_api::Duration::from(limit)
            )
        })?
    }

    /// Sends a request; a non-2xx answer becomes the error it carries.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        checked(resp, "the control plane").await
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the control plane at {}: {} (start a cluster with `shoal up`, or point --server / SHOAL_SERVER at one)",
                self.base,
                root_cause(e)
            )
        } else {
            anyhow!("request to {} failed: {}", self.base, root_cause(e))
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| anyhow!("malformed answer to {what}: {}", root_cause(&e)))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_within(path, self.timeout).await
    }

    /// A GET the control plane may hold open for up to `hold` before it
    /// answers (a long poll).
    pub async fn get_holding<T: DeserializeOwned>(
        &self,
        path: &str,
        hold: Duration,
    ) -> anyhow::Result<T> {
        self.get_within(path, hold + self.timeout).await
    }

    async fn get_within<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: Duration,
    ) -> anyhow::Result<T> {
        let req = self.http.get(self.url(path));
        self.within(limit, self.json(&format!("GET {path}"), req))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let req = self.http.post(self.url(path)).json(body);
        self.within(self.timeout, self.json(&format!("POST {path}"), req))
            .await
    }

    /// Sends a request whose answer has no body.
    async fn no_content(&self, req: reqwest::RequestBuilder) -> anyhow::Result<()> {
        self.within(self.timeout, async { self.send(req).await.map(|_| ()) })
            .await
    }

    /// A POST whose answer has no body.
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.no_content(self.http.post(self.url(path)).json(body))
            .await
    }

    /// A PUT whose answer has no body.
    pub async fn send_put<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.no_content(self.http.put(self.url(path)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.no_content(self.http.delete(self.url(path))).await
    }

    /// Whether the control plane already stores a module.
    pub async fn has_blob(&self, digest: &str) -> anyhow::Result<bool> {
        let req = self.http.head(self.url(&format!("/v1/blobs/{digest}")));
        self.within(self.timeout, async {
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            Ok(resp.status().is_success())
        })
        .await
    }

    /// Opens a stream from any URL (a node's log stream): waits for the
    /// answer's head as long as for any answer, then lets the body flow for
    /// as long as it lasts.
    pub async fn stream(&self, url: &str) -> anyhow::Result<reqwest::Response> {
        let open = async {
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| anyhow!("{}", root_cause(&e)))?;
            checked(resp, url).await
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| {
                anyhow!(
                    "{url} did not answer within {} (--request-timeout)",
                    shoal_api::Duration::from(self.timeout)
                )
            })?
    }
}

/// The answer if it is a success, else the error it carries (`who` names
/// the server when the body is not an API error).
async fn checked(resp: reqwest::Response, who: &str) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ApiError {
            code: body.code,
            message: body.message,
        }
        .into(),
        Err(_) => anyhow!("{who} answered {status}: {text}"),
    })
}

/// The innermost error's message (reqwest wraps hyper wraps io).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
