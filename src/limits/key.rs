//! Sender keys: who is sending, as one typed value written in every log line
//! and refusal (`auth:alice@example.com`, `vhost:shop-42`, `user:site7`,
//! `uid:1234`, `ip:192.0.2.7`),
//! the key type of the limits. Which key a session has is decided in
//! [`crate::identity`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

#[cfg(doc)]
use crate::identity::ClientAddr;
use crate::identity::normalize_ip;

/// The class of a sender key (for metrics labels and ordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyClass {
    Auth,
    Vhost,
    /// A local Unix user, by name.
    User,
    /// A local uid with no name in the user database.
    Uid,
    Ip,
}

impl KeyClass {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyClass::Auth => "auth",
            KeyClass::Vhost => "vhost",
            KeyClass::User => "user",
            KeyClass::Uid => "uid",
            KeyClass::Ip => "ip",
        }
    }
}

/// One sender. Cheap to clone (the text is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderKey {
    class: KeyClass,
    /// The part after the colon: a username, a vhost name, a Unix user's
    /// name or uid, or an address
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

    /// A local Unix user, known by name (names are kept as the user
    /// database spells them: Unix names are case-sensitive).
    pub fn user(name: &str) -> Self {
        SenderKey {
            class: KeyClass::User,
            name: name.into(),
        }
    }

    /// A local uid that has no name.
    pub fn uid(uid: u32) -> Self {
        SenderKey {
            class: KeyClass::Uid,
            name: uid.to_string().into(),
        }
    }

    /// An address key; IPv6 is grouped by `v6_prefix`. `addr` is normal
    /// (a [`ClientAddr`]'s, or [`normalize_ip`]d): an IPv4-mapped address
    /// would not be its IPv4 client's key.
    pub fn ip(addr: IpAddr, v6_prefix: u8) -> Self {
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
            "user" => Some(SenderKey::user(name)),
            "uid" => name.parse().ok().map(SenderKey::uid),
            // Written as the engine writes it, whatever the spelling.
            "ip" => match (name.parse::<IpAddr>(), name.parse::<IpNet>()) {
                (Ok(addr), _) => Some(SenderKey::ip(normalize_ip(addr), 128)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_and_parse() {
        let cases = [
            (
                SenderKey::auth("Alice@Example.com"),
                "auth:alice@example.com",
            ),
            (SenderKey::vhost("shop-42"), "vhost:shop-42"),
            (SenderKey::user("Site7"), "user:Site7"),
            (SenderKey::uid(1234), "uid:1234"),
            (
                SenderKey::ip("192.0.2.7".parse().unwrap(), 64),
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
        assert_eq!(SenderKey::parse("group:x"), None);
        assert_eq!(SenderKey::parse("uid:alice"), None);
        assert_eq!(SenderKey::parse("uid:-1"), None);
        assert_eq!(SenderKey::parse("ip:not-an-address"), None);
        assert_eq!(
            SenderKey::parse("ip:2001:DB8:0:0:1::/64"),
            SenderKey::parse("ip:2001:db8::/64")
        );
        assert_eq!(SenderKey::parse("auth:"), None);
        // As an IPv4 client's key, whatever the spelling.
        assert_eq!(
            SenderKey::parse("ip:::ffff:192.0.2.7"),
            SenderKey::parse("ip:192.0.2.7")
        );
    }
}
