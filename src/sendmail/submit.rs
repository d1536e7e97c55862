//! The submission over mailbrake's Unix socket: blocking I/O around the
//! pure [`Dialogue`], every read and write bounded by what is left of one
//! deadline for the whole submission, connecting included.

use std::io::{self, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dialogue::{Action, Dialogue, Failure, Step, check_addresses};
use super::message::Message;
use super::reply::{self, Garbled, Reply};

/// How one submission goes.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// The name EHLO gives.
    pub helo: &'a str,
    /// The time the whole submission may take, connecting included (at
    /// most [`MAX_TIMEOUT`]: a longer one is cut to it).
    pub timeout: Duration,
    /// The time RSET and QUIT may take once the outcome is known (within
    /// `timeout`): a server slow to say goodbye does not hold the caller.
    pub wind_down: Duration,
}

/// [`Settings::wind_down`] for the command.
pub const WIND_DOWN: Duration = Duration::from_secs(5);
/// The longest [`Settings::timeout`]: a day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Submits `msg` through the socket at `socket`. With `trace`, the dialogue
/// is written there, client lines as `>>> ` and server lines as `<<< `,
/// the message itself left out.
pub fn submit(
    socket: &Path,
    msg: &Message,
    settings: Settings,
    trace: Option<&mut dyn Write>,
) -> Result<(), Failure> {
    check_addresses(msg)?;
    let deadline = later(crate::clock::now(), settings.timeout);
    let stream = connect(socket, deadline).map_err(|error| Failure::Connect {
        path: socket.display().to_string(),
        error,
    })?;
    let mut conn = Conn {
        stream,
        deadline,
        buf: Vec::new(),
        trace,
    };
    let mut dialogue = Dialogue::new(msg, settings.helo);
    let broken = loop {
        let reply = match conn.read_reply() {
            Ok(r) => r,
            Err(broken) => break broken,
        };
        let action = dialogue.on_reply(reply);
        if dialogue.decided() {
            conn.deadline = conn
                .deadline
                .min(later(crate::clock::now(), settings.wind_down));
        }
        let sent = match action {
            Action::Close => return dialogue.outcome(),
            Action::Send(command) => conn.command(&command),
            Action::SendMessage => conn.message(&msg.data),
        };
        if let Err(broken) = sent {
            break broken;
        }
    };
    let step = dialogue.step();
    dialogue.interrupted(broken.at(step))
}

/// `wait` after `now`, a wait longer than [`MAX_TIMEOUT`] cut to it: an
/// `Instant` cannot hold every `Duration`, and adding past its end panics.
/// (Within a day of its end, which no clock reaches, the time is up.)
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(MAX_TIMEOUT)).unwrap_or(now)
}

/// Connects before `deadline`. On Linux a stream socket's send timeout
/// also bounds `connect` while the listener's backlog is full.
fn connect(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(time_left(deadline)?))?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(socket.into())
}

/// What is left before `deadline`, or a timeout.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(crate::clock::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// How the connection failed at some step.
#[derive(Debug)]
enum Broken {
    Timeout,
    Lost,
    Garbled(Garbled),
}

impl Broken {
    fn at(self, step: Step) -> Failure {
        match self {
            Broken::Timeout => Failure::Timeout { step },
            Broken::Lost => Failure::Lost { step },
            Broken::Garbled(error) => Failure::Garbled { step, error },
        }
    }
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Broken {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Broken::Timeout,
            _ => Broken::Lost,
        }
    }
}

/// The connection, its deadline and the bytes read but not yet parsed.
struct Conn<'t> {
    stream: UnixStream,
    deadline: Instant,
    buf: Vec<u8>,
    trace: Option<&'t mut dyn Write>,
}

impl Conn<'_> {
    fn read_reply(&mut self) -> Result<Reply, Broken> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = reply::parse(&self.buf).map_err(Broken::Garbled)? {
                self.buf.drain(..used);
                self.trace_reply(&reply);
                // Nothing is pipelined, so more is a server out of step.
                if !self.buf.is_empty() {
                    return Err(Broken::Garbled(Garbled::Unsolicited));
                }
                return Ok(reply);
            }
            self.stream
                .set_read_timeout(Some(time_left(self.deadline)?))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Broken::Lost),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn command(&mut self, command: &str) -> Result<(), Broken> {
        self.trace(format_args!("{command}"));
        let mut out = Timed(&self.stream, self.deadline);
        out.write_all(format!("{command}\r\n").as_bytes())?;
        Ok(())
    }

    fn message(&mut self, data: &[u8]) -> Result<(), Broken> {
        self.trace(format_args!("({} bytes of message, not shown)", data.len()));
        self.trace(format_args!("."));
        let mut out = BufWriter::with_capacity(64 * 1024, Timed(&self.stream, self.deadline));
        for piece in dot_stuffed(data) {
            out.write_all(piece)?;
        }
        out.write_all(end_of_data(data))?;
        out.flush()?;
        Ok(())
    }

    fn trace(&mut self, line: std::fmt::Arguments) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, ">>> {line}");
        }
    }

    fn trace_reply(&mut self, reply: &Reply) {
        if let Some(t) = self.trace.as_mut() {
            let last = reply.lines.len().saturating_sub(1);
            for (i, text) in reply.lines.iter().enumerate() {
                let sep = if i == last { ' ' } else { '-' };
                let _ = writeln!(t, "<<< {}{sep}{text}", reply.code);
            }
        }
    }
}

/// Writes to the stream, each write bounded by what is left of the deadline.
struct Timed<'s>(&'s UnixStream, Instant);

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.set_write_timeout(Some(time_left(self.1)?))?;
        let mut stream = self.0;
        stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The message's pieces as sent after DATA: a line that starts with `.`
/// gets another one in front (RFC 5321 §4.5.2). `data`'s lines end in CRLF.
pub fn dot_stuffed(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|&b| b == b'\n').flat_map(|line| {
        let dot: &[u8] = if line.starts_with(b".") { b"." } else { b"" };
        [dot, line]
    })
}

/// The line that ends the data, after a CRLF if the message lacks its last.
pub fn end_of_data(data: &[u8]) -> &'static [u8] {
    if data.is_empty() || data.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

#[cfg(test)]
mod tests;
