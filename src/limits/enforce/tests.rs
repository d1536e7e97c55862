//! The enforcer between the engine and the session, with a fake clock and
//! a stub fleet: the exact reply each decision gets, what stays reserved
//! after the upstream's replies, and what a dropped decision leaves behind.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::*;
use crate::config::{Limit, LimitsConfig, ProtectConfig, Rate};
use crate::identity::ClientAddr;
use crate::limits::shared::Unavailable;
use crate::limits::tests::{limiter, rate};
use crate::limits::{Event, Time};
use crate::session::MessageInfo;

/// The fake clock's start: 13:46:40 UTC on 1970-01-12.
const T0: Time = 1_000_000;
const KEY: &str = "ip:192.0.2.7";

fn rcpt() -> RcptCheck {
    RcptCheck {
        recipient: "bob@example.net".into(),
        mail_from: "alice@example.com".into(),
        user: None,
        first_in_transaction: true,
    }
}

fn limits(rates: Vec<Rate>) -> LimitsConfig {
    LimitsConfig {
        default: Limit::Rates(rates),
        lock_after_refusals: None,
        rotation: None,
        ..LimitsConfig::default()
    }
}

/// One RCPT an hour per sender, so a second one in a test is too quick.
fn paced() -> ProtectConfig {
    ProtectConfig {
        rcpt_pace: Some(rate(1, 3600)),
        ..ProtectConfig::default()
    }
}

/// An enforcer for a client at 192.0.2.7 (key `ip:192.0.2.7`), on a fake
/// clock at [`T0`], and the limiter and clock it uses.
fn enforcer(cfg: LimitsConfig, protect: ProtectConfig) -> (Enforcer, Arc<Limiter>, Arc<AtomicU32>) {
    let (limiter, time) = limiter(cfg);
    let protect = Arc::new(Protect::new(&protect));
    let client = ClientAddr::new("192.0.2.7:4321".parse().unwrap());
    let e = Enforcer::new(limiter.clone(), protect, Identity::by_address(client), None);
    assert_eq!(e.key().to_string(), KEY);
    (e, limiter, time)
}

fn refused(text: &str) -> Verdict {
    Verdict::Refuse(text.into())
}

/// `n` forwarded recipients accepted by the upstream, then their message.
fn deliver(e: &mut Enforcer, n: usize) {
    for _ in 0..n {
        e.on_tx(TxEvent::RcptReply { accepted: true });
    }
    e.on_tx(TxEvent::EndSent);
    let message = MessageInfo {
        size: 100,
        waited: Duration::ZERO,
    };
    e.on_tx(TxEvent::End {
        delivered: true,
        message,
    });
}

/// (reserved, sent in the window) for the test's key.
fn counts(l: &Limiter) -> (u32, usize) {
    let status = l.status(&SenderKey::parse(KEY).unwrap(), None);
    (status.pending, status.rates[0].1)
}

/// Sends journaled: (held in a window, not).
fn sends(l: &Limiter) -> (usize, usize) {
    let journal = l.drain_journal();
    let sent = |w: bool| {
        let is = |e: &&Event| matches!(e, Event::Sent { windowed, .. } if *windowed == w);
        journal.iter().filter(is).count()
    };
    (sent(true), sent(false))
}

fn poll_once(f: &mut Pending<'_, Verdict>) -> Poll<Verdict> {
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

// === The local engine ===

#[tokio::test]
async fn over_the_limit_is_deferred_until_the_window_frees_up() {
    let (mut e, l, time) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(counts(&l), (2, 0));
    let in_progress = "450 4.7.1 Recipient limit reached for ip:192.0.2.7 (2/1h); \
                       next recipient accepted when messages in progress are sent";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(in_progress));
    assert_eq!(counts(&l), (2, 0), "a refused recipient holds nothing");

    deliver(&mut e, 2);
    assert_eq!(counts(&l), (0, 2));
    let free_at = "450 4.7.1 Recipient limit reached for ip:192.0.2.7 (2/1h); \
                   next recipient accepted in 60 min (14:46 UTC)";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(free_at));
    time.store(T0 + 2400, Ordering::SeqCst);
    let later = "450 4.7.1 Recipient limit reached for ip:192.0.2.7 (2/1h); \
                 next recipient accepted in 20 min (14:46 UTC)";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(later));
    time.store(T0 + 3600, Ordering::SeqCst);
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(counts(&l), (1, 0), "both sends left the window at once");
}

/// An enforcer under `1/1h` with `action`, its one recipient accepted.
async fn one_an_hour(action: LimitAction) -> (Enforcer, Arc<Limiter>) {
    let cfg = LimitsConfig {
        action,
        ..limits(vec![rate(1, 3600)])
    };
    let (mut e, l, _) = enforcer(cfg, ProtectConfig::default());
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    (e, l)
}

#[tokio::test]
async fn reject_words_the_refusal_as_permanent() {
    let (mut e, l) = one_an_hour(LimitAction::Reject).await;
    let text = "550 5.7.1 Recipient limit reached for ip:192.0.2.7 (1/1h); \
                next recipient accepted when messages in progress are sent";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    e.on_tx(TxEvent::RcptReply { accepted: false });
    assert_eq!(counts(&l), (0, 0), "the upstream's refusal released it");
}

#[tokio::test]
async fn observe_mode_forwards_over_the_limit_holding_nothing() {
    let (mut e, l) = one_an_hour(LimitAction::Observe).await;
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(counts(&l), (1, 0), "the observed one is not reserved");
    deliver(&mut e, 2);
    assert_eq!(counts(&l), (0, 1));
    assert_eq!(sends(&l), (1, 1), "both sent, one of them in the window");
}

#[tokio::test]
async fn a_locked_sender_is_told_until_when_and_whom_to_contact() {
    let cfg = LimitsConfig {
        contact: Some("postmaster@example.net".into()),
        ..limits(vec![rate(12, 3600)])
    };
    let (mut e, l, time) = enforcer(cfg, ProtectConfig::default());
    let lock = Lock {
        until: Some(T0 + 86_400),
        reason: LockReason::Operator("spam".into()),
    };
    l.lock(&SenderKey::parse(KEY).unwrap(), lock);
    let text = "450 4.7.1 Sender ip:192.0.2.7 is locked (locked by an operator: spam) \
                for 24 h (until 1970-01-13 13:46 UTC); contact postmaster@example.net";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert_eq!(counts(&l), (0, 0));
    time.store(T0 + 86_400, Ordering::SeqCst);
    assert_eq!(
        e.check_rcpt(&rcpt()).await,
        Verdict::Accept,
        "the lock ran out"
    );
}

#[tokio::test]
async fn too_quick_a_recipient_gives_back_its_reservation() {
    let (mut e, l, _) = enforcer(limits(vec![rate(12, 3600)]), paced());
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    let text = "450 4.7.1 Too many recipients too quickly for ip:192.0.2.7; slow down";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert_eq!(counts(&l), (1, 0));
}

#[test]
fn a_local_decision_is_made_in_one_poll_or_not_at_all() {
    let (mut e, l, _) = enforcer(limits(vec![rate(12, 3600)]), ProtectConfig::default());
    let check = rcpt();
    drop(e.check_rcpt(&check));
    assert_eq!(counts(&l), (0, 0), "dropped unpolled: nothing reserved");
    assert!(e.ledger.is_empty());
    let mut pending = e.check_rcpt(&check);
    assert_eq!(poll_once(&mut pending), Poll::Ready(Verdict::Accept));
    drop(pending);
    assert_eq!(counts(&l), (1, 0));
}

#[tokio::test]
async fn recipients_are_deferred_unreserved_while_the_limits_are_unsaved() {
    let (mut e, l, _) = enforcer(limits(vec![rate(12, 3600)]), ProtectConfig::default());
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(counts(&l), (1, 0), "an accepted recipient is reserved");
    e.on_tx(TxEvent::RcptReply { accepted: true });
    e.on_tx(TxEvent::Reset);
    assert_eq!(counts(&l), (0, 0), "and released by an accepted RSET");

    assert!(!l.set_unsaved(true));
    let text = "451 4.3.0 Recipient limits cannot be saved right now; try again later";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert_eq!(counts(&l), (0, 0), "a deferred recipient is never reserved");
    assert!(l.set_unsaved(false));
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(counts(&l), (1, 0));
}

#[test]
fn refusals_count_as_over_the_limit_unless_the_sender_is_locked() {
    let full = Refusal::OverLimit(Full {
        rate: rate(1, 3600),
        next_free: None,
    });
    let locked = Refusal::Locked(Lock {
        until: None,
        reason: LockReason::Refusals(51),
    });
    let cases = [
        (Refused::Limit(full), "over_limit"),
        (Refused::Limit(locked), "locked"),
        (Refused::TooQuickly, "over_limit"),
        (Refused::Unavailable, "over_limit"),
        (Refused::Unsaved, "over_limit"),
    ];
    for (refused, decision) in cases {
        assert_eq!(refused.decision(), decision, "{refused:?}");
    }
}

// === The fleet ===

/// What the stub's Redis answers a reserve with: now, or never.
enum Answer {
    Now(Result<FleetDecision, Unavailable>),
    Never,
}

/// A fleet that answers as told and writes down every call.
#[derive(Default)]
struct Stub {
    answers: Mutex<VecDeque<Answer>>,
    fail_open: bool,
    /// Whether sharing a lock never finishes.
    lock_hangs: bool,
    ids: AtomicU32,
    calls: Mutex<Vec<String>>,
}

impl Stub {
    fn new(answers: impl IntoIterator<Item = Answer>) -> Self {
        Stub {
            answers: Mutex::new(answers.into_iter().collect()),
            ..Stub::default()
        }
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn reserved() -> Answer {
    Answer::Now(Ok(FleetDecision::Reserved))
}

impl Remote for Stub {
    fn commit(&self, key: &SenderKey, id: &str) {
        self.note(format!("commit {key} {id}"));
    }
    fn release(&self, key: &SenderKey, id: &str) {
        self.note(format!("release {key} {id}"));
    }
}

impl FleetLimits for Stub {
    fn fail_open(&self) -> bool {
        self.fail_open
    }

    fn new_id(&self) -> Option<String> {
        Some(format!("id{}", self.ids.fetch_add(1, Ordering::SeqCst)))
    }

    fn reserve<'a>(
        &'a self,
        key: &'a str,
        rates: &'a [Rate],
        now: Time,
        id: &'a str,
    ) -> Pending<'a, Result<FleetDecision, Unavailable>> {
        let rates: Vec<_> = rates
            .iter()
            .map(|r| format!("{}/{}s", r.count, r.window.as_secs()))
            .collect();
        self.note(format!("reserve {key} {id} {} at {now}", rates.join(",")));
        match self.answers.lock().unwrap().pop_front() {
            Some(Answer::Now(answer)) => Box::pin(std::future::ready(answer)),
            Some(Answer::Never) | None => Box::pin(std::future::pending()),
        }
    }

    fn lock<'a>(
        &'a self,
        key: &'a str,
        until: Option<Time>,
        reason: &'a str,
        now: Time,
    ) -> Pending<'a, Result<(), Unavailable>> {
        self.note(format!("lock {key} until {until:?} ({reason}) at {now}"));
        if self.lock_hangs {
            return Box::pin(std::future::pending());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

fn in_fleet(e: Enforcer, stub: &Arc<Stub>) -> Enforcer {
    e.with_fleet(stub.clone())
}

#[tokio::test]
async fn a_fleet_reservation_is_released_on_a_refused_rcpt_and_committed_on_delivery() {
    let stub = Arc::new(Stub::new([reserved(), reserved()]));
    let (e, l, _) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    e.on_tx(TxEvent::RcptReply { accepted: false });
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    assert_eq!(e.ledger.len(), 1);
    deliver(&mut e, 1);
    assert_eq!(
        stub.calls(),
        [
            "reserve ip:192.0.2.7 id0 2/3600s at 1000000",
            "release ip:192.0.2.7 id0",
            "reserve ip:192.0.2.7 id1 2/3600s at 1000000",
            "commit ip:192.0.2.7 id1",
        ]
    );
    assert!(e.ledger.is_empty());
    assert_eq!(counts(&l), (0, 0), "nothing is held in the local engine");
    assert_eq!(sends(&l), (0, 1), "the send is in the hourly totals");
}

#[tokio::test]
async fn a_full_fleet_window_is_refused_with_its_rate_and_the_lock_is_shared() {
    let full = || {
        Answer::Now(Ok(FleetDecision::Full {
            rate_index: 1,
            next_free: Some(T0 + 1800),
        }))
    };
    let locked = Answer::Now(Ok(FleetDecision::Locked {
        until: Some(T0 + 86_400),
        reason: "3 refused recipients".into(),
    }));
    let stub = Arc::new(Stub::new([full(), full(), full(), locked]));
    let cfg = LimitsConfig {
        lock_after_refusals: Some(2),
        ..limits(vec![rate(2, 3600), rate(5, 86_400)])
    };
    let (e, l, _) = enforcer(cfg, ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let text = "450 4.7.1 Recipient limit reached for ip:192.0.2.7 (5/1day); \
                next recipient accepted in 30 min (14:16 UTC)";
    for _ in 0..3 {
        assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    }
    let lock = "450 4.7.1 Sender ip:192.0.2.7 is locked (3 refused recipients) \
                for 24 h (until 1970-01-13 13:46 UTC)";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(lock));
    let calls = stub.calls();
    assert_eq!(
        calls[3],
        "lock ip:192.0.2.7 until Some(1086400) (3 refused recipients) at 1000000"
    );
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls.iter().all(|c| !c.starts_with("release")), "{calls:?}");
    assert!(e.ledger.is_empty());
    assert_eq!(counts(&l), (0, 0));
}

#[tokio::test]
async fn a_sender_locked_in_the_fleet_is_refused_with_the_fleets_reason() {
    let locked = Answer::Now(Ok(FleetDecision::Locked {
        until: None,
        reason: "locked by an operator: spam".into(),
    }));
    let stub = Arc::new(Stub::new([locked]));
    let (e, _, _) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let text = "450 4.7.1 Sender ip:192.0.2.7 is locked (locked by an operator: spam) \
                until an operator unlocks it";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert_eq!(stub.calls().len(), 1);
    assert!(e.ledger.is_empty());
}

#[tokio::test]
async fn an_unreachable_fleet_defers_or_accepts_uncounted() {
    for fail_open in [false, true] {
        let down = Answer::Now(Err(Unavailable::new("down")));
        let stub = Arc::new(Stub {
            fail_open,
            ..Stub::new([down])
        });
        let (e, l, _) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
        let mut e = in_fleet(e, &stub);
        let verdict = e.check_rcpt(&rcpt()).await;
        if fail_open {
            assert_eq!(verdict, Verdict::Accept);
            deliver(&mut e, 1);
            assert_eq!(sends(&l), (0, 1), "sent uncounted, still totalled");
        } else {
            let text = "451 4.3.0 Recipient limits are temporarily unavailable; try again later";
            assert_eq!(verdict, refused(text));
            assert_eq!(sends(&l), (0, 0));
        }
        assert_eq!(
            stub.calls(),
            ["reserve ip:192.0.2.7 id0 2/3600s at 1000000"],
            "nothing to settle (fail_open = {fail_open})"
        );
        assert!(e.ledger.is_empty());
    }
}

#[tokio::test]
async fn an_unreachable_fleet_still_refuses_a_sender_locked_here() {
    let down = || Answer::Now(Err(Unavailable::new("down")));
    let stub = Arc::new(Stub {
        fail_open: true,
        ..Stub::new([down(), down()])
    });
    let (e, l, _) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let key = SenderKey::parse(KEY).unwrap();
    let reason = LockReason::Operator("compromised".into());
    l.lock(
        &key,
        Lock {
            until: None,
            reason,
        },
    );
    let text = "450 4.7.1 Sender ip:192.0.2.7 is locked (locked by an operator: compromised) \
                until an operator unlocks it";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert!(l.unlock(&key));
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept, "open again");
    assert_eq!(e.ledger.len(), 1);
}

#[tokio::test]
async fn an_unreachable_fleet_lets_through_a_sender_whose_lock_ran_out() {
    let down = || Answer::Now(Err(Unavailable::new("down")));
    let stub = Arc::new(Stub {
        fail_open: true,
        ..Stub::new([down(), down()])
    });
    let (e, l, time) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let key = SenderKey::parse(KEY).unwrap();
    let reason = LockReason::Operator("compromised".into());
    l.lock(
        &key,
        Lock {
            until: Some(T0 + 60),
            reason,
        },
    );
    assert!(matches!(e.check_rcpt(&rcpt()).await, Verdict::Refuse(_)));
    time.store(T0 + 60, Ordering::SeqCst);
    assert_eq!(
        e.check_rcpt(&rcpt()).await,
        Verdict::Accept,
        "the lock ran out"
    );
}

#[tokio::test]
async fn too_quick_a_recipient_gives_back_its_fleet_reservation() {
    let stub = Arc::new(Stub::new([reserved(), reserved()]));
    let (e, _, _) = enforcer(limits(vec![rate(2, 3600)]), paced());
    let mut e = in_fleet(e, &stub);
    assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
    let text = "450 4.7.1 Too many recipients too quickly for ip:192.0.2.7; slow down";
    assert_eq!(e.check_rcpt(&rcpt()).await, refused(text));
    assert_eq!(stub.calls()[2], "release ip:192.0.2.7 id1");
    assert_eq!(stub.calls().len(), 3);
    assert_eq!(e.ledger.len(), 1);
}

#[tokio::test]
async fn a_fleet_decision_dropped_unanswered_releases_its_reservation() {
    let stub = Arc::new(Stub::new([Answer::Never, reserved()]));
    let (e, _, _) = enforcer(limits(vec![rate(2, 3600)]), ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let check = rcpt();
    drop(e.check_rcpt(&check));
    assert!(stub.calls().is_empty(), "dropped unpolled: nothing asked");

    let mut pending = e.check_rcpt(&check);
    assert_eq!(poll_once(&mut pending), Poll::Pending);
    assert_eq!(stub.calls().len(), 1, "the reserve is sent");
    drop(pending);
    assert_eq!(stub.calls()[1], "release ip:192.0.2.7 id0");
    assert!(e.ledger.is_empty());

    // The next recipient is decided and settled as if nothing happened.
    assert_eq!(e.check_rcpt(&check).await, Verdict::Accept);
    e.on_tx(TxEvent::RcptReply { accepted: false });
    assert_eq!(stub.calls()[3], "release ip:192.0.2.7 id1");
    assert_eq!(stub.calls().len(), 4);
}

#[tokio::test]
async fn a_fleet_refusal_dropped_while_sharing_its_lock_has_nothing_to_release() {
    let full = Answer::Now(Ok(FleetDecision::Full {
        rate_index: 0,
        next_free: None,
    }));
    let stub = Arc::new(Stub {
        lock_hangs: true,
        ..Stub::new([full])
    });
    let cfg = LimitsConfig {
        lock_after_refusals: Some(0),
        ..limits(vec![rate(2, 3600)])
    };
    let (e, _, _) = enforcer(cfg, ProtectConfig::default());
    let mut e = in_fleet(e, &stub);
    let check = rcpt();
    let mut pending = e.check_rcpt(&check);
    assert_eq!(poll_once(&mut pending), Poll::Pending);
    drop(pending);
    let calls = stub.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1].starts_with("lock ip:192.0.2.7 "), "{calls:?}");
    assert!(e.ledger.is_empty());
}
