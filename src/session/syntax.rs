//! What smtp-proto's parser lets through and an MTA might read otherwise,
//! checked strictly before anything is forwarded; and commands as they may
//! appear in logs.

/// The arguments of a BDAT line in the strict form MTAs accept (RFC 3030:
/// `BDAT SP 1*DIGIT [SP "LAST"]`): the chunk size and whether it is the last.
pub(super) fn bdat_arguments(body: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(body.get(4..)?).ok()?;
    let mut words = text.split_ascii_whitespace();
    let size = words.next()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size: u64 = size.parse().ok()?;
    // Beyond what a usize holds smtp-proto saturates; no MTA takes such a chunk.
    usize::try_from(size).ok()?;
    Some((size, last))
}

/// A command line as it may appear in logs: AUTH arguments never do.
pub(super) fn command_for_log(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let upper = text.get(..4).map(str::to_ascii_uppercase);
    if upper.as_deref() == Some("AUTH") {
        let mech = text.split_whitespace().nth(1).unwrap_or("");
        return format!("AUTH {mech} <redacted>");
    }
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::{bdat_arguments, command_for_log};

    #[test]
    fn bdat_lines_pass_only_in_their_strict_form() {
        type Case = (&'static [u8], Option<(u64, bool)>);
        let cases: &[Case] = &[
            (b"BDAT 120", Some((120, false))),
            (b"bdat 0 last", Some((0, true))),
            (b"BDAT  7\t LAST ", Some((7, true))),
            (b"BDAT 120 ;", None),
            (b"BDAT 120 LAST x", None),
            (b"BDAT 99999999999999999999 120", None),
            (b"BDAT 99999999999999999999", None),
            (b"BDAT +5", None),
            (b"BDAT 5 LASTX", None),
            (b"BDAT", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                bdat_arguments(line),
                *want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn auth_arguments_never_reach_logs() {
        assert_eq!(
            command_for_log(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            "AUTH PLAIN <redacted>"
        );
        assert_eq!(command_for_log(b"auth login"), "AUTH login <redacted>");
        assert_eq!(command_for_log(b"MAIL FROM:<a@b>"), "MAIL FROM:<a@b>");
    }
}
