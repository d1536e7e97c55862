//! `mailbrake sendmail`: a sendmail(8)-compatible submission command, for
//! PHP's `mail()`, scripts and cron. Being built: its command line, its
//! message and SMTP replies are read here; the command itself is still to
//! come, and nothing runs this module yet.
//!
//! - [`args`]: the command line, as Postfix's `sendmail` reads it.
//! - [`message`]: the message on standard input, made ready to submit.
//! - [`reply`]: SMTP replies, parsed incrementally and bounded.

pub mod args;
pub mod message;
pub mod reply;
