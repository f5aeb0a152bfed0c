//! Long lists a page at a time (issue 13): `GET /v1/apps` (and instances,
//! revisions) with `?limit=N&continue=TOKEN`, and `shoal get` walking the
//! pages, through the real CLI and control plane.

mod support;

use std::collections::BTreeSet;
use support::{CliOutput, Cluster, json_answer, raw_exchange};

/// Apps `p00` .. `p{n-1}` in `namespace` (one instance each, which stays
/// pending: the cluster has no node), applied with one `shoal apply`.
fn apply_apps(c: &Cluster, namespace: &str, n: usize) {
    let files: Vec<_> = (0..n)
        .map(|i| {
            c.manifest(
                &format!("{namespace}-{i}.toml"),
                &format!(
                    "name = \"p{i:02}\"\nnamespace = \"{namespace}\"\nmodule = \"$EXAMPLES/hello.wasm\"\n"
                ),
            )
        })
        .collect();
    let mut args = vec!["apply".to_string()];
    for f in &files {
        args.extend(["-f".to_string(), f.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.cli(&refs);
    assert!(out.success, "apply: {}", out.stderr);
}

/// The NAME column of a `shoal get` table (no namespace column).
fn names(out: &CliOutput) -> Vec<String> {
    assert!(out.success, "get failed: {}", out.stderr);
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The `--continue TOKEN` of the "More ..." line a page ends with.
fn next_token(out: &CliOutput) -> Option<String> {
    let line = out.stderr.lines().find(|l| l.starts_with("More "))?;
    let (_, token) = line.rsplit_once("--continue ")?;
    Some(token.trim().to_string())
}

/// `GET PATH` as the admin over a fresh connection: the raw answer.
fn get_raw(c: &Cluster, path: &str) -> String {
    let addr = c.api.trim_start_matches("http://");
    raw_exchange(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            c.admin
        )
        .as_bytes(),
    )
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn get_apps_walks_every_page_and_limit_shows_one_with_the_way_on() {
    let c = Cluster::start(0);
    apply_apps(&c, "default", 5);
    apply_apps(&c, "other", 2);
    let every: Vec<String> = (0..5).map(|i| format!("p{i:02}")).collect();

    // Without --limit: every app, whatever the page size.
    let out = c.cli(&["get", "apps"]);
    assert_eq!(names(&out), every);
    assert!(next_token(&out).is_none(), "{}", out.stderr);

    // --limit 2: two at a time, the last page without a way on.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["get", "apps", "--limit", "2"];
        if let Some(t) = &token {
            args.extend(["--continue", t.as_str()]);
        }
        let out = c.cli(&args);
        let page = names(&out);
        assert!(page.len() <= 2, "{page:?}");
        seen.extend(page);
        pages += 1;
        token = next_token(&out);
        if token.is_none() {
            break;
        }
        assert!(
            out.stderr.contains("shoal get apps --limit 2 --continue "),
            "{}",
            out.stderr
        );
        assert!(pages < 10, "the pages do not end");
    }
    assert_eq!(seen, every);
    assert_eq!(pages, 3);

    // Every namespace, in pages of 3, as JSON: each app once.
    let mut keys = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut args = vec!["get", "apps", "-A", "-o", "json", "--limit", "3"];
        if let Some(t) = &token {
            args.extend(["--continue", t.as_str()]);
        }
        let out = c.cli(&args);
        assert!(out.success, "{}", out.stderr);
        let page: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        for a in page.as_array().unwrap() {
            let k = &a["app"]["key"];
            assert!(keys.insert(format!("{}/{}", k["namespace"], k["name"])));
        }
        token = next_token(&out);
        if token.is_none() {
            break;
        }
        assert!(out.stderr.contains(" -A "), "{}", out.stderr);
    }
    assert_eq!(keys.len(), 7);

    // Instances page the same way.
    let out = c.cli(&["get", "instances", "--limit", "4"]);
    assert_eq!(names(&out).len(), 4);
    let t = next_token(&out).expect("a fifth instance");
    let out = c.cli(&["get", "instances", "--limit", "4", "--continue", &t]);
    assert_eq!(names(&out).len(), 1);
    assert!(next_token(&out).is_none());

    // Nodes are one short list.
    let out = c.cli(&["get", "nodes", "--limit", "1"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("nodes come in one list"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_api_answers_pages_with_a_token_and_refuses_bad_ones_with_400() {
    let c = Cluster::start(0);
    apply_apps(&c, "default", 3);

    // No paging asked: the whole list, no header.
    let a = get_raw(&c, "/v1/apps");
    let (status, all) = json_answer(&a);
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(header(&a, "x-shoal-continue"), None);

    let a = get_raw(&c, "/v1/apps?limit=2");
    let (status, page) = json_answer(&a);
    assert_eq!(status, 200);
    assert_eq!(page.as_array().unwrap().len(), 2);
    let token = header(&a, "x-shoal-continue")
        .expect("a continue token")
        .to_string();
    let a = get_raw(&c, &format!("/v1/apps?limit=2&continue={token}"));
    let (_, rest) = json_answer(&a);
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["app"]["key"]["name"], "p02");
    assert_eq!(header(&a, "x-shoal-continue"), None);

    let refused = |path: &str, code: &str, words: &str| {
        let a = get_raw(&c, path);
        let (status, body) = json_answer(&a);
        assert_eq!(status, 400, "{path}: {a}");
        assert_eq!(body["code"], code, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{path}: {message}");
    };
    for bad in ["0", "-3", "ten", "1.5"] {
        refused(
            &format!("/v1/apps?limit={bad}"),
            "invalid_limit",
            "expected a whole number from 1 to",
        );
    }
    refused("/v1/apps?continue=%25%25", "invalid_continue", "malformed");
    refused(
        "/v1/apps?continue=bm90IGpzb24",
        "invalid_continue",
        "malformed",
    );
    // A token of another list, or of the same list under another filter.
    let a = get_raw(&c, "/v1/instances?limit=1");
    let foreign = header(&a, "x-shoal-continue").expect("a token").to_string();
    refused(
        &format!("/v1/apps?continue={foreign}"),
        "invalid_continue",
        "another list",
    );
    refused(
        &format!("/v1/apps?namespace=*&continue={token}"),
        "invalid_continue",
        "another list or another query",
    );
    refused("/v1/revisions?limit=x", "invalid_limit", "\"x\"");
}

/// The client library's paging helpers walk every page of the real
/// control plane: each item once, in order, the last page without a token.
#[test]
fn the_client_walks_pages_with_its_helpers() {
    use shoal_api::endpoints::{ListQuery, PageQuery};
    let c = Cluster::start(0);
    apply_apps(&c, "default", 5);
    apply_apps(&c, "other", 2);
    let client = shoal_client::Client::builder(&c.api)
        .token(c.admin.clone())
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let every = ListQuery {
            namespace: Some("*".into()),
            app: None,
        };
        let apps = client.apps_paged(&every, 2).await.unwrap();
        let keys: Vec<String> = apps.iter().map(|a| a.app.key.to_string()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys.len(), 7, "{keys:?}");
        assert_eq!(keys, sorted, "in key order, each once");
        let instances = client.instances_paged(&every, 3).await.unwrap();
        assert_eq!(instances.len(), 7);
        let revisions = client.revisions_paged(&every, 4).await.unwrap();
        assert_eq!(revisions.len(), 7);

        let first = client
            .apps_page(
                &ListQuery::default(),
                &PageQuery {
                    limit: Some(5),
                    continue_token: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(first.items.len(), 5);
        assert!(first.next.is_none(), "five apps fit one page of five");

        let err = client
            .apps_page(
                &ListQuery::default(),
                &PageQuery {
                    limit: None,
                    continue_token: Some("not-a-token".into()),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
        assert!(err.to_string().contains("(invalid_continue)"), "{err}");
    });
}
