//! Who a connection is: asked once per session, by [`Resolver::identify`],
//! and answered as an [`Identity`] that the session's limits
//! ([`crate::limits::enforce::Enforcer`]) take and complete with the AUTH
//! user.
//!
//! - [`addr`]: the client address, IPv4-mapped addresses unmapped once
//!   ([`ClientAddr`]), and the address it reached ([`DialledAddr`]).
//! - [`owner`]: the Unix user owning a local client's socket (netlink
//!   `sock_diag`, `/proc/net/tcp` as the fallback), off the session thread;
//!   mailbrake's own connections coming back through a REDIRECT.
//! - [`host`]: this host's own addresses, from which a client is a local
//!   program with a Unix user.
//! - [`peer`]: a Unix socket's peer credentials (the kernel's uid, gid and
//!   pid), and the names of local users, looked up off the session thread.
//! - [`vhosts`]: `[[vhost]]` matched by socket owner, then by network.
//! - [`sources`]: what is known, source by source, and the order
//!   (`[limits] identity`) that picks the sender key.
//!
//! Sources are looked up here and nowhere else: a new one is a field of
//! [`Connection`] or [`Identity`], its lookup in [`Resolver::identify`], and
//! its place in [`Identity::key`].

pub mod addr;
pub mod host;
pub mod owner;
pub mod peer;
pub mod sources;
pub mod vhosts;

pub use addr::{ClientAddr, DialledAddr, normalize, normalize_ip};
pub use owner::OwnConnection;
pub use peer::PeerCred;
pub use sources::Identity;
pub use vhosts::Vhosts;

use crate::config::{IdentitySource, ListenerConfig, UpstreamTarget, VhostConfig};

/// One accepted connection, as far as its identity goes.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The client's address; loopback for a Unix socket's client.
    pub client: ClientAddr,
    pub dialled: DialledAddr,
    /// The client was named by a trusted PROXY header: its socket is on
    /// another host, so it has no local owner to look up.
    pub proxied: bool,
    /// A Unix socket's peer, as the kernel knows it.
    pub peer: Option<PeerCred>,
}

impl Connection {
    /// A client of a Unix socket listener.
    pub fn unix(peer: PeerCred) -> Self {
        let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        Connection {
            client: ClientAddr::new(loopback),
            dialled: DialledAddr(loopback),
            proxied: false,
            peer: Some(peer),
        }
    }
}

/// How one listener recognises its clients (rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Resolver {
    vhosts: Vhosts,
    /// The listener relays REDIRECTed connections: the owner is looked up
    /// for loop detection, whether or not a vhost is known by uid.
    transparent: bool,
    /// `[limits] identity` names `user`: the owner of a client on this host
    /// (any of its addresses, not only loopback) is looked up to name it.
    by_user: bool,
}

impl Resolver {
    pub fn new(
        listener: &ListenerConfig,
        vhosts: &[VhostConfig],
        order: &[IdentitySource],
    ) -> Self {
        Resolver {
            vhosts: Vhosts::new(vhosts),
            transparent: listener.upstream == UpstreamTarget::OriginalDestination,
            by_user: order.contains(&IdentitySource::User),
        }
    }

    /// Who this connection is; `Err` when it is mailbrake's own, redirected
    /// back to it.
    pub async fn identify(&self, conn: Connection) -> Result<Identity, OwnConnection> {
        if let Some(peer) = conn.peer {
            return Ok(self.unix_peer(conn.client, peer).await);
        }
        let wanted = !conn.proxied
            && (self.transparent
                || self.vhosts.by_uid()
                || (self.by_user && host::is_own(conn.client.ip())));
        let owner = if wanted {
            owner::lookup(conn.client, conn.dialled).await
        } else {
            None
        };
        if self.transparent {
            owner::not_own(owner)?;
        }
        let vhost = self.vhosts.find(conn.client, owner).map(str::to_owned);
        let owner_name = match owner {
            Some(uid) => peer::user_name(uid).await,
            None => None,
        };
        if owner.is_some() || vhost.is_some() {
            tracing::debug!(?owner, ?owner_name, ?vhost, "sender lookup");
        }
        Ok(Identity {
            owner,
            owner_name,
            vhost,
            ..Identity::by_address(conn.client)
        })
    }

    /// A Unix socket's client: its uid, never its (made-up) address, picks
    /// its vhost.
    async fn unix_peer(&self, client: ClientAddr, peer: PeerCred) -> Identity {
        let owner_name = peer::user_name(peer.uid).await;
        let vhost = self.vhosts.by_owner(peer.uid).map(str::to_owned);
        tracing::debug!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, ?owner_name, ?vhost, "sender lookup");
        Identity {
            unix: true,
            owner: Some(peer.uid),
            owner_name,
            vhost,
            ..Identity::by_address(client)
        }
    }
}
