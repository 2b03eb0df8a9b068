//! Where log lines go: a buffer in memory that a background thread writes
//! to stderr in batches.
//!
//! A served call logs at least one line. Writing it to stderr from the
//! call's own thread costs a system call per line; handing each line to a
//! writer thread through a queue (as `tracing_appender::non_blocking` does)
//! costs waking that thread per line, which on two cores under load is a
//! large share of the whole call. Here a line is appended to a shared
//! buffer, and only the line that finds the buffer empty wakes the writer,
//! which waits [`BATCH_WINDOW`] for more lines and then writes them all at
//! once: at most one wake-up and one write per window, however busy the
//! service. Lines are never dropped: when the writer falls behind by
//! [`MAX_BUFFERED`], the line that finds the buffer that full writes it out
//! itself, which slows the callers down instead.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer collects lines after the first of a batch: lines
/// reach stderr at most this late.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Bytes waiting for the writer beyond which a line's own thread writes
/// them: the most memory the buffer takes.
const MAX_BUFFERED: usize = 1 << 20;

/// A [`MakeWriter`] for tracing's formatter that batches lines to stderr.
/// Cheap to clone; every clone appends to the same buffer.
#[derive(Debug, Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer stops being empty, and at close.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    buffered: Vec<u8>,
    closed: bool,
}

/// Stops the writer when dropped, after it has written every line logged
/// before. Keep it until the process exits.
#[derive(Debug)]
#[must_use = "dropping the guard stops log output"]
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl BatchedStderr {
    /// The writer and the guard that flushes it at exit. Its thread writes
    /// to stderr until the guard is dropped.
    pub fn start() -> io::Result<(Self, FlushOnDrop)> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || thread_shared.write_batches(&mut io::stderr()))?;
        let guard = FlushOnDrop {
            shared: Arc::clone(&shared),
            writer: Some(writer),
        };
        Ok((Self { shared }, guard))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a line, waking the writer if it is the first of a batch.
    fn append(&self, line: &[u8], out: &mut impl Write) {
        let mut state = self.lock();
        if state.closed {
            // Logged after the guard was dropped: nobody will flush it.
            let _ = out.write_all(line);
            return;
        }
        let first = state.buffered.is_empty();
        state.buffered.extend_from_slice(line);
        if state.buffered.len() >= MAX_BUFFERED {
            // The writer is behind: this caller writes, under the lock, so
            // lines keep their order.
            let _ = out.write_all(&std::mem::take(&mut state.buffered));
        } else if first {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for a first line, lets a batch gather for
    /// [`BATCH_WINDOW`], writes it, until closed and empty.
    fn write_batches(&self, out: &mut impl Write) {
        loop {
            let mut state = self.lock();
            while state.buffered.is_empty() && !state.closed {
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.buffered.is_empty() {
                return;
            }
            if !state.closed {
                drop(state);
                std::thread::sleep(BATCH_WINDOW);
                state = self.lock();
            }
            let batch = std::mem::take(&mut state.buffered);
            drop(state);
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One line being formatted; tracing's formatter writes a whole line at once.
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.append(bytes, &mut io::stderr());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// An output that reports each write.
    struct Recorder(mpsc::Sender<Vec<u8>>);

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn writer() -> (Arc<Shared>, mpsc::Receiver<Vec<u8>>, JoinHandle<()>) {
        let shared = Arc::new(Shared::default());
        let (sender, written) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || thread_shared.write_batches(&mut Recorder(sender)));
        (shared, written, thread)
    }

    #[test]
    fn lines_logged_together_are_written_in_one_batch_in_order() {
        let (shared, written, thread) = writer();
        let mut direct = Vec::new();
        for n in 0..100 {
            shared.append(format!("line {n}\n").as_bytes(), &mut direct);
        }
        shared.close();
        thread.join().unwrap();
        let writes: Vec<Vec<u8>> = written.try_iter().collect();
        let expected: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(String::from_utf8(writes.concat()).unwrap(), expected);
        assert!(writes.len() < 100, "{} writes for 100 lines", writes.len());
        assert!(direct.is_empty());
    }

    #[test]
    fn a_writer_that_falls_behind_makes_the_caller_write() {
        let shared = Shared::default();
        let mut direct = Vec::new();
        let line = vec![b'x'; MAX_BUFFERED / 2 + 1];
        shared.append(&line, &mut direct);
        assert!(direct.is_empty());
        shared.append(&line, &mut direct);
        assert_eq!(direct.len(), 2 * line.len());
        assert!(shared.lock().buffered.is_empty());
    }

    #[test]
    fn closing_writes_what_is_left_and_later_lines_go_straight_out() {
        let (shared, written, thread) = writer();
        shared.append(b"last\n", &mut Vec::new());
        shared.close();
        thread.join().unwrap();
        assert_eq!(written.try_iter().collect::<Vec<_>>().concat(), b"last\n");
        let mut direct = Vec::new();
        shared.append(b"late\n", &mut direct);
        assert_eq!(direct, b"late\n");
    }
}
