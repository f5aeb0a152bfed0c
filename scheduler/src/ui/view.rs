//! The dashboard's HTML, written with `maud`, which escapes every value it
//! is given (text and attributes alike): nothing here builds markup from
//! strings. No inline script or style either (the pages' policy forbids
//! both): behaviour comes from `ui.js` through `data-` attributes, looks
//! from `ui.css` through classes.

use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use shoal_api::auth::Scope;
use shoal_api::objects::{
    AppKey, Event, EventLevel, Instance, Node, NodeState, Phase, RolloutState,
};
use shoal_api::rest::{AppDetail, AppView};
use shoal_api::stats::{AppStats, AppStatsList, NodeStatsList};

use super::chart::{self, Line};
use super::session::{Flash, Session};

/// Everything but RFC 3986's unreserved characters is encoded, so a name
/// in a link is one path segment whatever it holds.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` as one path segment or query value.
pub(crate) fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The dashboard's paths (each name percent-encoded).
pub(crate) mod path {
    use super::seg;
    use shoal_api::objects::AppKey;

    pub(crate) const ROOT: &str = "/ui";
    pub(crate) const SIGN_IN: &str = "/ui/sign-in";
    pub(crate) const SIGN_OUT: &str = "/ui/sign-out";
    pub(crate) const CLUSTER: &str = "/ui/cluster";
    pub(crate) const CLUSTER_LIVE: &str = "/ui/cluster/live";
    pub(crate) const APPS: &str = "/ui/apps";
    pub(crate) const APPS_LIVE: &str = "/ui/apps/live";
    pub(crate) const EVENTS: &str = "/ui/events";
    pub(crate) const EVENTS_STREAM: &str = "/ui/events/stream";
    pub(crate) const CSS: &str = "/ui/assets/ui.css";
    pub(crate) const JS: &str = "/ui/assets/ui.js";

    pub(crate) fn apps_in(ns: &str) -> String {
        format!("{APPS}?ns={}", seg(ns))
    }

    pub(crate) fn apps_live_in(ns: &str) -> String {
        format!("{APPS_LIVE}?ns={}", seg(ns))
    }

    pub(crate) fn app(key: &AppKey) -> String {
        format!("{APPS}/{}/{}", seg(&key.namespace), seg(&key.name))
    }

    pub(crate) fn app_part(key: &AppKey, part: &str) -> String {
        format!("{}/{part}", app(key))
    }

    pub(crate) fn logs(ns: &str, id: &str) -> String {
        format!("/ui/logs/{}/{}", seg(ns), seg(id))
    }

    pub(crate) fn logs_stream(ns: &str, id: &str) -> String {
        format!("{}/stream", logs(ns, id))
    }

    /// The stream of the events after `seq` (none: from the first).
    pub(crate) fn events_stream_after(seq: Option<u64>) -> String {
        match seq {
            Some(seq) => format!("{EVENTS_STREAM}?after={seq}"),
            None => EVENTS_STREAM.to_string(),
        }
    }
}

/// Which part of the site a page belongs to, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Cluster,
    Apps,
    Events,
    None,
}

/// A whole page: head, navigation bar with who is signed in, a message
/// left by the previous action, and `body`.
pub(crate) fn page(
    title: &str,
    session: Option<&Session>,
    nav: Nav,
    flash: Option<&Flash>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Shoal" }
                link rel="stylesheet" href=(path::CSS);
                script src=(path::JS) defer {}
            }
            body {
                header.top {
                    a.brand href=(path::ROOT) { "Shoal" }
                    @if let Some(s) = session {
                        nav {
                            a.current[nav == Nav::Cluster] href=(path::CLUSTER) { "Cluster" }
                            a.current[nav == Nav::Apps] href=(path::APPS) { "Apps" }
                            a.current[nav == Nav::Events] href=(path::EVENTS) { "Events" }
                        }
                        div.who {
                            span #who { (s.name) }
                            span.muted {
                                " · " (s.role.map(|r| r.to_string()).unwrap_or_else(|| "no checks".into()))
                                " in " (scope_text(&s.scope))
                            }
                            form.inline method="post" action=(path::SIGN_OUT) {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button.link #sign-out type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(f) = flash {
                        p.flash.ok[f.ok].error[!f.ok] #flash role="status" { (f.text) }
                    }
                    (body)
                }
            }
        }
    }
}

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Cluster => "the cluster".into(),
        Scope::Namespace(ns) => format!("namespace {ns}"),
        Scope::Node(n) => format!("node {n}"),
    }
}

pub(crate) fn sign_in(error: Option<&str>) -> Markup {
    let body = html! {
        section.card.narrow {
            h1 { "Sign in" }
            p.muted {
                "With a token of this cluster: the admin token "
                code { "shoal up" } " wrote, or one made with "
                code { "shoal token create" } "."
            }
            @if let Some(e) = error {
                p.flash.error #sign-in-error role="alert" { (e) }
            }
            form method="post" action=(path::SIGN_IN) {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off"
                    spellcheck="false" required autofocus;
                button #sign-in type="submit" { "Sign in" }
            }
        }
    };
    page("Sign in", None, Nav::None, None, body)
}

/// A refusal or a failure, as a page.
pub(crate) fn problem(session: Option<&Session>, title: &str, message: &str) -> Markup {
    let body = html! {
        section.card.narrow {
            h1 #problem { (title) }
            p #problem-message { (message) }
            p { a href=(path::APPS) { "Back to the apps" } }
        }
    };
    page(title, session, Nav::None, None, body)
}

// ---- formatting -------------------------------------------------------

/// How long ago `at_ms` was, shortly (`4s`, `3m`, `2h`, `5d`).
pub(crate) fn ago(now_ms: u64, at_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{} ms", number(v)))
        .unwrap_or_else(|| "-".into())
}

/// The traffic split, in words.
fn traffic_text(view: &AppView) -> String {
    let t = &view.app.settings.traffic;
    if t.is_empty() {
        return format!("all to revision {}", view.app.current_revision);
    }
    t.iter()
        .map(|t| match t.revision {
            Some(r) => format!("revision {r}: {}%", t.percent),
            None => format!("latest ({}): {}%", view.app.current_revision, t.percent),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The split as the traffic form takes it (`1=90, latest=10`).
fn traffic_field(view: &AppView) -> String {
    view.app
        .settings
        .traffic
        .iter()
        .map(|t| match t.revision {
            Some(r) => format!("{r}={}", t.percent),
            None => format!("latest={}", t.percent),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rollout_cell(view: &AppView, now_ms: u64) -> Markup {
    let app = &view.app;
    let done = view.up_to_date.min(app.replicas);
    html! {
        @match &app.rollout {
            RolloutState::Progressing { since_ms, held } => {
                span.badge.busy { "rolling out" }
                " "
                progress max=(app.replicas.max(1)) value=(done) {}
                " " span.rollout-count { (done) "/" (app.replicas) } " up to date"
                span.muted { " · since " (ago(now_ms, *since_ms)) }
                @if let Some(held) = held { br; span.muted { "held: " (held) } }
            }
            RolloutState::Complete { .. } => {
                span.badge.ok.rollout-state { "complete" }
            }
            RolloutState::Failed { reason, .. } => {
                span.badge.bad.rollout-state { "failed" }
                " " span.muted { (reason) }
            }
        }
    }
}

fn autoscale_cell(view: &AppView) -> Markup {
    html! {
        @match (&view.autoscale, &view.app.settings.autoscale) {
            (Some(a), _) => {
                "wants " strong { (a.desired) } " · " (a.reason)
                @if a.panicking { " " span.badge.busy { "panic mode" } }
                @if let Some(held) = &a.held { br; span.muted { "held: " (held) } }
            }
            (None, Some(_)) => span.muted { "autoscaled; no decision yet" },
            (None, None) => span.muted { "fixed replicas" },
        }
    }
}

fn state_badge(node: &Node) -> Markup {
    html! {
        @match node.state {
            NodeState::Ready => span.badge.ok { "ready" },
            NodeState::Lost => span.badge.bad { "lost" },
            NodeState::Unreachable => span.badge.busy { "unreachable" },
        }
        @if node.cordoned { " " span.badge.muted { "cordoned" } }
        @if node.draining { " " span.badge.busy { "draining" } }
    }
}

fn phase_badge(i: &Instance) -> Markup {
    let class = match i.phase {
        Phase::Running if i.ready => "ok",
        Phase::Running | Phase::Starting | Phase::Scheduled => "busy",
        Phase::Terminating | Phase::Succeeded => "muted",
        Phase::Pending | Phase::BackingOff | Phase::CrashLoopBackOff | Phase::Failed => "bad",
    };
    html! {
        span class={ "badge phase " (class) } { (i.phase) }
    }
}

// ---- the cluster ------------------------------------------------------

/// The nodes: state, capacity and what runs on each (`instances`: every
/// namespace's, for the counts), and their live numbers when the stats
/// API answers.
pub(crate) fn cluster_live(
    nodes: &[Node],
    instances: &[Instance],
    stats: Option<&NodeStatsList>,
    now_ms: u64,
) -> Markup {
    let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
    let lost = nodes.iter().filter(|n| n.state == NodeState::Lost).count();
    let on = |name: &str| {
        instances
            .iter()
            .filter(|i| i.node.as_deref() == Some(name))
            .filter(|i| !matches!(i.phase, Phase::Succeeded | Phase::Failed))
            .count() as u64
    };
    let slots: u64 = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready && !n.cordoned)
        .map(|n| u64::from(n.capacity.instances))
        .sum();
    let used: u64 = nodes.iter().map(|n| on(&n.name)).sum();
    let memory: u64 = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready && !n.cordoned)
        .map(|n| n.capacity.memory)
        .sum();
    let live = |name: &str| stats.and_then(|s| s.items.iter().find(|n| n.name == name));
    html! {
        div.tiles {
            div.tile { span.big #nodes-ready { (ready) "/" (nodes.len()) } span { "nodes ready" } }
            div.tile { span.big.bad-text[lost > 0] #nodes-lost { (lost) } span { "lost" } }
            div.tile { span.big { (used) "/" (slots) } span { "instance slots used" } }
            div.tile { span.big { (bytes(memory)) } span { "memory offered" } }
        }
        @if nodes.is_empty() {
            p.nodata { "No node has joined yet." }
        } @else {
            table #nodes {
                thead { tr {
                    th { "Node" } th { "State" } th { "Instances" } th { "Capacity" }
                    th { "CPU" } th { "Memory used" } th { "Last heartbeat" }
                } }
                tbody {
                    @for n in nodes {
                        @let s = live(&n.name);
                        tr data-node=(n.name) {
                            td.name { (n.name) }
                            td { (state_badge(n)) }
                            td { (on(&n.name)) }
                            td { (n.capacity.instances) " slots · " (bytes(n.capacity.memory)) }
                            td { (s.map(|s| format!("{} cores", number(s.cpu_cores))).unwrap_or_else(|| "-".into())) }
                            td { (s.map(|s| bytes(s.memory_bytes)).unwrap_or_else(|| "-".into())) }
                            td { (ago(now_ms, n.last_heartbeat_ms)) " ago" }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn cluster(session: &Session, flash: Option<&Flash>, live: Markup) -> Markup {
    let body = html! {
        h1 { "Cluster" }
        div #live data-live=(path::CLUSTER_LIVE) { (live) }
    };
    page("Cluster", Some(session), Nav::Cluster, flash, body)
}

// ---- apps ---------------------------------------------------------------

/// The apps table of namespace choice `ns` (`*`: all).
pub(crate) fn apps_live(
    apps: &[AppView],
    stats: Option<&AppStatsList>,
    all: bool,
    now_ms: u64,
) -> Markup {
    let live = |key: &AppKey| stats.and_then(|s| s.items.iter().find(|a| a.app == *key));
    html! {
        @if apps.is_empty() {
            p.nodata #no-apps { "No apps here yet. Deploy one with " code { "shoal apply -f app.toml" } "." }
        } @else {
            table #apps {
                thead { tr {
                    th { "App" }
                    @if all { th { "Namespace" } }
                    th { "Ready" } th { "Revision" } th { "Rollout" } th { "Traffic" }
                    th { "Autoscaler" } th { "Requests/s" } th { "p99" }
                } }
                tbody {
                    @for v in apps {
                        @let key = &v.app.key;
                        @let s = live(key);
                        tr data-app=(key.to_string()) {
                            td.name { a href=(path::app(key)) { (key.name) } }
                            @if all { td { (key.namespace) } }
                            td.ready { (v.ready) "/" (v.app.replicas) }
                            td { (v.app.current_revision) }
                            td { (rollout_cell(v, now_ms)) }
                            td { (traffic_text(v)) }
                            td { (autoscale_cell(v)) }
                            td { (s.map(|s| number(s.rps)).unwrap_or_else(|| "-".into())) }
                            td { (ms(s.and_then(|s| s.p99_ms))) }
                        }
                    }
                }
            }
        }
    }
}

/// The apps page: a namespace picker (`namespaces`: those offered; `ns`
/// the one shown, `*` for all) and the live table.
pub(crate) fn apps(
    session: &Session,
    flash: Option<&Flash>,
    namespaces: &[String],
    ns: &str,
    live: Markup,
) -> Markup {
    let body = html! {
        div.heading {
            h1 { "Apps" }
            @if namespaces.len() > 1 || session.namespace().is_none() {
                nav.tabs aria-label="Namespaces" {
                    @if session.namespace().is_none() {
                        a.current[ns == "*"] href=(path::apps_in("*")) { "all namespaces" }
                    }
                    @for n in namespaces {
                        a.current[ns == n] href=(path::apps_in(n)) { (n) }
                    }
                }
            } @else {
                span.muted { "namespace " (ns) }
            }
        }
        div #live data-live=(path::apps_live_in(ns)) { (live) }
    };
    page("Apps", Some(session), Nav::Apps, flash, body)
}

/// The live part of an app's page: its state, charts and instances.
pub(crate) fn app_live(d: &AppDetail, stats: Option<&AppStats>, now_ms: u64) -> Markup {
    let v = &d.view;
    let app = &v.app;
    let key = &app.key;
    let mut instances: Vec<&Instance> = d.instances.iter().collect();
    instances.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
    let series = stats.map(|s| s.series.as_slice()).unwrap_or_default();
    let span = (
        series.first().map_or(0, |p| p.at_ms),
        series.last().map_or(0, |p| p.at_ms),
    );
    let rps = Line {
        label: "requests/s",
        class: "l1",
        points: series.iter().map(|p| (p.at_ms, p.rps)).collect(),
    };
    let errors = Line {
        label: "5xx/s",
        class: "l3",
        points: series.iter().map(|p| (p.at_ms, p.errors_per_s)).collect(),
    };
    let p50 = Line {
        label: "p50",
        class: "l1",
        points: series
            .iter()
            .filter_map(|p| p.p50_ms.map(|v| (p.at_ms, v)))
            .collect(),
    };
    let p99 = Line {
        label: "p99",
        class: "l2",
        points: series
            .iter()
            .filter_map(|p| p.p99_ms.map(|v| (p.at_ms, v)))
            .collect(),
    };
    let mut events: Vec<&Event> = d.events.iter().collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.seq));
    events.truncate(15);
    html! {
        div.tiles {
            div.tile { span.big #ready { (v.ready) "/" (app.replicas) } span { "replicas ready" } }
            div.tile { span.big #revision { (app.current_revision) } span { "revision (stable " (app.stable_revision) ")" } }
            div.tile { span.big #rps { (stats.map(|s| number(s.rps)).unwrap_or_else(|| "-".into())) } span { "requests/s" } }
            div.tile { span.big { (ms(stats.and_then(|s| s.p99_ms))) } span { "p99 latency" } }
        }
        section.card {
            dl.facts {
                dt { "Rollout" } dd #rollout { (rollout_cell(v, now_ms)) }
                dt { "Traffic" } dd #traffic { (traffic_text(v)) }
                dt { "Autoscaler" } dd #autoscaler { (autoscale_cell(v)) }
                @if let Some(c) = &v.cold_starts {
                    dt { "Cold starts" }
                    dd { (c.count) " · last " (c.last_ms) " ms · p99 " (c.p99_ms) " ms" }
                }
                @if v.pending > 0 {
                    dt { "Pending" } dd { span.badge.bad { (v.pending) " cannot be placed" } }
                }
            }
        }
        div.charts {
            section.card #requests-chart {
                h2 { "Requests" }
                (chart::render("Requests per second", &[rps, errors], "", span))
            }
            section.card #latency-chart {
                h2 { "Latency" }
                (chart::render("Latency", &[p50, p99], " ms", span))
            }
        }
        section.card {
            h2 { "Instances" }
            @if instances.is_empty() {
                p.nodata { "No instances." }
            } @else {
                table #instances {
                    thead { tr {
                        th { "Instance" } th { "Revision" } th { "Node" } th { "Phase" }
                        th { "Restarts" } th { "In flight" } th { "Age" } th { "" }
                    } }
                    tbody {
                        @for i in &instances {
                            tr.instance data-phase=(i.phase) data-ready=(i.ready) data-revision=(i.revision) {
                                td.name { (i.id) }
                                td { (i.revision) }
                                td { (i.node.as_deref().unwrap_or("-")) }
                                td {
                                    (phase_badge(i))
                                    @if i.ready { " " span.muted { "ready" } }
                                    @if let Some(r) = &i.reason { br; span.muted { (r) } }
                                }
                                td { (i.restarts) }
                                td { (i.in_flight) }
                                td { (ago(now_ms, i.created_at_ms)) }
                                td { a href=(path::logs(&key.namespace, &i.id)) { "logs" } }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Recent events" }
            (events_table(&events, now_ms, "app-events", None))
        }
    }
}

/// An app's page: the live part and the actions.
pub(crate) fn app(session: &Session, flash: Option<&Flash>, d: &AppDetail, live: Markup) -> Markup {
    let v = &d.view;
    let key = &v.app.key;
    let mut revisions: Vec<u64> = d.revisions.iter().map(|r| r.number).collect();
    revisions.sort_unstable_by(|a, b| b.cmp(a));
    let body = html! {
        div.heading {
            h1 { (key.name) }
            span.muted { "namespace " a href=(path::apps_in(&key.namespace)) { (key.namespace) } }
        }
        div #live data-live=(path::app_part(key, "live")) { (live) }
        section.card #actions {
            h2 { "Actions" }
            div.actions {
                form method="post" action=(path::app_part(key, "scale")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="replicas" { "Replicas" }
                    input #replicas type="number" name="replicas" min="0" value=(v.app.replicas) required;
                    button #scale type="submit" { "Scale" }
                }
                form method="post" action=(path::app_part(key, "rollback")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="to-revision" { "Roll back to" }
                    select #to-revision name="to_revision" {
                        option value="" { "the previous revision" }
                        @for r in &revisions {
                            @if *r != v.app.current_revision {
                                option value=(r) { "revision " (r) }
                            }
                        }
                    }
                    button #rollback type="submit" { "Roll back" }
                }
                form method="post" action=(path::app_part(key, "traffic")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="split" { "Traffic split" }
                    input #split type="text" name="split" value=(traffic_field(v))
                        placeholder="1=90, latest=10 (empty: all to the current)" autocomplete="off";
                    button #set-traffic type="submit" { "Set split" }
                }
            }
        }
    };
    page(&key.name, Some(session), Nav::Apps, flash, body)
}

// ---- events and logs ----------------------------------------------------

fn events_table(events: &[&Event], now_ms: u64, id: &str, stream: Option<&str>) -> Markup {
    html! {
        table.events id=(id) {
            thead { tr {
                th { "When" } th { "Object" } th { "Reason" } th { "Message" } th { "By" }
            } }
            tbody data-stream=[stream] {
                @for e in events {
                    tr.event.warning[e.level == EventLevel::Warning] data-seq=(e.seq)
                        data-key=[e.aggregate_key()] {
                        td.when { (when(e, now_ms)) }
                        td { (e.object) }
                        td.reason { (e.reason) }
                        td { (e.message) }
                        td.muted { (e.actor.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// The events page: the latest events, newest first, and the stream that
/// adds the ones after `last_seq` as they happen.
pub(crate) fn events(
    session: &Session,
    events: &[Event],
    last_seq: Option<u64>,
    now_ms: u64,
) -> Markup {
    let mut newest: Vec<&Event> = events.iter().collect();
    newest.sort_by_key(|e| std::cmp::Reverse(e.seq));
    newest.truncate(200);
    let stream = path::events_stream_after(last_seq);
    let body = html! {
        div.heading {
            h1 { "Events" }
            span.muted #stream-state { "live" }
        }
        section.card {
            (events_table(&newest, now_ms, "events", Some(&stream)))
        }
    };
    page("Events", Some(session), Nav::Events, None, body)
}

/// An instance's log, followed live.
pub(crate) fn logs(session: &Session, ns: &str, id: &str) -> Markup {
    let body = html! {
        div.heading {
            h1 { "Logs of " (id) }
            span.muted { "namespace " (ns) " · " span #stream-state { "connecting" } }
        }
        pre.logs #logs data-log-stream=(path::logs_stream(ns, id)) {}
    };
    page("Logs", Some(session), Nav::Apps, None, body)
}

/// How long ago the event was last seen, with the count of an event that
/// stands for its repeats (`4s ago (x14)`).
fn when(e: &Event, now_ms: u64) -> String {
    match e.count {
        Some(n) if n > 1 => format!("{} ago (x{n})", ago(now_ms, e.at_ms)),
        _ => format!("{} ago", ago(now_ms, e.at_ms)),
    }
}

/// One event as the stream sends it: text fields only, which the page
/// puts in place as text.
#[derive(Debug, serde::Serialize)]
pub(crate) struct EventRow {
    seq: u64,
    /// What an aggregated event stands for: the page replaces its row.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    when: String,
    object: String,
    reason: String,
    message: String,
    by: String,
    warning: bool,
}

impl EventRow {
    pub(crate) fn of(e: &Event, now_ms: u64) -> Self {
        Self {
            seq: e.seq,
            key: e.aggregate_key(),
            when: when(e, now_ms),
            object: e.object.clone(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            by: e.actor.clone().unwrap_or_default(),
            warning: e.level == EventLevel::Warning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped() {
        let hostile = "<script>alert(1)</script>\"'&";
        let out = problem(None, hostile, hostile).into_string();
        assert!(!out.contains("<script>alert"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
    }

    #[test]
    fn names_in_links_are_one_segment() {
        let key = AppKey::new("a/b", "c?d#e f");
        assert_eq!(path::app(&key), "/ui/apps/a%2Fb/c%3Fd%23e%20f");
        assert_eq!(path::apps_in("*"), "/ui/apps?ns=%2A");
    }

    fn detail() -> AppDetail {
        use shoal_api::objects::App;
        AppDetail {
            view: AppView {
                app: App {
                    key: AppKey::new("default", "web"),
                    replicas: 2,
                    current_revision: 3,
                    stable_revision: 2,
                    settings: Default::default(),
                    rollout: RolloutState::started(1_000),
                    created_at_ms: 0,
                    updated_at_ms: 0,
                },
                template: None,
                instances: 2,
                ready: 2,
                up_to_date: 1,
                pending: 0,
                autoscale: None,
                cold_starts: None,
            },
            revisions: vec![],
            instances: vec![],
            nodes: vec![],
            events: vec![],
        }
    }

    /// The charts come from the stats API's series; without one they say
    /// there is no data.
    #[test]
    fn an_apps_charts_come_from_its_stats_series() {
        let d = detail();
        let none = app_live(&d, None, 10_000).into_string();
        assert_eq!(none.matches("No data yet").count(), 2, "{none}");
        let point = |at_ms, rps, p50, p99| shoal_api::stats::StatsPoint {
            at_ms,
            rps,
            errors_per_s: 0.0,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
        };
        let stats = AppStats {
            app: d.view.app.key.clone(),
            replicas: 2,
            ready: 2,
            revision: 3,
            rps: 12.5,
            error_rate: 0.0,
            p50_ms: Some(3.0),
            p99_ms: Some(40.0),
            cpu_cores: 0.1,
            memory_bytes: 1 << 20,
            series: vec![point(1_000, 10.0, 2.0, 30.0), point(6_000, 15.0, 3.0, 40.0)],
        };
        let some = app_live(&d, Some(&stats), 10_000).into_string();
        assert!(!some.contains("No data yet"), "{some}");
        assert_eq!(
            some.matches("<polyline").count(),
            4,
            "rps, 5xx, p50, p99: {some}"
        );
        assert!(some.contains("12.5"), "the rate tile: {some}");
        assert!(some.contains("40 ms"), "the p99 tile: {some}");
        // The rollout's progress: one of two replicas up to date.
        assert!(some.contains(r#"<progress max="2" value="1">"#), "{some}");
    }

    #[test]
    fn durations_and_sizes_read_shortly() {
        assert_eq!(ago(10_000, 4_000), "6s");
        assert_eq!(ago(10_000_000, 4_000), "2h");
        assert_eq!(ago(5, 0), "-");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
