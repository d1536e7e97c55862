//! The `mailbrake` command: parses the command line and hands over to the library.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
