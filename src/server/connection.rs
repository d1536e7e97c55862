//! One accepted connection, from first byte to close: for TCP, the inbound
//! PROXY header (trusted peers only) and the upstream it goes to; for a Unix
//! socket, the peer credentials read at accept; then, for both, who the
//! client is (asked of [`crate::identity`] once), implicit TLS on both legs,
//! dialling the upstream and its PROXY header, and the driver.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::ListenerRuntime;
use super::accept::refuse_on;
use crate::config::{ClientTls, UpstreamTarget, UpstreamTls};
use crate::driver::{self, DriverEnv};
use crate::identity::{ClientAddr, Connection, DialledAddr, PeerCred};
use crate::leg::Leg;
use crate::limits::Limiter;
use crate::limits::enforce::Enforcer;
use crate::limits::shared::FleetLink;
use crate::metrics as m;
use crate::protect::Protect;
use crate::proxy_protocol::{self, Inbound};
use crate::session::{Failure, Session};
use crate::upstream;

/// Reads a PROXY header from a trusted peer. Returns the client it names and
/// any bytes read past the header (there should be none: the client waits
/// for the greeting).
async fn read_proxy_header(
    stream: &mut TcpStream,
    limit: std::time::Duration,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), String> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy_protocol::parse_inbound(&buf) {
                Ok(Inbound::Incomplete) => {}
                Ok(Inbound::Proxied {
                    source,
                    destination,
                    consumed,
                }) => return Ok((Some(source), Some(destination), consumed)),
                Ok(Inbound::Local { consumed }) => return Ok((None, None, consumed)),
                Err(e) => return Err(format!("bad PROXY header from a trusted peer: {e}")),
            }
            let mut byte = [0u8; 1];
            // One byte at a time: nothing after the header may be consumed.
            match stream.read(&mut byte).await {
                Ok(0) => return Err("closed before the PROXY header ended".into()),
                Ok(_) => buf.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok((src, dst, consumed))) => {
            debug_assert_eq!(consumed, buf.len());
            Ok((src, dst))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no PROXY header within {limit:?}")),
    }
}

/// What a session takes from its listener and from the whole process.
pub(super) struct Shared {
    pub rt: Arc<ListenerRuntime>,
    pub env: DriverEnv,
    pub limiter: Arc<Limiter>,
    pub protect: Arc<Protect>,
    pub fleet: Option<Arc<FleetLink>>,
}

/// One accepted TCP connection, from first byte to close.
pub(super) async fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, shared: Shared) {
    let rt = shared.rt.clone();
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut client = ClientAddr::new(peer);
    let mut dialled = DialledAddr(local);
    let mut proxied = false;
    if proxy_protocol::is_trusted(peer.ip(), &rt.cfg.proxy_protocol_trusted) {
        match read_proxy_header(&mut stream, rt.tls_handshake).await {
            Ok((src, dst)) => {
                if let Some(src) = src {
                    client = ClientAddr::new(src);
                    proxied = true;
                    tracing::info!(proxied_client = %src, "PROXY header accepted");
                }
                if let Some(dst) = dst {
                    dialled = DialledAddr(dst);
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        }
    }
    let dest = match upstream::destination(&rt.cfg.upstream, &stream, peer) {
        Ok(d) => d,
        Err(f) => {
            rt.metrics.upstream_unreachable.increment(1);
            return refuse_on(stream, &f, &rt.session.hostname).await;
        }
    };
    if let upstream::Destination::Addr(a) = &dest
        && rt.cfg.upstream == UpstreamTarget::OriginalDestination
    {
        dialled = DialledAddr(*a);
    }

    let connection = Connection {
        client,
        dialled,
        proxied,
        peer: None,
    };
    relay(stream, connection, dest, local, shared).await;
}

/// One accepted Unix socket connection: its client is its peer's
/// credentials; its upstream is the listener's own.
pub(super) async fn serve_unix(stream: UnixStream, cred: PeerCred, shared: Shared) {
    let connection = Connection::unix(cred);
    let dest = match &shared.rt.cfg.upstream {
        UpstreamTarget::Fixed { host, port } => upstream::Destination::Host {
            host: host.clone(),
            port: *port,
        },
        // Refused by the configuration's validation.
        UpstreamTarget::OriginalDestination => return,
    };
    let local = connection.dialled.0;
    relay(stream, connection, dest, local, shared).await;
}

/// From who the client is to the end of the session, for either kind of
/// socket. `local` is the address the client reached, for loop detection.
async fn relay<S>(
    stream: S,
    connection: Connection,
    dest: upstream::Destination,
    local: SocketAddr,
    shared: Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = crate::clock::now();
    let Shared {
        rt,
        mut env,
        limiter,
        protect,
        fleet,
    } = shared;
    let (client, dialled, peer) = (connection.client, connection.dialled, connection.peer);
    let identity = match rt.identity.identify(connection).await {
        Ok(identity) => identity,
        Err(own) => {
            rt.metrics.upstream_loop.increment(1);
            let f = Failure::UpstreamLoop(own.to_string());
            return refuse_on(stream, &f, &rt.session.hostname).await;
        }
    };
    let mut policy = Enforcer::new(limiter, protect, identity, fleet);

    let mut client_leg = Leg::Plain(stream);
    if rt.cfg.tls == ClientTls::Implicit {
        let Some(cfg) = rt.server_tls.clone() else {
            return;
        };
        if let Err(e) = driver::secure_client(&mut client_leg, cfg, rt.tls_handshake).await {
            return tracing::info!(error = %e, "client TLS handshake failed");
        }
    }
    match peer {
        // The span names the peer; its address is only loopback's.
        Some(_) => tracing::info!(upstream = %dest, "session start"),
        None => tracing::info!(upstream = %dest, %client, "session start"),
    }

    let host = rt.session.hostname.clone();
    let tls_name = match &rt.client_tls {
        None => None,
        Some(cfg) => {
            let name = rt
                .cfg
                .upstream_tls_name
                .clone()
                .unwrap_or_else(|| match &dest {
                    upstream::Destination::Host { host, .. } => host.clone(),
                    upstream::Destination::Addr(a) => a.ip().to_string(),
                });
            match crate::tls::server_name(&name) {
                Ok(n) => Some((cfg.clone(), n)),
                Err(e) => {
                    let f = Failure::UpstreamTls(e.to_string());
                    return finish_early(client_leg, &f, &host, &rt.metrics).await;
                }
            }
        }
    };
    env.upstream_tls = tls_name;

    let dialling = crate::clock::now();
    let mut up = match upstream::connect(&dest, local, &rt.binds, rt.connect_timeout).await {
        Ok(s) => s,
        Err(f) => return finish_early(client_leg, &f, &host, &rt.metrics).await,
    };
    rt.metrics
        .connect_seconds
        .record(dialling.elapsed().as_secs_f64());
    if let Some(version) = rt.cfg.upstream_proxy_protocol
        && let Err(f) = upstream::send_proxy_header(&mut up, version, client, dialled).await
    {
        return finish_early(client_leg, &f, &host, &rt.metrics).await;
    }
    let mut up_leg = Leg::Plain(up);
    if rt.cfg.upstream_tls == UpstreamTls::Implicit {
        let Some((cfg, name)) = env.upstream_tls.clone() else {
            return;
        };
        if let Err(e) = driver::secure_upstream(&mut up_leg, cfg, name, rt.tls_handshake).await {
            let f = Failure::UpstreamTls(e);
            return finish_early(client_leg, &f, &host, &rt.metrics).await;
        }
    }
    let now = crate::clock::now();
    let mut session = Session::new(
        rt.session.clone(),
        client.addr(),
        client_leg.is_tls(),
        up_leg.is_tls(),
        now,
    );
    driver::drive(
        &mut session,
        &mut client_leg,
        &mut up_leg,
        &mut policy,
        &env,
    )
    .await;
    tracing::info!(
        duration_ms = started.elapsed().as_millis() as u64,
        user = %session.user().map_or("", |u| u.as_str()),
        "session end"
    );
}

/// The upstream could not be reached: tell the client and close.
async fn finish_early<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: Leg<S>,
    failure: &Failure,
    host: &str,
    metrics: &m::ListenerMetrics,
) {
    tracing::warn!(fault = %failure.fault(), "{failure}");
    match failure {
        Failure::UpstreamLoop(_) => metrics.upstream_loop.increment(1),
        Failure::UpstreamTls(_) | Failure::UpstreamNoStartTls => metrics.upstream_tls.increment(1),
        Failure::OutOfFiles(_) => metrics.refused_out_of_files.increment(1),
        _ => metrics.upstream_unreachable.increment(1),
    }
    if let Some(reply) = failure.reply(host) {
        let _ = client.write_all(&reply).await;
        let _ = client.flush().await;
    }
    let _ = client.shutdown().await;
}
