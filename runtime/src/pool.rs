//! The threads that run guests, apart from the threads that serve I/O.
//!
//! Under fair shares, a runtime runs its guests' tasks on a pool of its
//! own: as many threads as run slots ([`crate::fair`]), so a guest given a
//! slot finds a thread free, and the fair-share queue decides which guest
//! each thread runs next. The process's own executor (hyper, the node's
//! front, the gateway's connections) then never waits behind a guest's
//! slice. On Linux the pool's threads also run at a lower priority
//! ([`GUEST_NICENESS`] more than the process), so when every core is busy
//! the operating system gives one to an I/O thread first.

use std::future::Future;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// How much nicer (lower priority) guest threads are than the process's
/// other threads (Linux; capped at 19, the lowest).
pub const GUEST_NICENESS: i32 = 5;

/// A pool of guest threads: a tokio runtime of its own.
pub(crate) struct GuestPool {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl GuestPool {
    /// A pool of `threads` threads (at least one), named `shoal-guest`.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shoal-guest")
            .on_thread_start(lower_this_thread)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // The last owner may be a task on the pool itself, or any async
        // context, where a runtime must not be dropped: shut it down from
        // a thread of its own, without waiting for its tasks.
        if let Some(rt) = self.runtime.take() {
            let stopped = std::thread::Builder::new()
                .name("shoal-guest-stop".into())
                .spawn(move || rt.shutdown_background());
            if let Err(e) = stopped {
                tracing::warn!(error = %e, "cannot stop the guest threads; leaving them");
            }
        }
    }
}

/// Lowers the calling thread's priority by [`GUEST_NICENESS`].
#[cfg(target_os = "linux")]
fn lower_this_thread() {
    // SAFETY: plain system calls on the calling thread, no pointers.
    let (tid, now) = unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is a valid answer of getpriority: errno tells failure apart.
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return;
        }
        (tid, now)
    };
    let nice = now.saturating_add(GUEST_NICENESS).min(19);
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower a guest thread's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {}
