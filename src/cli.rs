//! The command line: one binary, one subcommand per way of running it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides, Role};
use crate::simulator::SimulatorConfig;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "A self-hosted notification gateway for SMS and email"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the dispatcher.
    Serve(ServeArgs),
    /// Create the store's schema or bring it up to date, then exit.
    Migrate(MigrateArgs),
    /// Run a simulator of the provider contract: six endpoints that fail at
    /// random; prints one JSON line per successful send on stdout.
    MockProviders(MockArgs),
    /// Run Herald and the provider simulator together, to try Herald out.
    Demo(DemoArgs),
    /// Create, list and revoke API keys (stored in the store, seen by every
    /// instance within auth.refresh_ms).
    Keys(KeysArgs),
    /// Print the API's OpenAPI 3.1 document, as `GET /openapi.json` serves
    /// it (`herald openapi > docs/openapi.json` refreshes the checked-in copy).
    Openapi,
    /// Drive load against Herald (a running one, or one it starts) and
    /// report throughput, latency percentiles, backlog, CPU and memory.
    Bench(crate::bench::BenchArgs),
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
        let mut config = Config::load(
            self.config.as_deref(),
            &Overrides {
                listen: self.listen,
                store: self.store.clone(),
                role: self.role,
            },
        )?;
        config.auth.insecure_no_auth = self.insecure_no_auth;
        Ok(config)
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

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Share of valid requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.5, value_parser = parse_rate)]
    pub failure_rate: f64,
    /// Delay before each answer to a valid request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Ports of SMS providers 1, 2, 3… (0: any free port).
    #[arg(long, value_delimiter = ',', default_value = "8071,8072,8073")]
    pub sms_ports: Vec<u16>,
    /// Ports of email providers 1, 2, 3… (0: any free port).
    #[arg(long, value_delimiter = ',', default_value = "8091,8092,8093")]
    pub email_ports: Vec<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Seed for the random failures, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl MockArgs {
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            host: self.host,
            failure_rate: self.failure_rate,
            latency: Duration::from_millis(self.latency_ms),
            sms_ports: self.sms_ports.clone(),
            email_ports: self.email_ports.clone(),
            seed: self.seed,
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub mock: MockArgs,
}

/// A share between 0 and 1, such as a failure rate.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0 and 1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mock_provider_flags() {
        let cli = Cli::try_parse_from([
            "herald",
            "mock-providers",
            "--failure-rate",
            "0.25",
            "--sms-ports",
            "1,2",
        ])
        .unwrap();
        let Command::MockProviders(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.failure_rate, 0.25);
        assert_eq!(args.sms_ports, [1, 2]);
        assert_eq!(args.email_ports, [8091, 8092, 8093]);
        assert!(Cli::try_parse_from(["herald", "mock-providers", "--failure-rate", "2"]).is_err());
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
    }
}
