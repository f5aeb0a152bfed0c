//! The client itself: one reqwest client, the control plane's base URL,
//! and how an exchange is limited in time and its answer checked.
//!
//! Requests carry no reqwest timeout of their own: reqwest's would also cut
//! a stream that is still flowing. Each exchange is instead run under
//! `tokio::time::timeout`, over the whole exchange for a plain answer, and
//! over the answer's head only for a stream.

use crate::error::{Error, root_cause};
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What a program adds to errors for its users: the CLI names its flags,
/// a server process adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    /// After "did not answer within ...", e.g. the flag that sets the limit.
    pub timeout: Option<&'static str>,
    /// After "cannot reach the control plane ...": how to get one there.
    pub unreachable: Option<&'static str>,
}

/// A client of the control plane at one base URL. Cheap to clone: clones
/// share their connections.
#[derive(Clone)]
pub struct Client {
    base: Arc<str>,
    http: reqwest::Client,
    timeout: Duration,
    hints: Hints,
    /// `Bearer ...`, sent to the control plane only (never to a node).
    /// Shared by clones: a node swaps its join token for its own
    /// credential once ([`Client::set_token`]) and every part of it then
    /// sends the credential.
    authorization: Arc<std::sync::RwLock<Option<reqwest::header::HeaderValue>>>,
}

/// `Bearer <token>`, marked sensitive so no debug output shows it.
fn bearer(token: &str) -> Result<reqwest::header::HeaderValue, Error> {
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| Error::Build("the token has characters a header cannot carry".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Sets up a [`Client`].
pub struct Builder {
    base: String,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    hints: Hints,
    ca: Option<Ca>,
    token: Option<String>,
    /// A client certificate and its key (PEM), for servers that ask for
    /// one (nodes, which serve mutual TLS).
    identity: Option<Vec<u8>>,
}

/// The CA a client trusts for `https` URLs.
#[derive(Debug, Clone)]
enum Ca {
    Pem(Vec<u8>),
    File(std::path::PathBuf),
}

impl Builder {
    /// How long an exchange may take: the whole of it for a plain answer,
    /// the wait for the head for a stream, the wait beyond the server's
    /// hold for a long poll. 30 s unless set.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// How long making a connection may take (none of its own unless set:
    /// then only the exchange's limit applies).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
        self
    }

    pub fn hints(mut self, hints: Hints) -> Self {
        self.hints = hints;
        self
    }

    /// Trusts the CA certificates in `pem` (and only those) for `https`
    /// URLs: the cluster CA, `ca.pem` in the control plane's data dir.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Ca::Pem(pem.into()));
        self
    }

    /// As [`Builder::ca_pem`], with the PEM read from `path` at
    /// [`Builder::build`].
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca = Some(Ca::File(path.into()));
        self
    }

    /// Shows the certificate and key in `pem` to servers that ask for a
    /// client certificate.
    pub fn identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some(pem.into());
        self
    }

    /// The token every request to the control plane carries
    /// (`Authorization: Bearer ...`); requests to nodes never carry it.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let authorization = self.token.as_deref().map(bearer).transpose()?;
        let mut http = reqwest::Client::builder().tls_built_in_root_certs(false);
        if let Some(limit) = self.connect_timeout {
            http = http.connect_timeout(limit);
        }
        if let Some(pem) = &self.identity {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| Error::Build(format!("the client certificate: {}", root_cause(&e))))?;
            http = http.identity(identity);
        }
        if let Some(ca) = &self.ca {
            for cert in ca.certificates()? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| Error::Build(root_cause(&e)))?;
        Ok(Client {
            base: self.base.trim_end_matches('/').into(),
            http,
            timeout: self.timeout,
            hints: self.hints,
            authorization: Arc::new(std::sync::RwLock::new(authorization)),
        })
    }
}

impl Ca {
    fn certificates(&self) -> Result<Vec<reqwest::Certificate>, Error> {
        let (pem, origin) = match self {
            Ca::Pem(pem) => (
                std::borrow::Cow::Borrowed(pem.as_slice()),
                "the CA".to_string(),
            ),
            Ca::File(path) => (
                std::fs::read(path)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| Error::Build(format!("reading the CA {}: {e}", path.display())))?,
                format!("the CA {}", path.display()),
            ),
        };
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Build(format!("{origin}: {}", root_cause(&e))))?;
        if certs.is_empty() {
            return Err(Error::Build(format!("{origin}: no PEM certificate in it")));
        }
        Ok(certs)
    }
}

impl Client {
    /// A client of the control plane at `base` (`http://host:port`, or
    /// `https://host:port` with the CA to trust given to the builder).
    pub fn builder(base: &str) -> Builder {
        Builder {
            base: base.to_string(),
            timeout: Duration::from_secs(30),
            connect_timeout: None,
            hints: Hints::default(),
            ca: None,
            token: None,
            identity: None,
        }
    }

    /// The control plane's URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client (same connections) with another limit per exchange.
    pub fn with_timeout(&self, limit: Duration) -> Client {
        Client {
            timeout: limit,
            ..self.clone()
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        let authorization = self
            .authorization
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match authorization {
            Some(v) => req.header(reqwest::header::AUTHORIZATION, v),
            None => req,
        }
    }

    /// Sends `token` from now on, from this client and all its clones.
    pub fn set_token(&self, token: &str) -> Result<(), Error> {
        let v = bearer(token)?;
        *self
            .authorization
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
        Ok(())
    }

    /// A request to any URL (a node's), over the same connections.
    pub(crate) fn request_to(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }

    fn who(&self) -> String {
        format!("the control plane at {}", self.base)
    }

    /// Runs one exchange with the control plane, giving up after `limit`.
    pub(crate) async fn within<T>(
        &self,
        limit: Duration,
        exchange: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.within_for(self.who(), limit, exchange).await
    }

    /// Runs one exchange with `who`, giving up after `limit`.
    pub(crate) async fn within_for<T>(
        &self,
        who: String,
        limit: Duration,
        exchange: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| Error::Timeout {
                who,
                after: limit,
                hint: self.hints.timeout,
            })?
    }

    /// Sends a request to the control plane; an answer other than a
    /// success becomes the error it carries.
    pub(crate) async fn send(&self, req: RequestBuilder) -> Result<Response, Error> {
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        checked(resp, "the control plane").await
    }

    /// Sends a request to a URL that is not the control plane's (`url`
    /// names it in errors).
    pub(crate) async fn send_to(
        &self,
        url: &str,
        req: reqwest::Request,
    ) -> Result<Response, Error> {
        let resp = self.http.execute(req).await.map_err(|e| {
            if e.is_connect() {
                Error::Unreachable {
                    who: url.to_string(),
                    cause: connect_cause(&e),
                    hint: None,
                }
            } else {
                Error::Failed {
                    server: url.to_string(),
                    cause: root_cause(&e),
                }
            }
        })?;
        checked(resp, url).await
    }

    pub(crate) fn transport(&self, e: &reqwest::Error) -> Error {
        if e.is_connect() {
            Error::Unreachable {
                who: self.who(),
                cause: connect_cause(e),
                hint: self.hints.unreachable,
            }
        } else {
            Error::Failed {
                server: self.base.to_string(),
                cause: root_cause(e),
            }
        }
    }

    /// An exchange whose answer is JSON, within `limit`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        limit: Duration,
        body: Option<&(impl Serialize + ?Sized)>,
        query: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let mut req = self.request(method.clone(), path);
        if let Some(q) = query {
            req = req.query(q);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.within(limit, async {
            let resp = self.send(req).await?;
            resp.json().await.map_err(|e| Error::Malformed {
                what: format!("{method} {path}"),
                cause: root_cause(&e),
            })
        })
        .await
    }

    /// An exchange whose answer has no body, within the client's limit.
    pub(crate) async fn no_content(&self, req: RequestBuilder) -> Result<(), Error> {
        self.within(self.timeout, async { self.send(req).await.map(|_| ()) })
            .await
    }
}

/// Why a connection could not be made; a certificate the client does not
/// trust is said in words (rustls's own say only which check failed).
fn connect_cause(e: &reqwest::Error) -> String {
    let cause = root_cause(e);
    if cause.starts_with("invalid peer certificate") {
        format!("its TLS certificate is not signed by the CA this client trusts ({cause})")
    } else {
        cause
    }
}

/// No query string.
pub(crate) const NO_QUERY: Option<&()> = None;
/// No request body.
pub(crate) const NO_BODY: Option<&()> = None;

/// The answer if it is a success, else the error it carries (`who` names
/// the server when the body is not Shoal's error body).
async fn checked(resp: Response, who: &str) -> Result<Response, Error> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(match serde_json::from_str::<shoal_api::ErrorBody>(&text) {
        Ok(body) => Error::Api {
            status,
            code: body.code,
            message: body.message,
        },
        Err(_) => Error::Status {
            who: who.to_string(),
            status,
            body: text,
        },
    })
}
