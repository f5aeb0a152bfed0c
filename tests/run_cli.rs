//! `shoal run` end to end: the real binary, real sockets, real signals.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn serves_a_wat_file_and_stops_cleanly_on_ctrl_c() {
    let mut p = Proc::spawn(
        &[
            "run",
            example("hello/hello.wat").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
        ],
        &[],
    );
    let url = p.url();
    let (status, body) = http("GET", &format!("{url}/"), b"");
    assert_eq!((status, body.as_str()), (200, "Hello from Shoal!\n"));
    p.signal("-INT");
    let status = p.wait(T).expect("exits after Ctrl-C");
    assert!(status.success(), "{status:?}");
    assert!(p.out.all().iter().any(|l| l == "Stopped."));
}

#[test]
fn ctrl_c_lets_an_in_flight_request_finish() {
    let p = Proc::spawn(
        &[
            "run",
            example("http-component.wasm").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
        ],
        &[],
    );
    let url = p.url();
    let host = url.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // Start a request whose body is not all there yet. `/echo` streams the
    // body back as it arrives, so seeing "hello" come back proves the
    // request is in flight before the signal.
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\nhello"
    )
    .unwrap();
    s.flush().unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("hello") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    p.signal("-INT");
    p.out
        .wait_for(T, |l| l.contains("shutting down"))
        .expect("shutdown begins");
    s.write_all(b"world").unwrap();
    s.read_to_end(&mut raw).unwrap();
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("path: /echo"), "{body}");
    assert!(body.ends_with("helloworld"), "{body}");
}

#[test]
fn a_restarted_process_reuses_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let app = example("http-component.wasm");
    for (round, expect) in [(1, "compile cache miss"), (2, "compile cache hit")] {
        let mut p = Proc::spawn(
            &[
                "run",
                app.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--cache-dir",
                cache,
            ],
            &[],
        );
        let url = p.url();
        assert_eq!(http("GET", &format!("{url}/"), b"").0, 200);
        let lines = p.out.all();
        assert!(
            lines.iter().any(|l| l.contains(expect)),
            "round {round}: expected {expect:?} in {lines:#?}"
        );
        p.signal("-TERM");
        assert!(p.wait(T).expect("exits").success());
    }
}

#[test]
fn invalid_wasm_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\x01\x05garbage").unwrap();
    let mut p = Proc::spawn(
        &[
            "run",
            junk.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
        ],
        &[],
    );
    let status = p.wait(T).expect("exits");
    assert!(!status.success());
    // The output's reader may be behind the exit: wait for the line.
    let said = p.out.wait_for(T, |l| l.contains("invalid WebAssembly"));
    assert!(said.is_some(), "{}", p.out.all().join("\n"));

    let text = dir.path().join("notwasm.wasm");
    std::fs::write(&text, b"#!/bin/sh\necho hi\n").unwrap();
    let mut p = Proc::spawn(&["run", text.to_str().unwrap(), "--no-cache"], &[]);
    assert!(!p.wait(T).expect("exits").success());
    let said = p
        .out
        .wait_for(T, |l| l.contains("not a WebAssembly module or component"));
    assert!(said.is_some(), "{}", p.out.all().join("\n"));
}

#[test]
fn host_environment_is_invisible_unless_granted() {
    let p = Proc::spawn(
        &[
            "run",
            example("probe.wasm").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
            "--env",
            "GREETING=hello",
        ],
        &[("SHOAL_TEST_SECRET", "hunter2")],
    );
    let url = p.url();
    let (status, body) = http("GET", &format!("{url}/"), b"");
    assert_eq!(status, 200);
    assert!(!body.contains("hunter2"), "{body}");
    assert!(!body.contains("SHOAL_TEST_SECRET"), "{body}");
    assert!(body.contains("GREETING=hello\n"), "{body}");
    assert!(body.contains("file /etc/passwd: denied"), "{body}");
}

/// `--config` entries reach the guest as environment variables too (and
/// through wasi:config/store, for components); `--env` wins on a name
/// both give.
#[test]
fn config_entries_reach_the_guest_and_env_wins() {
    let p = Proc::spawn(
        &[
            "run",
            example("probe.wasm").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
            "--config",
            "greeting=hello",
            "--config",
            "MODE=config",
            "--env",
            "MODE=env",
        ],
        &[],
    );
    let url = p.url();
    let (status, body) = http("GET", &format!("{url}/"), b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("greeting=hello\n"), "{body}");
    assert!(body.contains("MODE=env\n"), "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "run",
            example("probe.wasm").to_str().unwrap(),
            "--no-cache",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "1bad=x",
        ])
        .env("SHOAL_CONFIG", NO_CONFIG)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid config name"), "{err}");
}

#[test]
fn a_worker_is_restarted_with_growing_delays() {
    let p = Proc::spawn(
        &[
            "run",
            example("worker.wasm").to_str().unwrap(),
            "--kind",
            "worker",
            "--no-cache",
            "--env",
            "EXIT_AFTER=1",
            "--env",
            "TICK_MS=5",
            "--backoff",
            "50ms",
        ],
        &[],
    );
    let lines = p
        .out
        .wait_for_n(3, T, |l| l.contains("restarting worker in"));
    assert!(lines.len() >= 3, "{:#?}", p.out.all());
    let delays: Vec<u64> = lines
        .iter()
        .map(|l| {
            let after = &l[l.find("restarting worker in ").unwrap() + 21..];
            after[..after.find("ms").unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(&delays[..3], &[50, 100, 200]);
    // Its output reaches the terminal, tagged.
    assert!(
        p.out
            .all()
            .iter()
            .any(|l| l.contains("[worker stdout] tick 1"))
    );
    assert!(
        p.out
            .all()
            .iter()
            .any(|l| l.contains("worker exited with status 1"))
    );
}

/// What the listener refuses before any guest runs is answered in JSON, as
/// every other error: a malformed request, a head over the limits (HTTP/1
/// and HTTP/2, where h2 alone would refuse the stream with no answer).
#[test]
fn the_listener_answers_the_heads_it_refuses_in_json() {
    let (_p, url) = shoal_run("http-component.wasm", &[]);
    let addr = authority(&url);
    let cases = refused_heads();
    for (what, raw, want) in cases {
        let answer = raw_exchange(addr, &raw);
        let (status, json) = json_answer(&answer);
        assert_eq!(status, want, "{what}: {answer:?}");
        assert!(
            json["code"].is_string() && json["message"].is_string(),
            "{what}: {json}"
        );
    }
    let req = http::Request::get("http://x/")
        .header("x-big", "a".repeat(100_000))
        .body(unsized_body(b""))
        .unwrap();
    let (status, _, body) = h2(addr, req).unwrap();
    assert_eq!(status, 431);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "headers_too_large");
    // An app's own error answer passes as it is, and the connection a
    // request was answered on still works.
    let (status, body) = http("GET", &format!("{url}/status/400"), b"");
    assert_eq!((status, body.as_str()), (400, "status 400\n"));
}
