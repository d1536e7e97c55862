//! `mailbrake sendmail`: a sendmail(8)-compatible submission command, for
//! PHP's `mail()`, scripts and cron. It reads the whole message first, then
//! submits it over SMTP to mailbrake's Unix socket, all recipients or none,
//! and says how it went in its exit status. It runs as `mailbrake sendmail
//! [--socket PATH] [options] [recipients]`, or through a link named
//! `sendmail` (then every argument is sendmail's). It never reads
//! mailbrake's configuration, and starts no runtime.
//!
//! - [`command`]: the invocation, the socket's path, the steps in order,
//!   what is printed and the exit status.
//! - [`args`]: the command line, as Postfix's `sendmail` reads it.
//! - [`message`]: the message on standard input, made ready to submit.
//! - [`local`]: what the system says: the login, full name, mail domain,
//!   host name, the date and a fresh message id.
//! - [`dialogue`]: the client's SMTP dialogue, pure: replies in, commands out.
//! - [`reply`]: SMTP replies, parsed incrementally and bounded.
//! - [`submit`]: the socket: connecting, the timeouts and the deadline,
//!   dot-stuffing, the `-v` transcript.
//!
//! # Exit status
//!
//! The sysexits codes, as sendmail's callers read them:
//!
//! | status | name | when |
//! | --- | --- | --- |
//! | 0 | EX_OK | the end-of-data reply was 2xx, every RCPT having been accepted |
//! | 64 | EX_USAGE | a bad command line, a message with no recipient, an address or a `-F` name with a control character |
//! | 65 | EX_DATAERR | the end-of-data reply was 5xx: the message itself is refused |
//! | 67 | EX_NOUSER | recipients refused with 5xx, none with 4xx; nothing was sent |
//! | 69 | EX_UNAVAILABLE | the socket cannot be connected (missing, refused, permission denied), or 5xx to the greeting, EHLO, MAIL or DATA |
//! | 74 | EX_IOERR | standard input cannot be read |
//! | 75 | EX_TEMPFAIL | any 4xx (a recipient deferred, or the greeting, EHLO, MAIL, DATA or end of data); a timeout or the deadline; the connection lost or a reply garbled or unexpected at any point, after the final dot included (the outcome is then unknown) |

pub mod args;
pub mod command;
pub mod dialogue;
pub mod local;
pub mod message;
pub mod reply;
pub mod submit;

/// The exit statuses of `<sysexits.h>` the command uses.
pub mod sysexits {
    pub const EX_OK: u8 = 0;
    pub const EX_USAGE: u8 = 64;
    pub const EX_DATAERR: u8 = 65;
    pub const EX_NOUSER: u8 = 67;
    pub const EX_UNAVAILABLE: u8 = 69;
    pub const EX_IOERR: u8 = 74;
    pub const EX_TEMPFAIL: u8 = 75;
}

#[cfg(test)]
mod fake_mta;
