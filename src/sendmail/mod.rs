//! `mailbrake sendmail`: a sendmail(8)-compatible submission command, for
//! PHP's `mail()`, scripts and cron. Being built: its command line and its
//! message are read here; the submission and the command itself are still
//! to come, and nothing runs this module yet.
//!
//! - [`args`]: the command line, as Postfix's `sendmail` reads it.
//! - [`message`]: the message on standard input, made ready to submit.

pub mod args;
pub mod message;
