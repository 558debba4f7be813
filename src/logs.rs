//! The log stream of `serve`: lines wait in a queue bounded in bytes, and a thread of their own
//! writes them to stdout, so a slow or stalled log reader never holds a runtime worker.
//!
//! When the queue is full a line is dropped and counted, never waited for inside the logging
//! call: ordinary log lines may fill half the queue, audit lines all of it, and a review waits
//! (asynchronously, until its deadline) for room for its audit lines before writing them
//! ([`LogQueue::room_for`]). Health endpoints write nothing and so are never held by it.
//!
//! tracing-appender's non-blocking writer was used before: bounded in lines, not bytes, and in
//! its lossless mode a full queue blocked the tokio worker that logged, until `/healthz` and TLS
//! handshakes hung with it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Default bytes of log lines `serve` queues ahead of its log reader (`--log-queue-bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Which stream a line belongs to, for the drop policy and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// An audit record: may use the whole queue.
    Audit,
    /// Any other log line: may use half of it.
    Log,
}

impl Stream {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Log => "log",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    /// Bytes queued plus bytes being written.
    bytes: usize,
    closed: bool,
}

/// A byte-bounded queue of log lines and the thread that writes them out.
#[derive(Debug)]
pub struct LogQueue {
    state: Mutex<State>,
    wake_writer: Condvar,
    room: tokio::sync::Notify,
    capacity: usize,
    dropped_audit: AtomicU64,
    dropped_log: AtomicU64,
}

/// What the queue has done, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes waiting or being written.
    pub queued_bytes: usize,
    /// Audit lines dropped because the queue was full.
    pub dropped_audit: u64,
    /// Other log lines dropped because the queue was full.
    pub dropped_log: u64,
}

/// The queue `serve` installed, for reviews to wait on and `/metrics` to read.
static INSTALLED: OnceLock<Arc<LogQueue>> = OnceLock::new();

/// Makes `queue` the process's log queue (once; later calls are ignored).
pub fn install(queue: Arc<LogQueue>) {
    let _ = INSTALLED.set(queue);
}

/// The process's log queue, when `serve` installed one.
pub fn installed() -> Option<&'static Arc<LogQueue>> {
    INSTALLED.get()
}

impl LogQueue {
    /// A queue of at most `capacity` bytes (at least 64 KiB), with its writer thread writing to
    /// `out`; the guard writes out what is left when dropped.
    pub fn start<W: Write + Send + 'static>(
        capacity: usize,
        out: W,
    ) -> std::io::Result<(Arc<Self>, Flush)> {
        let queue = Arc::new(Self {
            state: Mutex::new(State::default()),
            wake_writer: Condvar::new(),
            room: tokio::sync::Notify::new(),
            capacity: capacity.max(64 * 1024),
            dropped_audit: AtomicU64::new(0),
            dropped_log: AtomicU64::new(0),
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = queue.clone();
        std::thread::Builder::new()
            .name("pinhook-log".into())
            .spawn(move || {
                writer.drain(out);
                let _ = done_tx.send(());
            })?;
        Ok((
            queue.clone(),
            Flush {
                queue,
                done: done_rx,
            },
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn limit(&self, stream: Stream) -> usize {
        match stream {
            Stream::Audit => self.capacity,
            Stream::Log => self.capacity / 2,
        }
    }

    /// Queues one line without waiting; drops and counts it when it does not fit.
    pub fn push(&self, line: Vec<u8>, stream: Stream) -> bool {
        if line.is_empty() {
            return true;
        }
        let mut state = self.lock();
        if state.closed || state.bytes + line.len() > self.limit(stream) {
            drop(state);
            match stream {
                Stream::Audit => &self.dropped_audit,
                Stream::Log => &self.dropped_log,
            }
            .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.bytes += line.len();
        state.lines.push_back(line);
        drop(state);
        self.wake_writer.notify_one();
        true
    }

    /// Waits, without holding a thread, until `bytes` of audit lines fit or `deadline` passes;
    /// true when they fit.
    pub async fn room_for(&self, bytes: usize, deadline: Instant) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().bytes + bytes <= self.capacity {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return self.lock().bytes + bytes <= self.capacity;
            }
        }
    }

    /// What the queue holds and has dropped.
    pub fn stats(&self) -> Stats {
        Stats {
            queued_bytes: self.lock().bytes,
            dropped_audit: self.dropped_audit.load(Ordering::Relaxed),
            dropped_log: self.dropped_log.load(Ordering::Relaxed),
        }
    }

    /// A `MakeWriter` for one stream: each event is formatted into its own buffer and queued
    /// whole when the writer is dropped.
    pub fn writer(self: &Arc<Self>, stream: Stream) -> MakeQueueWriter {
        MakeQueueWriter {
            queue: self.clone(),
            stream,
        }
    }

    /// The writer thread: takes everything queued, writes it, frees its bytes, repeats.
    fn drain<W: Write>(&self, mut out: W) {
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut state = self.lock();
                while state.lines.is_empty() && !state.closed {
                    state = self
                        .wake_writer
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.lines.is_empty() {
                    break;
                }
                state.lines.drain(..).collect()
            };
            let bytes: usize = batch.iter().map(Vec::len).sum();
            for line in &batch {
                if out.write_all(line).is_err() {
                    break;
                }
            }
            let _ = out.flush();
            drop(batch);
            self.lock().bytes -= bytes;
            self.room.notify_waiters();
        }
        let _ = out.flush();
    }
}

/// Writes out what is queued when dropped, waiting at most [`Flush::MAX_WAIT`] for a log reader
/// that does not read.
#[derive(Debug)]
pub struct Flush {
    queue: Arc<LogQueue>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Flush {
    /// The longest shutdown waits for queued lines to be written.
    pub const MAX_WAIT: Duration = Duration::from_secs(5);
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake_writer.notify_all();
        let _ = self.done.recv_timeout(Self::MAX_WAIT);
    }
}

/// Hands out [`QueueWriter`]s for one stream (tracing-subscriber's `MakeWriter`).
#[derive(Debug, Clone)]
pub struct MakeQueueWriter {
    queue: Arc<LogQueue>,
    stream: Stream,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeQueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        QueueWriter {
            queue: self.queue.clone(),
            stream: self.stream,
            line: Vec::new(),
        }
    }
}

/// One event's bytes, queued whole when dropped.
#[derive(Debug)]
pub struct QueueWriter {
    queue: Arc<LogQueue>,
    stream: Stream,
    line: Vec<u8>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueueWriter {
    fn drop(&mut self) {
        self.queue.push(std::mem::take(&mut self.line), self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that blocks until told to go on, like a log reader that stopped reading.
    struct Stalled {
        go: mpsc::Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.go.recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the stalled-reader tests hold: the queue, its guard, the reader's go signal, and
    /// what the reader has written.
    type Harness = (Arc<LogQueue>, Flush, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>);

    fn stalled(capacity: usize) -> Harness {
        let (go, wait) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Stalled {
            go: wait,
            written: written.clone(),
        };
        let (queue, flush) = LogQueue::start(capacity, out).unwrap();
        (queue, flush, go, written)
    }

    #[test]
    fn a_stalled_reader_bounds_the_queue_in_bytes_and_drops_what_does_not_fit() {
        let (queue, flush, go, _) = stalled(64 * 1024);
        let line = vec![b'x'; 1024];
        let mut kept = 0;
        for _ in 0..1_000 {
            kept += usize::from(queue.push(line.clone(), Stream::Audit));
        }
        let stats = queue.stats();
        assert!(stats.queued_bytes <= 64 * 1024, "{stats:?}");
        assert!((60..=64).contains(&kept), "{kept} kept");
        assert_eq!(stats.dropped_audit, 1_000 - kept as u64);
        drop(go);
        drop(flush);
    }

    #[test]
    fn ordinary_lines_leave_half_the_queue_to_audit_lines() {
        let (queue, flush, go, _) = stalled(64 * 1024);
        let line = vec![b'l'; 1024];
        while queue.push(line.clone(), Stream::Log) {}
        assert!(queue.stats().queued_bytes <= 32 * 1024);
        assert!(queue.push(vec![b'a'; 1024], Stream::Audit));
        assert!(queue.stats().dropped_log >= 1);
        drop(go);
        drop(flush);
    }

    #[tokio::test]
    async fn room_for_waits_until_the_reader_catches_up_or_the_deadline() {
        let (queue, flush, go, written) = stalled(64 * 1024);
        while queue.push(vec![b'x'; 4096], Stream::Audit) {}
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!queue.room_for(4096, soon).await, "no room while stalled");
        // The reader reads again: every queued write goes through.
        let release = std::thread::spawn(move || {
            for _ in 0..64 {
                if go.send(()).is_err() {
                    break;
                }
            }
            go
        });
        let later = Instant::now() + Duration::from_secs(5);
        assert!(queue.room_for(4096, later).await);
        let go = release.join().unwrap();
        drop(go);
        drop(flush);
        assert!(written.lock().unwrap().len() >= 4096);
    }

    #[test]
    fn a_writer_queues_one_event_whole_and_flush_writes_it_out() {
        let written = Arc::new(Mutex::new(Vec::new()));
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl Write for Out {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (queue, flush) = LogQueue::start(1 << 20, Out(written.clone())).unwrap();
        {
            use tracing_subscriber::fmt::MakeWriter;
            let make = queue.writer(Stream::Log);
            let mut w = make.make_writer();
            w.write_all(b"one ").unwrap();
            w.write_all(b"event\n").unwrap();
        }
        drop(flush);
        assert_eq!(written.lock().unwrap().as_slice(), b"one event\n");
    }

    #[test]
    fn shutdown_does_not_wait_forever_for_a_stalled_reader() {
        let (queue, flush, go, _) = stalled(64 * 1024);
        queue.push(b"line\n".to_vec(), Stream::Audit);
        let started = Instant::now();
        drop(flush);
        assert!(started.elapsed() < Flush::MAX_WAIT + Duration::from_secs(2));
        drop(go);
    }
}
