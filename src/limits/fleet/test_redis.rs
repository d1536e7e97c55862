//! A redis-server of a test's own (Debian's, which `.ci/run` installs), on
//! a free loopback port, and the helpers the fleet tests share.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Fleet, FleetDecision, FleetOptions, secs};
use crate::config::Rate;
use crate::limits::journal::Time;

pub(super) const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub(super) const REDIS_CLI: &str = "/usr/bin/redis-cli";
pub(super) const PREFIX: &str = "mb:";

/// A redis-server of this test's own, in a temporary directory: a child
/// of the test (not daemonized, so that it is reaped), stopped when dropped.
pub(super) struct Server {
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl Server {
    pub(super) fn start() -> Server {
        assert!(
            Path::new(REDIS_SERVER).exists() && Path::new(REDIS_CLI).exists(),
            "{REDIS_SERVER} or {REDIS_CLI} is missing: the fleet tests need Debian's \
             redis-server package (.ci/run installs it: apt-get install redis-server)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Server {
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            child: Mutex::new(None),
        };
        server.launch();
        server
    }

    /// Starts redis-server on this server's port and waits for its PONG.
    pub(super) fn launch(&self) {
        let dir = self.dir.path();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("run redis-server");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pongs() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer; see {}",
                self.port,
                dir.join("redis.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pongs(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0; 7];
        s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Stops redis-server (its data is gone: nothing is saved) and reaps it.
    pub(super) fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let _ = Command::new(REDIS_CLI)
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                // Shutdown refused: our own child, by its pid.
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection, to look at the keys themselves.
    pub(super) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn rate(count: u32, secs: u64) -> Rate {
    Rate {
        count,
        window: Duration::from_secs(secs),
    }
}

pub(super) async fn fleet(server: &Server) -> Fleet {
    Fleet::connect(&server.url(), PREFIX).await.unwrap()
}

pub(super) async fn fleet_with(server: &Server, options: FleetOptions) -> Fleet {
    Fleet::connect_with(&server.url(), PREFIX, options)
        .await
        .unwrap()
}

pub(super) fn full(rate_index: usize, next_free: Option<Time>) -> FleetDecision {
    FleetDecision::Full {
        rate_index,
        next_free,
    }
}

/// Reserves and commits one recipient at `t`.
pub(super) async fn send(f: &Fleet, key: &str, rates: &[Rate], t: Time) {
    let id = f.new_id();
    assert_eq!(
        f.reserve(key, rates, t, &id).await.unwrap(),
        FleetDecision::Reserved,
        "sending at {t}"
    );
    let longest = rates.iter().map(secs).max().unwrap_or(0);
    f.commit(key, &id, t, longest).await.unwrap();
}

pub(super) const KEY: &str = "auth:alice@example.com";
