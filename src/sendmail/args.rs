//! sendmail(8)'s command line, read the way Postfix's `sendmail` reads it
//! (getopt over `A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:q:r:tvx`), since
//! that is what PHP, PHPMailer, WordPress and cron are written against:
//! options first, then recipients; `--` ends the options. The options a
//! submission does not need are accepted and ignored, as Postfix does; the
//! modes mailbrake does not offer (the queue, aliases, SMTP on standard
//! input) and what Postfix refuses too (any `-X` but VERP's `-XV`) are a
//! usage error, never a silent success.

/// What one invocation asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients also from the message's To, Cc and Bcc headers
    /// (added to those on the command line, as Postfix 2.1 and later do).
    pub extract_recipients: bool,
    /// Without `-i` / `-oi`, a line holding only `.` ends the message.
    pub dot_ends_input: bool,
    /// `-f ADDR`, `-fADDR` or `-r ADDR`: the envelope sender, without angle
    /// brackets (`-f '<>'` is the null sender, `Some("")`).
    pub sender: Option<String>,
    /// `-F NAME`: the sender's full name, for a From header added (never
    /// with a control character).
    pub full_name: Option<String>,
    /// `-v`, given at least once.
    pub verbose: bool,
    /// The recipients named on the command line, in order.
    pub recipients: Vec<String>,
}

/// A command line that cannot be carried out; the command exits with
/// EX_USAGE (64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("-{0} is not offered: mailbrake sendmail only submits mail (-bm)")]
    NotOffered(String),
    #[error("-{0} needs an argument")]
    MissingArgument(char),
    #[error("unknown option -{0}")]
    Unknown(char),
    #[error("-B needs 8BITMIME or 7BIT")]
    BodyType,
    #[error("-oA needs a path name")]
    AliasPath,
    #[error("recipients must be given on the command line or with -t")]
    NoRecipients,
    /// A `-F` name with a control character (CR, LF…), which would end the
    /// From line it is put in.
    #[error("invalid full name {0:?}: -F cannot hold a control character")]
    FullName(String),
    /// Any `-X` but VERP's `-XV` (Sendmail's `-X FILE` traffic log
    /// included), as Postfix's sendmail refuses it.
    #[error("-X{0} is not offered: there is no traffic log, and -X takes only V (VERP)")]
    NotOfferedX(String),
}

/// Options that take an argument (attached, or the next word).
const WITH_ARGUMENT: &str = "ABCFLNORVXbefhopqr";
/// Options that take none.
const FLAGS: &str = "GIUcimntvx";

/// Reads the arguments after the command's name.
pub fn parse<I, S>(args: I) -> Result<Options, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut opts = Options {
        dot_ends_input: true,
        ..Options::default()
    };
    let mut args = args.into_iter().map(Into::into).peekable();
    while let Some(arg) = args.next_if(|a| a.starts_with('-') && a.len() > 1) {
        if arg == "--" {
            break;
        }
        // Postfix reads these before getopt sees them: a lone -q; a lone -V
        // before a two-character word (`-V -i`), which is Postfix 2.2's VERP
        // and leaves the word alone; and VERP's -XV.
        if arg == "-q" {
            return Err(UsageError::NotOffered("q".into()));
        }
        let old_verp = arg == "-V" && args.peek().is_some_and(|next| next.len() == 2);
        if old_verp || arg == "-XV" {
            continue;
        }
        for (at, letter) in arg[1..].char_indices() {
            if FLAGS.contains(letter) {
                flag(&mut opts, letter)?;
                continue;
            }
            if !WITH_ARGUMENT.contains(letter) {
                return Err(UsageError::Unknown(letter));
            }
            let attached = &arg[1 + at + letter.len_utf8()..];
            let value = if attached.is_empty() {
                args.next().ok_or(UsageError::MissingArgument(letter))?
            } else {
                attached.to_owned()
            };
            with_argument(&mut opts, letter, value)?;
            break;
        }
    }
    opts.recipients = args.filter(|a| !a.is_empty()).collect();
    if opts.recipients.is_empty() && !opts.extract_recipients {
        return Err(UsageError::NoRecipients);
    }
    Ok(opts)
}

fn flag(opts: &mut Options, letter: char) -> Result<(), UsageError> {
    match letter {
        't' => opts.extract_recipients = true,
        'i' => opts.dot_ends_input = false,
        'v' => opts.verbose = true,
        // newaliases, and no aliasing: nothing a submission can do.
        'I' | 'n' => return Err(UsageError::NotOffered(letter.to_string())),
        // G (gateway), U (initial submission), c, m (me too), x: ignored.
        _ => {}
    }
    Ok(())
}

fn with_argument(opts: &mut Options, letter: char, value: String) -> Result<(), UsageError> {
    match letter {
        'f' | 'r' => opts.sender = Some(strip_brackets(&value).to_owned()),
        'F' if value.chars().any(char::is_control) => return Err(UsageError::FullName(value)),
        'F' => opts.full_name = Some(value),
        'b' => match value.chars().next() {
            Some('m') => {}
            _ => return Err(UsageError::NotOffered(format!("b{value}"))),
        },
        'q' => return Err(UsageError::NotOffered(format!("q{value}"))),
        // -XVxy: VERP with the delimiters x and y, ignored.
        'X' if value
            .strip_prefix('V')
            .is_some_and(|d| d.chars().count() == 2) => {}
        'X' => return Err(UsageError::NotOfferedX(value)),
        'B' if value != "8BITMIME" && value != "7BIT" => return Err(UsageError::BodyType),
        'o' => match value.chars().next() {
            Some('i') => opts.dot_ends_input = false,
            Some('A') if value.len() == 1 => return Err(UsageError::AliasPath),
            // -o7, -o8, -om, -oem, -odb, -odi, -oQ…: ignored.
            _ => {}
        },
        // A, C (configuration), L, N, R, V (DSN: notify, return, envelope
        // id), O, e, h, p: ignored.
        _ => {}
    }
    Ok(())
}

/// `<a@b>` → `a@b`; `<>` → the null sender.
fn strip_brackets(addr: &str) -> &str {
    let addr = addr.trim();
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

#[cfg(test)]
mod tests;
