//! The process's `tracing`: log lines on stderr (`SHOAL_LOG`, `info` by
//! default), and, with `--otlp-endpoint URL` on a server command, spans
//! exported over OTLP/HTTP (protobuf) by `opentelemetry-otlp`.
//!
//! The spans Shoal makes for requests (`gateway.*`, `wasm.*`) are at debug
//! level. Without an endpoint no OpenTelemetry layer is installed, the log
//! filter is the only one, and those spans are disabled where they are
//! made: the request path pays nothing for them. With one, a layer of its
//! own takes Shoal's spans at debug level and up (and its events at info
//! and up, as span events), whatever the log's level.
//!
//! The exporter runs on the SDK's batch thread; its HTTP client is the
//! workspace's reqwest, driven on the process's tokio runtime.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, filter};

/// `--otlp-endpoint`, on every server command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// Export spans (requests through the gateway, instantiations and
    /// guest runs on nodes) over OTLP/HTTP (protobuf) to this collector,
    /// e.g. `http://127.0.0.1:4318` (`/v1/traces` is added unless the
    /// URL ends with it; plain http only). Without it nothing is
    /// exported.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The process's tracing, installed; [`Telemetry::shutdown`] exports what
/// is left.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The log's filter: `SHOAL_LOG`, else `info`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The log's lines on stderr.
fn log_layer<S>() -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
}

/// Installs the process's subscriber: the log on stderr, and with
/// `otlp_endpoint` the exporter of `service`'s spans (its HTTP client
/// runs on `runtime`).
pub fn init(
    otlp_endpoint: Option<&str>,
    service: &'static str,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Telemetry> {
    let Some(endpoint) = otlp_endpoint else {
        // One global filter, as before any exporter existed: spans below
        // it are off at their call sites.
        tracing_subscriber::registry()
            .with(log_filter())
            .with(log_layer())
            .init();
        return Ok(Telemetry { provider: None });
    };
    let url = traces_url(endpoint)?;
    let client = Client {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .context("the OTLP exporter's HTTP client")?,
        runtime: runtime.clone(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .with_http_client(client)
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batches)
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shoal"))
        .with_filter(filter::filter_fn(|meta| {
            let level = *meta.level();
            meta.target().starts_with("shoal")
                && (level <= tracing::Level::INFO
                    || (meta.is_span() && level <= tracing::Level::DEBUG))
        }));
    tracing_subscriber::registry()
        .with(log_layer().with_filter(log_filter()))
        .with(spans)
        .init();
    tracing::info!(%url, "exporting spans over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// Exports the spans not yet sent (blocking: call it outside the
    /// runtime's workers, while the runtime still runs).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::debug!(error = %e, "the span exporter did not shut down cleanly");
        }
    }
}

/// The URL spans are posted to: `endpoint` with `/v1/traces` added unless
/// it ends with it. Plain `http` only: the workspace's reqwest trusts no
/// certificate authority by default, so an `https` collector would fail
/// every export; one runs as an agent beside the process instead.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let uri: http::Uri = endpoint
        .parse()
        .with_context(|| format!("--otlp-endpoint {endpoint}: not a URL"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => {}
        Some("https") => anyhow::bail!(
            "--otlp-endpoint {endpoint}: https collectors are not supported; run a collector (or its agent) on this machine or a trusted network and give its http:// URL"
        ),
        _ => anyhow::bail!(
            "--otlp-endpoint {endpoint}: expected http://HOST:PORT (an OTLP/HTTP collector)"
        ),
    }
    if uri.query().is_some() {
        anyhow::bail!("--otlp-endpoint {endpoint}: a collector URL takes no query string");
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

/// The exporter's HTTP client: reqwest on the process's runtime (the
/// SDK's batch thread is no tokio thread, so each request is spawned
/// there and awaited from here).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

type Sent = Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for Client {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<bytes::Bytes>,
    ) -> Pin<Box<dyn Future<Output = Sent> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(h) = answer.headers_mut() {
                *h = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        Box::pin(async move { sent.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c/otel/v1/traces").unwrap(),
            "http://c/otel/v1/traces"
        );
        for bad in [
            "c:4318",
            "ftp://c/",
            "http://c/?k=v",
            "not a url",
            "https://c:4318",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
