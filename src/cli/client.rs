//! The HTTP side of the CLI: one blocking call to the admin API, and every
//! way it can fail mapped to the exit code the README promises.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// How long to wait for the TCP connection to the admin API.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole call may take (a long report included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// At most this much of a non-JSON error body is shown.
const ERROR_BODY_CHARS: usize = 300;

/// Why a CLI command failed; [`CliError::exit_code`] is the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments, or a value the CLI itself rejects.
    #[error("{0}")]
    Usage(String),
    /// The configuration (or the token file) cannot be used.
    #[error("{0}")]
    Config(String),
    /// No connection to the admin API.
    #[error("cannot reach mailbrake at {url}: {detail}; is it running? is [admin] bind right?")]
    Unreachable { url: String, detail: String },
    /// The admin API wants a (different) token.
    #[error("mailbrake at {url} {problem} ({message}): {hint}")]
    Unauthorized {
        url: String,
        /// "wants an admin token and none was sent", or which token it refused.
        problem: String,
        /// The server's `error`.
        message: String,
        /// Where the token should go.
        hint: String,
    },
    /// mailbrake answered, and said no.
    #[error("mailbrake refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// mailbrake answered something the CLI does not understand.
    #[error("unexpected answer from mailbrake at {url}: {detail}")]
    BadAnswer { url: String, detail: String },
}

impl CliError {
    /// 0 done; 1 refused; 2 usage or configuration; 3 unreachable; 4 token.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused { .. } | CliError::BadAnswer { .. } => 1,
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Unauthorized { .. } => 4,
        }
    }
}

/// The bearer token, and where it came from (for messages). Never printed.
#[derive(Clone)]
pub struct Token {
    secret: String,
    /// "MAILBRAKE_ADMIN_TOKEN" or the token file's path.
    origin: String,
}

impl Token {
    /// `None` when `text` is blank; surrounding whitespace is not part of a token.
    pub fn new(text: &str, origin: impl Into<String>) -> Option<Self> {
        let secret = text.trim();
        (!secret.is_empty()).then(|| Token {
            secret: secret.to_owned(),
            origin: origin.into(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {}, redacted)", self.origin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

/// One call to the admin API, built without I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    /// Path and query, e.g. `/api/senders/auth%3Aalice%40example.com`.
    pub path: String,
    pub body: Option<Value>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Self {
        Request {
            method: Method::Get,
            path: path.into(),
            body: None,
        }
    }

    pub fn with_body(method: Method, path: impl Into<String>, body: Value) -> Self {
        Request {
            method,
            path: path.into(),
            body: Some(body),
        }
    }
}

/// A path segment, percent-encoded: RFC 3986 unreserved characters stay,
/// every other byte becomes `%XX`. A segment of only dots is encoded too, so
/// it cannot climb out of its route.
pub fn encode_segment(segment: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // RFC 3986's unreserved characters stay; "." and ".." would be read as
    // path steps, so a segment of dots only is encoded whole.
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
    const KEEP: &AsciiSet = &UNRESERVED.remove(b'.');
    let only_dots = !segment.is_empty() && segment.bytes().all(|b| b == b'.');
    if only_dots {
        return segment.bytes().map(|b| format!("%{b:02X}")).collect();
    }
    utf8_percent_encode(segment, KEEP).to_string()
}

/// The admin API's base URL: `http://` added when no scheme is given, no
/// trailing slash. The admin API is plain HTTP; anything else is refused.
pub fn base_url(text: &str) -> Result<String, CliError> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://").unwrap_or(("http", text));
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(CliError::Usage(format!(
            "--admin {text}: the admin API speaks plain http, not {scheme}; use http://HOST:PORT"
        )));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(CliError::Usage(format!(
            "--admin {text}: no host; use http://HOST:PORT"
        )));
    }
    Ok(format!("http://{rest}"))
}

/// A client for one admin API.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<Token>,
    /// Told on a 401: where the token should go.
    hint: String,
}

impl Client {
    /// `base` as [`base_url`] returns it.
    pub fn new(base: String, token: Option<Token>, hint: String) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The admin API is local: no proxy from the environment, no redirects.
            .proxy(None)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            .user_agent(concat!("mailbrake-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            base,
            token,
            hint,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Makes the call; a 2xx answer's JSON (null when the body is empty).
    pub fn call(&self, req: &Request) -> Result<Value, CliError> {
        let url = format!("{}{}", self.base, req.path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {}", t.secret));
        let sent = match (req.method, &req.body) {
            (Method::Get, _) => with_auth(self.agent.get(&url), auth).call(),
            (Method::Put, Some(body)) => with_auth(self.agent.put(&url), auth).send_json(body),
            (Method::Put, None) => with_auth(self.agent.put(&url), auth).send_empty(),
            (Method::Post, Some(body)) => with_auth(self.agent.post(&url), auth).send_json(body),
            (Method::Post, None) => with_auth(self.agent.post(&url), auth).send_empty(),
            (Method::Delete, Some(body)) => with_auth(self.agent.delete(&url), auth)
                .force_send_body()
                .send_json(body),
            (Method::Delete, None) => with_auth(self.agent.delete(&url), auth).call(),
        };
        let mut resp = sent.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        self.answer(status, &text)
    }

    /// An HTTP answer as a result.
    fn answer(&self, status: u16, text: &str) -> Result<Value, CliError> {
        let json: Option<Value> = serde_json::from_str(text).ok();
        if (200..300).contains(&status) {
            return match json {
                Some(v) => Ok(v),
                None if text.trim().is_empty() => Ok(Value::Null),
                None => Err(CliError::BadAnswer {
                    url: self.base.clone(),
                    detail: format!("status {status}, not JSON: {}", excerpt(text)),
                }),
            };
        }
        let message = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .map(super::render::value_text)
            .unwrap_or_else(|| match excerpt(text) {
                t if t.is_empty() => format!("HTTP status {status}"),
                t => t,
            });
        if status == 401 {
            let problem = match &self.token {
                None => "wants an admin token and none was sent".to_owned(),
                Some(t) => format!("refused the admin token from {}", t.origin),
            };
            return Err(CliError::Unauthorized {
                url: self.base.clone(),
                problem,
                message,
                hint: self.hint.clone(),
            });
        }
        Err(CliError::Refused { status, message })
    }

    fn transport_error(&self, e: ureq::Error) -> CliError {
        match e {
            ureq::Error::BadUri(detail) => {
                CliError::Usage(format!("--admin {}: not a usable URL: {detail}", self.base))
            }
            e => CliError::Unreachable {
                url: self.base.clone(),
                detail: e.to_string(),
            },
        }
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => req.header("Authorization", value),
        None => req,
    }
}

/// The start of a body, on one line.
fn excerpt(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(ERROR_BODY_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::fake_server;
    use serde_json::json;
    use std::net::TcpListener;

    #[test]
    fn segments_keep_unreserved_and_encode_the_rest() {
        for (key, path) in [
            ("auth:alice@example.com", "auth%3Aalice%40example.com"),
            ("vhost:shop-42", "vhost%3Ashop-42"),
            ("ip:2001:db8::/64", "ip%3A2001%3Adb8%3A%3A%2F64"),
            ("a b+c%d?e#f&g", "a%20b%2Bc%25d%3Fe%23f%26g"),
            ("x.y_z~", "x.y_z~"),
            ("é", "%C3%A9"),
            ("..", "%2E%2E"),
            (".", "%2E"),
            ("", ""),
        ] {
            assert_eq!(encode_segment(key), path, "{key}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:9025").unwrap(), "http://127.0.0.1:9025");
        assert_eq!(base_url("http://[::1]:9025/").unwrap(), "http://[::1]:9025");
        for bad in ["https://mx:9025", "http://", ""] {
            assert_eq!(base_url(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn exit_codes() {
        let s = String::new;
        for (e, code) in [
            (
                CliError::Refused {
                    status: 409,
                    message: s(),
                },
                1,
            ),
            (
                CliError::BadAnswer {
                    url: s(),
                    detail: s(),
                },
                1,
            ),
            (CliError::Usage(s()), 2),
            (CliError::Config(s()), 2),
            (
                CliError::Unreachable {
                    url: s(),
                    detail: s(),
                },
                3,
            ),
            (
                CliError::Unauthorized {
                    url: s(),
                    problem: s(),
                    message: s(),
                    hint: s(),
                },
                4,
            ),
        ] {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn tokens_are_trimmed_and_never_shown() {
        assert!(Token::new(" \n", "f").is_none());
        let t = Token::new("  s3cret\n", "/etc/mailbrake/admin.token").unwrap();
        assert_eq!(t.secret, "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    fn client(base: String, token: Option<&str>) -> Client {
        Client::new(
            base,
            token.and_then(|t| Token::new(t, "MAILBRAKE_ADMIN_TOKEN")),
            "set MAILBRAKE_ADMIN_TOKEN".into(),
        )
    }

    #[test]
    fn get_sends_the_bearer_token_and_the_encoded_path() {
        let (base, server) = fake_server(200, r#"{"key":"auth:alice@example.com"}"#);
        let path = format!("/api/senders/{}", encode_segment("auth:alice@example.com"));
        let answer = client(base, Some(" tok\n"))
            .call(&Request::get(path))
            .unwrap();
        assert_eq!(answer, json!({"key": "auth:alice@example.com"}));
        let seen = server.join().unwrap();
        assert!(
            seen.starts_with("GET /api/senders/auth%3Aalice%40example.com HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.to_ascii_lowercase()
                .contains("\r\nauthorization: bearer tok\r\n"),
            "{seen}"
        );
    }

    #[test]
    fn changes_send_json_bodies_even_on_delete() {
        let (base, server) = fake_server(200, r#"{"key":"k","removed":null}"#);
        let body = json!({"reason": "done", "who": "alice"});
        let req = Request::with_body(Method::Delete, "/api/senders/k/override", body.clone());
        client(base, None).call(&req).unwrap();
        let seen = server.join().unwrap();
        assert!(
            seen.starts_with("DELETE /api/senders/k/override HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(
            !seen.to_ascii_lowercase().contains("authorization"),
            "{seen}"
        );
        let (_, sent) = seen.split_once("\r\n\r\n").unwrap();
        assert_eq!(serde_json::from_str::<Value>(sent).unwrap(), body);
    }

    #[test]
    fn unauthorized_is_exit_4_and_says_where_the_token_goes() {
        let (base, server) = fake_server(401, r#"{"error":"missing or wrong token"}"#);
        let err = client(base, None)
            .call(&Request::get("/api/status"))
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(err.exit_code(), 4);
        let text = err.to_string();
        assert!(text.contains("none was sent"), "{text}");
        assert!(text.contains("missing or wrong token"), "{text}");
        assert!(text.contains("MAILBRAKE_ADMIN_TOKEN"), "{text}");

        let (base, server) = fake_server(401, r#"{"error":"wrong token"}"#);
        let err = client(base, Some("x"))
            .call(&Request::get("/api/status"))
            .unwrap_err();
        server.join().unwrap();
        assert!(
            err.to_string()
                .contains("refused the admin token from MAILBRAKE_ADMIN_TOKEN")
        );
    }

    #[test]
    fn conflicts_are_exit_1_with_the_servers_error() {
        let (base, server) = fake_server(409, r#"{"error":"auth:bob is not locked"}"#);
        let req = Request::with_body(Method::Post, "/api/senders/x/unlock", json!({}));
        let err = client(base, None).call(&req).unwrap_err();
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("POST /api/senders/x/unlock ")
        );
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "mailbrake refused (409): auth:bob is not locked"
        );
    }

    #[test]
    fn answers_that_are_not_json() {
        let (base, server) = fake_server(404, "no such page");
        let err = client(base, None)
            .call(&Request::get("/api/x"))
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "mailbrake refused (404): no such page");

        let (base, server) = fake_server(200, "<html>");
        let err = client(base, None)
            .call(&Request::get("/api/status"))
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(err.exit_code(), 1);

        let (base, server) = fake_server(200, "");
        let ok = client(base, None)
            .call(&Request::get("/api/status"))
            .unwrap();
        server.join().unwrap();
        assert_eq!(ok, Value::Null);
    }

    #[test]
    fn connection_refused_is_exit_3() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = client(base.clone(), None)
            .call(&Request::get("/api/status"))
            .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach mailbrake at {base}: ")),
            "{text}"
        );
        assert!(
            text.ends_with("is it running? is [admin] bind right?"),
            "{text}"
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "word ".repeat(200);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), ERROR_BODY_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(" a\n b "), "a b");
    }
}
