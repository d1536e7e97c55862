//! A Unix socket listener's sessions per Unix user (`max_sessions_per_user`):
//! one site holding connections open, or opening them faster than they end,
//! takes at most its share, and the other sites' mail still gets in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Sessions in progress per uid (kept across reloads).
#[derive(Debug, Default)]
pub struct UserSessions {
    counts: Mutex<HashMap<u32, usize>>,
}

/// One session of a user, counted until dropped.
#[derive(Debug)]
pub struct UserSession {
    of: Arc<UserSessions>,
    uid: u32,
}

impl UserSessions {
    /// A session for `uid`, unless it has `max` already.
    pub fn enter(self: &Arc<Self>, uid: u32, max: usize) -> Option<UserSession> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSession {
            of: self.clone(),
            uid,
        })
    }

    /// Sessions `uid` has now.
    pub fn of(&self, uid: u32) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for UserSession {
    fn drop(&mut self) {
        let mut counts = self.of.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_own_share_and_gets_it_back() {
        let all = Arc::new(UserSessions::default());
        let a1 = all.enter(1007, 2).expect("first");
        let a2 = all.enter(1007, 2).expect("second");
        assert!(all.enter(1007, 2).is_none(), "a third of two");
        let b = all.enter(1008, 2).expect("another user has its own");
        assert_eq!((all.of(1007), all.of(1008)), (2, 1));
        drop(a1);
        let a3 = all.enter(1007, 2).expect("one ended: room again");
        drop((a2, a3, b));
        assert_eq!((all.of(1007), all.of(1008)), (0, 0));
        assert!(
            all.counts.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }
}
