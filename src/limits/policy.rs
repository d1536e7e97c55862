//! The operator's policy, from `[limits]`: which limit applies to a key and
//! why, and the text of every refusal.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::journal::Time;
use super::key::{KeyClass, SenderKey};
use crate::config::{IdentitySource, Limit, LimitAction, LimitsConfig, Rate};

/// Where a key's limit comes from (shown to operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    Override,
    Exempt,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Override => "override",
            Source::Exempt => "exempt",
        }
    }
}

/// The validated `[limits]`, indexed for lookups on every RCPT.
#[derive(Debug, Clone)]
pub struct Policy {
    pub action: LimitAction,
    pub identity: Vec<IdentitySource>,
    pub ipv6_prefix: u8,
    default: Limit,
    overrides: HashMap<SenderKey, Limit>,
    /// `ip:` overrides naming networks, most specific first.
    net_overrides: Vec<(IpNet, Limit)>,
    exempt_users: Vec<SenderKey>,
    exempt_vhosts: Vec<SenderKey>,
    exempt_local_users: Vec<SenderKey>,
    exempt_networks: Vec<IpNet>,
    pub rotation: Option<Rate>,
    pub lock_after_refusals: Option<u32>,
    pub lock_window: Time,
    pub lock_duration: Option<Time>,
    pub contact: Option<String>,
    /// The longest window of any rule: how long a key's history matters.
    pub longest: Time,
    /// The most send times any key needs to keep.
    pub keep: usize,
    /// Overrides set by operators at run time: (limit, exempt). They win
    /// over everything in the file.
    runtime: HashMap<SenderKey, (Limit, bool)>,
    /// The file's `[limits]`, to rebuild the policy when `runtime` changes.
    pub config: LimitsConfig,
}

fn secs(d: std::time::Duration) -> Time {
    u32::try_from(d.as_secs()).unwrap_or(Time::MAX)
}

fn rates(limit: &Limit) -> &[Rate] {
    match limit {
        Limit::Unlimited => &[],
        Limit::Rates(r) => r,
    }
}

impl Policy {
    pub fn new(cfg: &LimitsConfig) -> Self {
        let overrides: HashMap<SenderKey, Limit> = cfg
            .overrides
            .iter()
            .filter_map(|o| SenderKey::parse(&o.key).map(|k| (k, o.limit.clone())))
            .collect();
        let mut net_overrides: Vec<(IpNet, Limit)> = overrides
            .iter()
            .filter(|(k, _)| k.class() == KeyClass::Ip)
            .filter_map(|(k, l)| key_net(k).map(|n| (n, l.clone())))
            .collect();
        net_overrides.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        let recipient_rates = rates(&cfg.default)
            .iter()
            .chain(overrides.values().flat_map(rates));
        let longest = recipient_rates
            .clone()
            .chain(cfg.rotation.iter())
            .map(|r| secs(r.window))
            .chain([secs(cfg.lock_window)])
            .max()
            .unwrap_or(3600);
        // Send times to keep: the rotation rate counts senders, not recipients.
        let keep = recipient_rates.map(|r| r.count as usize).max().unwrap_or(0);
        Policy {
            action: cfg.action,
            identity: cfg.identity.clone(),
            ipv6_prefix: cfg.ipv6_prefix,
            default: cfg.default.clone(),
            overrides,
            net_overrides,
            exempt_users: cfg
                .exempt_users
                .iter()
                .map(|u| SenderKey::auth(u))
                .collect(),
            exempt_vhosts: cfg
                .exempt_vhosts
                .iter()
                .map(|v| SenderKey::vhost(v))
                .collect(),
            exempt_local_users: cfg
                .exempt_local_users
                .iter()
                .map(|u| SenderKey::user(u))
                .collect(),
            exempt_networks: cfg.exempt_networks.clone(),
            rotation: cfg.rotation,
            lock_after_refusals: cfg.lock_after_refusals,
            lock_window: secs(cfg.lock_window),
            lock_duration: cfg.lock_duration.map(secs),
            contact: cfg.contact.clone(),
            runtime: HashMap::new(),
            config: cfg.clone(),
            longest,
            keep,
        }
    }

    /// The same policy with operators' run-time overrides on top:
    /// (key, limit, exempt).
    pub fn with_runtime(
        mut self,
        runtime: impl IntoIterator<Item = (SenderKey, Limit, bool)>,
    ) -> Self {
        self.runtime = runtime.into_iter().map(|(k, l, e)| (k, (l, e))).collect();
        let most = self
            .runtime
            .values()
            .flat_map(|(l, _)| rates(l))
            .map(|r| r.count as usize)
            .max();
        self.keep = self.keep.max(most.unwrap_or(0));
        let longest = self
            .runtime
            .values()
            .flat_map(|(l, _)| rates(l))
            .map(|r| secs(r.window))
            .max();
        self.longest = self.longest.max(longest.unwrap_or(0));
        self
    }

    /// The limit for `key` sending from `client` (a
    /// [`ClientAddr`](crate::identity::ClientAddr)'s address, so never
    /// IPv4-mapped), and where it comes from.
    /// An operator's run-time override wins over the file's overrides, which
    /// win over exemptions, which win over the default.
    pub fn limit(&self, key: &SenderKey, client: Option<IpAddr>) -> (&[Rate], Source) {
        if let Some((limit, exempt)) = self.runtime.get(key) {
            let source = if *exempt {
                Source::Exempt
            } else {
                Source::Override
            };
            return (rates(limit), source);
        }
        if let Some(limit) = self.overrides.get(key) {
            return (rates(limit), Source::Override);
        }
        if key.class() == KeyClass::Ip
            && let Some(net) = key_net(key)
            && let Some((_, limit)) = self
                .net_overrides
                .iter()
                // The override's network holds the key, or (an IPv6 address
                // or small network) falls within the key's group.
                .find(|(o, _)| o.contains(&net) || net.contains(o))
        {
            return (rates(limit), Source::Override);
        }
        let exempt = match key.class() {
            KeyClass::Auth => self.exempt_users.contains(key),
            KeyClass::Vhost => self.exempt_vhosts.contains(key),
            KeyClass::User => self.exempt_local_users.contains(key),
            KeyClass::Uid | KeyClass::Ip => false,
        } || client
            .is_some_and(|ip| self.exempt_networks.iter().any(|n| n.contains(&ip)));
        if exempt {
            return (&[], Source::Exempt);
        }
        (rates(&self.default), Source::Default)
    }
}

/// The address or network an `ip:` key stands for.
fn key_net(key: &SenderKey) -> Option<IpNet> {
    let name = key.name();
    name.parse::<IpNet>()
        .ok()
        .or_else(|| name.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Writes a rate as configured: `12/1h`.
pub fn rate_text(rate: &Rate) -> String {
    format!("{}/{}", rate.count, humantime::format_duration(rate.window))
}

/// How long until `at`, for people: "30 s", "12 min", "24 h".
pub fn wait_text(at: Time, now: Time) -> String {
    let wait = at.saturating_sub(now);
    if wait < 60 {
        format!("{wait} s")
    } else if wait < 3600 * 2 {
        format!("{} min", wait.div_ceil(60))
    } else {
        format!("{} h", wait.div_ceil(3600))
    }
}

/// The time `at` on a UTC clock: "14:32 UTC", with the date when it is not
/// within the next 24 hours ("2026-11-28 14:32 UTC").
pub fn clock_text(at: Time, now: Time) -> String {
    let day = at % 86_400;
    let clock = format!("{:02}:{:02} UTC", day / 3600, (day % 3600) / 60);
    if at.saturating_sub(now) < 86_400 {
        return clock;
    }
    // Days to civil date (H. Hinnant's algorithm), valid for any u32 time.
    let z = i64::from(at / 86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {clock}")
}

/// "in 12 min (14:32 UTC)".
pub fn when_text(at: Time, now: Time) -> String {
    format!("in {} ({})", wait_text(at, now), clock_text(at, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Override;
    use std::time::Duration;

    fn r(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn limits_come_from_override_exemption_or_default() {
        let cfg = LimitsConfig {
            overrides: vec![
                Override {
                    key: "auth:shop@example.com".into(),
                    limit: Limit::Rates(vec![r(500, 3600)]),
                },
                Override {
                    key: "auth:lists@example.net".into(),
                    limit: Limit::Unlimited,
                },
            ],
            exempt_users: vec!["newsletter@example.net".into()],
            exempt_vhosts: vec!["bulk".into()],
            exempt_networks: vec!["192.0.2.0/24".parse().unwrap()],
            ..LimitsConfig::default()
        };
        let p = Policy::new(&cfg);
        let ip = |s: &str| Some(s.parse().unwrap());
        let nets = Policy::new(&LimitsConfig {
            overrides: vec![
                Override {
                    key: "ip:127.0.0.0/8".into(),
                    limit: Limit::Rates(vec![r(3, 3600)]),
                },
                Override {
                    key: "ip:127.0.0.2".into(),
                    limit: Limit::Unlimited,
                },
                Override {
                    key: "ip:2001:db8::1".into(),
                    limit: Limit::Rates(vec![r(5, 3600)]),
                },
            ],
            ..LimitsConfig::default()
        });
        let net_cases = [
            ("127.0.0.1", Source::Override, 1),
            ("127.0.0.2", Source::Override, 0),
            ("192.0.2.1", Source::Default, 1),
            ("2001:db8::77", Source::Override, 1), // same /64 group
            ("2001:db8:0:1::1", Source::Default, 1),
        ];
        for (addr, source, n) in net_cases {
            let key = SenderKey::ip(addr.parse().unwrap(), 64);
            let (rates, got) = nets.limit(&key, None);
            assert_eq!((got, rates.len()), (source, n), "{addr}");
        }
        let cases = [
            ("auth:shop@example.com", None, Source::Override, 1),
            ("auth:lists@example.net", None, Source::Override, 0),
            ("auth:newsletter@example.net", None, Source::Exempt, 0),
            ("vhost:bulk", None, Source::Exempt, 0),
            ("ip:192.0.2.9", ip("192.0.2.9"), Source::Exempt, 0),
            (
                "auth:alice@example.com",
                Some(crate::identity::normalize_ip(
                    "::ffff:192.0.2.9".parse().unwrap(),
                )),
                Source::Exempt,
                0,
            ),
            (
                "auth:alice@example.com",
                ip("198.51.100.1"),
                Source::Default,
                1,
            ),
        ];
        for (key, client, source, n) in cases {
            let (rates, got) = p.limit(&SenderKey::parse(key).unwrap(), client);
            assert_eq!((got, rates.len()), (source, n), "{key}");
        }
        assert_eq!(p.keep, 500);
        assert_eq!(p.longest, 3600);
    }

    #[test]
    fn texts() {
        assert_eq!(rate_text(&r(12, 3600)), "12/1h");
        assert_eq!(rate_text(&r(100, 86_400)), "100/1day");
        assert_eq!(when_text(1_000_000, 1_000_000 - 30), "in 30 s (13:46 UTC)");
        assert_eq!(
            when_text(1_000_000, 1_000_000 - 700),
            "in 12 min (13:46 UTC)"
        );
    }
}
