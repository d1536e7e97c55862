//! The message a sendmail caller writes on standard input, made ready to
//! submit the way Postfix's pickup and cleanup would: LF or CRLF line ends
//! read alike, a leading mbox `From ` line dropped, a lone `.` line ending
//! the input unless `-i`, recipients taken from To, Cc and Bcc with `-t`,
//! Bcc removed, and a missing From, Date or Message-ID added. One rule is
//! mailbrake's own: a bare CR ends a line too (see `split_lines`). Pure:
//! the caller passes the user, the host name, the date and a message id.

use super::args::Options;

/// What the caller knows that the message does not say.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The local user running the command (the envelope sender's local
    /// part when `-f` is not given).
    pub login: &'a str,
    /// The host's mail domain.
    pub domain: &'a str,
    /// The user's full name as the system knows it, for an added From when
    /// `-F` gives none.
    pub full_name: Option<&'a str>,
    /// Now, as an RFC 5322 date.
    pub date: &'a str,
    /// A fresh message id, without angle brackets.
    pub message_id: &'a str,
}

/// A message ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The envelope sender (empty: the null sender).
    pub sender: String,
    /// The envelope recipients, in order, each once.
    pub recipients: Vec<String>,
    /// The message, every line ending in CRLF, not yet dot-stuffed.
    pub data: Vec<u8>,
}

/// A message that cannot be submitted; the command exits with EX_USAGE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("no recipient addresses found in the message's headers")]
    NoRecipients,
}

/// The fields `-t` reads recipients from, and the Resent- ones that take
/// their place when a message has any.
const RECIPIENTS: &[&str] = &["to", "cc", "bcc"];
const RESENT_RECIPIENTS: &[&str] = &["resent-to", "resent-cc", "resent-bcc"];
/// The fields removed from every message submitted.
const BLIND: &[&str] = &["bcc", "resent-bcc"];

/// Prepares `input` as `opts` and `ctx` say.
pub fn prepare(input: &[u8], opts: &Options, ctx: &Context) -> Result<Message, MessageError> {
    let lines = lines(input, opts.dot_ends_input);
    let (fields, body_at) = header_fields(&lines);
    // An address without a domain is this host's, as Postfix's
    // append_at_myorigin makes it (cron mails "root").
    let qualified = |addr: &str| {
        if addr.is_empty() || addr.contains('@') {
            addr.to_owned()
        } else {
            format!("{addr}@{}", ctx.domain)
        }
    };
    let sender = match &opts.sender {
        Some(s) => qualified(s),
        None => format!("{}@{}", ctx.login, ctx.domain),
    };

    let mut recipients: Vec<String> = Vec::new();
    let mut add = |addr: String| {
        let addr = qualified(&addr);
        if !addr.is_empty() && !recipients.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
            recipients.push(addr);
        }
    };
    opts.recipients.iter().cloned().for_each(&mut add);
    if opts.extract_recipients {
        // Resent- headers, when there are any, name this sending's recipients.
        let resent = fields.iter().any(|f| f.name_is(RESENT_RECIPIENTS));
        let names = if resent {
            RESENT_RECIPIENTS
        } else {
            RECIPIENTS
        };
        for field in fields.iter().filter(|f| f.name_is(names)) {
            addresses(&field.value(&lines))
                .into_iter()
                .for_each(&mut add);
        }
    }
    if recipients.is_empty() {
        return Err(MessageError::NoRecipients);
    }

    let mut data = Vec::with_capacity(input.len() + 256);
    let has = |names: &[&str]| fields.iter().any(|f| f.name_is(names));
    if !has(&["from"]) {
        let from = match opts.full_name.as_deref().or(ctx.full_name) {
            // The null sender has no mailbox: Postfix's cleanup writes this.
            _ if sender.is_empty() => "From: MAILER-DAEMON".to_owned(),
            Some(name) => format!("From: {} <{sender}>", quote_name(name)),
            None => format!("From: {sender}"),
        };
        push_line(&mut data, from.as_bytes());
    }
    if !has(&["date"]) {
        push_line(&mut data, format!("Date: {}", ctx.date).as_bytes());
    }
    if !has(&["message-id"]) {
        push_line(
            &mut data,
            format!("Message-ID: <{}>", ctx.message_id).as_bytes(),
        );
    }
    for field in &fields {
        if !field.name_is(BLIND) {
            for (i, line) in lines[field.lines.clone()].iter().enumerate() {
                let folded = i > 0 && !matches!(line.text.first(), Some(b' ' | b'\t'));
                if folded {
                    // The rest of a line a bare CR broke: folded, so that
                    // it stays this field's.
                    data.push(b' ');
                }
                push_line(&mut data, line.text);
            }
        }
    }
    if body_at < lines.len() && !lines[body_at].text.is_empty() {
        // Headers end with an empty line, added where the input had none.
        push_line(&mut data, b"");
    }
    for line in &lines[body_at..] {
        push_line(&mut data, line.text);
    }
    Ok(Message {
        sender,
        recipients,
        data,
    })
}

/// One line of the input, without its end.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    text: &'a [u8],
    /// It follows a bare CR, not a LF: in the header, the rest of the line
    /// before it (a continuation), not a line of its own.
    after_cr: bool,
}

/// The input's lines, up to a lone `.` when `dot_ends` (a whole line
/// between LFs, as Postfix reads it: a `.` beside a bare CR is text). The
/// mbox `From ` lines the input starts with (`>From ` too) are dropped, as
/// Postfix's sendmail drops them: procmail and formail write one.
fn lines(input: &[u8], dot_ends: bool) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut leading = true;
    for (line, whole) in split_lines(input) {
        leading = leading && is_mbox_from(line.text);
        if leading {
            continue;
        }
        if dot_ends && whole && line.text == b"." {
            break;
        }
        out.push(line);
    }
    out
}

/// The input's lines without their ends: a LF, with the CRs before it (as
/// Postfix's sendmail strips them), or a bare CR. A bare CR is a line end
/// for some readers, so it is one here too: no CR is left that mailbrake's
/// proxy (or an MTA) could read as the start of `CR . CR`, and every line
/// is dot-stuffed on the wire as it should be. Each comes with whether it is
/// a whole line between LFs. A last line without an end is kept.
fn split_lines(input: &[u8]) -> impl Iterator<Item = (Line<'_>, bool)> {
    input.split_inclusive(|&b| b == b'\n').flat_map(|piece| {
        let piece = piece.strip_suffix(b"\n").unwrap_or(piece);
        let crs = piece.iter().rev().take_while(|&&b| b == b'\r').count();
        let piece = &piece[..piece.len() - crs];
        let whole = !piece.contains(&b'\r');
        piece
            .split(|&b| b == b'\r')
            .enumerate()
            .map(move |(i, text)| {
                let line = Line {
                    text,
                    after_cr: i > 0,
                };
                (line, whole)
            })
    })
}

/// An mbox separator line, `From ` after any number of `>`.
fn is_mbox_from(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    line[quotes..].starts_with(b"From ")
}

/// One header field: the lines it spans (its first and continuations).
struct Field {
    name: String,
    lines: std::ops::Range<usize>,
}

impl Field {
    fn name_is(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.name.eq_ignore_ascii_case(n))
    }

    /// The value, unfolded.
    fn value(&self, lines: &[Line]) -> String {
        let mut v = String::new();
        for (i, line) in lines[self.lines.clone()].iter().enumerate() {
            let text = String::from_utf8_lossy(line.text);
            let text = if i == 0 {
                text.split_once(':').map_or("", |(_, v)| v).to_owned()
            } else {
                text.into_owned()
            };
            v.push_str(&text);
        }
        v
    }
}

/// The header fields at the top of `lines`, and where the rest begins (the
/// empty line after them, or the first line that is not a field).
fn header_fields(lines: &[Line]) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // Folded, or the rest of a line a bare CR broke (not a field of its
        // own: "From: Evil\rName <a@x>" is one From).
        let continuation = matches!(line.text.first(), Some(b' ' | b'\t'))
            || (line.after_cr && !line.text.is_empty() && field_name(line.text).is_none());
        if continuation && let Some(last) = fields.last_mut() {
            last.lines.end = i + 1;
            continue;
        }
        match field_name(line.text) {
            Some(name) => fields.push(Field {
                name,
                lines: i..i + 1,
            }),
            None => return (fields, i),
        }
    }
    (fields, lines.len())
}

/// The name of a header line `Name:`, or `Name :` in RFC 5322's obsolete
/// syntax (§4.5.3): printable ASCII, then spaces or tabs before the colon,
/// as Postfix's `is_header_buf` reads it. The name comes without them.
fn field_name(line: &[u8]) -> Option<String> {
    let colon = memchr::memchr(b':', line)?;
    let name = line[..colon].trim_ascii_end();
    let blank_only = |b: &[u8]| b.iter().all(|&c| c == b' ' || c == b'\t');
    (!name.is_empty()
        && name.iter().all(|b| (33..=126).contains(b))
        && blank_only(&line[name.len()..colon]))
    .then(|| String::from_utf8_lossy(name).into_owned())
}

/// The addresses of an RFC 5322 address list: `a@x`, `Name <a@x>`,
/// `"Quoted, Name" <a@x>`, comments, domain literals, and groups
/// (`team: a@x, b@y;`, `undisclosed-recipients:;`). A bare local part
/// (`root`, as cron writes) is kept as it is, and qualified by the caller.
fn addresses(list: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum In {
        Text,
        Quoted,
        Literal,
    }
    let mut out = Vec::new();
    // The text outside angle brackets, and the text inside them.
    let (mut word, mut angle) = (String::new(), None::<String>);
    let (mut state, mut comment, mut escaped, mut in_angle) = (In::Text, 0u32, false, false);
    for c in list.chars() {
        let target = if in_angle {
            angle.get_or_insert_with(String::new)
        } else {
            &mut word
        };
        if escaped {
            escaped = false;
            if comment == 0 {
                target.push(c);
            }
            continue;
        }
        if comment > 0 {
            match c {
                '\\' => escaped = true,
                '(' => comment += 1,
                ')' => comment -= 1,
                _ => {}
            }
            continue;
        }
        match (&state, c) {
            (In::Quoted, '\\') => {
                escaped = true;
                target.push(c);
            }
            (In::Quoted, '"') | (In::Literal, ']') => {
                state = In::Text;
                target.push(c);
            }
            (In::Quoted | In::Literal, _) => target.push(c),
            (In::Text, '"') => {
                state = In::Quoted;
                target.push(c);
            }
            (In::Text, '[') => {
                state = In::Literal;
                target.push(c);
            }
            (In::Text, '(') => comment = 1,
            (In::Text, '<') => {
                in_angle = true;
                angle = Some(String::new());
            }
            (In::Text, '>') if in_angle => in_angle = false,
            // A group's name is not an address.
            (In::Text, ':') if !in_angle => word.clear(),
            (In::Text, ',' | ';') if !in_angle => {
                let addr = angle.take().unwrap_or_else(|| word.clone());
                word.clear();
                out.push(addr);
            }
            (In::Text, _) => target.push(c),
        }
    }
    out.push(angle.unwrap_or(word));
    out.into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

/// A display name as it may stand in a From header: quoted when it needs
/// to be, and without control characters, so it cannot end the line.
fn quote_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        name
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn push_line(data: &mut Vec<u8>, line: &[u8]) {
    data.extend_from_slice(line);
    data.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
