//! Framing of upstream replies: splits the upstream's byte stream into whole
//! (possibly multi-line) replies, keeping their raw bytes so they can be
//! relayed exactly as the MTA wrote them.

use thiserror::Error;

/// One complete reply from the upstream, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code of the first line.
    pub code: u16,
    /// Every line, terminators included.
    pub raw: Vec<u8>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The text of each line after the code and separator, without the line ending.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.raw
            .split_inclusive(|&b| b == b'\n')
            .map(|line| trim_eol(line.get(4..).unwrap_or(b"")))
    }

    /// The text of the last line, lossily decoded, for logs.
    pub fn last_text(&self) -> String {
        let text = self.texts().last().unwrap_or(b"");
        String::from_utf8_lossy(text).into_owned()
    }
}

/// Strips a trailing CRLF or LF.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Why upstream bytes are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("upstream sent a line that is not an SMTP reply: {0:?}")]
    Malformed(String),
    #[error("upstream reply longer than {0} bytes")]
    TooLong(usize),
}

/// Accumulates upstream bytes and yields whole replies.
#[derive(Debug)]
pub struct ReplyReader {
    buf: Vec<u8>,
    /// Offset in `buf` where the current reply starts.
    start: usize,
    /// Offset up to which `buf` is known to hold complete continuation lines.
    scanned: usize,
    max: usize,
}

impl ReplyReader {
    pub fn new(max: usize) -> Self {
        ReplyReader {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, if one is buffered.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.scanned..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if self.buf.len() - self.start > self.max {
                    return Err(ReplyError::TooLong(self.max));
                }
                return Ok(None);
            };
            let line_start = self.scanned;
            let line = &self.buf[line_start..line_start + nl + 1];
            self.scanned = line_start + nl + 1;
            if self.scanned - self.start > self.max {
                return Err(ReplyError::TooLong(self.max));
            }
            let text = trim_eol(line);
            let code_ok = text.len() >= 3 && text[..3].iter().all(u8::is_ascii_digit);
            let sep = text.get(3).copied();
            if !code_ok || !matches!(sep, None | Some(b' ') | Some(b'-')) {
                return Err(ReplyError::Malformed(
                    String::from_utf8_lossy(text).chars().take(80).collect(),
                ));
            }
            if sep == Some(b'-') {
                continue;
            }
            let raw = self.buf[self.start..self.scanned].to_vec();
            let first = &raw[..3];
            let code = first.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
            self.start = self.scanned;
            return Ok(Some(Reply { code, raw }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_single_and_multiline_replies_in_any_split() {
        let input = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n354 go\n";
        let expected = vec![
            (220, &b"220 mx ESMTP\r\n"[..]),
            (250, &b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"[..]),
            (354, &b"354 go\n"[..]),
        ];
        for cut in 0..=input.len() {
            let mut r = ReplyReader::new(1024);
            let mut got = Vec::new();
            for piece in [&input[..cut], &input[cut..]] {
                r.push(piece);
                while let Some(reply) = r.next_reply().unwrap() {
                    got.push(reply);
                }
            }
            let got: Vec<_> = got.iter().map(|r| (r.code, r.raw.as_slice())).collect();
            assert_eq!(got, expected, "cut {cut}");
        }
    }

    #[test]
    fn refuses_garbage_and_overlong() {
        let mut r = ReplyReader::new(1024);
        r.push(b"hello\r\n");
        assert!(matches!(r.next_reply(), Err(ReplyError::Malformed(_))));
        let mut r = ReplyReader::new(16);
        r.push(b"250-aaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(r.next_reply(), Err(ReplyError::TooLong(16)));
    }

    #[test]
    fn texts_and_bare_code() {
        let mut r = ReplyReader::new(1024);
        r.push(b"250-mx.example\r\n250 AUTH PLAIN\r\n421\r\n");
        let reply = r.next_reply().unwrap().unwrap();
        let texts: Vec<_> = reply.texts().collect();
        assert_eq!(texts, vec![&b"mx.example"[..], &b"AUTH PLAIN"[..]]);
        assert_eq!(reply.last_text(), "AUTH PLAIN");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 421);
    }
}
