//! Sender keys: who is sending, as one typed value written in every log line
//! and refusal (`auth:alice@example.com`, `vhost:shop-42`, `ip:192.0.2.7`).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::IdentitySource;

/// The class of a sender key (for metrics labels and ordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyClass {
    Auth,
    Vhost,
    Ip,
}

impl KeyClass {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyClass::Auth => "auth",
            KeyClass::Vhost => "vhost",
            KeyClass::Ip => "ip",
        }
    }
}

/// One sender. Cheap to clone (the text is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderKey {
    class: KeyClass,
    /// The part after the colon: a username, a vhost name, or an address
    /// (an IPv6 address grouped to its prefix, written as `2001:db8::/64`).
    name: Arc<str>,
}

impl SenderKey {
    pub fn auth(user: &str) -> Self {
        SenderKey {
            class: KeyClass::Auth,
            name: user.to_ascii_lowercase().into(),
        }
    }

    pub fn vhost(name: &str) -> Self {
        SenderKey {
            class: KeyClass::Vhost,
            name: name.into(),
        }
    }

    /// An address key; IPv6 is grouped by `v6_prefix` (IPv4-mapped
    /// addresses count as IPv4).
    pub fn ip(addr: IpAddr, v6_prefix: u8) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let name = match addr {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) if v6_prefix >= 128 => v6.to_string(),
            IpAddr::V6(v6) => IpNet::new(IpAddr::V6(v6), v6_prefix)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        };
        SenderKey {
            class: KeyClass::Ip,
            name: name.into(),
        }
    }

    /// Parses `class:name` as written in logs and the config file.
    pub fn parse(text: &str) -> Option<Self> {
        let (class, name) = text.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match class {
            "auth" => Some(SenderKey::auth(name)),
            "vhost" => Some(SenderKey::vhost(name)),
            // Written as the engine writes it, whatever the spelling.
            "ip" => match (name.parse::<IpAddr>(), name.parse::<IpNet>()) {
                (Ok(addr), _) => Some(SenderKey::ip(addr, 128)),
                (_, Ok(net)) => Some(SenderKey {
                    class: KeyClass::Ip,
                    name: net.trunc().to_string().into(),
                }),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn class(&self) -> KeyClass {
        self.class
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.class.as_str(), self.name)
    }
}

/// What is known of a session's sender, to pick its key.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The AUTH username the upstream accepted.
    pub user: Option<String>,
    /// The vhost matched by source network or socket owner.
    pub vhost: Option<String>,
    /// The client address (after a trusted PROXY header).
    pub ip: Option<IpAddr>,
}

impl Identity {
    /// The key, by the first source in `order` that is known; the IP key when
    /// none is (every session has an address).
    pub fn key(&self, order: &[IdentitySource], v6_prefix: u8) -> Option<SenderKey> {
        for source in order {
            let key = match source {
                IdentitySource::Auth => self.user.as_deref().map(SenderKey::auth),
                IdentitySource::Vhost => self.vhost.as_deref().map(SenderKey::vhost),
                IdentitySource::Ip => self.ip.map(|ip| SenderKey::ip(ip, v6_prefix)),
            };
            if key.is_some() {
                return key;
            }
        }
        self.ip.map(|ip| SenderKey::ip(ip, v6_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentitySource::*;

    #[test]
    fn keys_print_and_parse() {
        let cases = [
            (
                SenderKey::auth("Alice@Example.com"),
                "auth:alice@example.com",
            ),
            (SenderKey::vhost("shop-42"), "vhost:shop-42"),
            (
                SenderKey::ip("192.0.2.7".parse().unwrap(), 64),
                "ip:192.0.2.7",
            ),
            (
                SenderKey::ip("::ffff:192.0.2.7".parse().unwrap(), 64),
                "ip:192.0.2.7",
            ),
            (
                SenderKey::ip("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64),
                "ip:2001:db8:1:2::/64",
            ),
            (
                SenderKey::ip("2001:db8:1:2:3:4:5:6".parse().unwrap(), 48),
                "ip:2001:db8:1::/48",
            ),
            (
                SenderKey::ip("2001:db8::6".parse().unwrap(), 128),
                "ip:2001:db8::6",
            ),
        ];
        for (key, text) in cases {
            assert_eq!(key.to_string(), text);
            assert_eq!(SenderKey::parse(text), Some(key));
        }
        assert_eq!(SenderKey::parse("user:x"), None);
        assert_eq!(SenderKey::parse("ip:not-an-address"), None);
        assert_eq!(
            SenderKey::parse("ip:2001:DB8:0:0:1::/64"),
            SenderKey::parse("ip:2001:db8::/64")
        );
        assert_eq!(SenderKey::parse("auth:"), None);
    }

    #[test]
    fn identity_order() {
        let id = Identity {
            user: Some("alice".into()),
            vhost: Some("shop".into()),
            ip: Some("192.0.2.7".parse().unwrap()),
        };
        let cases: [(&[IdentitySource], &str); 4] = [
            (&[Auth, Vhost, Ip], "auth:alice"),
            (&[Vhost, Auth, Ip], "vhost:shop"),
            (&[Ip], "ip:192.0.2.7"),
            (&[Auth], "auth:alice"),
        ];
        for (order, expected) in cases {
            assert_eq!(id.key(order, 64).unwrap().to_string(), expected);
        }
        let anonymous = Identity {
            ip: Some("192.0.2.7".parse().unwrap()),
            ..Identity::default()
        };
        assert_eq!(
            anonymous.key(&[Auth, Vhost], 64).unwrap().to_string(),
            "ip:192.0.2.7"
        );
    }
}
