//! Request smuggling end to end: the gateway's table of ambiguous requests
//! (`gateway/tests/support/smuggling.rs`), each followed by `GET /second`
//! on one connection, through a real gateway and node to the CGI echo
//! guest, which says what it was given. The gateway's own test checks the
//! bytes that reach a node; this one checks what the guest sees.

mod support;

#[path = "../gateway/tests/support/smuggling.rs"]
mod smuggling;

use smuggling::{Answer, Expect, SECOND, answers, cases};
use std::time::Duration;
use support::{Cluster, authority, http_with, wait_until};

const T: Duration = Duration::from_secs(60);

/// Sends `first` and then [`SECOND`] in one write; the answers, read until
/// the gateway closes the connection.
fn exchange(gw: &str, first: &[u8]) -> Vec<Answer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(authority(gw)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(SECOND);
    s.write_all(&all).unwrap();
    let mut raw = Vec::new();
    // A reset after the answers were sent ends the reading too.
    let _ = s.read_to_end(&mut raw);
    answers(&raw).unwrap_or_else(|e| panic!("{e}"))
}

/// The value of line `name: value` of an echo answer.
fn line<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// The body the echo guest was given.
fn echoed(answer: &str) -> &str {
    answer.split_once("body:\n").map_or("", |(_, b)| b)
}

#[test]
fn the_guest_sees_exactly_the_requests_the_gateway_meant() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "echo.toml",
        "name = \"echo\"\nmodule = \"$EXAMPLES/echo.wasm\"\n\n[[routes]]\npath = \"/\"\n",
    ));
    wait_until(T, "the gateway to serve the app", || {
        (http_with("GET", &format!("{gw}/"), &[], b"").0 == 200).then_some(())
    });
    let mut failures = Vec::new();
    for (what, first, expect) in cases() {
        let got = exchange(&gw, &first);
        let texts: Vec<(u16, String)> = got
            .iter()
            .map(|(s, b)| (*s, String::from_utf8_lossy(b).into_owned()))
            .collect();
        let is_first = |(s, t): &(u16, String), body: &[u8]| {
            *s == 200
                && line(t, "method") == Some("POST")
                && line(t, "path") == Some("/first")
                && echoed(t).as_bytes() == body
        };
        let is_second = |(s, t): &(u16, String)| {
            *s == 200
                && line(t, "method") == Some("GET")
                && line(t, "path") == Some("/second")
                && echoed(t).is_empty()
        };
        let refused = |(s, t): &(u16, String)| {
            *s == 400 && serde_json::from_str::<serde_json::Value>(t).is_ok()
        };
        let ok = match (expect, texts.as_slice()) {
            (Expect::Refused, [a]) => refused(a),
            (Expect::Both(body), [a, b]) => is_first(a, body) && is_second(b),
            (Expect::FirstOnly(body), [a]) => is_first(a, body),
            (Expect::RefusedThenSecond, [a, b]) => refused(a) && is_second(b),
            _ => false,
        };
        // However it ended, the guest never took the second request for
        // bytes of the first.
        let leaked = texts.iter().any(|(_, t)| echoed(t).contains("/second"));
        if !ok || leaked {
            failures.push(format!("{what}: expected {expect:?}; answers {texts:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
