//! The `herald` binary: parses the command line, sets up logging, runs.

use std::io::IsTerminal;
use std::str::FromStr;

use anyhow::Context;
use clap::Parser;
use herald::cli::{Cli, Command};
use herald::config::ProvidersConfig;
use herald::domain::Channel;
use herald::logging::{LogConfig, LogFormat};
use herald::{app, simulator};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

// glibc's malloc showed as ~10% of Herald's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ignore_file_size_signal();
    match cli.command {
        Command::Serve(args) => {
            let config = args.load().context("invalid configuration")?;
            init_logging(&config.log);
            app::refuse_exposure_without_keys(&config)?;
            let (listener, addr) = app::bind(config.listen)
                .await
                .with_context(|| format!("could not listen on {}", config.listen))?;
            announce(addr, &config.store);
            app::serve(config, listener, shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            let config = args.load().context("invalid configuration")?;
            init_logging(&config.log);
            app::migrate(&config).await?;
            eprintln!(
                "the store at {} is up to date",
                herald::store::redacted(&config.store)
            );
        }
        Command::Keys(args) => keys(args).await?,
        Command::MockProviders(args) => {
            init_logging(&LogConfig::default());
            simulator::run(args.simulator_config(), shutdown_signal()).await?;
        }
        Command::Demo(args) => demo(args).await?,
        Command::Openapi => {
            use std::io::Write;
            std::io::stdout()
                .write_all(herald::api::openapi::document().as_bytes())
                .context("could not write the document")?;
        }
        Command::Bench(args) => {
            init_logging(&LogConfig::default());
            herald::bench::main(args).await?
        }
    }
    Ok(())
}

async fn demo(args: herald::cli::DemoArgs) -> anyhow::Result<()> {
    let mut config = args.serve.load().context("invalid configuration")?;
    init_logging(&config.log);
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
    announce(addr, &config.store);
    eprintln!(
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
    eprintln!(
        "\nsend an SMS:\n  curl -i http://{addr}/v1/sms -H 'content-type: application/json' \
         -d '{{\"phone\": \"01712345678\", \"text\": \"Hello from Herald\"}}'\n\
         then follow the Location header:\n  curl http://{addr}/v1/notifications/<id>\n\
         each successful send is printed below as a JSON line; Ctrl-C stops.\n"
    );
    app::serve(config, listener, shutdown_signal()).await?;
    sim.shutdown().await;
    printer.await??;
    Ok(())
}

async fn keys(args: herald::cli::KeysArgs) -> anyhow::Result<()> {
    use herald::app::keys;
    use herald::cli::KeysCommand;
    let config = args.store.load().context("invalid configuration")?;
    init_logging(&config.log);
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

/// The one line on stdout a script (or a test) waits for.
fn announce(addr: std::net::SocketAddr, store: &str) {
    println!("herald listening on http://{addr}");
    tracing::info!(%addr, store = %herald::store::redacted(store), "herald started");
}

/// Logs go to stderr, as text or JSON; `RUST_LOG` wins over `log.level`.
fn init_logging(log: &LogConfig) {
    let level = log.level.parse().unwrap_or(tracing::Level::INFO);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| Targets::from_str(&s).ok())
        .unwrap_or_else(|| Targets::new().with_default(level));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match log.format {
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
    herald::logging::show_personal_data(log.personal_data_for_debugging);
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
