//! AUTH end to end through the session: what never reaches the upstream
//! because mailbrake could not read the username from it.
//!
//! These need the client side to refuse what `SaslExchange` cannot read
//! (`Mechanism::user_readable` in the AUTH branch, `SaslExchange::unreadable`
//! there and in `on_sasl_line`); until then they are ignored.

use super::{T, cfg};
use crate::session::SessionConfig;

fn plaintext_auth() -> T {
    let mut t = T::new(SessionConfig {
        allow_plaintext_auth: true,
        ..cfg()
    });
    t.greet();
    t
}

#[test]
fn a_mechanism_without_a_readable_user_is_refused_locally() {
    let mut t = plaintext_auth();
    for line in [
        "AUTH GSSAPI\r\n",
        "AUTH NTLM TlRMTVNTUAABAAAA\r\n",
        "AUTH EXTERNAL =\r\n",
    ] {
        t.client(line.as_bytes());
        assert_eq!(
            t.client_got(),
            "504 5.5.4 Error: unrecognized authentication type\r\n"
        );
    }
    assert_eq!(t.upstream_got(), "");
    t.client(b"NOOP\r\n");
    assert_eq!(t.upstream_got(), "NOOP\r\n");
}

#[test]
fn an_unreadable_initial_response_never_reaches_the_upstream() {
    let mut t = plaintext_auth();
    for line in [
        "AUTH PLAIN AHVzZXIAcHc=AAAA\r\n", // data after the padding
        "AUTH PLAIN AHVz ZXIAcHc=\r\n",    // two words
        "AUTH PLAIN Ym9iAGFsaWNlAHB3\r\n", // authzid bob, authcid alice
        "AUTH CRAM-MD5 Ym9iIDAxMjM=\r\n",  // CRAM-MD5 takes no initial response
    ] {
        t.client(line.as_bytes());
        assert_eq!(
            t.client_got(),
            "501 5.5.2 Error: cannot decode the authentication response\r\n",
            "{line:?}"
        );
    }
    assert_eq!(t.upstream_got(), "");
    assert!(t.auth_results.is_empty());
}

#[test]
fn an_unreadable_response_is_replaced_by_a_cancellation() {
    let mut t = plaintext_auth();
    t.client(b"AUTH LOGIN\r\n");
    t.upstream(b"334 VXNlcm5hbWU6\r\n");
    t.client(b"dmljAHRpbQ==\r\n"); // "vic\0tim"
    assert_eq!(t.upstream_got(), "AUTH LOGIN\r\n*\r\n");
    t.upstream(b"501 5.7.0 Authentication aborted\r\n");
    assert_eq!(
        t.client_got(),
        "334 VXNlcm5hbWU6\r\n501 5.7.0 Authentication aborted\r\n"
    );
    assert_eq!(t.s.user(), None);
    t.client(b"NOOP\r\n");
    assert_eq!(t.upstream_got(), "NOOP\r\n");
}

#[test]
fn a_leniently_encoded_username_is_learnt_and_relayed_unchanged() {
    let mut t = plaintext_auth();
    // "\0user\0pw" with its padding missing and non-zero trailing bits.
    t.client(b"AUTH PLAIN AHVzZXIAcHd\r\n");
    assert_eq!(t.upstream_got(), "AUTH PLAIN AHVzZXIAcHd\r\n");
    t.upstream(b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(t.s.user().map(|u| u.as_str()), Some("user"));
    // CRAM-MD5: the user is in the answer to the challenge.
    let mut t = plaintext_auth();
    t.client(b"AUTH CRAM-MD5\r\n");
    t.upstream(b"334 PDEyMzQ1QG14LnRlc3Q+\r\n");
    t.client(b"ZnJhbmsgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\r\n");
    t.upstream(b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(t.s.user().map(|u| u.as_str()), Some("frank"));
}
