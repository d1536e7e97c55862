//! The operator's commands (`status`, `sender …`, `top`, `audit`, `report`,
//! `reload`): each is one call to the running mailbrake's admin API, its
//! answer printed as a table for people or, with `--json`, as the server
//! wrote it. [`client`] does the HTTP and maps failures to exit codes,
//! [`render`] the tables and times; here: arguments → request → output.

pub mod client;
pub mod render;
mod views;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::admin::token::TokenFile;
use crate::config::Config;
use client::{CliError, Client, Method, Request, Token, base_url, encode_segment};

/// Where the configuration is looked for without `-c`.
pub const DEFAULT_CONFIG: &str = "/etc/mailbrake/mailbrake.toml";
pub use crate::admin::token::TOKEN_ENV;

/// The commands that talk to a running mailbrake.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Version, uptime, listeners and sessions, senders resident and locked, the default limit.
    Status {
        #[command(flatten)]
        opts: Options,
    },
    /// Look at one sender, or change its limit, lock or counts.
    Sender {
        #[command(flatten)]
        opts: Options,
        #[command(subcommand)]
        action: SenderCommand,
    },
    /// The senders closest to their limits.
    Top {
        /// How many senders.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        opts: Options,
    },
    /// Who changed what, when, and why (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        opts: Options,
    },
    /// What each sender sent over the last days, and the default limit that would fit.
    Report {
        /// Days covered.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// One row per sender, for spreadsheets.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[command(flatten)]
        opts: Options,
    },
    /// Re-read the configuration file, like SIGHUP.
    Reload {
        #[command(flatten)]
        opts: Options,
    },
}

/// Where the admin API is, how to print, and who is asking.
#[derive(Debug, Args)]
pub struct Options {
    /// Configuration file naming the admin API and its token (`[admin] bind`, `token_file`, else `[state] dir`).
    #[arg(short, long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The admin API's address, instead of the configuration's (token from MAILBRAKE_ADMIN_TOKEN).
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who makes the change, for the audit trail [default: $SUDO_USER, else $USER].
    #[arg(long, global = true, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    pub who: Option<String>,
}

/// `mailbrake sender …`.
#[derive(Debug, Subcommand)]
pub enum SenderCommand {
    /// Counts per window, the limit and where it comes from, the next free recipient, lock, override.
    Show {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
    },
    /// Give KEY another limit, for a while (--for, --until) or lastingly.
    Raise {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        /// The limit: 500/1h; several rates repeated or comma-separated; or "unlimited".
        #[arg(long, required = true, value_name = "RATE", value_delimiter = ',',
              value_parser = NonEmptyStringValueParser::new())]
        to: Vec<String>,
        #[command(flatten)]
        term: Term,
        #[command(flatten)]
        why: Reason,
    },
    /// No limit for KEY, for a while or lastingly.
    Exempt {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        #[command(flatten)]
        term: Term,
        #[command(flatten)]
        why: Reason,
    },
    /// Remove KEY's override or exemption: back to the file's policy.
    Clear {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        #[command(flatten)]
        why: Reason,
    },
    /// Refuse every recipient of KEY, for a while or until unlocked.
    Lock {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        #[command(flatten)]
        term: Term,
        #[command(flatten)]
        why: Reason,
    },
    /// Lift KEY's lock.
    Unlock {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        #[command(flatten)]
        why: Reason,
    },
    /// Forget KEY's counts (and rotation history).
    Reset {
        /// Sender key: auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS.
        key: String,
        #[command(flatten)]
        why: Reason,
    },
}

/// How long a change lasts.
#[derive(Debug, Args)]
pub struct Term {
    /// For this long: 3d, 12h, 90min.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_for, conflicts_with = "until")]
    pub for_: Option<String>,
    /// Until this UTC time, RFC 3339: 2026-12-04T18:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    pub until: Option<u64>,
}

/// Why a change is made; required, it goes into the audit trail.
#[derive(Debug, Args)]
pub struct Reason {
    /// Why (the ticket, who asked): recorded in the audit trail.
    #[arg(long, required = true, value_parser = NonEmptyStringValueParser::new())]
    pub reason: String,
}

/// Checks a humantime duration; keeps the text as given (the API parses it).
fn parse_for(text: &str) -> Result<String, String> {
    let text = text.trim();
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0".to_owned()),
        Ok(_) => Ok(text.to_owned()),
        Err(e) => Err(format!("{e}; write e.g. 3d, 12h or 90min")),
    }
}

/// An RFC 3339 UTC time as unix seconds.
fn parse_until(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(text.trim())
        .map_err(|e| format!("{e}; write a UTC time like 2026-12-04T18:00:00Z"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "before 1970".to_owned())
}

impl Command {
    pub fn options(&self) -> &Options {
        match self {
            Command::Status { opts }
            | Command::Sender { opts, .. }
            | Command::Top { opts, .. }
            | Command::Audit { opts, .. }
            | Command::Report { opts, .. }
            | Command::Reload { opts } => opts,
        }
    }
}

/// What the CLI reads from its environment (a value, so tests need no real one).
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub admin_token: Option<String>,
    pub sudo_user: Option<String>,
    pub user: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |name| std::env::var(name).ok();
        Env {
            admin_token: var(TOKEN_ENV),
            sudo_user: var("SUDO_USER"),
            user: var("USER"),
        }
    }

    /// `--who`, else `$SUDO_USER`, else `$USER`, else "unknown".
    fn who(&self, given: Option<&str>) -> String {
        [given, self.sudo_user.as_deref(), self.user.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// Runs one command against the admin API; prints its output or its error.
pub fn run(command: Command) -> ExitCode {
    let env = Env::from_process();
    let now = crate::clock::unix_seconds();
    let outcome =
        connect(command.options(), &env).and_then(|client| execute(&command, &client, &env, now));
    match outcome {
        Ok(text) => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Makes the call and renders its answer.
fn execute(command: &Command, client: &Client, env: &Env, now: u64) -> Result<String, CliError> {
    let who = env.who(command.options().who.as_deref());
    let answer = client.call(&request(command, &who))?;
    output(command, &answer, now).map_err(|detail| CliError::BadAnswer {
        url: client.base().to_owned(),
        detail,
    })
}

// === the target ===

/// The client for the admin API named by `--admin`, else by the configuration.
fn connect(opts: &Options, env: &Env) -> Result<Client, CliError> {
    let env_token = env
        .admin_token
        .as_deref()
        .and_then(|t| Token::new(t, TOKEN_ENV));
    if let Some(url) = &opts.admin {
        let hint = format!("set {TOKEN_ENV} to the token in mailbrake's [admin] token_file");
        return Ok(Client::new(base_url(url)?, env_token, hint));
    }
    let cfg = crate::config::load(&opts.config).map_err(|e| {
        CliError::Config(format!(
            "{e}\nwithout its configuration the CLI cannot find mailbrake's admin API: \
             pass -c FILE, or --admin http://HOST:PORT with the token in {TOKEN_ENV}"
        ))
    })?;
    let (url, token_file) = admin_target(&cfg);
    let (token, hint) = pick_token(env_token, &token_file, &opts.config);
    if token.is_some() {
        check_listener(admin_addr(cfg.admin.bind), &cfg.state.dir, &url)?;
    }
    Ok(Client::new(url, token, hint))
}

/// Before the token goes to a loopback admin port, the process holding the
/// port must be mailbrake: root, the owner of `[state] dir` (mailbrake's
/// user), or the caller. Any other local user could have bound it while
/// mailbrake was down, to collect the token of whoever calls next.
fn check_listener(addr: SocketAddr, state_dir: &Path, url: &str) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    if !addr.ip().is_loopback() {
        return Ok(());
    }
    let unreachable = |detail: String| CliError::Unreachable {
        url: url.to_owned(),
        detail,
    };
    let probe = std::net::TcpStream::connect_timeout(&addr, client::CONNECT_TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?;
    let local = probe.local_addr().map_err(|e| unreachable(e.to_string()))?;
    // The server's end of this connection: its local address is the port.
    let uid = crate::identity::owner::socket_owner(addr, local)
        .map_err(|e| unreachable(format!("cannot tell who holds {addr}: {e}")))?;
    let mailbrake = std::fs::metadata(state_dir).ok().map(|m| m.uid());
    let me = nix::unistd::geteuid().as_raw();
    if uid == 0 || uid == me || Some(uid) == mailbrake {
        return Ok(());
    }
    Err(unreachable(format!(
        "{addr} is held by uid {uid}, not by mailbrake (root, or the owner of {}); \
         the token was not sent",
        state_dir.display()
    )))
}

/// The socket address [`admin_url`] calls.
fn admin_addr(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// The admin API's URL and where its token is. A wildcard bind (`0.0.0.0`,
/// `::`) is reached on loopback.
fn admin_target(cfg: &Config) -> (String, TokenFile) {
    (
        admin_url(cfg.admin.bind),
        TokenFile::of(&cfg.admin, &cfg.state.dir),
    )
}

fn admin_url(bind: SocketAddr) -> String {
    format!("http://{}", admin_addr(bind))
}

/// The token to send (the environment's wins; the file is only read without
/// it) and, for a 401, where the token should go. An unreadable file is no
/// error yet: the 401 that follows says what to do.
fn pick_token(
    env_token: Option<Token>,
    file: &TokenFile,
    config: &Path,
) -> (Option<Token>, String) {
    let path = file.path();
    let hint = match file {
        TokenFile::Configured(_) => format!(
            "put the token in {TOKEN_ENV} or in {} ([admin] token_file)",
            path.display()
        ),
        TokenFile::Generated(_) => format!(
            "mailbrake writes its token to {} at start ([state] dir in {}); \
             or set {TOKEN_ENV} to the one it was started with",
            path.display(),
            config.display()
        ),
    };
    if env_token.is_some() {
        return (env_token, hint);
    }
    match std::fs::read_to_string(path) {
        Ok(text) => (Token::new(&text, path.display().to_string()), hint),
        Err(e) => (
            None,
            format!(
                "{hint}; {} could not be read ({e}): run as root (sudo)?",
                path.display()
            ),
        ),
    }
}

// === requests ===

/// The API call for `command`; changes carry `reason` and `who`.
fn request(command: &Command, who: &str) -> Request {
    match command {
        Command::Status { .. } => Request::get("/api/status"),
        Command::Top { limit, .. } => Request::get(format!("/api/top?limit={limit}")),
        Command::Audit { limit, .. } => Request::get(format!("/api/audit?limit={limit}")),
        Command::Report { days, .. } => Request::get(format!("/api/report?days={days}")),
        Command::Reload { .. } => {
            Request::with_body(Method::Post, "/api/reload", json!({ "who": who }))
        }
        Command::Sender { action, .. } => sender_request(action, who),
    }
}

fn sender_request(action: &SenderCommand, who: &str) -> Request {
    let path = |key: &str, verb: &str| format!("/api/senders/{}{verb}", encode_segment(key));
    let change = |why: &Reason, term: Option<&Term>| {
        let mut body = Map::new();
        body.insert("reason".into(), why.reason.clone().into());
        body.insert("who".into(), who.into());
        if let Some(d) = term.and_then(|t| t.for_.clone()) {
            body.insert("for".into(), d.into());
        }
        if let Some(u) = term.and_then(|t| t.until) {
            body.insert("until".into(), u.into());
        }
        body
    };
    match action {
        SenderCommand::Show { key } => Request::get(path(key, "")),
        SenderCommand::Raise { key, to, term, why } => {
            let mut body = change(why, Some(term));
            body.insert("limit".into(), to.join(", ").into());
            Request::with_body(Method::Put, path(key, "/override"), body.into())
        }
        SenderCommand::Exempt { key, term, why } => Request::with_body(
            Method::Post,
            path(key, "/exempt"),
            change(why, Some(term)).into(),
        ),
        SenderCommand::Clear { key, why } => Request::with_body(
            Method::Delete,
            path(key, "/override"),
            change(why, None).into(),
        ),
        SenderCommand::Lock { key, term, why } => Request::with_body(
            Method::Post,
            path(key, "/lock"),
            change(why, Some(term)).into(),
        ),
        SenderCommand::Unlock { key, why } => {
            Request::with_body(Method::Post, path(key, "/unlock"), change(why, None).into())
        }
        SenderCommand::Reset { key, why } => {
            Request::with_body(Method::Post, path(key, "/reset"), change(why, None).into())
        }
    }
}

// === output ===

/// The text to print for `answer`: the JSON as it came with `--json`,
/// else the command's view. `Err` says why the answer could not be read.
fn output(command: &Command, answer: &Value, now: u64) -> Result<String, String> {
    if command.options().json {
        let pretty = serde_json::to_string_pretty(answer).map_err(|e| e.to_string())?;
        return Ok(pretty + "\n");
    }
    match command {
        Command::Status { .. } => views::status(answer),
        Command::Top { .. } => views::top(answer),
        Command::Audit { .. } => views::audit(answer),
        Command::Report { csv: true, .. } => views::report_csv(answer),
        Command::Report { .. } => views::report_text(answer),
        Command::Reload { .. } => views::reloaded(answer),
        Command::Sender { action, .. } => match action {
            SenderCommand::Show { .. } => views::sender(answer, now),
            SenderCommand::Raise { .. } | SenderCommand::Exempt { .. } => {
                views::override_set(answer, now)
            }
            SenderCommand::Clear { .. } => views::override_cleared(answer, now),
            SenderCommand::Lock { .. } => views::locked(answer, now),
            SenderCommand::Unlock { .. } => views::done(answer, "unlocked"),
            SenderCommand::Reset { .. } => views::done(answer, "counts forgotten"),
        },
    }
}

#[cfg(test)]
mod tests;
