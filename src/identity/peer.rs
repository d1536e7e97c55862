//! A Unix socket's peer, as the kernel vouches for it (`SO_PEERCRED`: the
//! uid, gid and pid of the process that connected), and the names of local
//! users.
//!
//! Nothing the client writes changes its credentials: they are read from the
//! socket at accept, before a byte of SMTP. A name is asked of the user
//! database (NSS: `/etc/passwd`, or LDAP and the like, which may be slow) on
//! tokio's blocking pool, and kept for [`NAME_TTL`] so that a burst of
//! submissions asks once. "No such user" is kept only [`NO_NAME_TTL`], and
//! a database that cannot be read not at all: a directory's hiccup must not
//! move a user to its `uid:N` key (fresh counts, none of its locks) for
//! long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the kernel says of a Unix socket's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    /// Absent when the peer is in another pid namespace.
    pub pid: Option<i32>,
}

impl PeerCred {
    /// The credentials of `stream`'s peer.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(PeerCred {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }
}

impl std::fmt::Display for PeerCred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix:uid={},gid={}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, ",pid={pid}")?;
        }
        Ok(())
    }
}

/// How long a uid's name is kept: a user renamed or added is seen within it.
pub const NAME_TTL: Duration = Duration::from_secs(300);
/// How long "this uid has no name" is kept.
pub const NO_NAME_TTL: Duration = Duration::from_secs(10);

/// A uid's name, or none, and when it was asked.
type Named = (Option<String>, Instant);

/// Every uid asked of the user database lately.
static NAMES: Mutex<Option<HashMap<u32, Named>>> = Mutex::new(None);

/// The name of `uid` in the user database; `None` when it has none (or the
/// database cannot be read: the uid then counts as `uid:N`).
pub async fn user_name(uid: u32) -> Option<String> {
    let now = crate::clock::now();
    if let Some(name) = cached(uid, now) {
        return name;
    }
    let found = match tokio::task::spawn_blocking(move || lookup(uid)).await {
        Ok(found) => found.map_err(std::io::Error::from),
        Err(e) => Err(std::io::Error::other(e)),
    };
    match found {
        Ok(name) => {
            let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
            names
                .get_or_insert_with(HashMap::new)
                .insert(uid, (name.clone(), now));
            name
        }
        Err(e) => {
            tracing::warn!(uid, error = %e, "cannot read the user database; counting by uid");
            None
        }
    }
}

fn cached(uid: u32, now: Instant) -> Option<Option<String>> {
    let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let (name, asked) = names.as_ref()?.get(&uid)?;
    let ttl = if name.is_some() {
        NAME_TTL
    } else {
        NO_NAME_TTL
    };
    (now.saturating_duration_since(*asked) < ttl).then(|| name.clone())
}

fn lookup(uid: u32) -> nix::Result<Option<String>> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).map(|u| u.map(|u| u.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_kernel_names_the_peer_and_the_database_its_user() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let cred = PeerCred::of(&a).unwrap();
        assert_eq!(cred.uid, nix::unistd::getuid().as_raw());
        assert_eq!(cred.gid, nix::unistd::getgid().as_raw());
        assert_eq!(cred.pid, Some(std::process::id() as i32));
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .map(|u| u.name);
        assert_eq!(user_name(cred.uid).await, me);
        // Asked again: from the cache, the same.
        assert_eq!(user_name(cred.uid).await, me);
        // A uid nobody has.
        assert_eq!(user_name(3_999_999_999).await, None);
        assert!(
            cred.to_string()
                .starts_with(&format!("unix:uid={},", cred.uid))
        );
    }
}
