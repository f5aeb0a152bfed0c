//! `shoal top apps|nodes`: the control plane's live numbers as a table,
//! redrawn in place on a terminal every `--interval`, or printed once per
//! refresh as plain lines when stdout is not a terminal (`--once`: once).

// Output goes through `crate::out`, so that a closed pipe ends the command
// instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::NsArgs;
use crate::out::{errln, out, outln};
use anyhow::bail;
use clap::{Args, ValueEnum};
use shoal_api::stats::{AppStats, NodeStats};
use std::cmp::Ordering;
use std::io::IsTerminal;

/// A node's usage older than this is not shown (the control plane no
/// longer counts it either).
const USAGE_STALE_MS: u64 = 30_000;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    #[value(alias = "app")]
    Apps,
    #[value(alias = "node", alias = "no")]
    Nodes,
}

/// What rows are sorted by: numbers from the largest, names from A.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Rps,
    P50,
    P99,
    #[value(alias = "err", alias = "errors")]
    Error,
    Cpu,
    #[value(alias = "mem")]
    Memory,
    Instances,
    Name,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// `apps` or `nodes`.
    #[arg(value_enum)]
    pub what: Watched,
    #[command(flatten)]
    pub ns: NsArgs,
    /// How often to refresh.
    #[arg(long, default_value = "1s")]
    pub interval: shoal_api::Duration,
    /// Print the table once and exit.
    #[arg(long)]
    pub once: bool,
    /// Sort by this column (`rps`, `p50`, `p99`, `error`, `cpu`, `memory`,
    /// `instances`, `name`).
    #[arg(long, value_enum, default_value_t = Sort::Rps)]
    pub sort: Sort,
}

pub async fn run(client: &Client, args: TopArgs) -> anyhow::Result<()> {
    check_sort(args.what, args.sort)?;
    let interval = args
        .interval
        .get()
        .max(std::time::Duration::from_millis(100));
    let terminal = std::io::stdout().is_terminal() && !args.once;
    let screen = terminal.then(Screen::start);
    let stop = crate::signals::shutdown_signal();
    tokio::pin!(stop);
    let mut first = true;
    loop {
        let next = tokio::time::Instant::now() + interval;
        match table(client, &args).await {
            Ok(text) => match &screen {
                Some(s) => s.draw(&header(&args, interval), &text),
                None if args.once => {
                    out!("{text}");
                    return Ok(());
                }
                None => {
                    if !first {
                        outln!();
                    }
                    out!("{text}");
                }
            },
            // What the server refuses it will refuse again: say so and
            // stop. Anything else (a restart, a failover) may pass.
            Err(e) if first || args.once || refused(&e) => return Err(e),
            Err(e) => match &screen {
                Some(s) => s.draw(&header(&args, interval), &format!("error: {e:#}\n")),
                None => errln!("error: {e:#}"),
            },
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// Whether `e` is an answer of the server that asking again will not
/// change (a 4xx: a bad token, no right, nothing of that name).
fn refused(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<shoal_client::Error>(),
        Some(shoal_client::Error::Api { status, .. }) if status.is_client_error()
    )
}

fn check_sort(what: Watched, sort: Sort) -> anyhow::Result<()> {
    let fits = match what {
        Watched::Apps => sort != Sort::Instances,
        Watched::Nodes => matches!(
            sort,
            Sort::Rps | Sort::Cpu | Sort::Memory | Sort::Instances | Sort::Name
        ),
    };
    if !fits {
        let name = sort
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        bail!(
            "--sort {name} does not apply to {what:?}; nodes sort by rps, cpu, memory, instances or name, apps by rps, p50, p99, error, cpu, memory or name"
        );
    }
    Ok(())
}

fn header(args: &TopArgs, interval: std::time::Duration) -> String {
    let what = match args.what {
        Watched::Apps => "apps",
        Watched::Nodes => "nodes",
    };
    let now = shoal_api::objects::now_ms();
    format!(
        "shoal top {what} - every {} - {} - rates over the last 10s - Ctrl-C to quit\n\n",
        shoal_api::Duration::from(interval),
        crate::table::timestamp(now)
    )
}

/// The table as it is now.
async fn table(client: &Client, args: &TopArgs) -> anyhow::Result<String> {
    Ok(match args.what {
        Watched::Apps => {
            let q = args.ns.list(None);
            let mut items = client.app_stats_list(&q).await?.items;
            sort_apps(&mut items, args.sort);
            apps_table(&items)
        }
        Watched::Nodes => {
            let mut items = client.node_stats().await?.items;
            sort_nodes(&mut items, args.sort);
            nodes_table(&items)
        }
    })
}

/// Larger first; none last.
fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn sort_apps(items: &mut [AppStats], sort: Sort) {
    items.sort_by(|a, b| {
        let by = match sort {
            Sort::Rps => desc(Some(a.rps), Some(b.rps)),
            Sort::P50 => desc(a.p50_ms, b.p50_ms),
            Sort::P99 => desc(a.p99_ms, b.p99_ms),
            Sort::Error => desc(Some(a.error_rate), Some(b.error_rate)),
            Sort::Cpu => desc(Some(a.cpu_cores), Some(b.cpu_cores)),
            Sort::Memory => b.memory_bytes.cmp(&a.memory_bytes),
            Sort::Instances | Sort::Name => Ordering::Equal,
        };
        by.then_with(|| a.app.cmp(&b.app))
    });
}

fn sort_nodes(items: &mut [NodeStats], sort: Sort) {
    items.sort_by(|a, b| {
        let by = match sort {
            Sort::Rps => desc(Some(a.rps), Some(b.rps)),
            Sort::Cpu => desc(Some(a.cpu_cores), Some(b.cpu_cores)),
            Sort::Memory => b.memory_bytes.cmp(&a.memory_bytes),
            Sort::Instances => b.instances.cmp(&a.instances),
            _ => Ordering::Equal,
        };
        by.then_with(|| a.name.cmp(&b.name))
    });
}

pub fn apps_table(items: &[AppStats]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "READY/REPLICAS",
        "RPS",
        "P50",
        "P99",
        "ERR%",
        "CPU",
        "MEM",
    ];
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            vec![
                a.app.namespace.clone(),
                a.app.name.clone(),
                format!("{}/{}", a.ready, a.replicas),
                rate(a.rps),
                millis(a.p50_ms),
                millis(a.p99_ms),
                format!("{:.1}%", a.error_rate * 100.0),
                cores(a.cpu_cores),
                bytes(a.memory_bytes),
            ]
        })
        .collect();
    crate::table::render(&header, &rows)
}

pub fn nodes_table(items: &[NodeStats]) -> String {
    let header = ["NAME", "STATE", "INSTANCES", "CPU", "MEM", "RPS"];
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            // A node that never reported (or stopped) has no usage to show.
            let fresh = n.report_age_ms.is_some_and(|age| age <= USAGE_STALE_MS);
            let (cpu, mem) = if fresh {
                (cores(n.cpu_cores), bytes(n.memory_bytes))
            } else {
                ("-".to_string(), "-".to_string())
            };
            vec![
                n.name.clone(),
                n.state.clone(),
                n.instances.to_string(),
                cpu,
                mem,
                rate(n.rps),
            ]
        })
        .collect();
    crate::table::render(&header, &rows)
}

fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.1}ms"),
    }
}

/// CPU in millicores, as `kubectl top` writes it.
fn cores(c: f64) -> String {
    format!("{:.0}m", c * 1000.0)
}

fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

/// The terminal `top` draws on: cleared and drawn again at each refresh,
/// the cursor hidden meanwhile and shown again at the end.
struct Screen {
    term: console::Term,
}

impl Screen {
    fn start() -> Self {
        let term = console::Term::stdout();
        let _ = term.hide_cursor();
        Screen { term }
    }

    fn draw(&self, header: &str, body: &str) {
        let (rows, cols) = self.term.size();
        let mut frame = String::from(header);
        frame.push_str(body);
        // As much as the screen holds, each line cut at its width.
        let lines: Vec<String> = frame
            .lines()
            .take(usize::from(rows.max(2)) - 1)
            .map(|l| console::truncate_str(l, usize::from(cols), "").into_owned())
            .collect();
        let _ = self.term.clear_screen();
        let _ = self.term.move_cursor_to(0, 0);
        out!("{}\n", lines.join("\n"));
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.term.show_cursor();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::AppKey;

    fn app(name: &str, rps: f64, p99: Option<f64>) -> AppStats {
        AppStats {
            app: AppKey::new("default", name),
            replicas: 3,
            ready: 2,
            revision: 1,
            rps,
            error_rate: 0.025,
            p50_ms: p99.map(|p| p / 10.0),
            p99_ms: p99,
            cpu_cores: 0.25,
            memory_bytes: 12 << 20,
            series: Vec::new(),
        }
    }

    #[test]
    fn apps_sort_by_rate_then_name_and_show_every_column() {
        let mut items = vec![
            app("quiet", 0.0, None),
            app("busy", 1234.4, Some(250.0)),
            app("alpha", 0.0, None),
            app("mid", 12.34, Some(4.2)),
        ];
        sort_apps(&mut items, Sort::Rps);
        let names: Vec<&str> = items.iter().map(|a| a.app.name.as_str()).collect();
        assert_eq!(names, ["busy", "mid", "alpha", "quiet"]);
        let t = apps_table(&items);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            [
                "NAMESPACE",
                "NAME",
                "READY/REPLICAS",
                "RPS",
                "P50",
                "P99",
                "ERR%",
                "CPU",
                "MEM"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "default", "busy", "2/3", "1234", "25.0ms", "250ms", "2.5%", "250m", "12.0MiB"
            ]
        );
        assert_eq!(lines[2][3..6], ["12.3", "0.4ms", "4.2ms"]);
        assert_eq!(lines[3][3..6], ["0.0", "-", "-"]);

        sort_apps(&mut items, Sort::P99);
        let names: Vec<&str> = items.iter().map(|a| a.app.name.as_str()).collect();
        assert_eq!(names, ["busy", "mid", "alpha", "quiet"]);
        sort_apps(&mut items, Sort::Name);
        let names: Vec<&str> = items.iter().map(|a| a.app.name.as_str()).collect();
        assert_eq!(names, ["alpha", "busy", "mid", "quiet"]);
    }

    #[test]
    fn nodes_show_usage_only_from_a_fresh_report() {
        let node = |name: &str, rps: f64, age: Option<u64>| NodeStats {
            name: name.into(),
            state: "Ready".into(),
            cordoned: false,
            instances: 4,
            cpu_cores: 1.5,
            memory_bytes: 3 << 30,
            memory_capacity_bytes: None,
            rps,
            report_age_ms: age,
        };
        let mut items = vec![node("n1", 1.0, None), node("n2", 50.0, Some(900))];
        sort_nodes(&mut items, Sort::Rps);
        let t = nodes_table(&items);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            ["NAME", "STATE", "INSTANCES", "CPU", "MEM", "RPS"]
        );
        assert_eq!(lines[1], ["n2", "Ready", "4", "1500m", "3.0GiB", "50.0"]);
        assert_eq!(lines[2], ["n1", "Ready", "4", "-", "-", "1.0"]);
    }

    #[test]
    fn a_sort_must_fit_what_is_shown() {
        assert!(check_sort(Watched::Nodes, Sort::P99).is_err());
        assert!(check_sort(Watched::Apps, Sort::Instances).is_err());
        assert!(check_sort(Watched::Nodes, Sort::Cpu).is_ok());
        assert!(check_sort(Watched::Apps, Sort::Error).is_ok());
    }
}
