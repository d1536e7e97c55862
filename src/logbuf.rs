//! Where log lines go: stderr. A session thread gathers its lines and
//! writes them when it goes idle (just before it waits for the next event),
//! or once it holds [`FLUSH_AT`] bytes, so that a busy thread makes one
//! write for many lines instead of one per line. Every other thread (the
//! main runtime, the state thread, the CLI) writes each line at once.
//!
//! A line is never split: the formatter hands over whole lines, and a flush
//! writes whole lines under stderr's lock. If the process is killed
//! outright, a session thread's lines since it last went idle (less than
//! [`FLUSH_AT`] bytes) are lost.

use std::cell::RefCell;
use std::io::{self, Write};

/// A session thread writes its lines once they reach this many bytes, even
/// if it never goes idle.
pub const FLUSH_AT: usize = 16 * 1024;

thread_local! {
    /// `Some` on a session thread: its lines not written yet.
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on this thread gathers its log lines (call [`flush`] when it
/// goes idle and before it ends).
pub fn gather_on_this_thread() {
    PENDING.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

/// Writes this thread's gathered lines, if any.
pub fn flush() {
    if let Some(lines) = take(0) {
        let _ = io::stderr().lock().write_all(&lines);
    }
}

/// Adds `bytes` to this thread's lines; `None` when this thread does not
/// gather (the caller writes them itself).
fn gather(bytes: &[u8]) -> Option<()> {
    PENDING.with(|p| p.borrow_mut().as_mut().map(|b| b.extend_from_slice(bytes)))
}

/// This thread's lines, taken out, when it holds more than `at` bytes.
fn take(at: usize) -> Option<Vec<u8>> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let buf = p.as_mut()?;
        (!buf.is_empty() && buf.len() >= at).then(|| std::mem::take(buf))
    })
}

/// The `MakeWriter` for the log formatter.
#[derive(Clone, Copy, Default)]
pub struct Logs;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// One formatted event (the formatter writes it in one call).
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if gather(bytes).is_none() {
            return io::stderr().write(bytes);
        }
        if let Some(lines) = take(FLUSH_AT) {
            io::stderr().lock().write_all(&lines)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_threads_gather_and_a_full_buffer_is_taken() {
        std::thread::spawn(|| {
            assert_eq!(gather(b"x\n"), None, "not a session thread");
            gather_on_this_thread();
            assert_eq!(gather(b"one line\n"), Some(()));
            assert_eq!(take(FLUSH_AT), None, "not full yet");
            assert_eq!(gather(&vec![b'x'; FLUSH_AT]), Some(()));
            let lines = take(FLUSH_AT).expect("full");
            assert!(lines.starts_with(b"one line\n"));
            assert_eq!(lines.len(), 9 + FLUSH_AT);
            assert_eq!(take(0), None, "nothing left");
        })
        .join()
        .unwrap();
    }
}
