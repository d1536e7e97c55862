//! What is known of a connection's sender, source by source, and the order
//! (`[limits] identity`) in which those sources pick its sender key.
//!
//! A new source is a field here, an arm in [`Identity::key`], a variant of
//! [`IdentitySource`] and, if it has a key class of its own, of
//! [`crate::limits::KeyClass`].

use crate::config::IdentitySource;
use crate::limits::SenderKey;

use super::addr::ClientAddr;

/// Who a connection is, as far as mailbrake knows: fixed at connect (the
/// address, the socket owner, the vhost), then the AUTH user once the MTA
/// accepts one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client address (after a trusted PROXY header). A Unix socket's
    /// client has none: this is then loopback, and [`Identity::unix`] says so.
    pub client: ClientAddr,
    /// The client came over a Unix socket: its uid is the kernel's word (peer
    /// credentials), and it has no address of its own to be counted by.
    pub unix: bool,
    /// The Unix user owning the client's socket: a Unix socket's peer, or a
    /// local TCP connection's owner when it was looked up.
    pub owner: Option<u32>,
    /// The owner's name in the user database, when it has one.
    pub owner_name: Option<String>,
    /// The vhost matched by socket owner or source network.
    pub vhost: Option<String>,
    /// The AUTH username the upstream accepted.
    pub user: Option<String>,
}

impl Identity {
    /// A client known only by its address.
    pub fn by_address(client: ClientAddr) -> Self {
        Identity {
            client,
            unix: false,
            owner: None,
            owner_name: None,
            vhost: None,
            user: None,
        }
    }

    /// The client's own address, for `exempt_networks`: none for a Unix
    /// socket's client, whose [`Identity::client`] is only loopback's.
    pub fn address(&self) -> Option<std::net::IpAddr> {
        (!self.unix).then(|| self.client.ip())
    }

    /// The AUTH user now (none before AUTH, or after a failed one).
    pub fn set_user(&mut self, user: Option<&str>) {
        self.user = user.map(str::to_owned);
    }

    /// The local user's key: `user:NAME`, or `uid:N` for a uid with no name.
    fn local_user(&self) -> Option<SenderKey> {
        let uid = self.owner?;
        Some(match &self.owner_name {
            Some(name) => SenderKey::user(name),
            None => SenderKey::uid(uid),
        })
    }

    /// The key, by the first source in `order` that is known. When none is:
    /// a Unix socket's client is its user (it has no address to share with
    /// others), any other its IP key (every TCP connection has an address).
    pub fn key(&self, order: &[IdentitySource], v6_prefix: u8) -> SenderKey {
        let ip = || SenderKey::ip(self.client.ip(), v6_prefix);
        order
            .iter()
            .find_map(|source| match source {
                IdentitySource::Auth => self.user.as_deref().map(SenderKey::auth),
                IdentitySource::Vhost => self.vhost.as_deref().map(SenderKey::vhost),
                IdentitySource::User => self.local_user(),
                IdentitySource::Ip => (!self.unix).then(ip),
            })
            .or_else(|| self.unix.then(|| self.local_user()).flatten())
            .unwrap_or_else(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentitySource::*;

    fn client(s: &str) -> ClientAddr {
        ClientAddr::new(s.parse().unwrap())
    }

    #[test]
    fn the_first_known_source_in_order_names_the_key() {
        let id = Identity {
            user: Some("alice".into()),
            vhost: Some("shop".into()),
            ..Identity::by_address(client("192.0.2.7:4321"))
        };
        let vhost_only = Identity {
            vhost: Some("shop".into()),
            ..Identity::by_address(client("192.0.2.7:4321"))
        };
        let anonymous = Identity::by_address(client("192.0.2.7:4321"));
        let mapped = Identity::by_address(client("[::ffff:192.0.2.7]:4321"));
        let v6 = Identity::by_address(client("[2001:db8:1:2:3:4:5:6]:4321"));
        let cases: &[(&Identity, &[IdentitySource], &str)] = &[
            (&id, &[Auth, Vhost, Ip], "auth:alice"),
            (&id, &[Vhost, Auth, Ip], "vhost:shop"),
            (&id, &[Ip, Auth, Vhost], "ip:192.0.2.7"),
            (&id, &[Ip], "ip:192.0.2.7"),
            (&id, &[Auth], "auth:alice"),
            (&vhost_only, &[Auth, Vhost, Ip], "vhost:shop"),
            (&vhost_only, &[Auth, Ip, Vhost], "ip:192.0.2.7"),
            (&vhost_only, &[Auth], "ip:192.0.2.7"),
            (&anonymous, &[Auth, Vhost], "ip:192.0.2.7"),
            (&anonymous, &[], "ip:192.0.2.7"),
            (&mapped, &[Auth, Vhost, Ip], "ip:192.0.2.7"),
            (&v6, &[Auth, Vhost, Ip], "ip:2001:db8:1:2::/64"),
        ];
        for (identity, order, expected) in cases {
            assert_eq!(identity.key(order, 64).to_string(), *expected, "{order:?}");
        }
    }

    #[test]
    fn a_local_user_is_its_own_sender_unless_a_vhost_groups_it() {
        let local = |owner: Option<u32>, name: Option<&str>, unix: bool| Identity {
            unix,
            owner,
            owner_name: name.map(str::to_owned),
            ..Identity::by_address(client("127.0.0.1:40000"))
        };
        let named = local(Some(1007), Some("site7"), false);
        let nameless = local(Some(4242), None, false);
        let no_owner = local(None, None, false);
        let socket = local(Some(1007), Some("site7"), true);
        let grouped = Identity {
            vhost: Some("shop".into()),
            ..socket.clone()
        };
        let cases: &[(&Identity, &[IdentitySource], &str)] = &[
            (&named, &[Auth, Vhost, User, Ip], "user:site7"),
            (&named, &[Auth, Vhost, Ip, User], "ip:127.0.0.1"),
            (&nameless, &[Auth, Vhost, User, Ip], "uid:4242"),
            (&no_owner, &[Auth, Vhost, User, Ip], "ip:127.0.0.1"),
            (&socket, &[Auth, Vhost, User, Ip], "user:site7"),
            // A Unix socket's client has no address: ip is never its key.
            (&socket, &[Ip, User], "user:site7"),
            (&socket, &[Auth, Vhost, Ip], "user:site7"),
            (&socket, &[Ip], "user:site7"),
            (&grouped, &[Auth, Vhost, User, Ip], "vhost:shop"),
            (&grouped, &[User, Vhost], "user:site7"),
        ];
        for (identity, order, expected) in cases {
            assert_eq!(identity.key(order, 64).to_string(), *expected, "{order:?}");
        }
    }

    #[test]
    fn the_user_follows_auth() {
        let mut id = Identity::by_address(client("192.0.2.7:4321"));
        let order = [Auth, Vhost, Ip];
        id.set_user(Some("alice"));
        assert_eq!(id.key(&order, 64).to_string(), "auth:alice");
        id.set_user(None);
        assert_eq!(id.key(&order, 64).to_string(), "ip:192.0.2.7");
    }
}
