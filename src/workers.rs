//! The session threads: one single-threaded runtime per thread, each
//! accepting connections on a listening socket of its own (see [`listen`])
//! and running those sessions whole, both sockets included. A session's
//! wake-ups (a reply from the upstream, the client's next command) are then
//! handled on the thread that waits for them, with no hand-over between
//! threads: on a loaded machine that hand-over, not the parsing, was the
//! larger part of the proxy's CPU time. The admin endpoint, signals, reloads
//! and the shared limit connection stay on the main runtime.
//!
//! [`listen`]: crate::listen

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The session threads.
pub struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    /// One message from each thread as it ends.
    ended: std::sync::mpsc::Receiver<()>,
}

impl Workers {
    /// Starts `n` session threads.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let (ends, ended) = std::sync::mpsc::channel();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            // Log lines are written when the thread goes idle (logbuf).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(crate::logbuf::flush)
                .build()?;
            handles.push(runtime.handle().clone());
            let (stopped, ends) = (stop.clone(), ends.clone());
            std::thread::Builder::new()
                .name(format!("mailbrake-sessions-{i}"))
                .spawn(move || {
                    crate::logbuf::gather_on_this_thread();
                    runtime.block_on(stopped.cancelled());
                    // Sessions still on it are dropped (and may log) first.
                    drop(runtime);
                    crate::logbuf::flush();
                    let _ = ends.send(());
                })?;
        }
        Ok(Workers {
            handles,
            stop,
            ended,
        })
    }

    /// One handle per thread, to spawn its accept loops on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    /// The threads end (dropping any session still on them) once the main
    /// runtime no longer waits for sessions; their last log lines are
    /// written before the process exits (a second at most per thread).
    fn drop(&mut self) {
        self.stop.cancel();
        for _ in &self.handles {
            if self
                .ended
                .recv_timeout(std::time::Duration::from_secs(1))
                .is_err()
            {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handle_runs_on_its_own_named_thread() {
        let w = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for h in w.handles() {
            let tx = tx.clone();
            h.spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["mailbrake-sessions-0", "mailbrake-sessions-1"]);
    }
}
