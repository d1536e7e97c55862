//! The admin API's bearer token: where it comes from, the file mailbrake
//! writes when it makes its own, and the middleware that checks it.
//!
//! There is always a token. `MAILBRAKE_ADMIN_TOKEN` wins, then `[admin]
//! token_file`; with neither, mailbrake makes a random one at every start and
//! writes it to `[state] dir/admin.token`, readable by mailbrake's own user
//! (and root) only, or also by `[admin] token_group`, where the CLI finds it.
//! Loopback is no proof of trust: on a hosting server every site is a local
//! user. The secret is never logged or printed.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::AdminConfig;

/// The environment variable holding the admin token (wins over `token_file`).
pub const TOKEN_ENV: &str = "MAILBRAKE_ADMIN_TOKEN";
/// Name, in `[state] dir`, of the file holding the token mailbrake made.
pub const GENERATED_FILE: &str = "admin.token";
/// Random bytes in a generated token (written as 64 hex digits).
const GENERATED_BYTES: usize = 32;
/// Mode of the generated file: its owner (mailbrake's user) only...
const MODE_OWNER: u32 = 0o600;
/// ...or its owner and `[admin] token_group`.
const MODE_GROUP: u32 = 0o640;

/// Where the token is kept, as the configuration says: the file the
/// operator wrote, or the one mailbrake writes its own to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFile {
    /// `[admin] token_file`.
    Configured(PathBuf),
    /// `[state] dir/admin.token`, rewritten at every start.
    Generated(PathBuf),
}

impl TokenFile {
    pub fn of(admin: &AdminConfig, state_dir: &Path) -> TokenFile {
        match &admin.token_file {
            Some(path) => TokenFile::Configured(path.clone()),
            None => TokenFile::Generated(state_dir.join(GENERATED_FILE)),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            TokenFile::Configured(p) | TokenFile::Generated(p) => p,
        }
    }
}

/// The token every `/api` call must carry. Never printed.
pub struct AdminToken {
    secret: String,
    origin: Origin,
}

/// Where this run's token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// [`TOKEN_ENV`].
    Environment,
    /// `[admin] token_file`.
    TokenFile(PathBuf),
    /// Made by mailbrake at start, written there.
    Generated(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Environment => f.write_str(TOKEN_ENV),
            Origin::TokenFile(p) => write!(f, "token_file {}", p.display()),
            Origin::Generated(p) => write!(f, "made for this run, in {}", p.display()),
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken(from {}, redacted)", self.origin)
    }
}

/// Why mailbrake has no token to start with.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin.token_file {}: the file is empty; write a token in it", .path.display())]
    Empty { path: PathBuf },
    #[error(
        "admin.bind {0} is reachable beyond loopback: set admin.token_file (or {TOKEN_ENV}) \
         so that callers there can be given the token"
    )]
    BeyondLoopback(std::net::SocketAddr),
    #[error("cannot write the admin token to {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AdminToken {
    /// A token the operator chose, from `origin` (`None` when `text` is blank).
    pub fn configured(text: &str, origin: Origin) -> Option<AdminToken> {
        let secret = text.trim();
        (!secret.is_empty()).then(|| AdminToken {
            secret: secret.to_owned(),
            origin,
        })
    }

    /// The token for this start: `env` (the value of [`TOKEN_ENV`]), else
    /// `[admin] token_file`, else a new one written to `state_dir`. Beyond
    /// loopback a generated token is refused: remote callers could not read
    /// it, and `/metrics` would be open to the network.
    pub fn establish(
        admin: &AdminConfig,
        state_dir: &Path,
        env: Option<&str>,
    ) -> Result<AdminToken, TokenError> {
        let file = TokenFile::of(admin, state_dir);
        let env = env.and_then(|t| AdminToken::configured(t, Origin::Environment));
        let token = match (env, &file) {
            (Some(t), _) => t,
            (None, TokenFile::Configured(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.clone(),
                    source,
                })?;
                AdminToken::configured(&text, Origin::TokenFile(path.clone()))
                    .ok_or_else(|| TokenError::Empty { path: path.clone() })?
            }
            (None, TokenFile::Generated(path)) => {
                check(admin, None)?;
                let write = |source| TokenError::Write {
                    path: path.clone(),
                    source,
                };
                let secret = random_secret().map_err(write)?;
                let gid = admin.token_group.as_ref().map(|g| g.gid);
                write_private(path, &secret, gid).map_err(write)?;
                return Ok(AdminToken {
                    secret,
                    origin: Origin::Generated(path.clone()),
                });
            }
        };
        // A token the operator chose: a file left by an earlier start would
        // only make the CLI send a stale token.
        let stale = state_dir.join(GENERATED_FILE);
        if stale != file.path()
            && let Err(e) = std::fs::remove_file(&stale)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the stale {}: {e}", stale.display());
        }
        Ok(token)
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether the operator chose it (then `/metrics` needs it too).
    pub fn is_configured(&self) -> bool {
        !matches!(self.origin, Origin::Generated(_))
    }

    /// Whether `headers` carry this token as `Authorization: Bearer …`
    /// (scheme in any case, RFC 9110 §11.1). Compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
        // Only the length can tell (a generated token is always 64 characters).
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            self.secret.as_bytes(),
        ))
    }
}

/// Refuses a bind beyond loopback without a token the operator chose
/// (`env`: the value of [`TOKEN_ENV`]). Also run by `check-config`.
pub fn check(admin: &AdminConfig, env: Option<&str>) -> Result<(), TokenError> {
    let chosen = admin.token_file.is_some() || env.is_some_and(|t| !t.trim().is_empty());
    if chosen || admin.bind.ip().is_loopback() {
        Ok(())
    } else {
        Err(TokenError::BeyondLoopback(admin.bind))
    }
}

/// A new random token: hex, from the kernel's random source.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; GENERATED_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `secret` to `path` with mode 0600, or 0640 and group `gid`: into a
/// new file next to it (never through a link someone left there), then
/// renamed over `path`, so a reader never sees half a token.
fn write_private(path: &Path, secret: &str, gid: Option<u32>) -> std::io::Result<()> {
    let name = path.file_name().map_or_else(
        || GENERATED_FILE.into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let fresh = path.with_file_name(format!(".{name}.new"));
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE_OWNER)
            .open(&fresh)?;
        let mode = match gid {
            Some(gid) => {
                std::os::unix::fs::fchown(&f, None, Some(gid))?;
                MODE_GROUP
            }
            None => MODE_OWNER,
        };
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(format!("{secret}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&fresh, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    written
}

/// Refuses a call that does not carry the token: `401` with
/// `WWW-Authenticate: Bearer` (RFC 6750 §3) and `{"error": …}`.
pub async fn authorise(
    State(token): State<Arc<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    if token.admits(request.headers()) {
        return next.run(request).await;
    }
    tracing::warn!(
        method = %request.method(),
        path = request.uri().path(),
        "admin API: call refused, no valid token"
    );
    let mut refused = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "missing or wrong bearer token" })),
    )
        .into_response();
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mailbrake\""),
    );
    refused
}
