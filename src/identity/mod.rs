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
//! - [`vhosts`]: `[[vhost]]` matched by socket owner, then by network.
//! - [`sources`]: what is known, source by source, and the order
//!   (`[limits] identity`) that picks the sender key.
//!
//! Sources are looked up here and nowhere else: a new one (a peer's
//! credentials on a Unix socket, say) is a field of [`Connection`] or
//! [`Identity`], its lookup in [`Resolver::identify`], and its place in
//! [`Identity::key`].

pub mod addr;
pub mod owner;
pub mod sources;
pub mod vhosts;

pub use addr::{ClientAddr, DialledAddr, normalize, normalize_ip};
pub use owner::OwnConnection;
pub use sources::Identity;
pub use vhosts::Vhosts;

use crate::config::{ListenerConfig, UpstreamTarget, VhostConfig};

/// One accepted connection, as far as its identity goes.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub client: ClientAddr,
    pub dialled: DialledAddr,
    /// The client was named by a trusted PROXY header: its socket is on
    /// another host, so it has no local owner to look up.
    pub proxied: bool,
}

/// How one listener recognises its clients (rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Resolver {
    vhosts: Vhosts,
    /// The listener relays REDIRECTed connections: the owner is looked up
    /// for loop detection, whether or not a vhost is known by uid.
    transparent: bool,
}

impl Resolver {
    pub fn new(listener: &ListenerConfig, vhosts: &[VhostConfig]) -> Self {
        Resolver {
            vhosts: Vhosts::new(vhosts),
            transparent: listener.upstream == UpstreamTarget::OriginalDestination,
        }
    }

    /// Who this connection is; `Err` when it is mailbrake's own, redirected
    /// back to it.
    pub async fn identify(&self, conn: Connection) -> Result<Identity, OwnConnection> {
        let owner = if !conn.proxied && (self.transparent || self.vhosts.by_uid()) {
            owner::lookup(conn.client, conn.dialled).await
        } else {
            None
        };
        if self.transparent {
            owner::not_own(owner)?;
        }
        let vhost = self.vhosts.find(conn.client, owner).map(str::to_owned);
        if owner.is_some() || vhost.is_some() {
            tracing::debug!(?owner, ?vhost, "sender lookup");
        }
        Ok(Identity {
            owner,
            vhost,
            ..Identity::by_address(conn.client)
        })
    }
}
