//! The server's subcommands: `serve`, `migrate`, `keys`, `providers`,
//! `openapi`. The binary puts its tools' (`mock-providers`, `demo`, `bench`,
//! crates of their own) beside them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource, Overrides, Role};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the dispatcher.
    Serve(ServeArgs),
    /// Create the store's schema or bring it up to date, then exit.
    Migrate(MigrateArgs),
    /// Create, list and revoke API keys (stored in the store, seen by every
    /// instance within auth.refresh_ms).
    Keys(KeysArgs),
    /// List providers, or take one out of rotation and put it back (in the
    /// store, followed by every instance within dispatch.providers_refresh_ms).
    Providers(ProvidersArgs),
    /// Print the API's OpenAPI 3.1 document, as `GET /openapi.json` serves
    /// it (`herald openapi > docs/openapi.json` refreshes the checked-in copy).
    Openapi,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file (see herald.example.toml).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for the HTTP API [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store URL [default: sqlite://herald.db].
    #[arg(long)]
    pub store: Option<String>,
    /// What this instance runs: the API, the dispatcher, or both
    /// [default: all].
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Serve on a non-loopback address without API keys (something in
    /// front of Herald must check callers then).
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl ServeArgs {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), &self.overrides())?;
        config.auth.insecure_no_auth = self.insecure_no_auth;
        Ok(config)
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            store: self.store.clone(),
            role: self.role,
        }
    }

    /// The config file with these flags, to read again on a reload; `None`
    /// without a file.
    pub fn source(&self) -> Option<ConfigSource> {
        Some(ConfigSource {
            file: self.config.clone()?,
            overrides: self.overrides(),
        })
    }
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once, as the last line, and never again.
    Create {
        /// Unique; names the key in `list`, `revoke` and the logs.
        #[arg(long)]
        name: String,
        /// Comma-separated: send, read, admin.
        #[arg(long)]
        scopes: String,
        /// Requests a second this key may make, per instance [default: no limit].
        #[arg(long)]
        rate_per_sec: Option<f64>,
        /// Requests at once above the rate [default: one second's worth].
        #[arg(long, requires = "rate_per_sec")]
        burst: Option<u32>,
    },
    /// Every key: name, scopes, limits, created, revoked (never the key).
    List,
    /// Revoke a key by name: every instance refuses it within auth.refresh_ms.
    Revoke { name: String },
}

#[derive(Debug, Args)]
pub struct ProvidersArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    #[command(subcommand)]
    pub command: ProvidersCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// This config's providers, and whether each is disabled; then any other
    /// name the store has disabled.
    List,
    /// Take a provider out of rotation: no new attempts; those in flight
    /// finish. Kept in the store across restarts and reloads.
    Disable { name: String },
    /// Put a disabled provider back in rotation.
    Enable { name: String },
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// A TOML config file (see herald.example.toml).
    #[arg(long, env = "HERALD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Store URL [default: sqlite://herald.db].
    #[arg(long, global = true)]
    pub store: Option<String>,
}

impl MigrateArgs {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(
            self.config.as_deref(),
            &Overrides {
                store: self.store.clone(),
                ..Overrides::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn serve_roles() {
        let cli = Cli::try_parse_from(["herald", "serve", "--role", "worker"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.role, Some(Role::Worker));
        assert!(Cli::try_parse_from(["herald", "serve", "--role", "boss"]).is_err());
        let cli =
            Cli::try_parse_from(["herald", "migrate", "--store", "postgres://h@x/db"]).unwrap();
        assert!(matches!(cli.command, Command::Migrate(_)));
        let cli = Cli::try_parse_from(["herald", "openapi"]).unwrap();
        assert!(matches!(cli.command, Command::Openapi));
        let cli = Cli::try_parse_from([
            "herald",
            "keys",
            "create",
            "--name",
            "a",
            "--scopes",
            "send",
            "--store",
            "sqlite://k.db",
        ])
        .unwrap();
        let Command::Keys(keys) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(keys.store.store.as_deref(), Some("sqlite://k.db"));
        let cli = Cli::try_parse_from([
            "herald",
            "providers",
            "disable",
            "sms-provider2",
            "--store",
            "sqlite://p.db",
        ])
        .unwrap();
        let Command::Providers(providers) = cli.command else {
            panic!("wrong command")
        };
        assert!(matches!(
            providers.command,
            ProvidersCommand::Disable { ref name } if name == "sms-provider2"
        ));
        assert_eq!(providers.store.store.as_deref(), Some("sqlite://p.db"));
    }
}
