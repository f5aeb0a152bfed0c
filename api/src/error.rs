//! The error body of every HTTP response Shoal itself produces.

use serde::{Deserialize, Serialize};

/// `{"code": "...", "message": "..."}`: `code` is stable and meant for
/// programs, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The body serialised as JSON. Serialising two strings cannot fail, but
    /// a fallback keeps this total.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"code":"{}","message":"unprintable error"}}"#,
                self.code
            )
        })
    }
}

/// How many headers, and how many bytes of head (request line and headers),
/// a listener takes in one request; more gets 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_headers: usize,
    pub max_bytes: usize,
}

impl HeadLimits {
    /// What a client may send Shoal's front doors (the gateway's defaults,
    /// and `shoal run`).
    pub const CLIENT: Self = Self {
        max_headers: 100,
        max_bytes: 64 * 1024,
    };
}

/// The code of a 431 answer.
pub const HEADERS_TOO_LARGE: &str = "headers_too_large";

/// The message of a 431 answer.
pub fn headers_too_large(limits: HeadLimits) -> String {
    format!(
        "the request head is larger than {} bytes or has more than {} headers",
        limits.max_bytes, limits.max_headers
    )
}

/// Whether an HTTP/2 request's header block is over `limits`, counted as
/// HTTP/2 does (each field's name and value and 32 bytes, pseudo-headers
/// included). A listener lets h2 take blocks somewhat over the limit and
/// refuses them itself with a JSON 431, where h2 would refuse the stream
/// with no answer (and clients retry it).
pub fn h2_head_over<B>(req: &http::Request<B>, limits: HeadLimits) -> bool {
    let uri = req.uri();
    let pseudo = 4 * 32
        + ":method".len()
        + req.method().as_str().len()
        + ":scheme".len()
        + uri.scheme_str().map_or(0, str::len)
        + ":authority".len()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + ":path".len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let size = req
        .headers()
        .iter()
        .fold(pseudo, |n, (k, v)| n + k.as_str().len() + v.len() + 32);
    size > limits.max_bytes || req.headers().len() > limits.max_headers
}

/// JSON answers in place of hyper's own, empty, ones to HTTP/1 request
/// heads it refuses before any handler sees them (400, 414, 431): whole
/// HTTP/1.1 responses, made once per listener.
#[derive(Debug, Clone)]
pub struct HeadRefusals {
    bad_request: Vec<u8>,
    too_large: Vec<u8>,
    uri_too_long: Vec<u8>,
}

impl HeadRefusals {
    pub fn new(limits: HeadLimits) -> Self {
        let answer = |status: &str, code: &str, message: String| {
            let body = ErrorBody::new(code, message).to_json();
            format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Self {
            bad_request: answer(
                "400 Bad Request",
                "bad_request",
                "the request is not valid HTTP".into(),
            ),
            too_large: answer(
                "431 Request Header Fields Too Large",
                HEADERS_TOO_LARGE,
                headers_too_large(limits),
            ),
            uri_too_long: answer(
                "414 URI Too Long",
                "uri_too_long",
                format!("the request line is longer than {} bytes", limits.max_bytes),
            ),
        }
    }

    /// Ours in place of `buf`, if that is hyper's answer to a refused head:
    /// a status line, `connection: close`, `content-length: 0`, and the
    /// date. The caller checks first that no request is in progress on the
    /// connection, since only then does hyper answer on its own.
    pub fn instead_of(&self, buf: &[u8]) -> Option<&[u8]> {
        let answer = match buf.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
            b"400 " => &self.bad_request,
            b"431 " => &self.too_large,
            b"414 " => &self.uri_too_long,
            _ => return None,
        };
        let line = buf.windows(2).position(|w| w == b"\r\n")?;
        let headers = &buf[line + 2..];
        (headers.starts_with(b"connection: close\r\ncontent-length: 0\r\n")
            && buf.ends_with(b"\r\n\r\n")
            && buf.len() < 256)
            .then_some(answer.as_slice())
    }
}

/// A connection's part in putting a [`HeadRefusals`] answer in place of
/// hyper's: a listener's socket wrapper asks [`Self::takes`] of each write
/// and, while it says yes, writes through [`Self::poll_write`].
#[derive(Debug, Default)]
pub struct InPlace(Option<(Vec<u8>, usize)>);

impl InPlace {
    /// Whether a write whose first bytes are `first` goes out as ours: one
    /// is under way, or `first` is hyper's refusal and `idle()` (no request
    /// of the connection is in progress; only then does hyper answer on
    /// its own) holds.
    pub fn takes(
        &mut self,
        refusals: &HeadRefusals,
        first: &[u8],
        idle: impl FnOnce() -> bool,
    ) -> bool {
        if self.0.is_some() {
            return true;
        }
        match idle().then(|| refusals.instead_of(first)).flatten() {
            Some(answer) => {
                self.0 = Some((answer.to_vec(), 0));
                true
            }
            None => false,
        }
    }

    /// Writes our answer through `write`; once it is all out, reports the
    /// `claimed` bytes of hyper's as written.
    pub fn poll_write(
        &mut self,
        claimed: usize,
        mut write: impl FnMut(&[u8]) -> std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        if let Some((answer, done)) = &mut self.0 {
            while *done < answer.len() {
                match write(&answer[*done..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => *done += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        self.0 = None;
        Poll::Ready(Ok(claimed))
    }
}

/// The first bytes of a vectored write, and the length of all of it.
pub fn vectored<'a>(bufs: &'a [std::io::IoSlice<'a>]) -> (&'a [u8], usize) {
    let first = bufs
        .iter()
        .find(|b| !b.is_empty())
        .map_or(&[][..], |b| &**b);
    (first, bufs.iter().map(|b| b.len()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_refusals_are_replaced_and_nothing_else() {
        let r = HeadRefusals::new(HeadLimits::CLIENT);
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 05:00:00 GMT\r\n\r\n";
        let ours = String::from_utf8(r.instead_of(hyper_431).unwrap().to_vec()).unwrap();
        assert!(ours.starts_with("HTTP/1.1 431 "), "{ours}");
        let body = ours.split("\r\n\r\n").nth(1).unwrap();
        let e: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(e.code, HEADERS_TOO_LARGE);
        assert!(ours.contains(&format!("content-length: {}\r\n", body.len())));
        // An app's own 400 with a body, and any 200, pass as they are.
        assert!(
            r.instead_of(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nnope!")
                .is_none()
        );
        assert!(
            r.instead_of(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .is_none()
        );
    }
}
