//! The request smuggling cases, shared by the gateway's own test (a node
//! that records what reaches it) and the end-to-end one (a real node and
//! guest): ambiguous requests, each followed on its connection by
//! [`SECOND`], and what each must come to.

#![allow(dead_code)]

/// The plain request sent after each case on the same connection.
pub const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// An answer the client read: status, body.
pub type Answer = (u16, Vec<u8>);

/// Splits what came back on a connection into answers (by
/// `Content-Length` or chunked framing); anything after them is returned
/// as an error.
pub fn answers(mut raw: &[u8]) -> Result<Vec<Answer>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            other => {
                return Err(format!(
                    "not an answer ({other:?}): {:?}",
                    String::from_utf8_lossy(raw)
                ));
            }
        };
        let find = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let status = resp.code.unwrap_or(0);
        let rest = &raw[len..];
        if let Some(n) = find("content-length") {
            let n: usize = n.parse().map_err(|_| format!("length {n:?}"))?;
            let body = rest.get(..n).ok_or("a short body")?;
            out.push((status, body.to_vec()));
            raw = &rest[n..];
        } else if find("transfer-encoding").is_some() {
            let mut body = Vec::new();
            let mut at = rest;
            loop {
                let line_end = at
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("a cut chunk")?;
                let size = usize::from_str_radix(
                    std::str::from_utf8(&at[..line_end]).map_err(|e| e.to_string())?,
                    16,
                )
                .map_err(|e| e.to_string())?;
                at = &at[line_end + 2..];
                if size == 0 {
                    at = at.get(2..).ok_or("a cut end")?;
                    break;
                }
                body.extend_from_slice(at.get(..size).ok_or("a cut chunk")?);
                at = at.get(size + 2..).ok_or("a cut chunk")?;
            }
            out.push((status, body));
            raw = at;
        } else {
            out.push((status, rest.to_vec()));
            raw = &[];
        }
    }
    Ok(out)
}

/// What a case must come to.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// 400 from the gateway; the connection closed; nothing reached the
    /// node.
    Refused,
    /// The first request reached app `web` as `POST /first` with this body,
    /// then the second as `GET /second`, each answered.
    Both(&'static [u8]),
    /// As `Both`, but the gateway closed the connection after the first
    /// answer (as RFC 9112 asks after a request with both framings): the
    /// second was never read.
    FirstOnly(&'static [u8]),
    /// 400 from the gateway for the first; the second reached the node and
    /// was answered.
    RefusedThenSecond,
}

/// The ambiguous requests, each with what it must come to.
pub fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let post = |headers: &str, body: &str| {
        format!("POST /first HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}").into_bytes()
    };
    vec![
        (
            "Content-Length and Transfer-Encoding",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            FirstOnly(b"hello"),
        ),
        (
            "Transfer-Encoding and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            FirstOnly(b"hello"),
        ),
        (
            "two differing Content-Lengths",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Refused,
        ),
        (
            "two equal Content-Lengths",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            Both(b"hello"),
        ),
        (
            "a list of Content-Lengths",
            post("Content-Length: 5, 5\r\n", "hello"),
            Refused,
        ),
        (
            "a signed Content-Length",
            post("Content-Length: +5\r\n", "hello"),
            Refused,
        ),
        (
            "a negative Content-Length",
            post("Content-Length: -1\r\n", "hello"),
            Refused,
        ),
        (
            "a hex Content-Length",
            post("Content-Length: 0x5\r\n", "hello"),
            Refused,
        ),
        (
            "a space before the colon",
            post("Content-Length : 5\r\n", "hello"),
            Refused,
        ),
        (
            "chunked, then identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Refused,
        ),
        (
            "xchunked",
            post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Refused,
        ),
        (
            "Transfer-Encoding folded (obs-fold)",
            post(
                "Transfer-Encoding:\r\n chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Refused,
        ),
        (
            "another header folded",
            post("X-A: 1\r\n 2\r\nContent-Length: 5\r\n", "hello"),
            Refused,
        ),
        (
            "Transfer-Encoding over HTTP/1.0",
            b"POST /first HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Refused,
        ),
        (
            "bare LF line endings",
            b"POST /first HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello".to_vec(),
            Both(b"hello"),
        ),
        (
            "bare LF in chunked framing",
            post("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"),
            Refused,
        ),
        (
            "a negative chunk size",
            post("Transfer-Encoding: chunked\r\n", "-1\r\nhello\r\n0\r\n\r\n"),
            Refused,
        ),
        (
            "a chunk size with 0x",
            post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
            Refused,
        ),
        (
            "a chunk size that overflows",
            post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000005\r\nhello\r\n0\r\n\r\n",
            ),
            Refused,
        ),
        (
            "a chunk size that is not hex",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            Refused,
        ),
        (
            "a chunk longer than its size",
            post("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
            Refused,
        ),
        (
            "chunk extensions",
            post(
                "Transfer-Encoding: chunked\r\n",
                "5;ext=1\r\nhello\r\n0;last\r\n\r\n",
            ),
            Both(b"hello"),
        ),
        (
            "trailers after the last chunk",
            post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\nX-Trailer: 1\r\nContent-Length: 99\r\n\r\n",
            ),
            Both(b"hello"),
        ),
        (
            "chunked named twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Both(b"hello"),
        ),
        (
            "Host twice",
            b"GET /first HTTP/1.1\r\nHost: x\r\nHost: other-host\r\n\r\n".to_vec(),
            RefusedThenSecond,
        ),
    ]
}
