//! A scripted SMTP server on a Unix socket in a temporary directory, for
//! the submission's tests (the unit tests, and `tests/sendmail_command.rs`
//! by path): it takes one connection, answers each thing it hears as its
//! script says, and hands over every byte the client sent once the client
//! is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// What the server heard.
#[derive(Debug)]
pub enum Heard<'a> {
    /// A client connected: time for the greeting.
    Connect,
    /// A command line, without its CRLF.
    Command(&'a str),
    /// The message after DATA, as sent (dot-stuffed, without the final dot).
    Message(&'a [u8]),
}

/// What the server does about it.
#[derive(Debug)]
pub enum Answer {
    /// Writes these bytes (a reply, or anything else).
    Send(String),
    /// Closes the connection.
    Close,
    /// Says nothing more, and waits for the client to go.
    Silent,
}

/// `Answer::Send` of one reply line: `reply("250 ok")`.
pub fn reply(line: &str) -> Answer {
    Answer::Send(format!("{line}\r\n"))
}

/// A server that accepts everything, and advertises 8BITMIME, SIZE and SMTPUTF8.
pub fn accepting(heard: &Heard) -> Answer {
    let command = match heard {
        Heard::Connect => return reply("220 fake.test ESMTP"),
        Heard::Message(_) => return reply("250 2.0.0 Ok: queued as 1A2B"),
        Heard::Command(c) => c.to_ascii_uppercase(),
    };
    let verb = command.split([' ', ':']).next().unwrap_or_default();
    match verb {
        "EHLO" => Answer::Send(
            "250-fake.test\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into(),
        ),
        "DATA" => reply("354 End data with <CR><LF>.<CR><LF>"),
        "QUIT" => reply("221 2.0.0 Bye"),
        _ => reply("250 2.0.0 Ok"),
    }
}

/// The server, listening.
pub struct FakeMta {
    pub path: PathBuf,
    transcript: mpsc::Receiver<Vec<u8>>,
    _dir: tempfile::TempDir,
}

impl FakeMta {
    /// Listens on `submit.sock` in a new temporary directory and serves one
    /// connection, on a thread, as `script` says.
    pub fn start(mut script: impl FnMut(&Heard) -> Answer + Send + 'static) -> FakeMta {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("submit.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake MTA");
        let (tx, transcript) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let _ = tx.send(serve(stream, &mut script));
        });
        FakeMta {
            path,
            transcript,
            _dir: dir,
        }
    }

    /// Every byte the client sent, once it closed the connection.
    pub fn transcript(&self) -> Vec<u8> {
        self.transcript
            .recv_timeout(Duration::from_secs(60))
            .expect("no client came and went")
    }

    /// The transcript as text, for assertions on the commands.
    pub fn transcript_text(&self) -> String {
        String::from_utf8_lossy(&self.transcript()).into_owned()
    }
}

fn serve(stream: UnixStream, script: &mut dyn FnMut(&Heard) -> Answer) -> Vec<u8> {
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let mut transcript = Vec::new();
    let mut heard = Heard::Connect;
    let mut buf = Vec::new();
    loop {
        let answer = script(&heard);
        let starts_data = matches!(heard, Heard::Command(c) if c.eq_ignore_ascii_case("DATA"));
        let in_data = match answer {
            Answer::Send(bytes) => {
                if writer.write_all(bytes.as_bytes()).is_err() {
                    break;
                }
                starts_data && bytes.starts_with("354")
            }
            Answer::Close => {
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return transcript;
            }
            Answer::Silent => {
                let _ = reader.read_to_end(&mut transcript);
                break;
            }
        };
        buf.clear();
        let complete = if in_data {
            read_message(&mut reader, &mut buf)
        } else {
            reader.read_until(b'\n', &mut buf).is_ok() && buf.ends_with(b"\n")
        };
        transcript.extend_from_slice(&buf);
        if !complete {
            break;
        }
        heard = if in_data {
            Heard::Message(&buf[..buf.len() - 3])
        } else {
            let line = std::str::from_utf8(&buf).unwrap_or("(not UTF-8)");
            Heard::Command(line.trim_end_matches(['\r', '\n']))
        };
    }
    let _ = reader.read_to_end(&mut transcript);
    transcript
}

/// Reads up to and with the line holding only `.`; false on EOF first.
fn read_message(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> bool {
    loop {
        let start = buf.len();
        match reader.read_until(b'\n', buf) {
            Ok(n) if n > 0 && buf.ends_with(b"\n") => {}
            _ => return false,
        }
        if &buf[start..] == b".\r\n" {
            return true;
        }
    }
}
