//! How a guest's run ended, and what the client is told about it.

use crate::host::{MemoryLimitExceeded, ShuttingDown};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use shoal_api::ErrorBody;

/// Why a request (or a worker run) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request's deadline passed.
    Deadline,
    /// The guest asked for more memory than its limit.
    MemoryLimit(String),
    /// The guest trapped (the message includes the wasm backtrace).
    Trap(String),
    /// The guest exited with a non-zero status.
    Exit(i32),
    /// Too many requests in flight for this instance.
    Overloaded,
    /// The request body is larger than the app accepts.
    BodyTooLarge(u64),
    /// The guest broke the protocol (e.g. a malformed CGI response).
    BadResponse(String),
    /// The process stopped serving, and the grace for in-flight requests
    /// has passed.
    ShuttingDown,
    /// Something failed in the host.
    Internal(String),
}

impl Failure {
    /// Classifies an error returned by wasmtime for a guest call.
    pub fn from_error(err: &wasmtime::Error) -> Self {
        if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
            return Self::MemoryLimit(m.to_string());
        }
        if err.downcast_ref::<ShuttingDown>().is_some() {
            return Self::ShuttingDown;
        }
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Self::Exit(exit.0);
        }
        if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return Self::Deadline;
        }
        // The wasm backtrace is what a developer needs; the host's Rust
        // backtrace (captured when RUST_BACKTRACE is set) is noise here.
        let cause = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{err:#}"),
        };
        match err.downcast_ref::<wasmtime::WasmBacktrace>() {
            Some(bt) => Self::Trap(format!("{cause}\n{bt}")),
            None => Self::Trap(cause),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadResponse(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Deadline => "deadline_exceeded",
            Self::MemoryLimit(_) => "memory_limit_exceeded",
            Self::Trap(_) => "guest_trap",
            Self::Exit(_) => "guest_exit",
            Self::Overloaded => "overloaded",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BadResponse(_) => "bad_guest_response",
            Self::ShuttingDown => "shutting_down",
            Self::Internal(_) => "internal",
        }
    }

    /// What the client reads. Trap details stay in the log: they can reveal
    /// the guest's internals.
    pub fn message(&self) -> String {
        match self {
            Self::Deadline => "the request exceeded its deadline".into(),
            Self::MemoryLimit(_) => "the app exceeded its memory limit".into(),
            Self::Trap(_) => "the app trapped while handling the request".into(),
            Self::Exit(code) => format!("the app exited with status {code}"),
            Self::Overloaded => "the app is at its concurrency limit; retry later".into(),
            Self::BodyTooLarge(limit) => {
                format!("the request body exceeds the app's limit of {limit} bytes")
            }
            Self::BadResponse(m) => format!("the app sent an invalid response: {m}"),
            Self::ShuttingDown => "the server is shutting down".into(),
            // The detail names host paths, files and peers: it goes to the
            // log (through `Display`), never to the client.
            Self::Internal(_) => "the host failed to run the request".into(),
        }
    }

    /// The error response for this failure.
    pub fn response(&self) -> http::Response<ResponseBody> {
        error_response(self.status(), self.code(), &self.message())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Trap(detail) => write!(f, "trap: {detail}"),
            Self::MemoryLimit(detail) => f.write_str(detail),
            Self::Internal(detail) => write!(f, "internal error: {detail}"),
            other => f.write_str(&other.message()),
        }
    }
}

impl std::error::Error for Failure {}

/// Errors a response body can fail with while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the runtime produces.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON error response: `{"code": ..., "message": ...}`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
) -> http::Response<ResponseBody> {
    let body = ErrorBody::new(code, message).to_json();
    let mut resp = http::Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_failure_tells_the_client_nothing_of_the_host() {
        let detail = "open /var/lib/shoal/node-7/cache/ab12: connection to 10.1.2.3:7443 refused";
        let failure = Failure::Internal(detail.into());
        let resp = failure.response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("\"internal\""), "{body}");
        for leak in ["/var/lib", "node-7", "10.1.2.3", "7443"] {
            assert!(!body.contains(leak), "client sees {leak:?}: {body}");
        }
        // The operator still gets the detail in the log line.
        assert!(failure.to_string().contains(detail));
    }
}
