//! What a session waits for besides its two legs: its timer, the stop
//! token, and a policy decision that may take a while.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::WaitForCancellationFuture;

use super::outbox::{Outbox, Sent};
use super::{DriverEnv, READ_BUF_MAX, ReadBuf, SessionPolicy, ready_now};
use crate::clock::now;
use crate::leg::Leg;
use crate::session::{Action, Failure, RcptCheck, Session, Verdict, replies};

/// A time no timer waits for: a year from now.
pub(crate) fn far() -> tokio::time::Instant {
    tokio::time::Instant::from_std(now()) + Duration::from_secs(86_400 * 365)
}

/// What wakes a session besides its two legs: its one timer and the stop
/// token.
///
/// The timer is moved earlier when the session's deadline comes sooner, and
/// otherwise left to fire and be re-armed: most events push the deadline
/// later, and resetting a timer on each of them costs more than an early
/// wake-up (the session ignores one that comes before its deadline).
pub(crate) struct Wakeups<'a, 'e> {
    timer: Pin<&'a mut tokio::time::Sleep>,
    armed: Option<Instant>,
    stopped: Pin<&'a mut WaitForCancellationFuture<'e>>,
    stopping: bool,
}

/// Which of the [`Wakeups`] fired.
pub(crate) enum Wake {
    Timer,
    Stop,
}

impl<'a, 'e> Wakeups<'a, 'e> {
    pub fn new(
        timer: Pin<&'a mut tokio::time::Sleep>,
        stopped: Pin<&'a mut WaitForCancellationFuture<'e>>,
    ) -> Self {
        Wakeups {
            timer,
            armed: None,
            stopped,
            stopping: false,
        }
    }

    /// Moves the timer earlier if the session's deadline now comes sooner.
    pub fn arm(&mut self, session: &Session) {
        let deadline = session.deadline();
        if deadline.is_some_and(|d| self.armed.is_none_or(|a| d < a)) {
            self.set(deadline);
        }
    }

    fn set(&mut self, at: Option<Instant>) {
        self.armed = at;
        self.timer
            .as_mut()
            .reset(at.map_or_else(far, tokio::time::Instant::from_std));
    }

    pub async fn next(&mut self) -> Wake {
        tokio::select! {
            _ = &mut self.timer => Wake::Timer,
            _ = &mut self.stopped, if !self.stopping => Wake::Stop,
        }
    }

    /// Tells the session what woke it.
    pub fn handle(&mut self, wake: Wake, session: &mut Session) -> Vec<Action> {
        match wake {
            Wake::Timer => {
                let actions = session.on_timeout(now());
                // Re-arm from the session's deadline now, whether this was
                // it or an earlier one that has since moved.
                self.set(session.deadline());
                actions
            }
            Wake::Stop => {
                self.stopping = true;
                session.on_failure(Failure::ShuttingDown)
            }
        }
    }
}

/// Asks the policy about one recipient. A decision may wait (a shared limit
/// in Redis), and while it does the session still reads the upstream's
/// replies, keeps its deadlines, stops when mailbrake stops, and ends when
/// its client leaves. The last three, or an upstream that fails, drop the
/// pending decision (which releases whatever it reserved): the RCPT is never
/// forwarded. None when the client does not take its replies: the session is
/// over.
///
/// `queued` holds what the session did after asking, still to be carried
/// out. Meanwhile the bytes the session writes go out at once, in order
/// after those (the MAIL before this RCPT, the replies to earlier ones), and
/// its other actions wait in the returned ones, before the verdict's own: the policy is busy, and the
/// ledger takes replies in the order of the steps they answer, which the
/// RCPT being decided comes after. The client is read only to see it leave:
/// what it pipelines is kept (up to one full read buffer, then it waits)
/// and given to the session after the verdict, in order. A client that
/// closes with commands still unprocessed is not leaving yet: they are
/// served first.
pub(crate) async fn decide<C, U>(
    check: RcptCheck,
    session: &mut Session,
    (client, upstream): (&mut Leg<C>, &mut Leg<U>),
    policy: &mut dyn SessionPolicy,
    wake: &mut Wakeups<'_, '_>,
    (cbuf, ubuf): (&mut ReadBuf, &mut ReadBuf),
    (out, queued, env): (&mut Outbox, &mut VecDeque<Action>, &DriverEnv),
) -> Option<Vec<Action>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut decision = policy.check_rcpt(&check);
    if let Some(verdict) = ready_now(&mut decision).await {
        return Some(session.on_rcpt_verdict(verdict, now()));
    }
    // What the session did before it asked (the driver's queue behind this
    // RCPT) comes before anything it does while the decision waits.
    let mut later = Vec::new();
    keep(queued.drain(..).collect(), out, &mut later);
    let mut early: Vec<u8> = Vec::new();
    let mut eof = session.client_closed();
    loop {
        match out.send(client, upstream, env).await {
            Sent::Ok => {}
            Sent::ClientGone => return None,
            Sent::UpstreamGone => keep(session.on_upstream_eof(now()), out, &mut later),
        }
        if session.is_closed() {
            return Some(later);
        }
        if eof && early.is_empty() && !session.has_unprocessed_input() {
            // Nothing more will come: the decision is dropped and the RCPT
            // answered locally. The session still relays what the MTA owes
            // earlier commands, for a client that only half-closed.
            tracing::info!(rcpt = %check.recipient, "client closed while its recipient was being decided");
            later.extend(session.on_client_eof(now()));
            let undecided = Verdict::Refuse(replies::RCPT_UNDECIDED.into());
            later.extend(session.on_rcpt_verdict(undecided, now()));
            return Some(later);
        }
        wake.arm(session);
        tokio::select! {
            biased;
            verdict = &mut decision => {
                later.extend(session.on_rcpt_verdict(verdict, now()));
                if !early.is_empty() {
                    later.extend(session.on_client_bytes(&early, now()));
                }
                if eof && !session.client_closed() {
                    later.extend(session.on_client_eof(now()));
                }
                return Some(later);
            }
            r = upstream.read(&mut ubuf.0) => {
                let actions = match r {
                    Ok(0) | Err(_) => session.on_upstream_eof(now()),
                    Ok(n) => {
                        let actions = session.on_upstream_bytes(&ubuf.0[..n], now());
                        ubuf.fit(n);
                        actions
                    }
                };
                keep(actions, out, &mut later);
            }
            w = wake.next() => keep(wake.handle(w, session), out, &mut later),
            r = client.read(&mut cbuf.0), if !eof && early.len() < READ_BUF_MAX => match r {
                Ok(n) if n > 0 => early.extend_from_slice(&cbuf.0[..n]),
                _ => eof = true,
            },
        }
    }
}

/// Sorts what the session did while a decision waits: bytes are gathered to
/// go out now, as long as only bytes and transaction events (which write
/// nothing) came before them; everything else waits for the verdict, in
/// order.
fn keep(actions: Vec<Action>, out: &mut Outbox, later: &mut Vec<Action>) {
    for action in actions {
        let in_order = later.iter().all(|a| matches!(a, Action::Tx(_)));
        later.extend(if in_order {
            out.gather(action)
        } else {
            Some(action)
        });
    }
}
