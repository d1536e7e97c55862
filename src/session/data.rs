//! The DATA body scanner: finds the one true end of data (`CRLF . CRLF`) in a
//! stream of client bytes, and refuses the line-ending tricks that let a second
//! message be smuggled past an MTA that reads line endings differently
//! (CVE-2023-51764 and friends).
//!
//! The body is forwarded as it arrives, never buffered whole. The one byte
//! that could complete an end-of-data for a lenient MTA before mailbrake has
//! decided (the CR in `CRLF . CR`) is held back until the next byte is known.

/// Where the scanner is, in terms of line starts and dots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a line.
    InLine,
    /// Just after a CR; a LF makes a proper line start, anything else makes
    /// the CR a bare one.
    Cr,
    /// At the start of a line that began after CRLF (or the start of the body).
    LineStart,
    /// At the start of a line that began after a bare LF or a bare CR.
    BareLineStart,
    /// `CRLF .`
    Dot,
    /// `(bare LF | bare CR) .`
    BareDot,
    /// `CRLF . CR`, the CR not yet forwarded.
    DotCr,
}

/// What one call to [`DataScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The whole input is body; forward `input[..forward]`.
    More { forward: usize },
    /// End of data: [`DataScanner::take_held`] then `input[..end]` complete
    /// the message, terminator included; bytes from `end` on are commands again.
    End { end: usize },
    /// A bare CR or LF next to a `.` line: refuse the message.
    Smuggling,
}

/// Incremental scanner for one DATA body.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    /// A CR held back from the previous input, owed to the upstream.
    held: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataScanner {
    /// A scanner positioned at the first byte of a body (a line start).
    pub fn new() -> Self {
        DataScanner {
            state: State::LineStart,
            held: false,
        }
    }

    /// The byte held back by an earlier call (`b"\r"` or nothing), owed to
    /// the upstream before the bytes of an [`Scan::End`]. It is only ever
    /// released at the end of data: any other byte after it is smuggling.
    pub fn take_held(&mut self) -> &'static [u8] {
        if std::mem::take(&mut self.held) {
            b"\r"
        } else {
            b""
        }
    }

    /// Scans `input`. See [`Scan`] for what to forward.
    pub fn scan(&mut self, input: &[u8]) -> Scan {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::InLine {
                // Inside a line only a CR or LF can matter: jump to the next
                // one (memchr searches many bytes at a time).
                match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(skip) => i += skip,
                    None => break,
                }
            }
            let b = input[i];
            let mut state = self.state;
            if state == State::Cr && b != b'\n' {
                // The CR was bare: for a lenient reader it ended a line.
                state = State::BareLineStart;
            }
            self.state = match (state, b) {
                (State::Cr, _) => State::LineStart, // b == LF
                (State::LineStart, b'.') => State::Dot,
                (State::BareLineStart, b'.') => State::BareDot,
                (State::Dot, b'\r') => State::DotCr,
                (State::Dot, b'\n') | (State::BareDot, b'\r' | b'\n') => return Scan::Smuggling,
                (State::DotCr, b'\n') => {
                    self.state = State::LineStart;
                    return Scan::End { end: i + 1 };
                }
                (State::DotCr, _) => return Scan::Smuggling,
                (_, b'\r') => State::Cr,
                (_, b'\n') => State::BareLineStart,
                _ => State::InLine,
            };
            i += 1;
        }
        if self.state == State::DotCr && !input.is_empty() {
            // Hold the CR of `CRLF . CR`: it was the last byte of this input.
            self.held = true;
            Scan::More {
                forward: input.len() - 1,
            }
        } else {
            Scan::More {
                forward: input.len(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces split at `cut`, returning the bytes forwarded
    /// and the final outcome (`Some(end offset)`, `None` for more, `Err` for smuggling).
    /// `Ok(Some(end))`, `Ok(None)` for more, `Err(())` for smuggling.
    type Outcome = Result<Option<usize>, ()>;

    fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Outcome) {
        let mut s = DataScanner::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        for &stop in &bounds {
            let piece = &input[start..stop];
            match s.scan(piece) {
                Scan::More { forward } => {
                    out.extend_from_slice(&piece[..forward]);
                }
                Scan::End { end } => {
                    out.extend_from_slice(s.take_held());
                    out.extend_from_slice(&piece[..end]);
                    return (out, Ok(Some(start + end)));
                }
                Scan::Smuggling => return (out, Err(())),
            }
            start = stop;
        }
        (out, Ok(None))
    }

    #[test]
    fn finds_end_and_refuses_smuggling() {
        let cases: &[(&[u8], Outcome)] = &[
            (b"hello\r\n.\r\n", Ok(Some(10))),
            (b".\r\n", Ok(Some(3))),
            (b"a\r\n..\r\n.\r\nQUIT\r\n", Ok(Some(10))),
            (b"a\r\n.foo\r\nb\r\n.\r\n", Ok(Some(15))),
            (b"a\r\r\n.\r\n", Ok(Some(7))),
            (b"a\r\nb", Ok(None)),
            (b"8bit \xe9\xff\x00\r\n", Ok(None)),
            (b"bare\nlines\nare fine\r\n.\r\n", Ok(Some(24))),
            (b"bare\rcr is fine\r\n.\r\n", Ok(Some(20))),
            // CVE-2023-51764 class: a dot line with a non-canonical ending.
            (b"a\n.\r\nMAIL FROM:<x>\r\n", Err(())),
            (b"a\r\n.\nMAIL FROM:<x>\r\n", Err(())),
            (b"a\n.\nMAIL FROM:<x>\r\n", Err(())),
            (b"a\r.\r\nMAIL FROM:<x>\r\n", Err(())),
            (b"a\r\n.\rMAIL FROM:<x>\r\n", Err(())),
            (b"a\r.\rMAIL", Err(())),
            (b"\n.\r\n", Err(())),
        ];
        for (input, expected) in cases {
            let (_, got) = run(input, &[]);
            assert_eq!(got, *expected, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn every_split_gives_the_same_answer_and_bytes() {
        let inputs: &[&[u8]] = &[
            b"Subject: x\r\n\r\n..stuffed\r\nbody\r\n.\r\nQUIT\r\n",
            b"a\r\n.\rX",
            b"a\n.\r\n",
            b"line\r\n.\r",
        ];
        for input in inputs {
            let (whole_out, whole) = run(input, &[]);
            for cut in 0..=input.len() {
                let (out, got) = run(input, &[cut]);
                assert_eq!(
                    got,
                    whole,
                    "cut {cut} of {:?}",
                    String::from_utf8_lossy(input)
                );
                if whole.is_ok() {
                    assert_eq!(out, whole_out, "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn never_forwards_the_cr_after_a_dot_line_before_deciding() {
        let mut s = DataScanner::new();
        assert_eq!(s.scan(b"x\r\n.\r"), Scan::More { forward: 4 });
        // The client vanishes here: the upstream saw `x\r\n.` only.
        assert_eq!(s.scan(b""), Scan::More { forward: 0 });
        assert_eq!(s.scan(b"\n"), Scan::End { end: 1 });
        assert_eq!(s.take_held(), b"\r");
    }
}
