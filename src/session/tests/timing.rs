//! The session's clocks: idle clients, slow upstreams, trickled commands and bodies.

use std::time::Duration;

use super::*;

#[test]
fn timeouts_for_idle_client_and_slow_upstream() {
    let mut t = session();
    t.greet();
    let limit = Timeouts::default().client_command;
    t.advance(limit - Duration::from_secs(1));
    assert!(!t.closed);
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.client_got(),
        "421 4.4.2 mb.test Error: timeout exceeded\r\n"
    );
    assert!(t.closed);

    let mut t = session();
    t.greet();
    t.open_data();
    t.client(b"body\r\n.\r\n");
    // Waiting for the end-of-data reply: the 10-minute timeout applies, not the client's.
    t.advance(Timeouts::default().upstream_data_end - Duration::from_secs(1));
    assert!(!t.closed);
    t.advance(Duration::from_secs(1));
    assert!(t.closed);
    assert!(
        t.client_got()
            .ends_with("421 4.4.2 mb.test mail server timed out, try again later\r\n")
    );
}

#[test]
fn a_command_trickled_byte_by_byte_still_times_out() {
    let mut t = session();
    t.greet();
    let limit = Timeouts::default().client_command;
    let step = Duration::from_secs(10);
    let mut waited = Duration::ZERO;
    for b in
        b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP"
            .iter()
            .cycle()
    {
        t.client(&[*b]);
        t.advance(step);
        waited += step;
        if t.closed {
            break;
        }
        assert!(waited <= limit, "still open after {waited:?}");
    }
    assert!(
        t.client_got()
            .ends_with("421 4.4.2 mb.test Error: timeout exceeded\r\n")
    );
    // A body may pause between chunks, but on the whole it must come at
    // min_data_rate after client_data of grace: a trickle is cut off.
    let mut t = session();
    t.greet();
    t.open_data();
    let grace = Timeouts::default().client_data;
    let mut waited = Duration::ZERO;
    while !t.closed {
        t.client(b"x");
        t.advance(Duration::from_secs(60));
        waited += Duration::from_secs(60);
        assert!(
            waited <= grace + Duration::from_secs(60),
            "still open after {waited:?}"
        );
    }
    assert!(
        t.client_got()
            .ends_with("421 4.4.2 mb.test Error: timeout exceeded\r\n")
    );
    assert!(
        !t.upstream_got().ends_with(".\r\n"),
        "no end of data for it"
    );
    // A BDAT message is timed from its first chunk to its last: a trickle
    // of one-byte chunks, each inside every per-step timeout, still ends.
    let mut t = session();
    t.greet();
    t.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n");
    t.upstream(b"250 ok\r\n250 ok\r\n");
    let mut waited = Duration::ZERO;
    while !t.closed {
        t.client(b"BDAT 1\r\n");
        t.advance(Duration::from_secs(170));
        t.client(b"x");
        t.upstream(b"250 chunk\r\n");
        t.advance(Duration::from_secs(290));
        waited += Duration::from_secs(460);
        assert!(
            waited <= grace + Duration::from_secs(460),
            "still open after {waited:?}"
        );
    }
    // At 500 bytes a second a large body takes as long as it needs.
    let mut t = session();
    t.greet();
    t.open_data();
    for _ in 0..600 {
        t.client(&[b'x'; 1000]);
        t.advance(Duration::from_secs(2));
    }
    assert!(!t.closed, "a slow but steady body is not a timeout");
}
