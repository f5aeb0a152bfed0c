//! Calls between apps, from this node's guests to gateways' calls entries.
//!
//! A guest's request to `http://APP.NAMESPACE.svc/...` that its manifest
//! allows reaches [`Calls`] (the runtime's `AppCalls`). It goes to a
//! gateway (`shoal node --gateway URL`, several tried in turn when one
//! cannot be reached) over HTTP/2 and mutual TLS: the node shows the
//! client certificate the control plane issued it at registration (which
//! names the node), and takes only a gateway's certificate of the cluster
//! CA, checked by [`shoal_pki::GATEWAY_SERVER_NAME`] whatever address the
//! gateway is at. The request names its app by `:authority` and its
//! caller in [`CALLER_HEADER`], set here from the runtime's word, never
//! from the guest's. The gateway then sends it as any request: the
//! target's namespace limits, activation from zero, balancing, retries
//! and the target's timeout. Its answer, an error of its own included
//! (404 for no such app, 503 for no ready instance), is the guest's.
//!
//! One HTTP/2 connection per gateway carries every call of the node, made
//! when the first call needs it and again after it closes.

use http::header::{self, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shoal_api::calls::{CALLER_HEADER, caller_name, host_of};
use shoal_api::protocol::IssuedCert;
use shoal_runtime::caps::{AppCall, AppCalls, CallBody, CallError, CallFuture};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long connecting to a gateway (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers that describe one HTTP/1 connection: HTTP/2 has none.
const CONNECTION_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Why a `--gateway` URL is refused.
#[derive(Debug, thiserror::Error)]
#[error("gateway URL {url:?}: {why}")]
pub struct GatewayUrlError {
    url: String,
    why: &'static str,
}

/// One gateway's calls entry.
struct Gateway {
    /// `host:port`, to connect to.
    authority: String,
    /// The one connection to it, while it lasts.
    link: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<CallBody>>>,
}

/// Sends this node's guests' calls to gateways.
pub struct Calls {
    gateways: Vec<Gateway>,
    /// Where the next call starts looking (calls spread over gateways).
    next: AtomicUsize,
    /// From the node's registration: its client certificate, the CA.
    tls: RwLock<Option<tokio_rustls::TlsConnector>>,
}

impl Calls {
    /// Calls to the gateways' calls entries at `urls` (`https://HOST:PORT`).
    pub fn new(urls: &[String]) -> Result<Self, GatewayUrlError> {
        let gateways = urls
            .iter()
            .map(|url| {
                Ok(Gateway {
                    authority: authority_of(url)?,
                    link: Default::default(),
                })
            })
            .collect::<Result<Vec<_>, GatewayUrlError>>()?;
        Ok(Self {
            gateways,
            next: AtomicUsize::new(0),
            tls: RwLock::new(None),
        })
    }

    /// Takes the client certificate of a registration's answer: the next
    /// connections show it.
    pub fn install(&self, issued: &IssuedCert) -> Result<(), shoal_pki::PkiError> {
        let config = shoal_pki::Issued {
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
        }
        .mtls_client_config(&issued.ca_pem, &[b"h2"])?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio_rustls::TlsConnector::from(config));
        Ok(())
    }

    fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A connection to some gateway, trying each in turn from the next
    /// one; the errors of all if none could be reached.
    async fn link(&self) -> Result<hyper::client::conn::http2::SendRequest<CallBody>, CallError> {
        let Some(tls) = self.connector() else {
            return Err(CallError::Unreachable(
                "this node has no client certificate from the control plane (yet)".into(),
            ));
        };
        let n = self.gateways.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let gw = &self.gateways[(start + i) % n];
            let mut link = gw.link.lock().await;
            if let Some(sender) = link.as_ref()
                && !sender.is_closed()
            {
                return Ok(sender.clone());
            }
            match connect(&gw.authority, &tls).await {
                Ok(sender) => {
                    *link = Some(sender.clone());
                    return Ok(sender);
                }
                Err(e) => {
                    *link = None;
                    errors.push(format!("{}: {e}", gw.authority));
                }
            }
        }
        Err(CallError::Unreachable(errors.join("; ")))
    }

    async fn send(&self, call: AppCall) -> Result<http::Response<CallBody>, CallError> {
        let request = outgoing(call)?;
        let mut sender = self.link().await?;
        sender
            .ready()
            .await
            .map_err(|e| CallError::Unreachable(format!("the gateway's connection: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Failed(format!("the gateway: {e}")))?;
        Ok(response.map(|body| {
            body.map_err(|e| CallError::Failed(format!("the answer's body: {e}")))
                .boxed_unsync()
        }))
    }
}

impl AppCalls for Calls {
    fn call(self: Arc<Self>, call: AppCall) -> CallFuture {
        let (caller, target) = (caller_name(&call.caller), caller_name(&call.target));
        Box::pin(async move {
            let answer = self.send(call).await;
            match &answer {
                Ok(r) => {
                    tracing::debug!(%caller, %target, status = %r.status(), "call between apps answered")
                }
                Err(e) => tracing::warn!(%caller, %target, error = %e, "call between apps failed"),
            }
            answer
        })
    }
}

/// `https://host:port` as `host:port`.
fn authority_of(url: &str) -> Result<String, GatewayUrlError> {
    let bad = |why| GatewayUrlError {
        url: url.to_string(),
        why,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "a gateway's calls entry is https:// (mutual TLS), e.g. https://127.0.0.1:8443",
        ));
    }
    let host = uri.host().ok_or(bad("no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("a calls entry has no path"));
    }
    let port = uri.port_u16().unwrap_or(443);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The request a call sends the gateway: the guest's method, path, headers
/// and body, the app in `:authority`, the caller in [`CALLER_HEADER`].
fn outgoing(call: AppCall) -> Result<http::Request<CallBody>, CallError> {
    let AppCall {
        caller,
        target,
        request,
    } = call;
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = http::Uri::builder()
        .scheme("https")
        .authority(host_of(&target))
        .path_and_query(path)
        .build()
        .map_err(|e| CallError::Failed(format!("the call's URI: {e}")))?;
    parts.version = http::Version::HTTP_2;
    let h = &mut parts.headers;
    h.remove(header::HOST);
    for name in &CONNECTION_HEADERS {
        h.remove(name);
    }
    // Whatever the guest wrote there, the caller is the app it runs as.
    let caller = HeaderValue::from_str(&caller_name(&caller))
        .map_err(|e| CallError::Failed(format!("the caller's name: {e}")))?;
    h.insert(CALLER_HEADER, caller);
    Ok(http::Request::from_parts(parts, body))
}

/// An HTTP/2 connection to the gateway at `authority`, over mutual TLS.
async fn connect(
    authority: &str,
    tls: &tokio_rustls::TlsConnector,
) -> Result<hyper::client::conn::http2::SendRequest<CallBody>, String> {
    let name = rustls::pki_types::ServerName::try_from(shoal_pki::GATEWAY_SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(authority).await?;
        let _ = tcp.set_nodelay(true);
        tls.connect(name, tcp).await
    })
    .await
    .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let at = authority.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(gateway = %at, error = %e, "connection to the gateway's calls entry ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::AppKey;

    #[test]
    fn gateway_urls_are_https_authorities() {
        assert_eq!(
            authority_of("https://127.0.0.1:8443").unwrap(),
            "127.0.0.1:8443"
        );
        assert_eq!(
            authority_of("https://gw.example/").unwrap(),
            "gw.example:443"
        );
        assert_eq!(authority_of("https://[::1]:9").unwrap(), "[::1]:9");
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://gw/x",
            "nope",
        ] {
            assert!(authority_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_call_names_its_app_and_the_caller_the_runtime_gave() {
        let body: CallBody = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = http::Request::post("http://users.shop.svc:8080/list?x=1")
            .header("host", "users.shop.svc:8080")
            .header(CALLER_HEADER, "admin.kube-system")
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("x-mine", "kept")
            .body(body)
            .unwrap();
        let out = outgoing(AppCall {
            caller: AppKey::new("shop", "web"),
            target: AppKey::new("shop", "users"),
            request,
        })
        .unwrap();
        assert_eq!(out.method(), "POST");
        assert_eq!(out.uri(), "https://users.shop.svc/list?x=1");
        assert_eq!(out.version(), http::Version::HTTP_2);
        let callers: Vec<_> = out.headers().get_all(CALLER_HEADER).iter().collect();
        assert_eq!(callers, ["web.shop"]);
        for gone in ["host", "connection", "transfer-encoding"] {
            assert!(out.headers().get(gone).is_none(), "{gone}");
        }
        assert_eq!(out.headers()["x-mine"], "kept");
    }
}
