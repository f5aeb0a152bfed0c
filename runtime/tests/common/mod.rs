//! Helpers for runtime tests: serve an app on port 0 and talk to it over
//! real HTTP.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shoal_api::RunSpec;
use shoal_runtime::{HttpApp, LogBuffer, Runtime, RuntimeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm-apps")
        .join(name)
}

/// One runtime per test binary: one engine per process, as in production.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
}

pub struct Served {
    pub app: Arc<HttpApp>,
    pub addr: SocketAddr,
    pub logs: LogBuffer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Loads `file` from the examples and serves it with `spec`.
pub async fn serve(file: &str, spec: RunSpec) -> Served {
    let bytes = std::fs::read(example(file)).expect("example app");
    let loaded = runtime().load(&bytes).expect("load");
    let logs = LogBuffer::new(1000);
    let app = runtime()
        .http_app(file, spec, &loaded, logs.clone())
        .expect("link");
    serve_app(app).await
}

/// Serves a linked app on a port of its own.
pub async fn serve_app(app: Arc<HttpApp>) -> Served {
    let logs = app.logs().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served_app = app.clone();
    let task = tokio::spawn(async move {
        let _ = shoal_runtime::server::serve(
            listener,
            served_app,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(10),
            shoal_runtime::server::HeadLimits::CLIENT,
        )
        .await;
    });
    Served {
        app,
        addr,
        logs,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub async fn request(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).unwrap();
    let resp = c.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(c: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Reply {
    request(c, "GET", url, &[], Bytes::new()).await
}

/// Polls `cond` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
