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
    /// The client address (after a trusted PROXY header).
    pub client: ClientAddr,
    /// The Unix user owning the client's socket, when it is a local one and
    /// was looked up.
    pub owner: Option<u32>,
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
            owner: None,
            vhost: None,
            user: None,
        }
    }

    /// The AUTH user now (none before AUTH, or after a failed one).
    pub fn set_user(&mut self, user: Option<&str>) {
        self.user = user.map(str::to_owned);
    }

    /// The key, by the first source in `order` that is known; the IP key when
    /// none is (every connection has an address).
    pub fn key(&self, order: &[IdentitySource], v6_prefix: u8) -> SenderKey {
        let ip = || SenderKey::ip(self.client.ip(), v6_prefix);
        order
            .iter()
            .find_map(|source| match source {
                IdentitySource::Auth => self.user.as_deref().map(SenderKey::auth),
                IdentitySource::Vhost => self.vhost.as_deref().map(SenderKey::vhost),
                IdentitySource::Ip => Some(ip()),
            })
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
    fn the_user_follows_auth() {
        let mut id = Identity::by_address(client("192.0.2.7:4321"));
        let order = [Auth, Vhost, Ip];
        id.set_user(Some("alice"));
        assert_eq!(id.key(&order, 64).to_string(), "auth:alice");
        id.set_user(None);
        assert_eq!(id.key(&order, 64).to_string(), "ip:192.0.2.7");
    }
}
