//! What can go wrong talking to the control plane or a node, worded as the
//! CLI prints it (`error: <message> (<code>)`).

use reqwest::StatusCode;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with Shoal's JSON error body.
    #[error("{message} ({code})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The server answered with an error that is not Shoal's JSON error
    /// body (a proxy in between, say).
    #[error("{who} answered {status}: {body}")]
    Status {
        who: String,
        status: StatusCode,
        body: String,
    },
    /// No connection could be made.
    #[error("cannot reach {who}: {cause}{}", show_hint(.hint))]
    Unreachable {
        who: String,
        cause: String,
        hint: Option<&'static str>,
    },
    /// The connection failed after it was made.
    #[error("request to {server} failed: {cause}")]
    Failed { server: String, cause: String },
    /// No answer (for a stream: no answer's head) within the limit.
    #[error("{who} did not answer within {}{}", shoal_api::Duration::from(*.after), show_hint(.hint))]
    Timeout {
        who: String,
        after: Duration,
        hint: Option<&'static str>,
    },
    /// A success whose body is not what the endpoint promises.
    #[error("malformed answer to {what}: {cause}")]
    Malformed { what: String, cause: String },
    #[error("building the HTTP client: {0}")]
    Build(String),
    /// Something on this side failed (reading the file to send).
    #[error("{0}")]
    Local(String),
}

fn show_hint(h: &Option<&'static str>) -> String {
    h.map(|h| format!(" ({h})")).unwrap_or_default()
}

impl Error {
    /// The status the server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of Shoal's JSON error body, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The server says the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { code, .. } if code == "not_found")
    }
}

/// The innermost error's message: reqwest wraps hyper wraps io, and only
/// the last says what happened ("Connection refused").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
