//! The access log (`shoal gateway --access-log PATH|-`): one JSON line per
//! request, written by a thread of its own. A request hands its line to a
//! bounded channel and never waits: when the writer falls behind (a full
//! disk, a slow pipe), lines are dropped and counted
//! (`shoal_gateway_access_log_dropped_total`), never the request's time.
//!
//! A line names the request (id, method, path without its query string,
//! host, client address, trace id), the app and revision it went to, the
//! node that answered, the attempts, the status, the duration and the
//! bytes. Never headers: no `Authorization`, no cookies, and no query
//! string, where secrets are often passed.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Lines waiting for the writer; more are dropped.
pub const QUEUE: usize = 16 * 1024;

/// One request's line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Entry {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    pub request_id: String,
    pub trace_id: String,
    pub method: String,
    /// Normalized as routed, without the query string.
    pub path: String,
    pub host: Option<String>,
    /// `namespace/name`; none for a request no app took.
    pub app: Option<String>,
    pub revision: Option<u64>,
    /// The node of the instance the last attempt went to.
    pub node: Option<String>,
    pub status: u16,
    pub duration_ms: f64,
    /// The request body's length when known (read whole, or declared);
    /// none for a streamed body of unknown length.
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    pub attempts: u32,
    /// The address the connection came from.
    pub client: String,
}

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(std::path::PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;

    /// `-` is standard output; anything else a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "-" => Target::Stdout,
            path => Target::File(path.into()),
        })
    }
}

/// The access log's sending end, shared by every worker.
pub struct AccessLog {
    lines: mpsc::SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    written: std::sync::Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `target` (a file is appended to, created mode 0640 if
    /// missing) and starts the writer thread.
    pub fn open(target: &Target) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
                Box::new(options.open(path)?)
            }
        };
        Ok(Self::to_writer(out, QUEUE))
    }

    /// A log written to `out`, with `queue` lines of room.
    pub fn to_writer(out: Box<dyn Write + Send>, queue: usize) -> Self {
        let (lines, rx) = mpsc::sync_channel::<Vec<u8>>(queue);
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let count = written.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, &count))
            .map(drop)
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "cannot start the access log's writer"),
            );
        Self {
            lines,
            dropped: AtomicU64::new(0),
            written,
        }
    }

    /// Queues `entry`'s line; drops it if the writer is behind.
    pub fn write(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer was behind (or gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The writer: lines as they come, flushed whenever none waits.
fn write_lines(rx: mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>, written: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut warned = false;
    while let Ok(line) = rx.recv() {
        let mut batch = vec![line];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let n = batch.len() as u64;
        let result = batch
            .iter()
            .try_for_each(|l| out.write_all(l))
            .and_then(|()| out.flush());
        match result {
            Ok(()) => {
                written.fetch_add(n, Ordering::Relaxed);
                warned = false;
            }
            Err(e) if !warned => {
                tracing::error!(error = %e, "cannot write the access log");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// The current time as the log writes it.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into shared memory, blocked while its gate is held; it
    /// counts the writes that reached the gate.
    #[derive(Clone)]
    struct Shared(
        Arc<Mutex<Vec<u8>>>,
        Arc<Mutex<()>>,
        Arc<std::sync::atomic::AtomicU64>,
    );

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.2.fetch_add(1, Ordering::SeqCst);
            let _open = self.1.lock().unwrap();
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_are_json_and_a_stuck_writer_drops_lines_instead_of_waiting() {
        let out = Shared(Arc::default(), Arc::default(), Arc::default());
        let log = AccessLog::to_writer(Box::new(out.clone()), 4);
        let entry = Entry {
            request_id: "r1".into(),
            method: "GET".into(),
            path: "/a".into(),
            status: 200,
            ..Entry::default()
        };
        log.write(&entry);
        wait_for("the first line", || log.written() == 1);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["request_id"], "r1");
        assert_eq!(line["status"], 200);
        assert!(text.ends_with('\n'));

        // The writer stuck on a line: the queue fills, and the rest is
        // dropped at once (a write that waited would never return).
        let gate = out.1.lock().unwrap();
        let reached = out.2.load(Ordering::SeqCst);
        log.write(&entry);
        wait_for("the writer to be stuck", || {
            out.2.load(Ordering::SeqCst) > reached
        });
        let start = std::time::Instant::now();
        for _ in 0..100 {
            log.write(&entry);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(log.dropped(), 100 - 4);
        drop(gate);
        wait_for("the queued lines", || log.written() == 1 + 1 + 4);
    }
}
