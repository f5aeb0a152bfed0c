//! Reading the head of a node's answer, without I/O: the status, the
//! headers, how the body is framed and whether the connection outlives the
//! answer. The syntax is `httparse`'s (hyper's parser); the meaning of the
//! framing headers (RFC 9112, section 6) is decided here.

use super::framing::{ChunkState, Framing};
use super::{H1Error, Head};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Most headers a node's answer may have.
const MAX_HEADERS: usize = 100;

/// A whole head at the start of a buffer.
pub(super) struct Parsed {
    /// Its length in the buffer.
    pub len: usize,
    /// `None` for an informational answer (100 Continue and the like): the
    /// real one follows.
    pub answer: Option<Answer>,
}

/// A final answer's head.
pub(super) struct Answer {
    pub head: Head,
    pub framing: Framing,
    /// The connection ends with this answer.
    pub close: bool,
}

/// Parses the answer head at the start of `buf`, the answer to a request
/// with `method`: `None` until all of it is there.
pub(super) fn parse(buf: &[u8], method: &Method) -> Result<Option<Parsed>, H1Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Invalid(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| H1Error::Invalid(format!("status {code}")))?;
    if status.is_informational() {
        // 100 Continue and the like: the real answer follows.
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid("unexpected protocol switch".into()));
        }
        return Ok(Some(Parsed { len, answer: None }));
    }
    let http10 = resp.version == Some(0);
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Invalid(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| H1Error::Invalid(format!("value of header {name}")))?;
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| H1Error::Invalid("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting content-length".into()));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            chunked = h
                .value
                .split(|b| *b == b',')
                .next_back()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                // Some other coding: only the end of the connection
                // marks the end of the body.
                close = true;
            }
        } else if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        headers.remove(header::CONTENT_LENGTH);
        Framing::Chunked(ChunkState::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some(Parsed {
        len,
        answer: Some(Answer {
            head: Head { status, headers },
            framing,
            close,
        }),
    }))
}
