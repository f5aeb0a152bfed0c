//! `shoal rollout status|history|undo|split`: watching and steering
//! rolling updates, as `kubectl rollout` does.

// Output goes through `crate::out`, so that a closed pipe ends the command
// instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::AppRef;
use crate::out::outln;
use crate::table::{self, age};
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use shoal_api::manifest::TrafficTarget;
use shoal_api::objects::{Phase, RolloutState, now_ms};
use shoal_api::rest::AppDetail;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Follow a rollout until it completes or fails.
    Status(StatusArgs),
    /// List an app's revisions.
    History(AppRef),
    /// Roll back to the previous revision (or to --to-revision).
    Undo(UndoArgs),
    /// Split traffic between revisions by percent, e.g. `1=80 latest=20`.
    Split(SplitArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub app: AppRef,
    /// How long to wait for the rollout to finish.
    #[arg(long, default_value = "5m")]
    pub timeout: shoal_api::Duration,
    /// Print the state once instead of following it.
    #[arg(long)]
    pub no_watch: bool,
}

#[derive(Args, Debug)]
pub struct UndoArgs {
    #[command(flatten)]
    pub app: AppRef,
    /// The revision to return to.
    #[arg(long)]
    pub to_revision: Option<u64>,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    #[command(flatten)]
    pub app: AppRef,
    /// `REVISION=PERCENT` or `latest=PERCENT`, adding up to 100.
    #[arg(long = "weight", value_name = "REV=PCT")]
    pub weights: Vec<String>,
    /// Remove the split: all traffic to the current revision.
    #[arg(long, conflicts_with = "weights")]
    pub clear: bool,
}

pub async fn run(client: &Client, cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Status(a) => status(client, a).await,
        RolloutCommand::History(a) => history(client, a).await,
        RolloutCommand::Undo(a) => {
            let key = a.app.key()?;
            let r = client.rollback(&key, a.to_revision).await?;
            outln!("app/{} rolled back to revision {}", key.name, r.revision);
            Ok(())
        }
        RolloutCommand::Split(a) => split(client, a).await,
    }
}

/// Where a rollout stands, as `status` shows it.
struct Standing {
    /// The plain line.
    line: String,
    /// The bar: updated replicas that are ready, of those wanted, and what
    /// else is going on.
    step: crate::progress::Step,
    /// Over: well, or failed with the error to end with.
    done: Option<Result<(), String>>,
}

/// Progress of a rollout as `status` prints it, and whether it is over.
fn describe_progress(d: &AppDetail) -> Standing {
    let app = &d.view.app;
    let target = app.current_revision;
    let want = app.replicas;
    let live = |i: &&shoal_api::objects::Instance| i.phase != Phase::Terminating;
    let updated: Vec<_> = d
        .instances
        .iter()
        .filter(live)
        .filter(|i| i.revision == target)
        .collect();
    let ready = updated.iter().filter(|i| i.ready).count();
    let old = d
        .instances
        .iter()
        .filter(live)
        .filter(|i| i.revision != target)
        .count();
    let leaving = d.instances.len() - updated.len() - old;
    let mut rest = Vec::new();
    if old > 0 {
        rest.push(format!("{old} old replicas remain"));
    }
    if leaving > 0 {
        rest.push(format!("{leaving} draining"));
    }
    let (line, done) = match &app.rollout {
        RolloutState::Complete { .. } => (
            format!(
                "app/{} successfully rolled out (revision {target})",
                app.key.name
            ),
            Some(Ok(())),
        ),
        RolloutState::Failed { reason, .. } => (
            format!(
                "rollout of app/{} to revision {target} failed: {reason}",
                app.key.name
            ),
            Some(Err(if app.stable_revision > 0 {
                format!(
                    "rollout failed: {reason}; revision {} keeps serving",
                    app.stable_revision
                )
            } else {
                format!("rollout failed: {reason}")
            })),
        ),
        RolloutState::Progressing { held, .. } => {
            let mut line = format!(
                "Waiting for rollout of revision {target} to finish: {ready} of {want} updated replicas are ready"
            );
            for r in &rest {
                line.push_str(&format!(", {r}"));
            }
            if let Some(held) = held {
                line.push_str(&format!("; held: {held}"));
            }
            (line, None)
        }
    };
    let mut message = format!("updated replicas ready (revision {target})");
    for r in &rest {
        message.push_str(&format!(", {r}"));
    }
    if let Some(held) = app.rollout.held() {
        message.push_str(&format!("; held: {held}"));
    }
    Standing {
        step: crate::progress::Step {
            done: ready as u64,
            want: want.into(),
            message,
            line: line.clone(),
        },
        line,
        done,
    }
}

async fn status(client: &Client, a: StatusArgs) -> anyhow::Result<()> {
    let key = a.app.key()?;
    let deadline = Instant::now() + a.timeout.get();
    // A bar while following on a terminal; lines otherwise (and for
    // `--no-watch`, which prints one).
    let mut progress = if a.no_watch {
        crate::progress::Progress::lines()
    } else {
        crate::progress::Progress::for_stdout()
    };
    let name = format!("app/{}", key.name);
    loop {
        let d: AppDetail = client.app(&key).await?;
        let s = describe_progress(&d);
        match s.done {
            Some(done) => {
                if done.is_ok() {
                    progress.finish(&name, "updated replicas ready");
                }
                progress.stop();
                drop(progress);
                outln!("{}", s.line);
                return done.map_err(|e| anyhow!(e));
            }
            None => progress.update(&name, &s.step),
        }
        if a.no_watch {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} waiting for the rollout", a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn history(client: &Client, a: AppRef) -> anyhow::Result<()> {
    let key = a.key()?;
    let d: AppDetail = client.app(&key).await?;
    let app = &d.view.app;
    let now = now_ms();
    let rows: Vec<Vec<String>> = d
        .revisions
        .iter()
        .map(|r| {
            let mut notes = Vec::new();
            if r.number == app.current_revision {
                notes.push("current".to_string());
            }
            if r.number == app.stable_revision && r.number != app.current_revision {
                notes.push("stable".to_string());
            }
            for t in &app.settings.traffic {
                let rev = t.revision.unwrap_or(app.current_revision);
                if rev == r.number {
                    notes.push(format!("{}% of traffic", t.percent));
                }
            }
            let running = d
                .instances
                .iter()
                .filter(|i| i.revision == r.number && i.phase != Phase::Terminating)
                .count();
            vec![
                r.number.to_string(),
                format!(
                    "sha256:{}",
                    &r.template.digest[..r.template.digest.len().min(12)]
                ),
                running.to_string(),
                age(r.created_at_ms, now),
                notes.join(", "),
            ]
        })
        .collect();
    outln!("app/{}", key.name);
    table::print(&["REVISION", "MODULE", "INSTANCES", "AGE", "NOTES"], &rows);
    Ok(())
}

fn parse_weights(items: &[String]) -> anyhow::Result<Vec<TrafficTarget>> {
    items
        .iter()
        .map(|w| {
            let (rev, pct) = w.split_once('=').ok_or_else(|| {
                anyhow!("--weight {w:?}: expected REVISION=PERCENT or latest=PERCENT")
            })?;
            let percent: u32 = pct
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| anyhow!("--weight {w:?}: {pct:?} is not a whole percent"))?;
            if rev.trim() == "latest" {
                Ok(TrafficTarget {
                    revision: None,
                    latest: true,
                    percent,
                })
            } else {
                let revision: u64 = rev
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("--weight {w:?}: {rev:?} is not a revision number"))?;
                Ok(TrafficTarget {
                    revision: Some(revision),
                    latest: false,
                    percent,
                })
            }
        })
        .collect()
}

async fn split(client: &Client, a: SplitArgs) -> anyhow::Result<()> {
    let key = a.app.key()?;
    if a.weights.is_empty() && !a.clear {
        bail!("give the split as --weight REV=PCT (repeatable), or --clear");
    }
    let traffic = parse_weights(&a.weights)?;
    let total: u32 = traffic.iter().map(|t| t.percent).sum();
    if !traffic.is_empty() && total != 100 {
        bail!("the percents add up to {total}, not 100");
    }
    client.set_traffic(&key, traffic.clone()).await?;
    if traffic.is_empty() {
        outln!("app/{}: all traffic to the current revision", key.name);
    } else {
        let parts: Vec<String> = traffic
            .iter()
            .map(|t| match t.revision {
                Some(r) => format!("revision {r} {}%", t.percent),
                None => format!("latest {}%", t.percent),
            })
            .collect();
        outln!("app/{}: traffic split {}", key.name, parts.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse() {
        let t = parse_weights(&["1=80".into(), "latest=20%".into()]).unwrap();
        assert_eq!(t[0].revision, Some(1));
        assert_eq!(t[0].percent, 80);
        assert!(t[1].latest);
        assert_eq!(t[1].percent, 20);
        assert!(parse_weights(&["x=1".into()]).is_err());
        assert!(parse_weights(&["1".into()]).is_err());
    }
}
