//! Dates, names and ids, from known values.

use super::*;

#[test]
fn dates_of_known_timestamps() {
    let cases = [
        (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
        (951_868_800, "Wed, 01 Mar 2000 00:00:00 +0000"),
        (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 +0000"),
        (1_796_135_163, "Tue, 01 Dec 2026 14:26:03 +0000"),
        (2_147_483_648, "Tue, 19 Jan 2038 03:14:08 +0000"),
        // 2100 is not a leap year: 28 February is followed by 1 March.
        (4_107_585_600, "Mon, 01 Mar 2100 12:00:00 +0000"),
    ];
    for (secs, expected) in cases {
        assert_eq!(rfc5322_date(secs), expected, "{secs}");
    }
}

#[test]
fn every_day_follows_the_one_before() {
    let days_in = |year: u64, month: u64| match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let mut expected = (1970, 1, 1);
    // From 1970 to past 2400, across the leap-year rules' every case.
    for days in 0..160_000 {
        assert_eq!(civil_date(days), expected, "day {days}");
        let (y, m, d) = expected;
        expected = if d < days_in(y, m) {
            (y, m, d + 1)
        } else if m < 12 {
            (y, m + 1, 1)
        } else {
            (y + 1, 1, 1)
        };
    }
}

#[test]
fn full_names_from_gecos() {
    let cases = [
        ("Jane Doe,Room 1,555-1234,", "jane", Some("Jane Doe")),
        ("Jane Doe", "jane", Some("Jane Doe")),
        ("& Smith,,,", "bob", Some("Bob Smith")),
        (",,,", "www-data", None),
        ("", "www-data", None),
        ("  ", "www-data", None),
        // A name that would break the From line it is put in.
        (
            "Evil\r\nX-Injected: yes,,,",
            "evil",
            Some("EvilX-Injected: yes"),
        ),
        ("\x1b[31mRed\x7f\t\u{85},", "red", Some("[31mRed")),
        ("\r\n", "www-data", None),
    ];
    for (gecos, login, expected) in cases {
        assert_eq!(full_name(gecos, login).as_deref(), expected, "{gecos:?}");
    }
}

#[test]
fn mail_domain_from_mailname_or_host_name() {
    let cases = [
        (Some("mail.hosting.test\n"), "web1.hosting.test"),
        (
            Some("  mail.hosting.test  \nignored\n"),
            "web1.hosting.test",
        ),
        (Some(""), "web1.hosting.test"),
        (Some("\nmail.hosting.test\n"), "web1.hosting.test"),
        (Some("not a domain\n"), "web1.hosting.test"),
        (None, "web1.hosting.test"),
    ];
    let expected = [
        "mail.hosting.test",
        "mail.hosting.test",
        "web1.hosting.test",
        "web1.hosting.test",
        "web1.hosting.test",
        "web1.hosting.test",
    ];
    for ((mailname, host), expected) in cases.into_iter().zip(expected) {
        assert_eq!(mail_domain(mailname, host), expected, "{mailname:?}");
    }
}

#[test]
fn message_ids() {
    assert_eq!(
        message_id(1_796_135_163, 0x1234_5678_9abc_def0, 4242, "hosting.test"),
        "1796135163.56789abcdef0.4242@hosting.test"
    );
    assert_ne!(random_bits(), random_bits());
}

#[test]
fn the_system_says_something_usable() {
    let system = System::read();
    assert!(!system.login.is_empty());
    assert!(is_domain(&system.domain), "{}", system.domain);
    assert!(is_domain(&system.hostname), "{}", system.hostname);
}
