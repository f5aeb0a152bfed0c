//! What the client commands print. Rust ignores SIGPIPE, so a write to a
//! closed pipe (`shoal get apps | head -1`) fails, and `println!` panics on
//! that failure. These writers end the command the way a closed pipe ends
//! other Unix tools instead. SIGPIPE itself stays ignored: the servers and
//! the client's own connections must see a closed socket as an error, not
//! die of it.

use std::io::Write;

/// Prints to stdout; see the module's documentation.
macro_rules! outln {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to stdout without a newline.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// Prints a line to stderr, ignoring a closed stderr: there is nowhere left
/// to report that.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line to stdout for a server process (`run`, `control-plane`,
/// `node`, `gateway`), ignoring a closed stdout: a server goes on serving,
/// and stops cleanly, when whoever watched its output has gone away.
macro_rules! sayln {
    ($($arg:tt)*) => { $crate::out::say(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, out, outln, sayln};

pub fn say(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

pub fn stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    // Lines are flushed as they are written, so a follower sees each at
    // once and a closed pipe is noticed at the first line after it closed.
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        drop(out);
        stdout_failed(e);
    }
}

pub fn stderr(args: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of one signal and
        // raising it; no memory is shared with the handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        // Where a signal cannot end the process: the shells' 128 + SIGPIPE.
        std::process::exit(141);
    }
    stderr(format_args!("error: writing to standard output: {e}\n"));
    std::process::exit(1);
}
