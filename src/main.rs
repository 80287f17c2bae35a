//! The `herald` binary: parses the command line, sets up logging, runs.

use std::io::IsTerminal;
use std::str::FromStr;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use herald::app;
use herald::cli::{Command as ServerCommand, ServeArgs};
use herald::config::ProvidersConfig;
use herald::domain::Channel;
use herald::logging::{LogConfig, LogFormat};
use herald::telemetry::{TelemetryConfig, Traces};
use herald_bench::BenchArgs;
use herald_sim::{self as simulator, MockArgs};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

// glibc's malloc showed as ~10% of Herald's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = ABOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The server's subcommands, then its tools'.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Server(ServerCommand),
    /// Run a simulator of the provider contract: six endpoints that fail at
    /// random; prints one JSON line per successful send on stdout.
    MockProviders(MockArgs),
    /// Run Herald and the provider simulator together, to try Herald out.
    Demo(DemoArgs),
    /// Drive load against Herald (a running one, or one it starts) and
    /// report throughput, latency percentiles, backlog, CPU and memory.
    Bench(BenchArgs),
    /// Herald's HTTP stack with no-op handlers, on a free loopback port:
    /// the floor `herald bench --floor` measures Herald against.
    #[command(hide = true)]
    NoopServer,
    /// Print a completion script for a shell: `herald completions bash >
    /// /etc/bash_completion.d/herald`, or zsh's `_herald`, fish's `herald.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page herald(1); with --dir, write it and one page per
    /// subcommand (herald-serve.1, …) into that directory instead.
    Man {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

const ABOUT: &str = "A self-hosted notification gateway for SMS and email";

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    mock: MockArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ran = run(Cli::parse()).await;
    // What `serve` and `demo` logged last may still wait for its write.
    herald::logging::flush();
    ran
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    ignore_file_size_signal();
    match cli.command {
        Command::Server(command) => server(command).await?,
        Command::MockProviders(args) => {
            init_logging(&LogConfig::default())?;
            simulator::run(args.simulator_config(), shutdown_signal()).await?;
        }
        Command::Demo(args) => demo(args).await?,
        Command::Bench(args) => {
            init_logging(&LogConfig::default())?;
            herald_bench::main(args).await?
        }
        Command::NoopServer => herald_bench::noop::run(shutdown_signal()).await?,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut completion_command(), "herald", &mut script);
            print_all(&script)?;
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("could not write the man pages to {}", dir.display()))?;
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)?;
        }
    }
    Ok(())
}

/// The command line as the shells should complete it: without the hidden
/// subcommands (clap_complete would offer them), which are internal.
fn completion_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("herald")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .subcommand_required(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Writes to stdout; a reader that stopped early (`herald man | head`) is
/// not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("could not write to stdout"),
    }
}

async fn server(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Serve(args) => {
            ignore_hangup_until_serving();
            let config = args.load().context("invalid configuration")?;
            let traces = init_logging_batched(&config.log, &config.telemetry)?;
            app::refuse_exposure_without_keys(&config)?;
            let (listener, addr) = app::bind(config.listen)
                .await
                .with_context(|| format!("could not listen on {}", config.listen))?;
            let announce = announcement(addr, &config);
            let served =
                app::launch(config, args.source(), listener, shutdown_signal(), announce).await;
            end_traces(traces).await;
            served?;
        }
        ServerCommand::Migrate(args) => {
            let config = args.load().context("invalid configuration")?;
            init_logging(&config.log)?;
            app::migrate(&config).await?;
            eprintln!(
                "the store at {} is up to date",
                herald::store::redacted(&config.store)
            );
        }
        ServerCommand::Keys(args) => keys(args).await?,
        ServerCommand::Providers(args) => providers(args).await?,
        ServerCommand::Openapi => print_all(herald::api::openapi::document().as_bytes())
            .context("could not write the document")?,
    }
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    ignore_hangup_until_serving();
    let mut config = args.serve.load().context("invalid configuration")?;
    // The demo's lines to try (curl, the dashboard) are plain http://.
    config.http.tls_cert_file = None;
    config.http.tls_key_file = None;
    let traces = init_logging_batched(&config.log, &config.telemetry)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sim = simulator::Simulator::start(args.mock.simulator_config(), tx)
        .await
        .context("could not start the provider simulator")?;
    let printer = simulator::print_deliveries(rx);
    // Point Herald at the simulator, wherever its ports ended up.
    let sim_ref = &sim;
    let urls = |channel| (1..=sim_ref.providers(channel)).map(move |n| sim_ref.url(channel, n));
    config.providers = ProvidersConfig::from_urls(urls(Channel::Sms), urls(Channel::Email));
    let (listener, addr) = app::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {}", config.listen))?;
    let announce = announcement(addr, &config);
    let simulated = format!(
        "simulated providers (failing {:.0}% of requests): SMS {}, email {}",
        args.mock.failure_rate * 100.0,
        (1..=sim.providers(Channel::Sms))
            .map(|n| sim.addr(Channel::Sms, n).to_string())
            .collect::<Vec<_>>()
            .join(" "),
        (1..=sim.providers(Channel::Email))
            .map(|n| sim.addr(Channel::Email, n).to_string())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let ready = move || {
        announce();
        herald::logging::flush();
        eprintln!("{simulated}");
        eprintln!(
            "\nsend an SMS:\n  curl -i http://{addr}/v1/sms -H 'content-type: application/json' \
             -d '{{\"phone\": \"01712345678\", \"text\": \"Hello from Herald\"}}'\n\
             then follow the Location header:\n  curl http://{addr}/v1/notifications/<id>\n\
             watch it live on the dashboard:\n  http://{addr}/dashboard\n\
             each successful send is printed below as a JSON line; Ctrl-C stops.\n"
        );
    };
    let served = app::launch(config, None, listener, shutdown_signal(), ready).await;
    end_traces(traces).await;
    served?;
    sim.shutdown().await;
    printer.await??;
    Ok(())
}

async fn keys(args: herald::cli::KeysArgs) -> anyhow::Result<()> {
    use herald::app::keys;
    use herald::cli::KeysCommand;
    let config = args.store.load().context("invalid configuration")?;
    init_logging(&config.log)?;
    match args.command {
        KeysCommand::Create {
            name,
            scopes,
            rate_per_sec,
            burst,
        } => {
            let new = keys::NewKey {
                name: &name,
                scopes: &scopes,
                rate_per_sec,
                burst,
            };
            let key = keys::create(&config, new).await?;
            println!("created API key {name:?} (scopes {scopes}); it is shown once, here:");
            println!("{key}");
        }
        KeysCommand::List => {
            println!("name\tscopes\trate_per_sec\tburst\tcreated\trevoked");
            let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            for k in keys::list(&config).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.name,
                    k.scopes,
                    show(k.rate_per_sec.map(|r| r.to_string())),
                    show(k.burst.map(|b| b.to_string())),
                    k.created_at,
                    show(k.revoked_at.map(|t| t.to_string())),
                );
            }
        }
        KeysCommand::Revoke { name } => {
            keys::revoke(&config, &name).await?;
            println!("revoked API key {name:?}");
        }
    }
    Ok(())
}

async fn providers(args: herald::cli::ProvidersArgs) -> anyhow::Result<()> {
    use herald::app::rotation;
    use herald::cli::ProvidersCommand;
    let config = args.store.load().context("invalid configuration")?;
    init_logging(&config.log)?;
    let (name, enabled) = match args.command {
        ProvidersCommand::List => {
            println!("name\tchannel\tkind\tstate");
            for p in rotation::list(&config).await? {
                let state = match p.disabled_at {
                    Some(at) => format!("disabled since {at}"),
                    None => "enabled".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\t{state}",
                    p.name,
                    p.channel.map_or("-", |c| c.as_str()),
                    p.kind.unwrap_or("-"),
                );
            }
            return Ok(());
        }
        ProvidersCommand::Disable { name } => (name, false),
        ProvidersCommand::Enable { name } => (name, true),
    };
    let changed = rotation::set_enabled(&config, &name, enabled).await?;
    let what = if enabled { "enabled" } else { "disabled" };
    if changed {
        println!(
            "provider {name:?} {what}; every instance follows within dispatch.providers_refresh_ms"
        );
    } else {
        println!("provider {name:?} was {what} already");
    }
    let configured = Channel::ALL.into_iter().any(|c| {
        config
            .providers
            .for_channel(c)
            .iter()
            .any(|p| p.name() == name)
    });
    if !configured {
        eprintln!(
            "note: this config has no provider {name:?}; instances whose config has it follow"
        );
    }
    Ok(())
}

/// The one line on stdout a script (or a test) waits for, written once
/// the store is open, the providers built and the API answering.
fn announcement(
    addr: std::net::SocketAddr,
    config: &herald::config::Config,
) -> impl FnOnce() + use<> {
    let scheme = match config.http.tls_files() {
        Some(_) => "https",
        None => "http",
    };
    let store = herald::store::redacted(&config.store);
    let store_tls = herald::store::tls_mode(&config.store);
    move || {
        println!("herald listening on {scheme}://{addr}");
        tracing::info!(
            %addr,
            tls = scheme == "https",
            %store,
            store_tls = store_tls.as_deref(),
            "herald started"
        );
    }
}

/// Logs go to stderr, as text or JSON; `RUST_LOG` wins over `log.level`.
fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    init_logging_to(log, None, std::io::stderr)
}

/// The same, for a server: its lines are written to stderr in batches, a
/// few writes a second however many lines (`herald::logging::batched_stderr`).
/// With traces, when `[telemetry]` names a collector.
fn init_logging_batched(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
) -> anyhow::Result<Option<Traces>> {
    let traces = Traces::start(telemetry).context("invalid [telemetry]")?;
    init_logging_to(log, traces.as_ref(), herald::logging::batched_stderr)?;
    let panic_message = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        herald::logging::flush();
        panic_message(info);
    }));
    Ok(traces)
}

/// Sends the spans still queued, off the runtime's threads (it blocks).
async fn end_traces(traces: Option<Traces>) {
    if let Some(traces) = traces {
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
}

fn init_logging_to<W>(log: &LogConfig, traces: Option<&Traces>, writer: W) -> anyhow::Result<()>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = log.level.parse().unwrap_or(tracing::Level::INFO);
    let filter = match log_filter(std::env::var_os("RUST_LOG"))? {
        Some(targets) => targets,
        None => Targets::new().with_default(level),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = match log.format {
        // Values escaped: text from outside never reaches a terminal raw.
        LogFormat::Text => layer
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(herald::logging::EscapedFields)
            .boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(traces.map(Traces::layer))
        .with(layer)
        .with(filter)
        .init();
    herald::logging::show_personal_data(log.personal_data_for_debugging);
    Ok(())
}

/// `RUST_LOG`, when set and not blank. A value that does not parse is an
/// error: ignoring it, as before, left an operator who asked for `debug`
/// with `info` and no word why.
fn log_filter(rust_log: Option<std::ffi::OsString>) -> anyhow::Result<Option<Targets>> {
    let Some(value) = rust_log else {
        return Ok(None);
    };
    let value = value
        .into_string()
        .map_err(|_| anyhow::anyhow!("RUST_LOG is not valid UTF-8"))?;
    if value.trim().is_empty() {
        return Ok(None);
    }
    // The parser's error repeats itself as its own source: its text once.
    Targets::from_str(&value).map(Some).map_err(|e| {
        anyhow::anyhow!(
            "invalid RUST_LOG {value:?}: {e} (say `info`, or `warn,herald::dispatch=debug`)"
        )
    })
}

/// A file size limit (`ulimit -f`) reached makes the write fail (EFBIG), as
/// a full disk does, instead of killing the process mid-transaction: the
/// store reports the failure and `/readyz` turns 503. PostgreSQL does the same.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: SIG_IGN installs no handler code; changing a disposition is
    // one system call, safe from any thread.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// `serve` reloads its providers on SIGHUP; until it catches the signal
/// (its start-up), SIGHUP is ignored instead of ending the process.
fn ignore_hangup_until_serving() {
    #[cfg(unix)]
    // SAFETY: as above; serve later installs its own handler over it.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rust_log_is_parsed_or_refused() {
        let parse = |v: &str| log_filter(Some(v.into()));
        assert!(log_filter(None).unwrap().is_none());
        assert!(parse(" ").unwrap().is_none(), "blank is unset");
        assert!(parse("info").unwrap().is_some());
        assert!(parse("warn,herald::dispatch=debug").unwrap().is_some());
        let err = parse("herald=loud").unwrap_err();
        assert!(format!("{err:#}").contains("invalid RUST_LOG"), "{err:#}");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = std::ffi::OsString::from_vec(vec![0xff]);
            assert!(log_filter(Some(bad)).is_err());
        }
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
    fn server_and_tool_commands_share_one_command_line() {
        let cli = Cli::try_parse_from(["herald", "serve", "--role", "api"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Server(ServerCommand::Serve(_))
        ));
        let cli = Cli::try_parse_from(["herald", "bench", "--spawn", "--duration", "1s"]).unwrap();
        assert!(matches!(cli.command, Command::Bench(_)));
        let cli = Cli::try_parse_from(["herald", "demo", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Command::Demo(_)));
    }
}
