//! The client itself: one reqwest client, the control plane's base URLs,
//! and how an exchange is limited in time and its answer checked.
//!
//! Several base URLs name replicas of one control plane: any of them
//! answers any request. A request goes to the URL that answered last, and
//! moves on to the next ones (one round at most, then the last error) when
//! that URL could not have acted on it:
//!
//! - no connection could be made (refused, reset while connecting, connect
//!   timeout, TLS handshake failure): nobody got the request;
//! - the answer is `503` with code `no_leader` or `unavailable`: the
//!   replica says it did not act;
//! - the connection broke after the request was sent, and the method is
//!   idempotent (GET, HEAD, PUT, DELETE, OPTIONS): sending it again does
//!   no harm. A POST that may have reached the server is not sent again:
//!   its error goes to the caller, whose loop decides.
//!
//! A `503` with code `store_unavailable` (the store lost its quorum) does
//! not move: that is the whole cluster's state, not one replica's, and a
//! write it answers may have landed. Neither do other errors, nor a
//! failure while reading an answer's body (the caller sees it).
//!
//! A URL that failed, or that an exchange gave up on (its limit ran out
//! while waiting for it), is not tried first next time: the next request
//! starts at the next URL. A stream (the route watch) that ends or is
//! dropped counts as a failure of its URL, so its caller reconnects
//! elsewhere.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The codes of a `503` that says this replica did not act on the request
/// and another may: no replica leads right now (a failover), or this one
/// is not serving.
pub const FAILOVER_CODES: &[&str] = &["no_leader", "unavailable"];

/// What a program adds to errors for its users: the CLI names its flags,
/// a server process adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints {
    /// After "did not answer within ...", e.g. the flag that sets the limit.
    pub timeout: Option<&'static str>,
    /// After "cannot reach the control plane ...": how to get one there.
    pub unreachable: Option<&'static str>,
}

/// A client of the control plane at one or several base URLs (replicas of
/// one control plane). Cheap to clone: clones share their connections and
/// which URL they send to first.
#[derive(Clone)]
pub struct Client {
    /// Never empty.
    bases: Arc<[Arc<str>]>,
    /// The index in `bases` requests go to first: the last that answered.
    preferred: Arc<AtomicUsize>,
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
    bases: Vec<String>,
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

    /// How long making a connection may take. Unless set: none of its own
    /// for one URL (only the exchange's limit applies); for several, a
    /// share of the exchange's limit (at most 10 s), so that a URL that
    /// swallows connections leaves time for the others.
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
        let bases = normalized(&self.bases)?;
        let mut http = reqwest::Client::builder().tls_built_in_root_certs(false);
        let connect_timeout = self.connect_timeout.or_else(|| {
            (bases.len() > 1).then(|| {
                (self.timeout / bases.len() as u32)
                    .min(Duration::from_secs(10))
                    .max(Duration::from_millis(100))
            })
        });
        if let Some(limit) = connect_timeout {
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
            bases,
            preferred: Arc::new(AtomicUsize::new(0)),
            http,
            timeout: self.timeout,
            hints: self.hints,
            authorization: Arc::new(std::sync::RwLock::new(authorization)),
        })
    }
}

/// The base URLs without a trailing slash, each as reqwest writes it (so
/// that a request's URL starts with its base, see [`Client::path_of`]).
fn normalized(bases: &[String]) -> Result<Arc<[Arc<str>]>, Error> {
    if bases.is_empty() {
        return Err(Error::Build("no control plane URL".into()));
    }
    bases
        .iter()
        .map(|b| {
            let url = reqwest::Url::parse(b)
                .map_err(|e| Error::Build(format!("the control plane URL {b:?}: {e}")))?;
            if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
                return Err(Error::Build(format!(
                    "the control plane URL {b:?}: expected one such as https://host:port"
                )));
            }
            Ok(Arc::from(url.as_str().trim_end_matches('/')))
        })
        .collect()
}

/// Whether sending a request again cannot do more than sending it once.
fn idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// Whether an answer says another replica may act where this one did not.
fn moves_on(e: &Error) -> bool {
    matches!(e, Error::Api { status, code, .. }
        if *status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && FAILOVER_CODES.contains(&code.as_str()))
}

/// One request on its way to one of the URLs: unless it ends
/// [`Attempt::answered`], it failed (or its caller gave up on it), and the
/// next request starts at the next URL.
struct Attempt<'a> {
    preferred: &'a AtomicUsize,
    at: usize,
    of: usize,
    answered: bool,
}

impl Attempt<'_> {
    fn answered(mut self) {
        self.preferred.store(self.at, Ordering::Relaxed);
        self.answered = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.answered {
            moved_past(self.preferred, self.at, self.of);
        }
    }
}

/// Makes the URL after `at` the first to try, unless another request has
/// already moved the client on from `at`.
fn moved_past(preferred: &AtomicUsize, at: usize, of: usize) {
    let _ = preferred.compare_exchange(at, (at + 1) % of, Ordering::Relaxed, Ordering::Relaxed);
}

/// Held by a stream from one URL: when the stream is dropped (it ended,
/// broke or went silent, and its caller reconnects), the next request
/// starts at the next URL.
pub(crate) struct StreamFrom {
    preferred: Arc<AtomicUsize>,
    at: usize,
    of: usize,
}

impl Drop for StreamFrom {
    fn drop(&mut self) {
        moved_past(&self.preferred, self.at, self.of);
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
    /// `https://host:port` with the CA to trust given to the builder), or
    /// at several replicas of it: URLs separated by commas, tried in that
    /// order (see the module's doc).
    pub fn builder(base: &str) -> Builder {
        Self::builder_for(base.split(',').map(str::trim).filter(|b| !b.is_empty()))
    }

    /// A client of the replicas of one control plane at `bases`, all
    /// served with the same CA, tried in that order.
    pub fn builder_for<S: Into<String>>(bases: impl IntoIterator<Item = S>) -> Builder {
        Builder {
            bases: bases.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(30),
            connect_timeout: None,
            hints: Hints::default(),
            ca: None,
            token: None,
            identity: None,
        }
    }

    /// The control plane's URL the next request goes to first, without a
    /// trailing slash.
    pub fn base(&self) -> &str {
        &self.bases[self.first()]
    }

    /// All the control plane's URLs, in the order given.
    pub fn bases(&self) -> impl Iterator<Item = &str> {
        self.bases.iter().map(|b| &**b)
    }

    fn first(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.bases.len()
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
        format!("{}{path}", self.base())
    }

    /// What follows the base in `url` (path and query), if it is one of
    /// the control plane's.
    fn path_of<'u>(&self, url: &'u reqwest::Url) -> Option<&'u str> {
        self.bases
            .iter()
            .filter_map(|b| url.as_str().strip_prefix(&**b))
            .find(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
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

    /// The same client, on the same connections, sending `token` and
    /// holding it apart from this one: [`Client::set_token`] on either
    /// changes only that one. For one process that speaks as many nodes,
    /// each with a credential of its own (`shoal fleet-sim`).
    pub fn with_own_token(&self, token: &str) -> Result<Client, Error> {
        Ok(Client {
            authorization: Arc::new(std::sync::RwLock::new(Some(bearer(token)?))),
            ..self.clone()
        })
    }

    /// A request to any URL (a node's), over the same connections.
    pub(crate) fn request_to(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// The control plane, as a timeout names it: at its URL, or at all of
    /// them (the exchange's limit spans its round over them).
    fn who(&self) -> String {
        let all: Vec<&str> = self.bases().collect();
        who(&all.join(", "))
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

    /// Sends a request to the control plane, moving on to its other URLs
    /// as the module's doc says; an answer other than a success becomes
    /// the error it carries.
    pub(crate) async fn send(&self, req: RequestBuilder) -> Result<Response, Error> {
        self.send_from(req, true).await.map(|(resp, _)| resp)
    }

    /// [`Client::send`], also saying which URL answered (its index);
    /// without `check`, any answer is returned as it is (and only failed
    /// connections move on: a `HEAD` answer has no body to read a code
    /// from).
    pub(crate) async fn send_from(
        &self,
        req: RequestBuilder,
        check: bool,
    ) -> Result<(Response, usize), Error> {
        let req = req.build().map_err(|e| self.transport(&e))?;
        let of = self.bases.len();
        let start = self.first();
        let path = self.path_of(req.url()).map(str::to_string);
        let retry_broken = idempotent(req.method());
        let mut pending = Some(req);
        let mut last = None;
        for i in 0..of {
            let Some(req) = pending.take() else { break };
            let at = (start + i) % of;
            // Keep a copy for the next URL, if there is one and the body
            // can be copied (every body this client sends can).
            let mut this = match (i + 1 < of).then(|| req.try_clone()).flatten() {
                Some(copy) => {
                    pending = Some(req);
                    copy
                }
                None => req,
            };
            if let Some(path) = &path {
                match reqwest::Url::parse(&format!("{}{path}", self.bases[at])) {
                    Ok(url) => *this.url_mut() = url,
                    Err(_) => continue,
                }
            }
            let attempt = Attempt {
                preferred: &self.preferred,
                at,
                of,
                answered: false,
            };
            let err = match self.http.execute(this).await {
                Ok(resp) if !check => {
                    attempt.answered();
                    return Ok((resp, at));
                }
                Ok(resp) => match checked(resp, "the control plane").await {
                    Err(e) if moves_on(&e) => e,
                    answer => {
                        attempt.answered();
                        return answer.map(|r| (r, at));
                    }
                },
                Err(e) => {
                    let err = self.transport_at(at, &e);
                    if !(e.is_connect() || (retry_broken && e.is_request())) {
                        return Err(err);
                    }
                    err
                }
            };
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| Error::Failed {
            server: self.base().to_string(),
            cause: "no control plane URL to send to".into(),
        }))
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
        self.transport_at(self.first(), e)
    }

    /// `e`, met talking to the URL at index `at`.
    fn transport_at(&self, at: usize, e: &reqwest::Error) -> Error {
        let base = &self.bases[at % self.bases.len()];
        if e.is_connect() {
            Error::Unreachable {
                who: who(base),
                cause: connect_cause(e),
                hint: self.hints.unreachable,
            }
        } else {
            Error::Failed {
                server: base.to_string(),
                cause: root_cause(e),
            }
        }
    }

    /// The base URL at index `at`.
    pub(crate) fn base_at(&self, at: usize) -> &str {
        &self.bases[at % self.bases.len()]
    }

    /// A guard for a stream from the URL at index `at` (see
    /// [`StreamFrom`]).
    pub(crate) fn stream_from(&self, at: usize) -> StreamFrom {
        StreamFrom {
            preferred: self.preferred.clone(),
            at,
            of: self.bases.len(),
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

fn who(base: &str) -> String {
    format!("the control plane at {base}")
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
