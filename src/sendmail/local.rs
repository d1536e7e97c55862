//! What the system says about this submission: who runs it (the real uid's
//! login and full name), the host's mail domain and name, the date and a
//! fresh message id. The reading is in [`System::read`]; the rest is pure.

/// The local facts a message is prepared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// The passwd name of the real uid, or the uid in decimal without one.
    pub login: String,
    /// The passwd GECOS field up to its first comma, `&` standing for the
    /// login capitalized (as Postfix reads it), without control characters;
    /// `None` when empty.
    pub full_name: Option<String>,
    /// The first line of `/etc/mailname`, or else the host name.
    pub domain: String,
    /// The host name, for EHLO (`localhost` when the system has none usable).
    pub hostname: String,
}

/// Debian's file naming the host's mail domain.
const MAILNAME: &str = "/etc/mailname";

impl System {
    /// Asks the system: passwd for the real uid, the host name, `/etc/mailname`.
    pub fn read() -> System {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        let login = user
            .as_ref()
            .map_or_else(|| uid.to_string(), |u| u.name.clone());
        let full_name = user
            .as_ref()
            .and_then(|u| full_name(&u.gecos.to_string_lossy(), &login));
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| is_domain(h))
            .unwrap_or_else(|| "localhost".into());
        let mailname = std::fs::read_to_string(MAILNAME).ok();
        let domain = mail_domain(mailname.as_deref(), &hostname);
        System {
            login,
            full_name,
            domain,
            hostname,
        }
    }
}

/// The full name in a GECOS field (`Jane Doe,Room 1,,` → `Jane Doe`). A
/// user may set their own (chfn), so the control characters that would
/// break the From line it goes in are left out.
pub fn full_name(gecos: &str, login: &str) -> Option<String> {
    let name = gecos.split(',').next().unwrap_or_default();
    let mut capitalized = login.chars();
    let capitalized: String = match capitalized.next() {
        Some(first) => first.to_uppercase().chain(capitalized).collect(),
        None => String::new(),
    };
    let name: String = name
        .replace('&', &capitalized)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The mail domain: `/etc/mailname`'s first line when it names one.
pub fn mail_domain(mailname: Option<&str>, hostname: &str) -> String {
    let first = mailname.and_then(|m| m.lines().next()).map(str::trim);
    match first {
        Some(d) if is_domain(d) => d.to_owned(),
        _ => hostname.to_owned(),
    }
}

/// Letters, digits, `-` and `.`: a name that can stand in EHLO and after `@`.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An RFC 5322 date (§3.3) in UTC: `Tue, 01 Dec 2026 14:26:03 +0000`.
pub fn rfc5322_date(unix_seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix_seconds / 86_400, unix_seconds % 86_400);
    let (year, month, day) = civil_date(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[((days + 4) % 7) as usize];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month 1–12, day 1–31) of a day counted
/// from 1970-01-01: Howard Hinnant's `civil_from_days`, for days ≥ 0.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that a leap day ends its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// A message id, without its angle brackets: the time, 48 random bits and
/// the process, at the mail domain.
pub fn message_id(unix_seconds: u64, random: u64, pid: u32, domain: &str) -> String {
    format!(
        "{unix_seconds}.{:012x}.{pid}@{domain}",
        random & 0xffff_ffff_ffff
    )
}

/// Random bits from the standard library's hasher keys (seeded by the
/// operating system), so that ids stay apart when a pid comes back within
/// a second.
pub fn random_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests;
