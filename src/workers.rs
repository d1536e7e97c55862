//! The session threads: one single-threaded runtime per thread, each running
//! whole sessions, both sockets included. A session's wake-ups (a reply from
//! the upstream, the client's next command) are then handled on the thread
//! that waits for them, with no hand-over between threads: on a loaded
//! machine that hand-over, not the parsing, was the larger part of the
//! proxy's CPU time. Listeners, the admin endpoint, reloads and the shared
//! limit connection stay on the main runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The session threads, each with the number of sessions it runs.
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

/// A session's place on a worker, counted while it lives.
pub struct Placement {
    pub handle: Handle,
    sessions: Arc<AtomicUsize>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` session threads.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stopped = stop.clone();
            std::thread::Builder::new()
                .name(format!("mailbrake-sessions-{i}"))
                .spawn(move || runtime.block_on(stopped.cancelled()))?;
            workers.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers { workers, stop })
    }

    /// The worker with the fewest sessions, for a new one.
    pub fn place(&self) -> Placement {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
            .expect("at least one worker");
        w.sessions.fetch_add(1, Ordering::Relaxed);
        Placement {
            handle: w.handle.clone(),
            sessions: w.sessions.clone(),
        }
    }
}

impl Drop for Workers {
    /// The threads end (dropping any session still on them) once the main
    /// runtime no longer waits for sessions.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(w: &Workers) -> Vec<usize> {
        w.workers
            .iter()
            .map(|w| w.sessions.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn a_new_session_goes_to_the_least_busy_thread() {
        let w = Workers::start(2).unwrap();
        let a = w.place();
        let b = w.place();
        let c = w.place();
        assert_eq!(loads(&w), [2, 1]);
        drop(a);
        drop(c);
        assert_eq!(loads(&w), [0, 1]);
        let d = w.place();
        assert_eq!(loads(&w), [1, 1], "the idle thread takes it");
        drop((b, d));
        assert_eq!(loads(&w), [0, 0]);
    }

    #[test]
    fn sessions_run_on_the_worker_threads() {
        let w = Workers::start(1).unwrap();
        let place = w.place();
        let (tx, rx) = std::sync::mpsc::channel();
        place.handle.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx.recv().unwrap();
        assert_eq!(name.as_deref(), Some("mailbrake-sessions-0"));
    }
}
