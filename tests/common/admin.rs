//! The admin API from a test: the token mailbrake made, and one call.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin token mailbrake made at start, read from its state directory
/// (`[state] dir`), as the CLI run as root reads it.
pub fn generated_token(state: &Path) -> String {
    let path = state.join("admin.token");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: mailbrake writes its token there", path.display()));
    text.trim().to_owned()
}

/// One HTTP call to the admin API, with `token` as the bearer token;
/// (status, JSON body, or null when it is not JSON).
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: mailbrake\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Runs the CLI against `admin`, with `token` in the environment as
/// `--admin` needs, as user `cli-test`; (exit code, stdout, stderr).
pub fn cli(admin: SocketAddr, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailbrake"))
        .args(args)
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .env("MAILBRAKE_ADMIN_TOKEN", token)
        .env("USER", "cli-test")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
