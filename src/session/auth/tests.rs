use base64::engine::general_purpose::STANDARD;

use super::*;

fn b64(s: &[u8]) -> Vec<u8> {
    STANDARD.encode(s).into_bytes()
}

/// Where an exchange ended up, for the tables below.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    User(String),
    Unreadable(Unreadable),
    /// No username yet, and nothing wrong.
    Waiting,
}

fn got(x: &SaslExchange) -> Got {
    match (x.username(), x.unreadable()) {
        (Some(u), None) => Got::User(u.as_str().to_owned()),
        (None, Some(why)) => Got::Unreadable(why),
        (None, None) => Got::Waiting,
        (Some(_), Some(_)) => panic!("both a username and unreadable: {x:?}"),
    }
}

fn user(name: &str) -> Got {
    Got::User(name.to_owned())
}

fn bad(why: Unreadable) -> Got {
    Got::Unreadable(why)
}

#[test]
fn decodes_base64_as_leniently_as_the_servers() {
    use Unreadable::Base64;
    // "\0user\0pw" is AHVzZXIAcHc= (one padding byte); "user" is dXNlcg== (two).
    let ok = |s: &str| Ok(s.as_bytes().to_vec());
    type Decoded = Result<Vec<u8>, Unreadable>;
    let cases: &[(&[u8], Decoded)] = &[
        (b"AHVzZXIAcHc=", ok("\0user\0pw")),
        (b"dXNlcg==", ok("user")),
        // Padding missing, in part or whole.
        (b"AHVzZXIAcHc", ok("\0user\0pw")),
        (b"dXNlcg", ok("user")),
        (b"dXNlcg=", ok("user")),
        // Non-zero trailing bits (Dovecot, Cyrus and Python ignore them).
        (b"AHVzZXIAcHd=", ok("\0user\0pw")),
        (b"dXNlch==", ok("user")),
        (b"dXNlcv==", ok("user")),
        (b"dXNlch", ok("user")),
        // Whitespace anywhere, padding included (Dovecot skips it).
        (b"AHVz ZXIAcHc=", ok("\0user\0pw")),
        (b" dXNlcg== ", ok("user")),
        (b"dX\tNl\r\ncg=\t=", ok("user")),
        (b"", ok("")),
        // Data after the padding: decoders disagree on it.
        (b"dXNlcg==ZXZpbA==", Err(Base64)),
        (b"dXNlcg==Zg", Err(Base64)),
        (b"AHVzZXIAcHc==", Err(Base64)),
        (b"dXNlcg===", Err(Base64)),
        (b"dXNl=cg==", Err(Base64)),
        // Not base64 at all.
        (b"=", Err(Base64)),
        (b"dXNlc", Err(Base64)),
        (b"dXN!lcg==", Err(Base64)),
        (b"dXNl-cg_", Err(Base64)),
        (b"dXNlcg==\x0b", Err(Base64)),
        (b"\xffdXNlcg==", Err(Base64)),
    ];
    for (text, expected) in cases {
        assert_eq!(
            &decode(text).map(|d| d.to_vec()),
            expected,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn reads_the_username_of_each_mechanism() {
    use Mechanism::*;
    use Unreadable as U;
    let long = "a".repeat(Username::MAX);
    let too_long = "a".repeat(Username::MAX + 1);
    // (mechanism, initial response, later responses, outcome)
    type Case = (Mechanism, Vec<u8>, Vec<Vec<u8>>, Got);
    let cases: Vec<Case> = vec![
        // PLAIN: authzid NUL authcid NUL password, initial or not.
        (
            Plain,
            b64(b"\0alice@example.com\0secret"),
            vec![],
            user("alice@example.com"),
        ),
        (Plain, vec![], vec![b64(b"\0bob\0pw")], user("bob")),
        (Plain, b64(b"bob\0bob\0pw"), vec![], user("bob")),
        (Plain, b64(b"admin\0bob\0pw"), vec![], bad(U::Authzid)),
        // A NUL in the password: servers disagree on where it ends.
        (Plain, b64(b"\0bob\0pw\0more"), vec![], bad(U::Syntax)),
        // A NUL elsewhere: C servers stop reading there, mailbrake would not.
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"alice\",x=\0,realm=\"r1\"")],
            bad(U::Syntax),
        ),
        (
            XOauth2,
            b64(b"x\0\x01user=bob\x01auth=Bearer t\x01\x01"),
            vec![],
            bad(U::Syntax),
        ),
        (Scram, b64(b"n,,n=al\0ice,r=abc"), vec![], bad(U::Syntax)),
        (Plain, b64(b"\0bob"), vec![], bad(U::Syntax)),
        (Plain, b64(b"bob"), vec![], bad(U::Syntax)),
        (Plain, b"=".to_vec(), vec![], bad(U::Syntax)),
        (Plain, b64(b"\0\0pw"), vec![], bad(U::Username)),
        (Plain, b64(b"\0b\x01ob\0pw"), vec![], bad(U::Username)),
        (Plain, b64(b"\0b\xffob\0pw"), vec![], bad(U::Username)),
        (
            Plain,
            b64(format!("\0{long}\0pw").as_bytes()),
            vec![],
            user(&long),
        ),
        (
            Plain,
            b64(format!("\0{too_long}\0pw").as_bytes()),
            vec![],
            bad(U::Username),
        ),
        (Plain, b"AHVzZXIAcHd".to_vec(), vec![], user("user")),
        (Plain, b"!!notbase64".to_vec(), vec![], bad(U::Base64)),
        (
            Plain,
            vec![],
            vec![b"AHVzZXIAcHc=AAAA".to_vec()],
            bad(U::Base64),
        ),
        // LOGIN: the first message is the username.
        (
            Login,
            vec![],
            vec![b64(b"carol"), b64(b"pw")],
            user("carol"),
        ),
        (Login, b64(b"dave"), vec![b64(b"pw")], user("dave")),
        // An empty initial response is none: the username comes next.
        (
            Login,
            b"=".to_vec(),
            vec![b64(b"erin"), b64(b"pw")],
            user("erin"),
        ),
        (Login, b"=".to_vec(), vec![], Got::Waiting),
        (Login, vec![], vec![], Got::Waiting),
        // C servers stop at a NUL: never read "vic\0tim" as "victim".
        (Login, vec![], vec![b64(b"vic\0tim")], bad(U::Syntax)),
        (Login, vec![], vec![b"".to_vec()], bad(U::Username)),
        // CRAM-MD5: the answer to the challenge; no initial response.
        (
            CramMd5,
            vec![],
            vec![b64(b"frank 0123456789abcdef0123456789abcdef")],
            user("frank"),
        ),
        (
            CramMd5,
            vec![],
            vec![b64(b"frank smith 0123456789abcdef")],
            user("frank smith"),
        ),
        (CramMd5, vec![], vec![b64(b"frank")], bad(U::Syntax)),
        (
            CramMd5,
            b64(b"victim 0123"),
            vec![b64(b"frank 0123")],
            bad(U::InitialResponse),
        ),
        (CramMd5, b"=".to_vec(), vec![], bad(U::InitialResponse)),
        // DIGEST-MD5: username (and realm) in the answer to the challenge.
        (
            DigestMd5,
            vec![],
            vec![b64(
                b"username=\"grace\",realm=\"\",nonce=\"n\",response=0a",
            )],
            user("grace"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(
                b"username=\"grace\",realm=\"example.test\",nonce=\"n\"",
            )],
            user("grace@example.test"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(
                b"realm=\"other.test\", username=\"grace@example.test\"",
            )],
            user("grace@example.test"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"UserName=\"gr\\\\a\\ce\",nonce=\"a,b\"")],
            user("gr\\ace"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b",, username = grace , qop=auth,")],
            user("grace"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace\",authzid=\"grace\"")],
            user("grace"),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace\",authzid=\"heidi\"")],
            bad(U::Authzid),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace\",username=\"heidi\"")],
            bad(U::Syntax),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace\",realm=\"a\",realm=\"b\"")],
            bad(U::Syntax),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace")],
            bad(U::Syntax),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"grace\"x")],
            bad(U::Syntax),
        ),
        (DigestMd5, vec![], vec![b64(b"username")], bad(U::Syntax)),
        (
            DigestMd5,
            vec![],
            vec![b64(b"nonce=\"n\",cnonce=\"c\"")],
            bad(U::NoUser),
        ),
        (
            DigestMd5,
            vec![],
            vec![b64(b"username=\"\"")],
            bad(U::Username),
        ),
        (
            DigestMd5,
            b64(b"username=\"grace\""),
            vec![],
            bad(U::InitialResponse),
        ),
        // SCRAM: client-first-message, n= after the gs2 header.
        (Scram, b64(b"n,,n=heidi,r=abc"), vec![], user("heidi")),
        (Scram, vec![], vec![b64(b"y,,n=heidi,r=abc")], user("heidi")),
        (Scram, b64(b"n,,n=h=2Ci=3Dj,r=abc"), vec![], user("h,i=j")),
        (
            Scram,
            b64(b"n,a=heidi,n=heidi,r=abc"),
            vec![],
            user("heidi"),
        ),
        (
            Scram,
            b64(b"n,a=ivan,n=heidi,r=abc"),
            vec![],
            bad(U::Authzid),
        ),
        (Scram, b64(b"n,,n=h=41,r=abc"), vec![], bad(U::Syntax)),
        (
            Scram,
            b64(b"p=tls-unique,,n=heidi,r=abc"),
            vec![],
            bad(U::Syntax),
        ),
        (
            Scram,
            b64(b"n,,m=ext,n=heidi,r=abc"),
            vec![],
            bad(U::Syntax),
        ),
        (Scram, b64(b"n,n=heidi,r=abc"), vec![], bad(U::Syntax)),
        (Scram, b64(b"n,,r=abc"), vec![], bad(U::Syntax)),
        (Scram, b64(b"n,,n=,r=abc"), vec![], bad(U::Username)),
        // XOAUTH2: exactly one user= field.
        (
            XOauth2,
            b64(b"user=ivan@example.com\x01auth=Bearer tok\x01\x01"),
            vec![],
            user("ivan@example.com"),
        ),
        (
            XOauth2,
            vec![],
            vec![b64(b"auth=Bearer tok\x01user=ivan\x01\x01")],
            user("ivan"),
        ),
        (
            XOauth2,
            b64(b"user=victim\x01user=ivan\x01auth=Bearer tok\x01\x01"),
            vec![],
            bad(U::Syntax),
        ),
        (
            XOauth2,
            b64(b"auth=Bearer tok\x01\x01"),
            vec![],
            bad(U::NoUser),
        ),
        // OAUTHBEARER: the gs2 header's a=, never a key/value pair.
        (
            OAuthBearer,
            b64(b"n,a=judy@example.com,\x01auth=Bearer t\x01\x01"),
            vec![],
            user("judy@example.com"),
        ),
        (
            OAuthBearer,
            b64(b"y,a=j=2Cu=3Ddy\x01auth=Bearer t\x01\x01"),
            vec![],
            user("j,u=dy"),
        ),
        (
            OAuthBearer,
            b64(b"n,,\x01a=victim\x01auth=Bearer t\x01\x01"),
            vec![],
            bad(U::NoUser),
        ),
        (
            OAuthBearer,
            b64(b"n,a=victim,a=judy,\x01auth=Bearer t\x01\x01"),
            vec![],
            bad(U::Syntax),
        ),
        (
            OAuthBearer,
            b64(b"p=tls-unique,a=judy,\x01auth=Bearer t\x01\x01"),
            vec![],
            bad(U::Syntax),
        ),
        (OAuthBearer, b64(b"n,a=judy,"), vec![], bad(U::Syntax)),
        (
            OAuthBearer,
            b64(b"n,u=judy,\x01auth=Bearer t\x01\x01"),
            vec![],
            bad(U::Syntax),
        ),
        // Mechanisms mailbrake cannot read.
        (Other, b64(b"x"), vec![], bad(U::Mechanism)),
        (Other, vec![], vec![], bad(U::Mechanism)),
    ];
    for (mech, initial, responses, expected) in cases {
        let mut x = SaslExchange::start(mech, &initial);
        for r in &responses {
            x.on_response(r);
        }
        assert_eq!(
            got(&x),
            expected,
            "{mech:?} {:?} {:?}",
            String::from_utf8_lossy(&initial),
            responses
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn only_the_message_naming_the_user_is_read() {
    // LOGIN: a password must never stand in for a username that was unreadable.
    let mut x = SaslExchange::start(Mechanism::Login, b"");
    x.on_response(b"*bad*");
    x.on_response(&b64(b"password"));
    assert_eq!(got(&x), bad(Unreadable::Base64));
    // Nor replace one already read.
    let mut x = SaslExchange::start(Mechanism::Login, b"");
    x.on_response(&b64(b"carol"));
    x.on_response(&b64(b"mallory"));
    x.on_response(b"*");
    assert_eq!(got(&x), user("carol"));
    // "*" cancels: nothing read, nothing wrong, later lines ignored.
    let mut x = SaslExchange::start(Mechanism::Plain, b"");
    x.on_response(b"*");
    x.on_response(&b64(b"\0bob\0pw"));
    assert_eq!(got(&x), Got::Waiting);
}

#[test]
fn reads_the_initial_response_from_the_whole_command() {
    let plain = String::from_utf8(b64(b"\0alice\0pw")).unwrap();
    let cases: Vec<(String, Got)> = vec![
        (format!("AUTH PLAIN {plain}"), user("alice")),
        (format!("auth  PLAIN\t{plain}  "), user("alice")),
        ("AUTH PLAIN".into(), Got::Waiting),
        ("AUTH PLAIN ".into(), Got::Waiting),
        // smtp-proto would keep only the first word; servers refuse it.
        (format!("AUTH PLAIN {plain} x"), bad(Unreadable::Command)),
        (
            format!("AUTH PLAIN {} {}", &plain[..4], &plain[4..]),
            bad(Unreadable::Command),
        ),
        ("AUTH PLAIN =".into(), bad(Unreadable::Syntax)),
    ];
    for (line, expected) in cases {
        let x = SaslExchange::from_command(Mechanism::Plain, line.as_bytes());
        assert_eq!(got(&x), expected, "{line:?}");
    }
    let x = SaslExchange::from_command(Mechanism::Other, b"AUTH GSSAPI");
    assert_eq!(got(&x), bad(Unreadable::Mechanism));
}

#[test]
fn mechanisms_by_name_and_whether_a_user_can_be_read() {
    use Mechanism::*;
    let cases: &[(&str, Mechanism)] = &[
        ("PLAIN", Plain),
        ("plain", Plain),
        ("LOGIN", Login),
        ("Login", Login),
        ("CRAM-MD5", CramMd5),
        ("DIGEST-MD5", DigestMd5),
        ("SCRAM-SHA-1", Scram),
        ("SCRAM-SHA-256", Scram),
        ("XOAUTH2", XOauth2),
        ("OAUTHBEARER", OAuthBearer),
        ("SCRAM-SHA-1-PLUS", Other),
        ("SCRAM-SHA-256-PLUS", Other),
        ("SCRAM-SHA-512", Other),
        ("GSSAPI", Other),
        ("GSS-SPNEGO", Other),
        ("GS2-KRB5", Other),
        ("KERBEROS_V4", Other),
        ("NTLM", Other),
        ("EXTERNAL", Other),
        ("ANONYMOUS", Other),
        ("OTP", Other),
        ("SKEY", Other),
        ("XOAUTH", Other),
        ("PLAINX", Other),
        ("X-UNKNOWN", Other),
        ("", Other),
    ];
    for &(name, expected) in cases {
        let mech = Mechanism::from_name(name.as_bytes());
        assert_eq!(mech, expected, "{name}");
        assert_eq!(mech.user_readable(), expected != Other, "{name}");
    }
}
