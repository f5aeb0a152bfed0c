//! Rebalancing (pure): when an app's replicas sit on fewer nodes than
//! placement would use now (after a lost node comes back, or a cordoned
//! one is uncordoned), move them back one at a time, surge first.
//!
//! A move has three steps, each one reconcile's decision:
//!
//! 1. start: the node with the most replicas of the app has at least two
//!    more than the node placement would choose now; a new instance (the
//!    surge, marked with [`Instance::replaces`]) is created there;
//! 2. wait: while the surge starts, reconcile plans the app without it, so
//!    plain scaling does not take the extra instance away;
//! 3. done: once the surge serves and the app keeps its replica count
//!    serving without the replaced instance, that one leaves the way
//!    rollouts and drains take instances out (drain delay, in-flight
//!    requests finished).
//!
//! A surge that does not serve within the app's progress deadline goes
//! again and the replaced instance stays. Moves wait while a rollout
//! progresses, under a traffic split, and while anything of the app is not
//! running and ready (or still leaving); at most [`MOVES_AT_ONCE`] run
//! across the cluster. A surge counts against its namespace's quota, as a
//! rollout's does: a move starts only when the quota has room for one
//! instance more (see [`crate::reconcile`]).

use crate::placement::{self, Need, NodeView};
use crate::reconcile::DesiredApp;
use crate::rollout;
use shoal_api::objects::{AppKey, Instance};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Moves in progress across the cluster at most (from a surge's creation
/// until the instance it replaced is gone).
pub const MOVES_AT_ONCE: usize = 2;

/// A step of a move, which an event tells users about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `by` starts on `to` to take the place of `id`, on `from`.
    Start {
        app: AppKey,
        id: String,
        by: String,
        from: String,
        to: String,
    },
    /// `by` serves on `to`: `id` leaves `from`.
    Done {
        app: AppKey,
        id: String,
        by: String,
        from: String,
        to: String,
    },
    /// `by` did not serve on `to` within `after_ms`: it goes, `id` stays.
    GaveUp {
        app: AppKey,
        id: String,
        by: String,
        to: String,
        after_ms: u64,
    },
}

/// Whether the app may have replicas moved at all: no rollout progresses
/// and no traffic split holds counts per revision.
fn may_move(app: &DesiredApp) -> bool {
    app.rebalance && app.split.is_empty()
}

/// The surge of a move in progress and the instance it replaces, as
/// positions in `live` (the app's instances not leaving). A surge counts
/// as one only while both are live and of the revision the app runs, and
/// the app may move replicas; otherwise it is an instance like any other.
pub fn surge_of(app: &DesiredApp, live: &[&Instance]) -> Option<(usize, usize)> {
    if !may_move(app) {
        return None;
    }
    live.iter().enumerate().find_map(|(s, i)| {
        let replaced = i.replaces.as_deref()?;
        if i.revision != app.revision {
            return None;
        }
        let x = live
            .iter()
            .position(|o| o.id == replaced && o.revision == app.revision)?;
        Some((s, x))
    })
}

/// Whether a surge has had its time: it does not serve after the app's
/// progress deadline.
pub fn overdue(app: &DesiredApp, surge: &Instance, now_ms: u64) -> bool {
    !rollout::serving(surge)
        && now_ms.saturating_sub(surge.created_at_ms) >= app.progress_deadline_ms
}

/// Whether the replaced instance may leave: the surge serves, and so do
/// enough others that the app keeps its replica count serving without it.
/// `others` holds the app's live instances except the surge.
pub fn done(app: &DesiredApp, surge: &Instance, replaced: &Instance, others: &[&Instance]) -> bool {
    let serving = others
        .iter()
        .filter(|i| i.id != replaced.id && rollout::serving(i))
        .count();
    rollout::serving(surge) && serving + 1 >= app.replicas as usize
}

/// A move to start: the instance that leaves, and the positions of its
/// node and of the node its surge goes to in `nodes`.
#[derive(Debug)]
pub struct Move<'a> {
    pub moving: &'a Instance,
    pub from: usize,
    pub to: usize,
}

/// The move that would restore an app's spread, if one is due: every
/// replica serves and runs the app's revision, and the node with the most
/// of them (among nodes that take new instances and do not drain) has at
/// least two more than the node placement chooses now (which has room
/// for one). `eligible` is how many nodes take new instances and do not
/// drain; `node_index` finds a node's position in `nodes`.
pub fn choose<'a>(
    app: &DesiredApp,
    live: &[&'a Instance],
    nodes: &[Cow<'_, NodeView>],
    node_index: &rustc_hash::FxHashMap<&str, usize>,
    eligible: usize,
) -> Option<Move<'a>> {
    if !may_move(app) || live.len() < 2 || live.len() != app.replicas as usize {
        return None;
    }
    let mut on: BTreeMap<usize, u32> = BTreeMap::new();
    for i in live {
        if !rollout::serving(i) || i.revision != app.revision {
            return None;
        }
        let n = *node_index.get(i.node.as_deref()?)?;
        if nodes[n].ready && !nodes[n].draining {
            *on.entry(n).or_default() += 1;
        }
    }
    // The fullest node, the first by name among equals.
    let (from, most) = on
        .iter()
        .fold(None, |best: Option<(usize, u32)>, (n, c)| match best {
            Some((_, b)) if b >= *c => best,
            _ => Some((*n, *c)),
        })?;
    if most < 2 {
        return None;
    }
    // On every eligible node already and within one of each other: no
    // placement needed to see that nothing is due.
    if on.len() >= eligible && on.values().all(|c| c + 1 >= most) {
        return None;
    }
    let key = app.key.to_string();
    let need = Need {
        app: &key,
        resources: app.need,
        selector: &app.selector,
    };
    // Reconcile's nodes, in name order.
    let to = placement::place_in_name_order(nodes, &need, 1)
        .pop()?
        .ok()?;
    let there = nodes[to].per_app.get(key.as_str()).copied().unwrap_or(0);
    if to == from || there + 2 > most {
        return None;
    }
    // The newest replica on the fullest node moves; long-running ones stay.
    let moving = live
        .iter()
        .filter(|i| i.node.as_deref() == Some(nodes[from].name.as_str()))
        .max_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)))?;
    Some(Move { moving, from, to })
}
