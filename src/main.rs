//! The `wspd` command: run the server, mint a token, manage users.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use wspd::address::Address;
use wspd::auth::{Tokens, UsersFile};
use wspd::config::Config;
use wspd::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "wspd",
    version,
    about = "A federated WebRTC signalling server (WSP 1.0)"
)]
struct Cli {
    /// Config file. Default: ./config.toml if it exists, else the embedded default.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print an access token for USER@DOMAIN, signed with the config's secret.
    Token {
        /// The user's address; its domain must be the config's domain.
        address: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Manage the users file named by [auth] users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check, step by step, whether this server federates with DOMAIN:
    /// discovery, TCP, TLS, its keys, a signed link. Exits 1 if a step fails.
    Check {
        /// The other server's domain, e.g. b.example.
        domain: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add or replace a user; the password is read from standard input.
    Add { name: String },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new("config.toml").exists() => Ok(Config::load(Path::new("config.toml"))?),
        None => Ok(Config::embedded()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The report on stdout already says what failed.
        Err(e) if e.is::<CheckFailed>() => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wspd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        None => run(config, cli.config.clone(), cli.log_format),
        Some(Command::Token { address, ttl }) => {
            let user = Address::parse(&address).with_context(|| format!("{address:?}"))?;
            if user.domain() != config.domain {
                bail!(
                    "{user} is not an address of {}, the domain of this config",
                    config.domain
                );
            }
            if ttl == 0 {
                bail!("--ttl must be at least 1 second");
            }
            let (token, _) = Tokens::new(&config.domain, &config.auth.secret)
                .mint(&user, Duration::from_secs(ttl));
            println!("{token}");
            Ok(())
        }
        Some(Command::Check { domain }) => check(&config, cli.config.as_deref(), &domain),
        Some(Command::User {
            command: UserCommand::Add { name },
        }) => {
            let Some(path) = &config.auth.users else {
                bail!("the config has no [auth] users file to add users to");
            };
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("password for {name}: (input is shown; end with Enter)");
            }
            let mut password = String::new();
            stdin.lock().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("empty password");
            }
            let mut users = UsersFile::load(path)?;
            users.set(&name, password)?;
            users.save(path)?;
            eprintln!(
                "user {} saved in {}",
                name.to_ascii_lowercase(),
                path.display()
            );
            Ok(())
        }
    }
}

/// `wspd check` found a failing step (the report says which).
#[derive(Debug, thiserror::Error)]
#[error("the check failed")]
struct CheckFailed;

fn check(config: &Config, path: Option<&Path>, domain: &str) -> anyhow::Result<()> {
    if config.federation.is_none() {
        let which = match path {
            Some(p) => p.display().to_string(),
            None if Path::new("config.toml").exists() => "./config.toml".into(),
            None => "the embedded default config".into(),
        };
        bail!(
            "{which} has no [federation] section: this server does not federate, \
             so there is nothing to check (add [federation], or pass --config PATH)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(wspd::federation::check::check(config, domain))?;
    println!(
        "wspd check {}: can {} federate with it?",
        report.domain, report.origin
    );
    println!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err(CheckFailed.into())
    }
}

fn run(config: Config, config_path: Option<PathBuf>, log_format: LogFormat) -> anyhow::Result<()> {
    let node = config.cluster.as_ref().map(|c| c.node.clone());
    logging::init_for_node(log_format, &logging::default_filter(), node.as_deref())
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let server = wspd::Server::bind(config).await?;
        let app = server.app();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                match load_config(config_path.as_deref())
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|c| app.reload(&c).map_err(|e| e.to_string()))
                {
                    Ok(ignored) if !ignored.is_empty() => tracing::warn!(
                        ?ignored,
                        "these keys changed but need a restart to take effect"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("reload failed, the running configuration stays: {e}")
                    }
                }
            }
        });
        let drain = server.drain();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down (a second signal exits at once)");
            drain.start();
            wait_for_signal().await;
            std::process::exit(130);
        });
        server.run().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
