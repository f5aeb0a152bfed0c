//! Stopping on Ctrl-C or SIGTERM.

use std::future::Future;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a process that has announced it is ready must not be
/// killed by a signal that arrives before its serving loop starts.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(int) => {}
                _ = wait(term) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The environment variable in which `shoal up` gives its children its
/// process id, for [`parent_exit`].
pub const PARENT_PID_ENV: &str = "SHOAL_PARENT_PID";

/// Resolves when the process that started this one exits (`--exit-with-
/// parent`): at once if it already has. Call it after [`shutdown_signal`]:
/// on Linux the kernel tells of the parent's exit with a SIGTERM
/// (`PR_SET_PDEATHSIG`), which that future then receives; elsewhere the
/// parent is polled. Standard input plays no part, so a child whose stdin
/// is closed (as a background shell closes it) keeps running.
///
/// The expected parent is `$SHOAL_PARENT_PID` when set (`shoal up` sets it,
/// which closes the race of a parent that dies before this runs), else the
/// parent at the call.
pub fn parent_exit() -> impl Future<Output = ()> + Send + 'static {
    // SAFETY: getppid has no preconditions and touches no memory.
    let parent = || unsafe { libc::getppid() };
    let expected = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<libc::pid_t>().ok())
        .unwrap_or_else(parent);
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let watched = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) } == 0;
    #[cfg(not(target_os = "linux"))]
    let watched = false;
    // Checked after arming the signal: a parent that exited before it
    // was armed has already handed this process to another.
    let gone = parent() != expected;
    async move {
        if gone {
            return;
        }
        if watched {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
        while parent() == expected {
            every.tick().await;
        }
    }
}
