//! `[[vhost]]`: hosting customers recognised by the client's network or by
//! the Unix user owning the client's socket. The configuration validates
//! the table; this indexes it for a lookup per connection.

use ipnet::IpNet;

use super::addr::ClientAddr;
use crate::config::VhostConfig;

/// The vhost table, indexed for a lookup per connection.
#[derive(Debug, Clone, Default)]
pub struct Vhosts {
    /// (network, name), most specific network first.
    networks: Vec<(IpNet, String)>,
    uids: std::collections::HashMap<u32, String>,
}

impl Vhosts {
    pub fn new(cfg: &[VhostConfig]) -> Self {
        let mut networks: Vec<(IpNet, String)> = cfg
            .iter()
            .flat_map(|v| v.networks.iter().map(move |n| (*n, v.name.clone())))
            .collect();
        networks.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        let uids = cfg
            .iter()
            .flat_map(|v| v.uids.iter().map(move |u| (*u, v.name.clone())))
            .collect();
        Vhosts { networks, uids }
    }

    /// Whether any vhost is recognised by uid (then the socket owner is looked up).
    pub fn by_uid(&self) -> bool {
        !self.uids.is_empty()
    }

    /// The vhost that lists Unix user `uid`.
    pub fn by_owner(&self, uid: u32) -> Option<&str> {
        self.uids.get(&uid).map(String::as_str)
    }

    /// The vhost of a client: by socket owner first (most precise), then by network.
    pub fn find(&self, client: ClientAddr, uid: Option<u32>) -> Option<&str> {
        if let Some(name) = uid.and_then(|u| self.by_owner(u)) {
            return Some(name);
        }
        self.networks
            .iter()
            .find(|(n, _)| n.contains(&client.ip()))
            .map(|(_, name)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_wins_then_the_most_specific_network() {
        let v = Vhosts::new(&[
            VhostConfig {
                name: "hosting".into(),
                networks: vec!["192.0.2.0/24".parse().unwrap()],
                uids: vec![],
            },
            VhostConfig {
                name: "shop-42".into(),
                networks: vec!["192.0.2.42/32".parse().unwrap()],
                uids: vec![1042],
            },
        ]);
        let ip = |s: &str| ClientAddr::new(std::net::SocketAddr::new(s.parse().unwrap(), 4321));
        assert_eq!(v.find(ip("192.0.2.42"), None), Some("shop-42"));
        assert_eq!(v.find(ip("::ffff:192.0.2.7"), None), Some("hosting"));
        assert_eq!(v.find(ip("127.0.0.1"), Some(1042)), Some("shop-42"));
        assert_eq!(v.find(ip("127.0.0.1"), Some(1043)), None);
        assert!(v.by_uid());
    }
}
