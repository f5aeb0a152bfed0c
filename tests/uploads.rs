//! Module uploads (issue 15): `shoal apply` streams each module to the
//! control plane as the body of its own request, and the control plane
//! writes it to its store as it arrives, so a large module does not sit in
//! memory whole (let alone base64 inside a JSON body); a module larger
//! than the namespace may upload is refused with 413 before its body is
//! read.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{Cluster, authority, cli_as};

/// LEB128, as the binary format writes sizes.
fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A valid core module of about `size` bytes: one memory and one active
/// data segment of `size` bytes that do not repeat.
fn data_module(size: usize) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let mut mem = vec![1, 0];
    leb((size as u64 >> 16) + 2, &mut mem);
    m.push(5);
    leb(mem.len() as u64, &mut m);
    m.extend(mem);
    let mut seg = vec![1, 0, 0x41, 0, 0x0b];
    leb(size as u64, &mut seg);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    seg.extend((0..size).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    m.push(11);
    leb(seg.len() as u64, &mut m);
    m.extend(seg);
    m
}

/// The peak resident memory of a process (its high-water mark), bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib << 10
}

/// A 60 MB module goes through `shoal apply` and the control plane's
/// memory never holds much more than one copy of it: before uploads were
/// streamed, the base64 JSON body, its decoding and the write held several
/// (427 MB at the peak for this module).
#[test]
fn a_large_module_is_uploaded_with_bounded_memory() {
    // Compiling for the nodes is another matter (it needs the module
    // whole, and compiles it): off, so that only the upload is measured.
    let c = Cluster::start_with(0, &["--compile-for-nodes", "off"], |_| Vec::new());
    let module = data_module(60 << 20);
    std::fs::write(c.dir.path().join("big.wasm"), &module).unwrap();
    let path = c.manifest(
        "big.toml",
        "name = \"big\"\nmodule = \"big.wasm\"\nreplicas = 0\n",
    );
    let before = peak_rss(c.cp.child.id());
    let out = c.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("app/big created (revision 1)"),
        "{}",
        out.stdout
    );
    let peak = peak_rss(c.cp.child.id());
    eprintln!(
        "control plane peak RSS: {} MiB before the apply, {} MiB after",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < 150 << 20,
        "the control plane's memory peaked at {} MiB for a 60 MiB module",
        peak >> 20
    );
    // The module is stored whole: the control plane serves it back.
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&module))
    };
    let served = get_bytes(&c, &shoal_api::endpoints::blob(&digest));
    assert!(served == module, "the module served back differs");
    // Applied again, nothing is sent: the control plane has it.
    let out = c.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(out.stdout.contains("unchanged"), "{}", out.stdout);
}

/// The body of `GET path` from the control plane, as the admin, as bytes.
fn get_bytes(c: &Cluster, path: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(authority(&c.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        c.admin
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head");
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&raw[..end])
    );
    raw.split_off(end + 4)
}

/// Sends the head of an upload that announces `length` bytes and none of
/// them; the answer that arrives, within 10 s.
fn announce_only(c: &Cluster, ns: &str, digest: &str, length: u64, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(authority(&c.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n",
        shoal_api::endpoints::namespace_blob(ns, digest)
    )
    .unwrap();
    // The body never comes: the answer must arrive anyway.
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("}") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer after {:?} ({e}); got {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_module_over_the_largest_size_is_refused_before_its_body_is_read() {
    let c = Cluster::start_with(0, &["--max-module-size", "8MiB"], |_| Vec::new());
    let digest = "ab".repeat(32);
    let answer = announce_only(&c, "default", &digest, 1 << 30, &c.admin);
    let (status, body) = support::json_answer(&answer);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(body["code"], "module_too_large", "{answer}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("8MiB (8388608 bytes)") && message.contains("--max-module-size"),
        "{message}"
    );

    // Without a token, or with another namespace's, the upload is refused
    // before anything else.
    let other = c.token("other-deploy", "deploy", Some("other"));
    let answer = announce_only(&c, "default", &digest, 10, &other);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = announce_only(&c, "default", &digest, 10, "nope");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // A namespace's quota allows less; `shoal apply` says so before it
    // sends the module, naming the limit.
    let out = c.cli(&["quota", "set", "team", "--max-module-size", "1KiB"]);
    assert!(out.success, "{}", out.stderr);
    std::fs::write(c.dir.path().join("mid.wasm"), data_module(4096)).unwrap();
    let path = c.manifest(
        "mid.toml",
        "name = \"mid\"\nnamespace = \"team\"\nmodule = \"mid.wasm\"\nreplicas = 0\n",
    );
    let tenant = c.token("team-deploy", "deploy", Some("team"));
    let out = cli_as(
        &c.api,
        Some(&tenant),
        &["apply", "-f", path.to_str().unwrap()],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("larger than the largest module namespace \"team\" takes (1024 bytes"),
        "{}",
        out.stderr
    );
    let out = c.cli(&["quota", "get", "team"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("max-module-size") && l.contains("1KiB")),
        "{}",
        out.stdout
    );
}
