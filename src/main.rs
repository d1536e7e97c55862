//! The `mailbrake` command: parses the command line and hands over to the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An SMTP submission proxy that counts recipients per sender.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "/etc/mailbrake/mailbrake.toml")]
        config: PathBuf,
    },
    /// Check a configuration file (and load its certificates), report every problem, exit.
    CheckConfig {
        /// Configuration file.
        #[arg(short, long, default_value = "/etc/mailbrake/mailbrake.toml")]
        config: PathBuf,
    },
    /// Commands for the running mailbrake, through its admin API.
    #[command(flatten)]
    Admin(mailbrake::cli::Command),
    /// Submit a message as sendmail(8) does, for PHP's mail() and cron.
    ///
    /// `mailbrake sendmail [--socket PATH] [-t] [-i] [-f SENDER] [-v]
    /// [RECIPIENT]...`, or the same options through a link named
    /// `sendmail`. The socket is /run/mailbrake/submit.sock unless
    /// MAILBRAKE_SUBMIT_SOCKET or --socket names another.
    #[command(disable_help_flag = true)]
    Sendmail {
        /// `--socket PATH` first, then sendmail's options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // sendmail's options (-t -i -f …) are not clap's: seen before it parses.
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(invocation) = mailbrake::sendmail::command::invocation(&argv) {
        return mailbrake::sendmail::command::run(invocation);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Sendmail { args } => mailbrake::sendmail::command::run(
            mailbrake::sendmail::command::Invocation::subcommand(args),
        ),
        Command::Admin(command) => mailbrake::cli::run(command),
        Command::CheckConfig { config } => match check(&config) {
            Ok(n) => {
                println!("{}: OK ({n} listener(s))", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let cfg = match check(&config)
                .and_then(|_| mailbrake::config::load(&config).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(cfg.server.log_format);
            // The main runtime takes connections, the admin endpoint and
            // reloads; sessions run on their own threads (server.threads).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(mailbrake::server::run(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("mailbrake: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads and validates the file, then checks that the admin API can have a
/// token and builds every listener's TLS setup.
fn check(path: &std::path::Path) -> Result<usize, String> {
    let cfg = mailbrake::config::load(path).map_err(|e| e.to_string())?;
    let env_token = std::env::var(mailbrake::admin::token::TOKEN_ENV).ok();
    let mut errors: Vec<String> = mailbrake::admin::token::check(&cfg.admin, env_token.as_deref())
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect();
    errors.extend(mailbrake::server::build_all(&cfg).err().unwrap_or_default());
    if !errors.is_empty() {
        let mut msg = format!("{} error(s) in {}:", errors.len(), path.display());
        for e in errors {
            msg.push_str("\n  - ");
            msg.push_str(&e);
        }
        return Err(msg);
    }
    Ok(cfg.listeners.len())
}

fn init_logs(format: mailbrake::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MAILBRAKE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(mailbrake::logbuf::Logs);
    match format {
        mailbrake::config::LogFormat::Json => builder.json().init(),
        mailbrake::config::LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (ids, globals, conflicts).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
