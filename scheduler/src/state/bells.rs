//! Wakes a node's assignment long polls when its generation moves, and
//! only then.
//!
//! Every node holds a long poll of its assignment open. Had each waited on
//! the snapshot's watch channel, every published snapshot (at least one a
//! second, more while anything changes) would wake them all: at 5,000
//! nodes, 5,000 tasks woken to find their generation where it was, on the
//! cores that must also place and publish the replacements of a lost
//! node. One task watches the snapshots instead, compares the generation
//! of each node that waits, and rings the bells of those that moved (or
//! were removed).

use super::Snapshot;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::{Notify, watch};

/// A bell per node that has a long poll waiting.
#[derive(Debug, Default)]
pub struct Bells {
    by_node: Mutex<FxHashMap<String, Arc<Notify>>>,
}

impl Bells {
    /// Bells rung from what `rx` publishes, until its sender is gone (then
    /// every bell rings once more, so that waiters see the end).
    pub fn start(mut rx: watch::Receiver<Arc<Snapshot>>) -> Arc<Self> {
        let bells = Arc::new(Self::default());
        let weak: Weak<Self> = Arc::downgrade(&bells);
        let mut before = rx.borrow_and_update().clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let now = rx.borrow_and_update().clone();
                let Some(bells) = weak.upgrade() else {
                    return;
                };
                bells.ring_moved(&before, &now);
                before = now;
            }
            if let Some(bells) = weak.upgrade() {
                for bell in bells.lock().values() {
                    bell.notify_waiters();
                }
            }
        });
        bells
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<String, Arc<Notify>>> {
        self.by_node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bell of `node`'s long polls. A waiter enables its
    /// `notified()` before it reads the snapshot: a generation that moves
    /// after the read rings it.
    pub fn of(&self, node: &str) -> Arc<Notify> {
        let mut m = self.lock();
        match m.get(node) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(Notify::new());
                m.insert(node.to_string(), b.clone());
                b
            }
        }
    }

    /// Rings the bell of every waiting node whose generation differs
    /// between the two snapshots, and drops the bells nobody holds.
    fn ring_moved(&self, before: &Snapshot, now: &Snapshot) {
        let mut m = self.lock();
        for (name, bell) in m.iter() {
            let moved = match (before.nodes.get(name), now.nodes.get(name)) {
                (Some(a), Some(b)) => a.generation != b.generation,
                (None, None) => false,
                _ => true,
            };
            if moved {
                bell.notify_waiters();
            }
        }
        m.retain(|_, b| Arc::strong_count(b) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::Node;
    use std::time::Duration;

    fn node(name: &str, generation: u64) -> Node {
        Node {
            generation,
            ..crate::state::views::tests::node(name)
        }
    }

    fn snap(nodes: &[(&str, u64)]) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        for (n, g) in nodes {
            s.nodes.insert(n.to_string(), node(n, *g));
        }
        Arc::new(s)
    }

    /// Whether `bell` rings after `publish` (within a limit that only a
    /// bell that never rings reaches).
    async fn rings(bell: &Notify, publish: impl FnOnce()) -> bool {
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        publish();
        tokio::time::timeout(Duration::from_secs(30), rung)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_nodes_whose_generation_moved_are_woken() {
        let (tx, rx) = watch::channel(snap(&[("a", 1), ("b", 1)]));
        let bells = Bells::start(rx);
        let (a, b) = (bells.of("a"), bells.of("b"));
        // b's generation moves: b's bell rings.
        assert!(
            rings(&b, || {
                tx.send_replace(snap(&[("a", 1), ("b", 2)]));
            })
            .await
        );
        // Only a's heartbeat time changes, nothing else: a is not woken.
        // (b's bell rings for the next change, so the publish is seen.)
        let rung_a = a.notified();
        tokio::pin!(rung_a);
        rung_a.as_mut().enable();
        assert!(
            rings(&b, || {
                tx.send_replace(snap(&[("a", 1), ("b", 3)]));
            })
            .await
        );
        // The bells of one snapshot are rung together, under one lock:
        // once b's rang, a's would have.
        let a_woken = tokio::select! {
            biased;
            _ = &mut rung_a => true,
            _ = std::future::ready(()) => false,
        };
        assert!(!a_woken, "a node whose generation stayed was woken");
        // a is removed: its long poll is woken (to answer that it is gone).
        assert!(
            rings(&a, || {
                tx.send_replace(snap(&[("b", 3)]));
            })
            .await
        );
        // The sender gone: every waiter is woken once more.
        assert!(rings(&b, || drop(tx)).await);
    }

    #[tokio::test]
    async fn bells_nobody_holds_are_dropped() {
        let (tx, rx) = watch::channel(snap(&[("a", 1)]));
        let bells = Bells::start(rx);
        let held = bells.of("a");
        drop(bells.of("gone"));
        assert!(
            rings(&held, || {
                tx.send_replace(snap(&[("a", 2)]));
            })
            .await
        );
        let names: Vec<String> = bells.lock().keys().cloned().collect();
        assert_eq!(names, vec!["a".to_string()]);
    }
}
