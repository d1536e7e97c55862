//! The client's side of one SMTP submission, as a pure state machine: each
//! reply in, the next thing to send out, until the outcome is known. No
//! sockets and no clock; [`super::submit`] does the I/O around it.
//!
//! All or nothing: every recipient is offered, and DATA is sent only when
//! all were accepted; otherwise RSET and QUIT, so a caller that retries on
//! failure never sends twice to the recipients that were accepted.

use std::fmt;

use super::message::Message;
use super::reply::{Extensions, Reply};
use super::sysexits::*;

/// Where the dialogue is: the command whose reply it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    Mail,
    /// The RCPT for the recipient at this index.
    Rcpt(usize),
    Data,
    /// The message and its final dot were sent.
    EndOfData,
    Rset,
    Quit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::Mail => "MAIL FROM",
            Step::Rcpt(_) => "RCPT TO",
            Step::Data => "DATA",
            Step::EndOfData => "message",
            Step::Rset => "RSET",
            Step::Quit => "QUIT",
        })
    }
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this command (without its CRLF) and read the reply.
    Send(String),
    /// Send the message, dot-stuffed, and the final dot; read the reply.
    SendMessage,
    /// Close the connection: the outcome is known.
    Close,
}

/// A recipient the server refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub recipient: String,
    pub reply: Reply,
}

/// Why a submission did not go through.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot connect to {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    /// An address no SMTP command can carry (a control character, CR or LF).
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("{step} refused: {reply}")]
    Refused { step: Step, reply: Reply },
    /// One line a refused recipient; nothing was sent to the others.
    #[error("{}", recipient_lines(.0))]
    Recipients(Vec<Refusal>),
    #[error("unexpected reply to {step}: {reply}")]
    Unexpected { step: Step, reply: Reply },
    #[error("timed out during {step}{}", unknown(*.step))]
    Timeout { step: Step },
    #[error("connection lost during {step}{}", unknown(*.step))]
    Lost { step: Step },
    #[error("garbled reply to {step}: {error}{}", unknown(*.step))]
    Garbled {
        step: Step,
        error: super::reply::Garbled,
    },
}

fn recipient_lines(refused: &[Refusal]) -> String {
    let lines: Vec<String> = refused
        .iter()
        .map(|r| format!("{}: {}", r.recipient, r.reply))
        .collect();
    lines.join("\n")
}

fn unknown(step: Step) -> &'static str {
    if step == Step::EndOfData {
        ": whether the message was accepted is unknown"
    } else {
        ""
    }
}

/// The sysexits status a submission's outcome exits with.
pub fn exit_status(outcome: &Result<(), Failure>) -> u8 {
    outcome.as_ref().map_or_else(Failure::exit_code, |()| EX_OK)
}

impl Failure {
    /// The sysexits status the command exits with (the module doc's table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Connect { error, .. } => match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => EX_TEMPFAIL,
                _ => EX_UNAVAILABLE,
            },
            Failure::Address(_) => EX_USAGE,
            Failure::Refused { reply, .. } if reply.is_transient() => EX_TEMPFAIL,
            Failure::Refused {
                step: Step::EndOfData,
                ..
            } => EX_DATAERR,
            Failure::Refused { .. } => EX_UNAVAILABLE,
            Failure::Recipients(refused) if refused.iter().any(|r| r.reply.is_transient()) => {
                EX_TEMPFAIL
            }
            Failure::Recipients(_) => EX_NOUSER,
            Failure::Unexpected { .. }
            | Failure::Timeout { .. }
            | Failure::Lost { .. }
            | Failure::Garbled { .. } => EX_TEMPFAIL,
        }
    }
}

/// One submission of `msg`, from the greeting to QUIT.
#[derive(Debug)]
pub struct Dialogue<'a> {
    msg: &'a Message,
    helo: &'a str,
    step: Step,
    refused: Vec<Refusal>,
    /// The outcome, once decided, while RSET and QUIT finish.
    outcome: Option<Result<(), Failure>>,
}

impl<'a> Dialogue<'a> {
    /// A dialogue waiting for the greeting; `helo` is the name EHLO gives.
    pub fn new(msg: &'a Message, helo: &'a str) -> Dialogue<'a> {
        Dialogue {
            msg,
            helo,
            step: Step::Greeting,
            refused: Vec::new(),
            outcome: None,
        }
    }

    /// The step whose reply is awaited.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Takes the reply to the current step.
    pub fn on_reply(&mut self, reply: Reply) -> Action {
        let step = self.step;
        match step {
            Step::Quit => return Action::Close,
            Step::Rset => return self.quit(),
            Step::Rcpt(i) => return self.on_rcpt(i, reply),
            _ => {}
        }
        let expected = if step == Step::Data {
            reply.code == 354
        } else {
            reply.is_positive()
        };
        if !expected {
            let failure = if reply.is_negative() {
                Failure::Refused { step, reply }
            } else {
                Failure::Unexpected { step, reply }
            };
            return self.decide(Err(failure));
        }
        match step {
            Step::Greeting => {
                self.step = Step::Ehlo;
                Action::Send(format!("EHLO {}", self.helo))
            }
            Step::Ehlo => {
                self.step = Step::Mail;
                Action::Send(mail_from(self.msg, Extensions::of(&reply)))
            }
            Step::Mail => self.rcpt(0),
            Step::Data => {
                self.step = Step::EndOfData;
                Action::SendMessage
            }
            _ => self.decide(Ok(())),
        }
    }

    /// Whether the outcome is known (RSET and QUIT may still be under way).
    pub fn decided(&self) -> bool {
        self.outcome.is_some()
    }

    /// The outcome when the connection fails with `failure` at the current
    /// step: the one already decided, if any.
    pub fn interrupted(self, failure: Failure) -> Result<(), Failure> {
        self.outcome.unwrap_or(Err(failure))
    }

    /// The outcome once [`Action::Close`] was returned.
    pub fn outcome(self) -> Result<(), Failure> {
        self.outcome.unwrap_or(Ok(()))
    }

    fn on_rcpt(&mut self, i: usize, reply: Reply) -> Action {
        let recipient = &self.msg.recipients[i];
        if reply.is_negative() {
            self.refused.push(Refusal {
                recipient: recipient.clone(),
                reply,
            });
        } else if !reply.is_positive() {
            return self.decide(Err(Failure::Unexpected {
                step: Step::Rcpt(i),
                reply,
            }));
        }
        if i + 1 < self.msg.recipients.len() {
            return self.rcpt(i + 1);
        }
        if self.refused.is_empty() {
            self.step = Step::Data;
            return Action::Send("DATA".into());
        }
        let refused = std::mem::take(&mut self.refused);
        self.decide(Err(Failure::Recipients(refused)))
    }

    fn rcpt(&mut self, i: usize) -> Action {
        self.step = Step::Rcpt(i);
        Action::Send(format!("RCPT TO:<{}>", self.msg.recipients[i]))
    }

    /// Records the outcome and winds down: RSET first when a transaction
    /// is open (so nothing of it stays), then QUIT.
    fn decide(&mut self, outcome: Result<(), Failure>) -> Action {
        self.outcome = Some(outcome);
        match self.step {
            Step::Rcpt(_) => {
                self.step = Step::Rset;
                Action::Send("RSET".into())
            }
            _ => self.quit(),
        }
    }

    fn quit(&mut self) -> Action {
        self.step = Step::Quit;
        Action::Send("QUIT".into())
    }
}

/// `MAIL FROM:<sender>` with the parameters the message needs and the
/// server offers.
pub fn mail_from(msg: &Message, ext: Extensions) -> String {
    let mut cmd = format!("MAIL FROM:<{}>", msg.sender);
    if ext.eight_bit_mime && !msg.data.is_ascii() {
        cmd.push_str(" BODY=8BITMIME");
    }
    if ext.size {
        cmd.push_str(&format!(" SIZE={}", msg.data.len()));
    }
    if ext.smtp_utf8 && addresses(msg).any(|a| !a.is_ascii()) {
        cmd.push_str(" SMTPUTF8");
    }
    cmd
}

/// Refuses an address that would break the command it stands in.
pub fn check_addresses(msg: &Message) -> Result<(), Failure> {
    match addresses(msg).find(|a| a.chars().any(char::is_control)) {
        Some(bad) => Err(Failure::Address(bad.clone())),
        None => Ok(()),
    }
}

/// The sender, then the recipients.
fn addresses(msg: &Message) -> impl Iterator<Item = &String> {
    std::iter::once(&msg.sender).chain(&msg.recipients)
}

#[cfg(test)]
mod tests;
