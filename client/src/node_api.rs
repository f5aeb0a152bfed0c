//! A node's own API, on the node's port: what the CLI reads from nodes
//! directly (instance logs), through the same client and limits.

use crate::error::root_cause;
use crate::{Client, Error};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::Method;
use shoal_api::endpoints::{self, LogsQuery};
use tokio_util::codec::{AnyDelimiterCodec, FramedRead};
use tokio_util::io::StreamReader;

/// An instance's log lines (`stdout ...` or `stderr ...`), each without its
/// newline, as bytes: a guest's output need not be UTF-8. A last line
/// without a newline comes too.
pub type LogLines = BoxStream<'static, Result<Bytes, Error>>;

impl Client {
    /// Opens the log stream of instance `id` on the node at `node` (its
    /// base URL). The client's limit applies to the answer's head only:
    /// with `follow`, the lines flow for as long as the instance runs.
    pub async fn instance_logs(
        &self,
        node: &str,
        id: &str,
        follow: bool,
    ) -> Result<LogLines, Error> {
        let url = format!(
            "{}{}",
            node.trim_end_matches('/'),
            endpoints::node::instance_logs(id)
        );
        self.node_lines(self.request_to(Method::GET, &url), &url, follow)
            .await
    }

    /// The log stream of instance `id` of namespace `ns`, through the
    /// control plane (which reads it from the instance's node).
    pub async fn logs(&self, ns: &str, id: &str, follow: bool) -> Result<LogLines, Error> {
        let req = self
            .request(Method::GET, &endpoints::instance_logs(ns, id))
            .query(&LogsQuery { follow });
        let (resp, at) = self
            .within(self.timeout(), self.send_from(req, true))
            .await?;
        Ok(lines(resp, self.base_at(at).to_string()))
    }

    async fn node_lines(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        follow: bool,
    ) -> Result<LogLines, Error> {
        let url = url.to_string();
        let request = request
            .query(&LogsQuery { follow })
            .build()
            .map_err(|e| Error::Failed {
                server: url.clone(),
                cause: root_cause(&e),
            })?;
        // Errors name the URL as it is sent, query and all.
        let who = request.url().to_string();
        let resp = self
            .within_for(who.clone(), self.timeout(), self.send_to(&who, request))
            .await?;
        Ok(lines(resp, who))
    }
}

/// The answer's lines; a failure names `who`.
fn lines(resp: reqwest::Response, who: String) -> LogLines {
    let body = resp.bytes_stream().map_err(std::io::Error::other);
    let lines = FramedRead::new(
        StreamReader::new(body),
        AnyDelimiterCodec::new(b"\n".to_vec(), Vec::new()),
    );
    lines
        .map(move |line| {
            line.map_err(|e| Error::Failed {
                server: who.clone(),
                cause: root_cause(&e),
            })
        })
        .boxed()
}
