//! The CPU slice the node's threads ask the kernel for.
//!
//! While guests keep every core busy, the node's other work (taking in a
//! request, handing it to a guest, sending the answer) waits for the
//! kernel to give one of its threads a core. Linux (6.6 and later, EEVDF)
//! lets a running thread go on until its slice ends, and without a
//! high-resolution tick it looks again only at the next timer tick: up to
//! 4 ms at `HZ=250`. A thread that asks for a shorter slice gets an earlier
//! deadline when it wakes, so the kernel (6.12 and later) switches to it at
//! once. The node's executor threads ask for a short one (`shoal node
//! --cpu-slice`); a guest that keeps a core busy loses nothing by it while
//! nobody else wants the core.
//!
//! The request is `sched_setattr(2)`'s `sched_runtime` for a thread of the
//! normal policy, which needs no privilege; the thread's policy and nice
//! value stay as they were. Kernels before 6.12 ignore it, and other
//! systems have no such request: there it does nothing.

use std::time::Duration;

/// The shortest and longest slices Linux takes; it clamps others to these.
pub const RANGE: (Duration, Duration) = (Duration::from_micros(100), Duration::from_millis(100));

/// `struct sched_attr` of `sched_setattr(2)` (its first version, 48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

#[cfg(target_os = "linux")]
fn get(tid: i32) -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: `attr` is a writable `sched_attr` of `size` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

/// Asks the kernel to run the calling thread in slices of `slice` (within
/// [`RANGE`]), keeping its policy and nice value.
#[cfg(target_os = "linux")]
pub fn set_for_this_thread(slice: Duration) -> std::io::Result<()> {
    let mut attr = get(0)?;
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    if attr.policy != SCHED_OTHER && attr.policy != SCHED_BATCH {
        // Real-time or idle: slices are not the fair scheduler's here.
        return Ok(());
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.flags = 0;
    attr.runtime = u64::try_from(slice.clamp(RANGE.0, RANGE.1).as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a `sched_attr` of the size it says.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn set_for_this_thread(_slice: Duration) -> std::io::Result<()> {
    Ok(())
}

/// The slice thread `tid` (of any process) runs in, as the kernel reports
/// it: the one it asked for, or the kernel's default. `None` where the
/// kernel does not say (before 6.12, or not Linux).
#[cfg(target_os = "linux")]
pub fn of_thread(tid: i32) -> std::io::Result<Option<Duration>> {
    let attr = get(tid)?;
    Ok((attr.runtime > 0).then(|| Duration::from_nanos(attr.runtime)))
}

#[cfg(not(target_os = "linux"))]
pub fn of_thread(_tid: i32) -> std::io::Result<Option<Duration>> {
    Ok(None)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn this_tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    #[test]
    fn a_thread_asking_for_a_slice_runs_in_it_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            // SAFETY: plain syscalls on the calling thread.
            let nice_before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let before = of_thread(this_tid()).unwrap();
            set_for_this_thread(Duration::from_micros(300)).unwrap();
            let after = of_thread(this_tid()).unwrap();
            let nice_after = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert_eq!(nice_after, nice_before);
            // A kernel that reports slices reports the one asked for.
            if before.is_some() {
                assert_eq!(after, Some(Duration::from_micros(300)));
            }
            // Too short is clamped to the shortest the kernel takes.
            set_for_this_thread(Duration::from_micros(10)).unwrap();
            if before.is_some() {
                assert_eq!(of_thread(this_tid()).unwrap(), Some(RANGE.0));
            }
        })
        .join()
        .unwrap();
    }
}
