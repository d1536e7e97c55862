//! This host's own addresses: a client coming from one of them runs on this
//! machine, whichever address it picked (a site connecting to the server's
//! public address rather than 127.0.0.1), and so has a Unix user to be
//! counted as. Read with `getifaddrs` and kept for [`REFRESH`], so that an
//! address added while mailbrake runs is known within it; a connection from
//! elsewhere costs a shared read lock and a hash lookup.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long the list is kept before it is read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The addresses, and when they were read. Session threads share it for
/// reading; the one that finds it stale reads it again, the others go on
/// with the old list meanwhile.
static OWN: RwLock<Option<(HashSet<IpAddr>, Instant)>> = RwLock::new(None);

/// Whether `ip` (normal: not IPv4-mapped) is this host's: loopback, or an
/// address of one of its interfaces. (An address only routed to this host,
/// as a `local` route can make a whole prefix, is not among them.)
pub fn is_own(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    let now = crate::clock::now();
    let (found, fresh) = {
        let own = OWN.read().unwrap_or_else(|e| e.into_inner());
        match own.as_ref() {
            Some((addrs, read)) => (
                Some(addrs.contains(&ip)),
                now.saturating_duration_since(*read) < REFRESH,
            ),
            None => (None, false),
        }
    };
    match (found, fresh) {
        (Some(found), true) => found,
        // Stale: whoever gets the lock first reads the list again, the
        // others answer from the old one.
        (Some(found), false) => match OWN.try_write() {
            Ok(mut own) => refresh(&mut own, ip, now),
            Err(_) => found,
        },
        // Never read: wait for it.
        (None, _) => {
            let mut own = OWN.write().unwrap_or_else(|e| e.into_inner());
            refresh(&mut own, ip, now)
        }
    }
}

/// Reads the list into `own`; whether `ip` is on it.
fn refresh(own: &mut Option<(HashSet<IpAddr>, Instant)>, ip: IpAddr, now: Instant) -> bool {
    let addrs: HashSet<IpAddr> = read().into_iter().collect();
    let found = addrs.contains(&ip);
    *own = Some((addrs, now));
    found
}

/// Every interface address; none when they cannot be read (then only
/// loopback clients are known as local).
fn read() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(all) => all
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_hosts_interfaces_are_its_own() {
        assert!(is_own("127.0.0.1".parse().unwrap()));
        assert!(is_own("127.3.4.5".parse().unwrap()));
        assert!(is_own("::1".parse().unwrap()));
        // TEST-NET-2: never an interface's address here.
        assert!(!is_own("198.51.100.77".parse().unwrap()));
        for ip in read() {
            assert!(is_own(ip), "{ip}");
        }
    }
}
