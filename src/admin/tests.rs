//! The admin token: what the middleware admits, that every `/api` route is
//! behind it, and the file mailbrake writes its own token to.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::api::{Api, routes};
use super::token::{AdminToken, Origin, TokenError, authorise, check};
use crate::config::{AdminConfig, LimitsConfig, UnixGroup};
use crate::limits::store::Store;
use crate::limits::{Limiter, Policy, SystemClock};

const SECRET: &str = "0123456789abcdef";

fn token() -> AdminToken {
    AdminToken::configured(SECRET, Origin::Environment).unwrap()
}

fn with_auth(value: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_bytes(value).unwrap(),
    );
    h
}

#[test]
fn only_the_exact_bearer_token_is_admitted() {
    let t = token();
    assert!(!t.admits(&HeaderMap::new()), "no header");
    for (value, admitted) in [
        (format!("Bearer {SECRET}"), true),
        (format!("bearer {SECRET}"), true),
        (format!("BEARER  {SECRET} "), true),
        (format!("Basic {SECRET}"), false),
        (SECRET.to_owned(), false),
        ("Bearer ".to_owned(), false),
        ("Bearer".to_owned(), false),
        (format!("Bearer {}", &SECRET[..SECRET.len() - 1]), false),
        (format!("Bearer {SECRET}0"), false),
        (format!("Bearer {}", SECRET.to_uppercase()), false),
        (format!("Bearer x{}", &SECRET[1..]), false),
    ] {
        assert_eq!(
            t.admits(&with_auth(value.as_bytes())),
            admitted,
            "{value:?}"
        );
    }
    // Not text at all.
    assert!(!t.admits(&with_auth(b"Bearer \xff\xfe")));
}

#[test]
fn the_secret_is_never_shown() {
    let t = token();
    let shown = format!("{t:?}");
    assert!(
        !shown.contains(SECRET) && shown.contains("redacted"),
        "{shown}"
    );
}

/// Serves `app` on 127.0.0.1:0 for the rest of the test.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One HTTP/1.1 call; the whole answer, head and body.
async fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let body = r#"{"reason":"r","who":"w","limit":"5/1h"}"#;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

fn status(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_middleware_answers_401_with_a_challenge_and_lets_the_token_through() {
    let app = Router::new()
        .route("/x", get(|| async { "read" }).post(|| async { "changed" }))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(token()),
            authorise,
        ));
    let addr = serve(app).await;
    for method in ["GET", "POST"] {
        for auth in [None, Some("Bearer wrong"), Some("Basic dXNlcjpwYXNz")] {
            let answer = call(addr, method, "/x", auth).await;
            assert_eq!(status(&answer), 401, "{method} {auth:?}: {answer}");
            let lower = answer.to_ascii_lowercase();
            assert!(
                lower.contains("\r\nwww-authenticate: bearer realm=\"mailbrake\"\r\n"),
                "{answer}"
            );
            assert!(
                answer.ends_with(r#"{"error":"missing or wrong bearer token"}"#),
                "{answer}"
            );
            assert!(!answer.contains("read") && !answer.contains("changed"));
        }
        let answer = call(addr, method, "/x", Some(&format!("Bearer {SECRET}"))).await;
        assert_eq!(status(&answer), 200, "{answer}");
    }
}

/// The API itself, on a fresh state directory, behind `token`.
fn api(dir: &Path) -> Arc<Api> {
    let (reload, _) = tokio::sync::mpsc::channel(1);
    Arc::new(Api {
        limiter: Arc::new(Limiter::new(
            Policy::new(&LimitsConfig::default()),
            Box::new(SystemClock),
        )),
        store: Mutex::new(Store::open(dir).unwrap()),
        token: Arc::new(token()),
        started: std::time::Instant::now(),
        listeners: Vec::new(),
        binds: Vec::new(),
        reload,
        fleet: None,
    })
}

/// Every route of the admin API, reads and changes.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/status"),
    ("GET", "/api/senders/vhost%3Ashop-42"),
    ("GET", "/api/top"),
    ("GET", "/api/audit"),
    ("GET", "/api/report"),
    ("PUT", "/api/senders/vhost%3Ashop-42/override"),
    ("DELETE", "/api/senders/vhost%3Ashop-42/override"),
    ("POST", "/api/senders/vhost%3Ashop-42/exempt"),
    ("POST", "/api/senders/vhost%3Ashop-42/lock"),
    ("POST", "/api/senders/vhost%3Ashop-42/unlock"),
    ("POST", "/api/senders/vhost%3Ashop-42/reset"),
    ("POST", "/api/reload"),
];

#[tokio::test]
async fn every_api_route_needs_the_token_and_nothing_changes_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path());
    let addr = serve(routes(api.clone())).await;
    for (method, path) in ROUTES {
        for auth in [None, Some("Bearer nope".to_owned())] {
            let answer = call(addr, method, path, auth.as_deref()).await;
            assert_eq!(status(&answer), 401, "{method} {path} {auth:?}: {answer}");
        }
    }
    let audit = api.store.lock().unwrap().audit(100).unwrap();
    assert!(
        audit.is_empty(),
        "refused calls changed something: {audit:?}"
    );
    // With the token the same calls reach their handlers (the reload has no
    // server behind it here, so it fails, but not with 401).
    for (method, path) in ROUTES {
        let answer = call(addr, method, path, Some(&format!("Bearer {SECRET}"))).await;
        assert_ne!(status(&answer), 401, "{method} {path}: {answer}");
    }
    let audit = api.store.lock().unwrap().audit(100).unwrap();
    assert!(audit.len() >= 5, "the changes went through: {audit:?}");
}

// === the token file ===

fn admin(bind: &str) -> AdminConfig {
    AdminConfig {
        bind: bind.parse().unwrap(),
        metrics_top_senders: std::num::NonZeroUsize::new(50).unwrap(),
        token_file: None,
        token_group: None,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn without_a_token_mailbrake_makes_one_for_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.token");
    let first = AdminToken::establish(&admin("127.0.0.1:9725"), dir.path(), None).unwrap();
    assert_eq!(first.origin(), &Origin::Generated(path.clone()));
    assert!(!first.is_configured());
    let secret = read(&path);
    let secret = secret.strip_suffix('\n').unwrap();
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    assert!(first.admits(&with_auth(format!("Bearer {secret}").as_bytes())));
    assert_eq!(mode(&path), 0o600);

    // Every start makes a new one, and the file follows.
    let second = AdminToken::establish(&admin("[::1]:9725"), dir.path(), Some(" ")).unwrap();
    let again = read(&path);
    assert_ne!(again.trim(), secret);
    assert!(second.admits(&with_auth(format!("Bearer {}", again.trim()).as_bytes())));
    assert!(!first.admits(&with_auth(format!("Bearer {}", again.trim()).as_bytes())));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["admin.token"], "no temporary file left behind");
}

#[test]
fn a_token_group_may_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let gid = nix::unistd::getegid().as_raw();
    let mut cfg = admin("127.0.0.1:9725");
    cfg.token_group = Some(UnixGroup {
        name: "own".into(),
        gid,
    });
    AdminToken::establish(&cfg, dir.path(), None).unwrap();
    let path = dir.path().join("admin.token");
    assert_eq!(mode(&path), 0o640);
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), gid);
}

#[test]
fn a_link_left_in_the_state_directory_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".admin.token.new")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("admin.token")).unwrap();
    AdminToken::establish(&admin("127.0.0.1:9725"), dir.path(), None).unwrap();
    assert_eq!(read(&victim), "keep me");
    let path = dir.path().join("admin.token");
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    assert_eq!(read(&path).trim().len(), 64);
}

#[test]
fn a_chosen_token_wins_and_the_stale_generated_file_goes() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("admin.token");
    std::fs::write(&stale, "from-an-earlier-start\n").unwrap();
    let file = dir.path().join("chosen");
    std::fs::write(&file, "  chosen-token\n").unwrap();
    let mut cfg = admin("127.0.0.1:9725");
    cfg.token_file = Some(file.clone());

    let t = AdminToken::establish(&cfg, dir.path(), None).unwrap();
    assert_eq!(t.origin(), &Origin::TokenFile(file.clone()));
    assert!(t.is_configured());
    assert!(t.admits(&with_auth(b"Bearer chosen-token")));
    assert!(!stale.exists(), "the CLI would read a stale token");

    let t = AdminToken::establish(&cfg, dir.path(), Some("from-env\n")).unwrap();
    assert_eq!(t.origin(), &Origin::Environment);
    assert!(t.admits(&with_auth(b"Bearer from-env")));

    std::fs::write(&file, "\n").unwrap();
    let err = AdminToken::establish(&cfg, dir.path(), None).unwrap_err();
    assert!(matches!(err, TokenError::Empty { .. }), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = AdminToken::establish(&cfg, dir.path(), None).unwrap_err();
    assert!(matches!(err, TokenError::Read { .. }), "{err}");
}

#[test]
fn beyond_loopback_the_operator_must_choose_the_token() {
    let dir = tempfile::tempdir().unwrap();
    for bind in ["0.0.0.0:9725", "192.0.2.1:9725", "[::]:9725"] {
        let cfg = admin(bind);
        let err = AdminToken::establish(&cfg, dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("admin.token_file"), "{err}");
        assert!(check(&cfg, None).is_err() && check(&cfg, Some("")).is_err());
        assert!(!dir.path().join("admin.token").exists(), "{bind}");
        assert!(check(&cfg, Some("tok")).is_ok());
        let t = AdminToken::establish(&cfg, dir.path(), Some("tok")).unwrap();
        assert!(t.is_configured());
    }
    assert!(check(&admin("127.0.0.1:9725"), None).is_ok());
}
