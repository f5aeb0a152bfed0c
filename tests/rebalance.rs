//! End-to-end: replicas return to a node that was lost and came back, one
//! move at a time and surge first, while load runs through the gateway.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cluster, Load, http_with, wait_until};

const T: Duration = Duration::from_secs(90);

const REPLICAS: usize = 6;

const WEB: &str = r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 6

[[routes]]
path = "/"

[health]
path = "/healthz"
interval = "200ms"
"#;

/// What the control plane says of `web`'s instances: (node, phase, ready).
fn web_instances(instances: &serde_json::Value) -> Vec<(String, String, bool)> {
    instances
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["app"]["name"] == "web")
                .map(|i| {
                    (
                        i["node"].as_str().unwrap_or("-").to_string(),
                        i["phase"].as_str().unwrap_or_default().to_string(),
                        i["ready"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Serving instances per node, once every instance of `web` serves (none
/// starting or leaving); else `None`.
fn spread(c: &Cluster) -> Option<BTreeMap<String, usize>> {
    let insts = web_instances(&c.get_json("instances"));
    if insts.len() != REPLICAS || !insts.iter().all(|(_, p, r)| p == "running" && *r) {
        return None;
    }
    let mut on = BTreeMap::new();
    for (n, _, _) in insts {
        *on.entry(n).or_default() += 1;
    }
    Some(on)
}

fn even() -> BTreeMap<String, usize> {
    (1..=3).map(|i| (format!("node-{i}"), 2)).collect()
}

/// Follows the instances through the API while replicas move: how many
/// times it saw them, the most instances `web` had that were not leaving,
/// and the fewest serving.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, usize, usize)>>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(c: &Cluster) -> Watch {
        let url = format!("{}{}", c.api, shoal_api::endpoints::INSTANCES);
        let auth = format!("Bearer {}", c.admin);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, 0, usize::MAX)));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) =
                        http_with("GET", &url, &[("authorization", auth.as_str())], b"");
                    if status == 200
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                    {
                        let insts = web_instances(&v);
                        let live = insts.iter().filter(|(_, p, _)| p != "terminating").count();
                        let serving = insts
                            .iter()
                            .filter(|(_, p, r)| p == "running" && *r)
                            .count();
                        let mut s = seen.lock().unwrap();
                        s.0 += 1;
                        s.1 = s.1.max(live);
                        s.2 = s.2.min(serving);
                    }
                    // Pacing between polls, not a wait for anything.
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Watch { stop, seen, thread }
    }

    fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        *self.seen.lock().unwrap()
    }
}

/// Requests from `threads` threads until stopped, as [`Load`] sends
/// them, but `POST`s that take 300 ms (`/sleep`): the gateway sends such a
/// request only once after it reached a node, so a replica stopped under
/// one fails it, and every replica has some in flight when it moves.
struct Posts {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Posts {
    fn start(url: String, threads: usize) -> Posts {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, answers, url) = (stop.clone(), answers.clone(), url.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = support::http("POST", &url, b"a body");
                        answers.lock().unwrap().push(answer);
                    }
                })
            })
            .collect();
        Posts {
            stop,
            answers,
            threads,
        }
    }

    fn sent(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// The answers from `from` on that were not 200, with how many there were.
fn failures(answers: &[(u16, String)], from: usize) -> (Vec<&(u16, String)>, usize) {
    let after = answers.get(from..).unwrap_or_default();
    (
        after.iter().filter(|(s, _)| *s != 200).collect(),
        after.len(),
    )
}

/// A node killed with SIGKILL loses its replicas to the others; started
/// again under the same name, it gets them back: one move at a time
/// (never more than one instance beyond the replica count, never fewer
/// serving than it), without one failed request through the gateway, and
/// the events say so.
#[test]
fn replicas_return_to_a_node_that_came_back_without_a_failed_request() {
    let mut c = Cluster::start(3);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", WEB));
    wait_until(T, "two replicas on each node", || {
        spread(&c).filter(|s| *s == even())
    });
    let load = Load::start(format!("{gw}/"), 2);
    let posts = Posts::start(format!("{gw}/sleep?ms=300"), 4);
    load.wait_more(50);

    c.nodes[2].kill9();
    let piled = wait_until(T, "node-3's replicas to run on the others", || {
        spread(&c).filter(|s| !s.contains_key("node-3"))
    });
    assert_eq!(piled.values().sum::<usize>(), REPLICAS, "{piled:?}");
    load.wait_more(50);
    // Only the return has to lose nothing: the kill may cost a request,
    // depending on retries.
    let returned_from = load.answers.lock().unwrap().len();
    let posted_from = posts.sent();

    let watch = Watch::start(&c);
    c.nodes.remove(2);
    c.node_urls.remove(2);
    c.add_node(2, Vec::new());
    wait_until(T, "two replicas on each node again", || {
        spread(&c).filter(|s| *s == even())
    });
    load.wait_more(50);
    let (looks, most_live, fewest_serving) = watch.finish();
    let answers = load.finish();
    let posted = posts.finish();

    for (what, answers, from) in [
        ("GET", &answers, returned_from),
        ("POST", &posted, posted_from),
    ] {
        let (failed, sent) = failures(answers, from);
        assert!(sent > 0, "no {what} request while replicas returned");
        assert!(
            failed.is_empty(),
            "{} of {sent} {what} requests failed while replicas returned: {:?}",
            failed.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }
    assert!(looks > 0, "the instances were never seen while they moved");
    assert!(
        most_live <= REPLICAS + 1,
        "{most_live} instances at once: moves were not one at a time"
    );
    assert!(
        fewest_serving >= REPLICAS,
        "only {fewest_serving} serving during the moves"
    );

    // Two moves (3, 3, 0 -> 2, 2, 2), each started and ended in events.
    let events = c.cli(&["events"]).stdout;
    let lines = |reason: &str| {
        events
            .lines()
            .filter(|l| l.contains(reason) && l.contains("to node-3"))
            .count()
    };
    assert_eq!(lines("Rebalancing"), 2, "{events}");
    assert_eq!(lines("Rebalanced"), 2, "{events}");
    assert!(!events.contains("RebalanceFailed"), "{events}");
    let describe = c.cli(&["describe", "app/web"]).stdout;
    assert!(
        describe.contains("Rebalanced") && describe.contains("to restore spread"),
        "{describe}"
    );
}
