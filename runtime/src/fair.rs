//! Fair shares of guest execution between tenants (namespaces).
//!
//! A [`FairShare`] has a fixed number of run slots (by default one per
//! core, as many as the executor has threads). A guest holds a slot only
//! while its future is being polled, that is while it executes wasm or the
//! host's synchronous part of a host call: [`Tenant::run`] takes a slot
//! before each poll and gives it back when the poll returns. So a guest
//! that waits on I/O (the request body, a slow client, an outbound
//! request) holds no slot, and one that has used its slice yields at an
//! epoch check and queues again.
//!
//! A freed slot goes to the waiting tenant that has used the least
//! weighted guest time (its virtual time), FIFO within a tenant. A tenant
//! that becomes active again starts at the least virtual time of those
//! active, so idleness earns no credit, and it is served next. When every
//! slot is held and a tenant with nothing running starts waiting, the
//! guests of tenants ahead of it in virtual time yield at their next epoch
//! check (the epoch is advanced at once to make that check happen now):
//! an idle tenant's request starts within microseconds to a tick, however
//! many runnable guests another tenant has.

use crate::meter::AppMeter;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The weight a tenant has unless told otherwise (its namespace's quota's
/// `cpu-weight`); shares are in proportion to weights.
pub const DEFAULT_WEIGHT: u32 = shoal_api::quota::DEFAULT_CPU_WEIGHT;

/// How much virtual time (at the default weight) a tenant with nothing
/// running may be ahead and still go first: one slice. A light tenant's
/// request then starts at once even just after its previous one was
/// charged, while a busy tenant gains at most a slice from it.
pub const IDLE_BONUS: Duration = Duration::from_millis(10);

/// The queueing policy, without clocks or tasks: slots, tenants' virtual
/// times, and their queues of waiters `W`.
#[derive(Debug)]
pub(crate) struct Core<W> {
    free: usize,
    spaces: Vec<Space<W>>,
    /// Tenants with a guest running or waiting.
    active: usize,
    /// Tenants with a guest waiting and none running.
    starving: usize,
    /// Guests waiting, all tenants together.
    queued: usize,
}

#[derive(Debug)]
struct Space<W> {
    vtime: u64,
    weight: u32,
    running: usize,
    queue: VecDeque<W>,
    /// Slots given to its guests so far (one per poll of a guest).
    slices: u64,
}

impl<W> Space<W> {
    fn active(&self) -> bool {
        self.running > 0 || !self.queue.is_empty()
    }
    fn starving(&self) -> bool {
        self.running == 0 && !self.queue.is_empty()
    }
    /// Its virtual time as the choice of who goes next sees it: a tenant
    /// with nothing running counts [`IDLE_BONUS`] behind, unless it is
    /// `releasing` (the tenant giving a slot back is not idle for this).
    fn rank_unless(&self, releasing: bool) -> u64 {
        if self.running == 0 && !releasing {
            self.vtime.saturating_sub(IDLE_BONUS.as_nanos() as u64)
        } else {
            self.vtime
        }
    }
}

impl<W> Core<W> {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            free: slots.max(1),
            spaces: Vec::new(),
            active: 0,
            starving: 0,
            queued: 0,
        }
    }

    /// A new tenant; returns its id.
    pub(crate) fn add(&mut self, weight: u32) -> usize {
        self.spaces.push(Space {
            vtime: 0,
            weight: weight.max(1),
            running: 0,
            queue: VecDeque::new(),
            slices: 0,
        });
        self.spaces.len() - 1
    }

    pub(crate) fn set_weight(&mut self, id: usize, weight: u32) {
        self.spaces[id].weight = weight.max(1);
    }

    pub(crate) fn weight(&self, id: usize) -> u32 {
        self.spaces[id].weight
    }

    pub(crate) fn slices(&self, id: usize) -> u64 {
        self.spaces[id].slices
    }

    /// Changes tenant `id` by `f`, keeping the counts of active and
    /// starving tenants true; a tenant that becomes active starts at the
    /// least virtual time of the others active.
    fn change<R>(&mut self, id: usize, f: impl FnOnce(&mut Space<W>) -> R) -> R {
        let (was_active, was_starving, was_queued) = {
            let s = &self.spaces[id];
            (s.active(), s.starving(), s.queue.len())
        };
        if !was_active && self.active > 0 {
            let least = self
                .spaces
                .iter()
                .filter(|s| s.active())
                .map(|s| s.vtime)
                .min()
                .unwrap_or(0);
            let s = &mut self.spaces[id];
            s.vtime = s.vtime.max(least);
        }
        let s = &mut self.spaces[id];
        let r = f(s);
        let (active, starving) = (s.active(), s.starving());
        self.queued = self.queued + s.queue.len() - was_queued;
        self.active = self.active + usize::from(active) - usize::from(was_active);
        self.starving = self.starving + usize::from(starving) - usize::from(was_starving);
        r
    }

    /// Takes a free slot for tenant `id`, if there is one. (A free slot
    /// means nobody waits: a released slot goes straight to a waiter.)
    pub(crate) fn try_acquire(&mut self, id: usize) -> bool {
        if self.free == 0 {
            return false;
        }
        self.free -= 1;
        self.change(id, |s| {
            s.running += 1;
            s.slices += 1;
        });
        true
    }

    /// Queues `w` for tenant `id`. True if the tenant now starves (waits
    /// with nothing running): the caller may ask running guests to yield.
    pub(crate) fn enqueue(&mut self, id: usize, w: W) -> bool {
        self.change(id, |s| {
            s.queue.push_back(w);
            s.starving()
        })
    }

    /// Removes the waiter of tenant `id` that `is` picks (it gave up
    /// before it got a slot). False if it is not queued (it has a slot).
    pub(crate) fn remove(&mut self, id: usize, is: impl Fn(&W) -> bool) -> bool {
        self.change(id, |s| match s.queue.iter().position(is) {
            Some(at) => {
                s.queue.remove(at);
                true
            }
            None => false,
        })
    }

    /// The waiter of tenant `id` that `is` picks, if still queued.
    pub(crate) fn find_mut(&mut self, id: usize, is: impl Fn(&W) -> bool) -> Option<&mut W> {
        self.spaces[id].queue.iter_mut().find(|w| is(w))
    }

    /// Tenant `id` gives back a slot it held for `used`. The slot goes to
    /// the waiting tenant with the least virtual time (its first waiter,
    /// returned with its tenant), or becomes free.
    pub(crate) fn release(&mut self, id: usize, used: Duration) -> Option<(usize, W)> {
        let charge = u64::try_from(used.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(DEFAULT_WEIGHT))
            / u64::from(self.spaces[id].weight);
        self.change(id, |s| {
            s.running -= 1;
            s.vtime = s.vtime.saturating_add(charge);
        });
        self.grant(id)
    }

    /// Gives a slot `releaser` freed to the next waiter, or frees it.
    fn grant(&mut self, releaser: usize) -> Option<(usize, W)> {
        if self.queued == 0 {
            self.free += 1;
            return None;
        }
        let next = self
            .spaces
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.queue.is_empty())
            .min_by_key(|(i, s)| (s.rank_unless(*i == releaser), s.vtime))
            .map(|(id, _)| id);
        let Some(id) = next else {
            self.free += 1;
            return None;
        };
        let w = self.change(id, |s| {
            s.running += 1;
            s.slices += 1;
            s.queue.pop_front()
        });
        w.map(|w| (id, w))
    }

    /// Whether a guest of tenant `id` should give its slot up now: some
    /// tenant waits with nothing running and is not ahead of `id`. (Not
    /// with [`IDLE_BONUS`]: two tenants within a bonus of each other would
    /// each preempt the other in turn.)
    pub(crate) fn should_yield(&self, id: usize) -> bool {
        if self.starving == 0 {
            return false;
        }
        let mine = self.spaces[id].vtime;
        self.spaces
            .iter()
            .enumerate()
            .any(|(other, s)| other != id && s.starving() && s.vtime <= mine)
    }

    #[cfg(test)]
    fn vtime(&self, id: usize) -> u64 {
        self.spaces[id].vtime
    }
}

/// A guest waiting for a slot: set `granted` and wake it to give it one.
struct Waiter {
    granted: Arc<AtomicBool>,
    waker: Waker,
}

struct Shared {
    core: Mutex<Core<Waiter>>,
    /// Tenant ids by namespace.
    names: Mutex<HashMap<String, usize>>,
    /// `Core::starving`, readable without the lock (epoch callbacks).
    starving: AtomicUsize,
    /// Advanced to make running guests check at once whether to yield;
    /// `None` when the epoch is the caller's to drive (tests).
    engine: Option<wasmtime::Engine>,
    /// The executor of the guest threads, if guests run on threads of
    /// their own (see [`FairShare::on_threads`]), and which guests go there.
    guests: Option<(tokio::runtime::Handle, GuestPlacement)>,
    /// Guests started on the guest threads so far.
    handed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core<Waiter>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the starving count after a change under `core`.
    fn publish(&self, core: &Core<Waiter>) {
        self.starving.store(core.starving, Ordering::Relaxed);
    }

    fn release(&self, id: usize, used: Duration) {
        let next = {
            let mut core = self.lock();
            let next = core.release(id, used);
            if let Some((_, w)) = &next {
                w.granted.store(true, Ordering::Release);
            }
            self.publish(&core);
            next
        };
        if let Some((_, w)) = next {
            w.waker.wake();
        }
    }
}

/// The fair-share scheduler of one runtime, shared by all its apps.
/// Cheap to clone. Turned off, it lets every guest run whenever the
/// executor polls it (and yield every few milliseconds), as before.
#[derive(Clone)]
pub struct FairShare {
    shared: Option<Arc<Shared>>,
}

impl FairShare {
    /// A scheduler with `slots` run slots (at least one). `engine`, if
    /// given, has its epoch advanced to make guests yield to a starving
    /// tenant at once rather than at the next tick.
    pub fn new(slots: usize, engine: Option<wasmtime::Engine>) -> Self {
        Self::with_guests(slots, engine, None)
    }

    /// Like [`new`](Self::new), with guests running on the threads of
    /// `guests` (one per run slot; see [`GuestThreads`]) rather than on
    /// the threads that take requests in: those are then never busy with
    /// a guest when a request arrives, and each request queues for its
    /// tenant's slot before its guest's task reaches the guest threads.
    /// `placement` says which guests go there: all of them, or only those
    /// of apps whose requests take long on the CPU.
    pub fn on_threads(
        slots: usize,
        engine: Option<wasmtime::Engine>,
        guests: &GuestThreads,
        placement: GuestPlacement,
    ) -> Self {
        Self::with_guests(slots, engine, Some((guests.handle(), placement)))
    }

    fn with_guests(
        slots: usize,
        engine: Option<wasmtime::Engine>,
        guests: Option<(tokio::runtime::Handle, GuestPlacement)>,
    ) -> Self {
        Self {
            shared: Some(Arc::new(Shared {
                core: Mutex::new(Core::new(slots)),
                names: Mutex::new(HashMap::new()),
                starving: AtomicUsize::new(0),
                engine,
                guests,
                handed: AtomicU64::new(0),
            })),
        }
    }

    /// No fair shares: guests run as the executor polls them.
    pub fn off() -> Self {
        Self { shared: None }
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// The handle of `namespace`'s guests (created at first use, with the
    /// default weight).
    pub fn tenant(&self, namespace: &str) -> Tenant {
        let Some(shared) = &self.shared else {
            return Tenant {
                shared: None,
                id: 0,
            };
        };
        let mut names = shared.names.lock().unwrap_or_else(|p| p.into_inner());
        let id = match names.get(namespace) {
            Some(id) => *id,
            None => {
                let id = shared.lock().add(DEFAULT_WEIGHT);
                names.insert(namespace.to_string(), id);
                id
            }
        };
        Tenant {
            shared: Some(shared.clone()),
            id,
        }
    }

    /// Sets `namespace`'s weight: its share is in proportion to it
    /// ([`DEFAULT_WEIGHT`] for every tenant unless set). A tenant's
    /// virtual time is charged at its weight when a slot is given back,
    /// so a new weight holds from each guest's next slice.
    pub fn set_weight(&self, namespace: &str, weight: u32) {
        if let Tenant {
            shared: Some(shared),
            id,
        } = self.tenant(namespace)
        {
            shared.lock().set_weight(id, weight);
        }
    }

    /// How many times `namespace`'s guests have been given a run slot: once
    /// for each poll of one of its guests (a guest that runs to its end
    /// without waiting on anything takes one). `None` when fair shares are
    /// off or the namespace has had no guest.
    pub fn slices(&self, namespace: &str) -> Option<u64> {
        let shared = self.shared.as_ref()?;
        let id = *shared
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)?;
        Some(shared.lock().slices(id))
    }

    /// How many guests have been started on the guest threads so far.
    pub fn handed_over(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.handed.load(Ordering::Relaxed))
    }

    /// Every tenant this scheduler has seen, with its weight, by
    /// namespace (none when fair shares are off).
    pub fn weights(&self) -> Vec<(String, u32)> {
        let Some(shared) = &self.shared else {
            return Vec::new();
        };
        let names: Vec<(String, usize)> = shared
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        let core = shared.lock();
        let mut all: Vec<(String, u32)> = names
            .into_iter()
            .map(|(n, id)| (n, core.weight(id)))
            .collect();
        all.sort();
        all
    }
}

/// Which guests run on the guest threads ([`FairShare::on_threads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPlacement {
    /// Every guest.
    All,
    /// Guests of apps whose requests have lately taken [`LONG_RUN`] or
    /// more of CPU each ([`AppMeter::recent_run_cpu`]), and workers; the
    /// others run on the thread that took their request in. A short guest
    /// then costs no hand-over between threads, while the long ones,
    /// which would keep the threads taking requests in busy, stay off
    /// them.
    Long,
}

/// CPU time per request from which an app's guests count as long-running
/// for [`GuestPlacement::Long`]: some 30 times what the hand-over to a
/// guest thread and back costs (about 60 µs), so that for the apps handed
/// over it is a few percent of a request at most.
pub const LONG_RUN: Duration = Duration::from_millis(2);

/// The threads guests run on when they have threads of their own
/// ([`FairShare::on_threads`]): an executor with one thread per run slot.
/// Its threads keep the kernel's default CPU slice, unlike the node's
/// other threads (see `shoal node --cpu-slice`). Dropped, it stops at once,
/// dropping whatever guests it still runs.
pub struct GuestThreads {
    executor: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl GuestThreads {
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shoal-guest")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: executor.handle().clone(),
            executor: Some(executor),
        })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // Not waiting: a runtime may be dropped on an executor thread.
        if let Some(e) = self.executor.take() {
            e.shutdown_background();
        }
    }
}

/// One tenant's handle: runs its guests under its share.
#[derive(Clone)]
pub struct Tenant {
    shared: Option<Arc<Shared>>,
    id: usize,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("fair", &self.shared.is_some())
            .finish()
    }
}

impl Tenant {
    /// A tenant of no scheduler: its guests run as the executor polls them.
    pub fn unscheduled() -> Self {
        Self {
            shared: None,
            id: 0,
        }
    }

    pub(crate) fn is_fair(&self) -> bool {
        self.shared.is_some()
    }

    /// Runs a guest's future under this tenant's share: each poll waits
    /// for a run slot and gives it back when it returns.
    pub fn run<F: Future>(&self, guest: F) -> Fair<F> {
        Fair {
            guest,
            tenant: self.clone(),
            ticket: None,
            meter: None,
            spent: Duration::ZERO,
        }
    }

    /// Like [`run`](Self::run), and adds the time each poll of the guest
    /// takes to `meter`'s guest CPU time (a clock read before and after
    /// each poll, which fair shares take anyway, and one atomic add).
    pub fn run_metered<F: Future>(&self, guest: F, meter: Arc<AppMeter>) -> Fair<F> {
        Fair {
            guest,
            tenant: self.clone(),
            ticket: None,
            meter: Some(meter),
            spent: Duration::ZERO,
        }
    }

    /// Starts a guest's task: on the guest threads if guests run on
    /// threads of their own and this one goes there ([`GuestPlacement`]:
    /// `cpu` is what a request of its app has lately taken, `None` for a
    /// guest that runs for as long as it likes, a worker), else on the
    /// current executor.
    pub fn spawn<F>(&self, cpu: Option<Duration>, guest: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if let Some(shared) = &self.shared
            && let Some((guests, placement)) = &shared.guests
            && (*placement == GuestPlacement::All || cpu.is_none_or(|c| c >= LONG_RUN))
        {
            shared.handed.fetch_add(1, Ordering::Relaxed);
            return guests.spawn(guest);
        }
        tokio::spawn(guest)
    }

    /// A place in this tenant's queue for a run slot, taken now, on the
    /// thread that took the request in, for a guest about to be started
    /// with [`spawn`](Self::spawn) (and run with
    /// [`run_queued`](Self::run_queued)). Only when guests run on threads
    /// of their own: the guest threads may all be busy with other
    /// tenants' guests, and a request that queued only at its task's
    /// first poll there would wait for one of them to yield before its
    /// tenant was even seen to starve. `None` otherwise (the guest queues
    /// at its first poll, on this executor).
    pub fn queue(&self) -> Option<Ticket> {
        let shared = self.shared.as_ref()?;
        shared.guests.as_ref()?;
        let granted = Arc::new(AtomicBool::new(false));
        let mut core = shared.lock();
        if core.try_acquire(self.id) {
            granted.store(true, Ordering::Release);
        } else {
            // Its task's first poll leaves its waker here.
            let starving = core.enqueue(
                self.id,
                Waiter {
                    granted: granted.clone(),
                    waker: Waker::noop().clone(),
                },
            );
            shared.publish(&core);
            drop(core);
            if starving && let Some(engine) = &shared.engine {
                engine.increment_epoch();
            }
        }
        Some(Ticket {
            shared: shared.clone(),
            id: self.id,
            granted,
            armed: true,
        })
    }

    /// [`run_metered`](Self::run_metered) for a guest that holds `place`
    /// from [`queue`](Self::queue) (or none).
    pub fn run_queued<F: Future>(
        &self,
        guest: F,
        meter: Arc<AppMeter>,
        place: Option<Ticket>,
    ) -> Fair<F> {
        Fair {
            guest,
            tenant: self.clone(),
            ticket: place,
            meter: Some(meter),
            spent: Duration::ZERO,
        }
    }

    /// Whether a running guest of this tenant should yield now (asked at
    /// epoch checks): another tenant, not ahead of this one, waits with
    /// nothing running. Costs one atomic load while nobody starves.
    pub fn should_yield(&self) -> bool {
        match &self.shared {
            Some(shared) if shared.starving.load(Ordering::Relaxed) > 0 => {
                shared.lock().should_yield(self.id)
            }
            _ => false,
        }
    }
}

/// A place in a tenant's queue. Dropped before it was used, it leaves the
/// queue, or gives back the slot it was granted.
pub struct Ticket {
    shared: Arc<Shared>,
    id: usize,
    granted: Arc<AtomicBool>,
    /// False once the slot it was granted is in use.
    armed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut core = self.shared.lock();
        if self.granted.load(Ordering::Acquire) {
            drop(core);
            self.shared.release(self.id, Duration::ZERO);
        } else {
            core.remove(self.id, |w| Arc::ptr_eq(&w.granted, &self.granted));
            self.shared.publish(&core);
        }
    }
}

/// Gives a held slot back when the poll ends, even by a panic, and
/// counts the poll's time to the guest's meter.
struct Held<'a> {
    shared: &'a Shared,
    id: usize,
    since: Instant,
    meter: Option<&'a AppMeter>,
    /// The guest's CPU time so far, which this poll adds to.
    spent: &'a mut Duration,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let used = self.since.elapsed();
        *self.spent += used;
        if let Some(m) = self.meter {
            m.cpu(used);
        }
        self.shared.release(self.id, used);
    }
}

pin_project_lite::pin_project! {
    /// A guest's future running under its tenant's share ([`Tenant::run`]).
    pub struct Fair<F> {
        #[pin]
        guest: F,
        tenant: Tenant,
        ticket: Option<Ticket>,
        meter: Option<Arc<AppMeter>>,
        // The guest's CPU time so far: its polls' time.
        spent: Duration,
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(shared) = &this.tenant.shared else {
            let Some(meter) = this.meter.as_deref() else {
                return this.guest.poll(cx);
            };
            let since = Instant::now();
            let polled = this.guest.poll(cx);
            let used = since.elapsed();
            meter.cpu(used);
            *this.spent += used;
            meter.polled(*this.spent, polled.is_ready());
            return polled;
        };
        let id = this.tenant.id;
        match this.ticket.take() {
            None => {
                let mut core = shared.lock();
                if !core.try_acquire(id) {
                    let granted = Arc::new(AtomicBool::new(false));
                    let starving = core.enqueue(
                        id,
                        Waiter {
                            granted: granted.clone(),
                            waker: cx.waker().clone(),
                        },
                    );
                    shared.publish(&core);
                    drop(core);
                    if starving && let Some(engine) = &shared.engine {
                        // Running guests check at once whether to yield.
                        engine.increment_epoch();
                    }
                    *this.ticket = Some(Ticket {
                        shared: shared.clone(),
                        id,
                        granted,
                        armed: true,
                    });
                    return Poll::Pending;
                }
            }
            Some(ticket) => {
                if !ticket.granted.load(Ordering::Acquire) {
                    let mut core = shared.lock();
                    if !ticket.granted.load(Ordering::Acquire) {
                        if let Some(w) =
                            core.find_mut(id, |w| Arc::ptr_eq(&w.granted, &ticket.granted))
                            && !w.waker.will_wake(cx.waker())
                        {
                            w.waker = cx.waker().clone();
                        }
                        drop(core);
                        *this.ticket = Some(ticket);
                        return Poll::Pending;
                    }
                }
                // The slot is ours now: the ticket has done its work.
                let mut ticket = ticket;
                ticket.armed = false;
            }
        }
        YIELDED.set(false);
        let held = Held {
            shared,
            id,
            since: Instant::now(),
            meter: this.meter.as_deref(),
            spent: this.spent,
        };
        let polled = this.guest.poll(cx);
        if polled.is_pending() && YIELDED.replace(false) {
            // The guest gave its slot up at an epoch check, ready to run
            // on: it queues for its next turn before the slot goes back,
            // so its tenant stays active (keeping its virtual time) and the
            // next turn is chosen by virtual time. Left to queue at its
            // next poll, it would wait for that poll, which the executor
            // may run only after another guest's whole slice on this
            // thread: the tenant would look idle meanwhile and the freed
            // slot would go by the executor's order instead of by share.
            // Its waker does nothing: the yield wakes the task already,
            // after the executor has had its turn at I/O and other tasks
            // (a wake from here would run it again at once). That poll
            // takes the slot if it was granted meanwhile, or leaves the
            // task's own waker for the grant to come.
            let granted = Arc::new(AtomicBool::new(false));
            let mut core = shared.lock();
            core.enqueue(
                id,
                Waiter {
                    granted: granted.clone(),
                    waker: Waker::noop().clone(),
                },
            );
            shared.publish(&core);
            drop(core);
            *this.ticket = Some(Ticket {
                shared: shared.clone(),
                id,
                granted,
                armed: true,
            });
        }
        drop(held);
        if let Some(meter) = this.meter.as_deref() {
            meter.polled(*this.spent, polled.is_ready());
        }
        polled
    }
}

thread_local! {
    /// Set by a guest's epoch callback on this thread when it yields its
    /// turn ([`mark_yield`]), read by the poll that ran it.
    static YIELDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Says that the guest being polled on this thread yields at an epoch
/// check and is ready to run again: [`Tenant::run`] queues it for its next
/// turn as it gives the slot back.
pub(crate) fn mark_yield() {
    YIELDED.set(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Who gets each slot released by `from` after `used`, in turn.
    fn grants(core: &mut Core<&'static str>, from: usize, used: Duration) -> Option<&'static str> {
        core.release(from, used).map(|(_, w)| w)
    }

    #[test]
    fn a_waiting_tenant_gets_the_next_slot_before_a_busy_one() {
        let mut core = Core::new(1);
        let (a, b) = (core.add(DEFAULT_WEIGHT), core.add(DEFAULT_WEIGHT));
        assert!(core.try_acquire(a));
        for w in ["a1", "a2", "a3"] {
            core.enqueue(a, w);
        }
        assert!(!core.try_acquire(b), "no slot is free");
        assert!(core.enqueue(b, "b1"), "b waits with nothing running");
        // The slot a held for 10 ms goes to b, ahead of a's three.
        assert_eq!(grants(&mut core, a, 10 * MS), Some("b1"));
        // Then back to a, first come first served.
        assert_eq!(grants(&mut core, b, MS), Some("a1"));
        assert_eq!(grants(&mut core, a, 10 * MS), Some("a2"));
        assert_eq!(grants(&mut core, a, 10 * MS), Some("a3"));
        assert_eq!(grants(&mut core, a, 10 * MS), None);
        assert!(core.try_acquire(b), "the slot is free again");
    }

    #[test]
    fn idle_time_earns_no_credit() {
        let mut core = Core::new(1);
        let (a, b) = (core.add(DEFAULT_WEIGHT), core.add(DEFAULT_WEIGHT));
        // a runs alone for a long time.
        for _ in 0..100 {
            assert!(core.try_acquire(a));
            assert_eq!(grants(&mut core, a, 10 * MS), None);
        }
        assert!(core.try_acquire(a));
        core.enqueue(a, "a");
        // b arrives: it starts level with a, not 1 s behind it.
        core.enqueue(b, "b");
        assert_eq!(core.vtime(b), core.vtime(a));
        assert_eq!(grants(&mut core, a, 10 * MS), Some("b"));
        // b is charged as it runs: with both waiting, turns alternate.
        core.enqueue(b, "b2");
        assert_eq!(grants(&mut core, b, 10 * MS), Some("a"));
        core.enqueue(a, "a2");
        assert_eq!(grants(&mut core, a, 10 * MS), Some("b2"));
        core.enqueue(b, "b3");
        assert_eq!(grants(&mut core, b, 10 * MS), Some("a2"));
    }

    #[test]
    fn shares_follow_weights_however_many_guests_a_tenant_has() {
        let mut core = Core::new(1);
        let heavy = core.add(DEFAULT_WEIGHT);
        let light = core.add(DEFAULT_WEIGHT);
        core.set_weight(heavy, 2 * DEFAULT_WEIGHT);
        assert!(core.try_acquire(heavy));
        // heavy has 50 guests runnable, light 2; every slice is 10 ms.
        for _ in 0..50 {
            core.enqueue(heavy, "heavy");
        }
        core.enqueue(light, "light");
        core.enqueue(light, "light");
        let mut counts = HashMap::new();
        let mut holder = heavy;
        for _ in 0..300 {
            let (id, w) = core.release(holder, 10 * MS).expect("someone waits");
            *counts.entry(w).or_insert(0) += 1;
            // The guest that ran queues again behind its tenant's others.
            core.enqueue(id, w);
            holder = id;
        }
        // Twice the weight, twice the slices (give or take one).
        let (h, l) = (counts["heavy"], counts["light"]);
        assert_eq!(h + l, 300);
        assert!((199..=201).contains(&h), "heavy {h}, light {l}");
    }

    #[test]
    fn running_guests_yield_only_to_a_starving_tenant_not_ahead_of_them() {
        let mut core = Core::new(2);
        let (a, b) = (core.add(DEFAULT_WEIGHT), core.add(DEFAULT_WEIGHT));
        assert!(core.try_acquire(a) && core.try_acquire(a));
        core.enqueue(a, "a");
        assert!(
            !core.should_yield(a),
            "only a waits: a's guests keep running"
        );
        core.enqueue(b, "b");
        assert!(core.should_yield(a), "b starves");
        assert!(!core.should_yield(b));
        assert_eq!(grants(&mut core, a, MS), Some("b"));
        assert!(!core.should_yield(a), "b runs now");
        assert_eq!(core.starving, 0);
        // A tenant ahead in virtual time does not preempt: b has used a
        // lot, a (running) little.
        assert_eq!(grants(&mut core, b, 1000 * MS), Some("a"));
        core.enqueue(b, "b2");
        assert_eq!(core.starving, 1);
        assert!(!core.should_yield(a), "b is ahead of a");
    }

    /// A light tenant whose last request was charged a little more than
    /// the busy one used since still goes first, by the idle bonus.
    #[test]
    fn a_light_tenant_a_little_ahead_still_goes_first() {
        let mut core = Core::new(1);
        let (a, b) = (core.add(DEFAULT_WEIGHT), core.add(DEFAULT_WEIGHT));
        assert!(core.try_acquire(a));
        core.enqueue(a, "a1");
        core.enqueue(b, "b1");
        assert_eq!(grants(&mut core, a, MS), Some("b1"));
        assert_eq!(grants(&mut core, b, 5 * MS), Some("a1"));
        core.enqueue(a, "a2");
        // b is 4 ms ahead of a, and less than a slice: it does not
        // preempt a, but gets the next slot.
        core.enqueue(b, "b2");
        assert!(core.vtime(b) > core.vtime(a));
        assert!(!core.should_yield(a));
        assert_eq!(grants(&mut core, a, MS), Some("b2"));
        // More than a slice ahead, it waits its turn.
        assert_eq!(grants(&mut core, b, 50 * MS), Some("a2"));
        core.enqueue(a, "a3");
        core.enqueue(b, "b3");
        assert!(!core.should_yield(a));
        assert_eq!(grants(&mut core, a, MS), Some("a3"));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_its_queue() {
        let mut core = Core::new(1);
        let (a, b) = (core.add(DEFAULT_WEIGHT), core.add(DEFAULT_WEIGHT));
        assert!(core.try_acquire(a));
        core.enqueue(b, "b1");
        core.enqueue(b, "b2");
        assert!(core.remove(b, |w| *w == "b1"));
        assert!(!core.remove(b, |w| *w == "b1"), "already gone");
        assert_eq!(grants(&mut core, a, MS), Some("b2"));
        assert!(!core.remove(b, |w| *w == "b2"), "granted: not queued");
        assert_eq!((core.active, core.starving), (1, 0));
        assert_eq!(grants(&mut core, b, MS), None);
        assert_eq!((core.active, core.starving, core.queued), (0, 0, 0));
    }

    /// Through the futures: with one slot, a guest that waits gets it when
    /// the holder's poll returns, and one dropped while waiting frees its
    /// place (no slot is lost).
    #[tokio::test]
    async fn futures_take_and_give_back_slots() {
        let fair = FairShare::new(1, None);
        let (a, b) = (fair.tenant("a"), fair.tenant("b"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // a's guest waits on "I/O" without holding its slot.
        let waiting = tokio::spawn(a.run(async move { rx.await.is_ok() }));
        tokio::task::yield_now().await;
        assert_eq!(
            b.run(async { 7 }).await,
            7,
            "the waiting guest holds no slot"
        );
        // A guest dropped while queued gives its place up.
        let mut queued = Box::pin(b.run(async { 8 }));
        {
            let shared = a.shared.as_ref().expect("fair");
            assert!(shared.lock().try_acquire(a.id));
            assert!(futures::poll!(queued.as_mut()).is_pending());
            assert_eq!(shared.lock().starving, 1);
            drop(queued);
            assert_eq!(shared.lock().starving, 0);
            shared.release(a.id, MS);
        }
        tx.send(()).expect("guest alive");
        assert!(waiting.await.expect("joined"));
        assert_eq!(b.run(async { 9 }).await, 9, "the slot is free");
    }
}
