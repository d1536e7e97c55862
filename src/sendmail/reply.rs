//! SMTP replies as the submission client reads them (RFC 5321 §4.2): one
//! or more lines, `250-…` continued and `250 …` last, all with one code.
//! Pure and incremental: [`parse`] says "not yet" until a whole reply is in
//! the buffer, and refuses what no SMTP server sends, with bounds, so that a
//! broken or hostile peer is a temporary failure and never a panic.

use std::fmt;

/// The longest reply line taken, CRLF included (RFC 5321 §4.5.3.1.5 says
/// 512; some servers write longer texts).
pub const MAX_LINE: usize = 4096;
/// The most bytes one reply may span, all its lines together.
pub const MAX_REPLY: usize = 64 * 1024;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200 to 599.
    pub code: u16,
    /// The text of each line, after the code and its separator, control
    /// characters replaced by `?`.
    pub lines: Vec<String>,
}

/// Bytes that are not an SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Garbled {
    #[error("a reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("a reply longer than {MAX_REPLY} bytes")]
    ReplyTooLong,
    #[error("a reply line without a code")]
    NoCode,
    #[error("a multi-line reply whose lines have different codes")]
    MixedCodes,
    /// More than the one reply awaited: the client sends one command at a time.
    #[error("more bytes than the reply awaited")]
    Unsolicited,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// 4xx or 5xx.
    pub fn is_negative(&self) -> bool {
        self.is_transient() || self.is_permanent()
    }
}

/// The code and the lines' texts joined by a space, as printed for the
/// caller: `450 4.7.1 Recipient limit reached`.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

/// The reply at the start of `buf` and how many bytes it takes, or `None`
/// while it is incomplete. Lines end in CRLF or a bare LF.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, Garbled> {
    let mut at = 0;
    let mut reply: Option<Reply> = None;
    loop {
        let rest = &buf[at..];
        let Some(end) = memchr::memchr(b'\n', &rest[..rest.len().min(MAX_LINE)]) else {
            if rest.len() >= MAX_LINE {
                return Err(Garbled::LineTooLong);
            }
            return if at + rest.len() >= MAX_REPLY {
                Err(Garbled::ReplyTooLong)
            } else {
                Ok(None)
            };
        };
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += end + 1;
        if at > MAX_REPLY {
            return Err(Garbled::ReplyTooLong);
        }
        let (code, last, text) = split_line(line)?;
        let reply = reply.get_or_insert_with(|| Reply {
            code,
            lines: Vec::new(),
        });
        if reply.code != code {
            return Err(Garbled::MixedCodes);
        }
        reply.lines.push(text);
        if last {
            return Ok(Some((reply.clone(), at)));
        }
    }
}

/// `250-text` → (250, not last, "text"); `250 text` and `250` are last.
fn split_line(line: &[u8]) -> Result<(u16, bool, String), Garbled> {
    let digits = line.get(..3).ok_or(Garbled::NoCode)?;
    let valid = matches!(digits[0], b'2'..=b'5') && digits[1..].iter().all(u8::is_ascii_digit);
    if !valid {
        return Err(Garbled::NoCode);
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err(Garbled::NoCode),
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default())
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Ok((code, last, text))
}

/// What an EHLO reply advertises that the client uses (RFC 6152, 1870, 6531).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    pub eight_bit_mime: bool,
    pub size: bool,
    pub smtp_utf8: bool,
}

impl Extensions {
    /// Reads the keywords of an EHLO reply's lines after the first.
    pub fn of(ehlo: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in ehlo.lines.iter().skip(1) {
            let keyword = line.split_ascii_whitespace().next().unwrap_or_default();
            match keyword.to_ascii_uppercase().as_str() {
                "8BITMIME" => ext.eight_bit_mime = true,
                "SIZE" => ext.size = true,
                "SMTPUTF8" => ext.smtp_utf8 = true,
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests;
