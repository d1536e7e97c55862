//! The command itself: which invocation is a sendmail one, where the socket
//! is, and the steps in order: the command line, all of standard input, the
//! message, the submission, one line on stderr a failure and the exit status.
//!
//! Standard input is read to its end before the socket is touched, so a
//! caller killed while writing sends nothing.

use std::ffi::{OsStr, OsString};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::sysexits::*;
use super::{args, dialogue, local, message, submit};

/// The submission socket when neither `--socket` nor the environment names one.
pub const SOCKET: &str = "/run/mailbrake/submit.sock";
/// The environment variable naming the socket, under `--socket`.
pub const SOCKET_ENV: &str = "MAILBRAKE_SUBMIT_SOCKET";
/// The environment variable giving the whole submission's time, in seconds
/// (1 to [`submit::MAX_TIMEOUT`]).
pub const TIMEOUT_ENV: &str = "MAILBRAKE_SUBMIT_TIMEOUT";
/// The whole submission's time by default, connecting to QUIT.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A sendmail invocation's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--socket` options may lead (`mailbrake sendmail`); through a
    /// `sendmail` link every argument is sendmail's.
    socket_option: bool,
    args: Vec<OsString>,
}

impl Invocation {
    /// The arguments after `mailbrake sendmail`.
    pub fn subcommand(args: Vec<OsString>) -> Invocation {
        Invocation {
            socket_option: true,
            args,
        }
    }
}

/// The sendmail invocation `argv` is, if any: the program run through a
/// link named `sendmail`, or `mailbrake sendmail …`.
pub fn invocation(argv: &[OsString]) -> Option<Invocation> {
    let program = argv.first().and_then(|p| Path::new(p).file_name());
    if program == Some(OsStr::new("sendmail")) {
        return Some(Invocation {
            socket_option: false,
            args: argv[1..].to_vec(),
        });
    }
    (argv.get(1)? == "sendmail").then(|| Invocation::subcommand(argv[2..].to_vec()))
}

/// What the command takes from its environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `MAILBRAKE_SUBMIT_SOCKET`.
    pub socket: Option<OsString>,
    /// `MAILBRAKE_SUBMIT_TIMEOUT`.
    pub timeout: Option<OsString>,
}

impl Env {
    /// This process's.
    pub fn of_process() -> Env {
        Env {
            socket: std::env::var_os(SOCKET_ENV),
            timeout: std::env::var_os(TIMEOUT_ENV),
        }
    }
}

/// Runs the command on this process's standard input, stderr and
/// environment; the status is the module doc's table.
pub fn run(invocation: Invocation) -> ExitCode {
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let status = execute(
        &invocation,
        &Env::of_process(),
        &mut stdin.lock(),
        interactive,
        &mut io::stderr(),
    );
    ExitCode::from(status)
}

/// The command, with its input, stderr and environment given. With
/// `interactive` (a terminal on standard input), a bad command line is
/// reported without waiting for a message; otherwise input is read to its
/// end first either way, so that the caller's writes never fail.
pub fn execute(
    invocation: &Invocation,
    env: &Env,
    stdin: &mut impl Read,
    interactive: bool,
    stderr: &mut impl Write,
) -> u8 {
    let setup = setup(invocation, env);
    if let Err(e) = &setup
        && interactive
    {
        say(stderr, e);
        return EX_USAGE;
    }
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input);
    let (socket, timeout, opts) = match setup {
        Ok(s) => s,
        Err(e) => {
            say(stderr, e);
            return EX_USAGE;
        }
    };
    if let Err(e) = read {
        say(stderr, format_args!("cannot read standard input: {e}"));
        return EX_IOERR;
    }

    let system = local::System::read();
    let now = crate::clock::unix_seconds();
    let date = local::rfc5322_date(now);
    let random = local::random_bits();
    let id = local::message_id(now, random, std::process::id(), &system.domain);
    let ctx = message::Context {
        login: &system.login,
        domain: &system.domain,
        full_name: system.full_name.as_deref(),
        date: &date,
        message_id: &id,
    };
    let msg = match message::prepare(&input, &opts, &ctx) {
        Ok(m) => m,
        Err(e) => {
            say(stderr, e);
            return EX_USAGE;
        }
    };
    drop(input);

    let settings = submit::Settings {
        helo: &system.hostname,
        timeout,
        wind_down: submit::WIND_DOWN,
    };
    let trace = if opts.verbose {
        Some(&mut *stderr as &mut dyn Write)
    } else {
        None
    };
    let outcome = submit::submit(&socket, &msg, settings, trace);
    if let Err(failure) = &outcome {
        failure.to_string().lines().for_each(|l| say(stderr, l));
    }
    dialogue::exit_status(&outcome)
}

/// One line on stderr, named as sendmail's are.
fn say(stderr: &mut impl Write, line: impl std::fmt::Display) {
    let _ = writeln!(stderr, "sendmail: {line}");
}

/// A command line or environment the command cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Usage(#[from] args::UsageError),
    #[error("--socket needs a path")]
    SocketPath,
    #[error(
        "{TIMEOUT_ENV} must be a whole number of seconds from 1 to {max}, not {0:?}",
        max = submit::MAX_TIMEOUT.as_secs()
    )]
    Timeout(String),
}

/// The socket, the submission's time and the sendmail options.
fn setup(
    invocation: &Invocation,
    env: &Env,
) -> Result<(PathBuf, Duration, args::Options), SetupError> {
    let (flag, rest) = if invocation.socket_option {
        socket_option(&invocation.args)?
    } else {
        (None, &invocation.args[..])
    };
    let socket = flag
        .or_else(|| {
            env.socket
                .clone()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(SOCKET));
    let timeout = match &env.timeout {
        None => TIMEOUT,
        Some(t) => timeout(t)?,
    };
    let opts = args::parse(rest.iter().map(|a| a.to_string_lossy().into_owned()))?;
    Ok((socket, timeout, opts))
}

/// The leading `--socket PATH` / `--socket=PATH` options (the last one
/// counts), and the arguments after them.
fn socket_option(args: &[OsString]) -> Result<(Option<PathBuf>, &[OsString]), SetupError> {
    let mut path = None;
    let mut rest = args;
    while let Some(first) = rest.first() {
        let first = first.as_bytes();
        if first == b"--socket" {
            path = Some(rest.get(1).ok_or(SetupError::SocketPath)?.into());
            rest = &rest[2..];
        } else if let Some(value) = first.strip_prefix(b"--socket=") {
            if value.is_empty() {
                return Err(SetupError::SocketPath);
            }
            path = Some(OsStr::from_bytes(value).into());
            rest = &rest[1..];
        } else {
            break;
        }
    }
    Ok((path, rest))
}

fn timeout(value: &OsStr) -> Result<Duration, SetupError> {
    let text = value.to_string_lossy();
    match text.trim().parse::<u64>() {
        Ok(secs) if (1..=submit::MAX_TIMEOUT.as_secs()).contains(&secs) => {
            Ok(Duration::from_secs(secs))
        }
        _ => Err(SetupError::Timeout(text.into_owned())),
    }
}

#[cfg(test)]
mod tests;
