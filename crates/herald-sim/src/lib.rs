//! A faithful in-process simulator of the provider contract
//! (`docs/contract.md`): six independent HTTP servers, three
//! per channel, that validate like the reference Express program and then
//! fail a valid request with a configurable probability.
//!
//! Used by `herald mock-providers` ([`run`]) and by integration tests, which
//! can stop one provider hard ([`Simulator::stop_provider`]: listener and
//! every open connection closed at once, like a crashed server) and start it
//! again on the same port ([`Simulator::start_provider`]).
//!
//! Each provider owns its accept loop and a [`JoinSet`] of connection tasks,
//! so stopping it drops every socket it holds; `axum::serve` would not allow
//! that.

mod args;
mod http;

#[cfg(test)]
mod tests;

pub use args::{MockArgs, Slow, parse_rate, parse_slow};

use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use herald_contract::Channel;

use self::http::ProviderState;

/// How the simulated providers behave and where they listen.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Address every provider binds to. Default `127.0.0.1`.
    pub host: IpAddr,
    /// Probability in `[0, 1]` that a valid request is answered 500. Default 0.5.
    pub failure_rate: f64,
    /// Delay added before answering a valid request. Default 0.
    pub latency: Duration,
    /// Providers with a delay of their own instead. Default none.
    pub slow: Vec<Slow>,
    /// One port per SMS provider, in provider order; 0 lets the OS choose.
    /// Default `[8071, 8072, 8073]`.
    pub sms_ports: Vec<u16>,
    /// One port per email provider. Default `[8091, 8092, 8093]`.
    pub email_ports: Vec<u16>,
    /// Seed for the failure draws; provider `i` (counting SMS providers
    /// first, then email, from 0) uses `seed + i`. `None`: random.
    pub seed: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            failure_rate: 0.5,
            latency: Duration::ZERO,
            slow: Vec::new(),
            sms_ports: vec![8071, 8072, 8073],
            email_ports: vec![8091, 8092, 8093],
            seed: None,
        }
    }
}

/// One successful send: what the reference server logs as
/// `Sending sms via Provider N: {...}`, the ground truth of delivery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    /// When it was sent: RFC 3339 in UTC, to the millisecond, in the line.
    #[serde(serialize_with = "rfc3339_millis")]
    pub ts: SystemTime,
    pub channel: Channel,
    /// 1-based, as in the endpoint path.
    pub provider: u8,
    pub port: u16,
    /// The request body as parsed.
    pub body: serde_json::Value,
}

fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// A running set of simulated providers.
pub struct Simulator {
    sms: Vec<Provider>,
    email: Vec<Provider>,
}

struct Provider {
    state: Arc<ProviderState>,
    /// The bound address (with the real port when 0 was asked for).
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Binds every provider; deliveries (successful sends only) go to `sink`.
    /// A closed sink is not an error: deliveries are then dropped.
    pub async fn start(
        cfg: SimulatorConfig,
        sink: mpsc::UnboundedSender<Delivery>,
    ) -> io::Result<Simulator> {
        if !(0.0..=1.0).contains(&cfg.failure_rate) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("failure rate {} is not in [0, 1]", cfg.failure_rate),
            ));
        }
        for (channel, ports) in [
            (Channel::Sms, &cfg.sms_ports),
            (Channel::Email, &cfg.email_ports),
        ] {
            if ports.len() > usize::from(u8::MAX) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("at most 255 {channel} providers"),
                ));
            }
            if let Some(s) = cfg
                .slow
                .iter()
                .find(|s| s.channel == channel && usize::from(s.provider) > ports.len())
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--slow {s}: there is no {channel} provider {}", s.provider),
                ));
            }
        }
        let mut sim = Simulator {
            sms: Vec::with_capacity(cfg.sms_ports.len()),
            email: Vec::with_capacity(cfg.email_ports.len()),
        };
        let mut index = 0u64;
        for channel in Channel::ALL {
            let ports = match channel {
                Channel::Sms => &cfg.sms_ports,
                Channel::Email => &cfg.email_ports,
            };
            for (i, &port) in ports.iter().enumerate() {
                let rng = match cfg.seed {
                    Some(seed) => fastrand::Rng::with_seed(seed.wrapping_add(index)),
                    None => fastrand::Rng::new(),
                };
                index += 1;
                // On error, `sim` is dropped: the providers already started
                // see their stop senders dropped and close down.
                let listener = bind(SocketAddr::new(cfg.host, port))?;
                let addr = listener.local_addr()?;
                let number = (i + 1) as u8;
                let latency = cfg
                    .slow
                    .iter()
                    .rfind(|s| s.channel == channel && s.provider == number)
                    .map_or(cfg.latency, |s| s.latency);
                let state = Arc::new(ProviderState::new(
                    channel,
                    number,
                    addr.port(),
                    cfg.failure_rate,
                    latency,
                    rng,
                    sink.clone(),
                ));
                let running = spawn_provider(listener, state.clone());
                let provider = Provider {
                    state,
                    addr,
                    running: Some(running),
                };
                match channel {
                    Channel::Sms => sim.sms.push(provider),
                    Channel::Email => sim.email.push(provider),
                }
            }
        }
        Ok(sim)
    }

    fn providers_of(&self, channel: Channel) -> &[Provider] {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Email => &self.email,
        }
    }

    fn provider_mut(&mut self, channel: Channel, provider: u8) -> &mut Provider {
        let list = match channel {
            Channel::Sms => &mut self.sms,
            Channel::Email => &mut self.email,
        };
        let n = list.len();
        match usize::from(provider)
            .checked_sub(1)
            .and_then(|i| list.get_mut(i))
        {
            Some(p) => p,
            None => panic!("no {channel} provider {provider} (there are {n}, numbered from 1)"),
        }
    }

    fn provider(&self, channel: Channel, provider: u8) -> &Provider {
        let list = self.providers_of(channel);
        match usize::from(provider)
            .checked_sub(1)
            .and_then(|i| list.get(i))
        {
            Some(p) => p,
            None => panic!(
                "no {channel} provider {provider} (there are {}, numbered from 1)",
                list.len()
            ),
        }
    }

    /// The address provider `provider` (1-based) is bound to.
    ///
    /// # Panics
    /// If there is no such provider.
    pub fn addr(&self, channel: Channel, provider: u8) -> SocketAddr {
        self.provider(channel, provider).addr
    }

    /// The provider's endpoint, e.g. `http://127.0.0.1:8071/api/sms/provider1`.
    /// When bound to an unspecified address (`0.0.0.0`, `::`), the URL names
    /// the loopback address of the same family, which reaches it.
    ///
    /// # Panics
    /// If there is no such provider.
    pub fn url(&self, channel: Channel, provider: u8) -> String {
        let mut addr = self.addr(channel, provider);
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!(
            "http://{addr}{}",
            self.provider(channel, provider).state.path()
        )
    }

    /// How many providers `channel` has.
    pub fn providers(&self, channel: Channel) -> u8 {
        self.providers_of(channel).len() as u8
    }

    /// Whether the provider is currently running.
    pub fn is_running(&self, channel: Channel, provider: u8) -> bool {
        self.provider(channel, provider).running.is_some()
    }

    /// Stops one provider hard: closes its listener and drops every open
    /// connection (idle keep-alive ones and those mid-request) before
    /// returning, so clients see connection errors, as with a crashed
    /// server. No-op if it is already stopped.
    ///
    /// # Panics
    /// If there is no such provider.
    pub async fn stop_provider(&mut self, channel: Channel, provider: u8) {
        if let Some(running) = self.provider_mut(channel, provider).running.take() {
            running.stop_and_wait().await;
        }
    }

    /// Starts a stopped provider again on the same port. No-op if it is
    /// running.
    ///
    /// # Panics
    /// If there is no such provider.
    pub async fn start_provider(&mut self, channel: Channel, provider: u8) -> io::Result<()> {
        let p = self.provider_mut(channel, provider);
        if p.running.is_none() {
            let listener = bind(p.addr)?;
            p.running = Some(spawn_provider(listener, p.state.clone()));
        }
        Ok(())
    }

    /// Stops every provider, closing all their connections.
    pub async fn shutdown(mut self) {
        // Signal every provider first, so they all close at once, then wait.
        let tasks: Vec<JoinHandle<()>> = self
            .sms
            .iter_mut()
            .chain(self.email.iter_mut())
            .filter_map(|p| p.running.take())
            .map(|r| {
                let _ = r.stop.send(());
                r.task
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Running {
    async fn stop_and_wait(self) {
        let _ = self.stop.send(());
        // The accept task closes the listener and aborts and awaits every
        // connection task before it ends.
        let _ = self.task.await;
    }
}

/// Binds with `SO_REUSEADDR`, so a restart on the same port works at once
/// even with connections of the previous listener in `TIME_WAIT`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_provider(listener: TcpListener, state: Arc<ProviderState>) -> Running {
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, state, stop_rx));
    Running { stop, task }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<ProviderState>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .pipeline_flush(true);
    let builder = Arc::new(builder);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // A send, or the sender dropped with the `Simulator`.
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, state.clone(), builder.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: do not spin.
                    tracing::warn!(error = %e, port = state.port(), "simulator accept failed");
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    // Abort every connection task and wait until each is gone, so that its
    // socket is closed by the time `stop_provider` returns.
    conns.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<ProviderState>,
    builder: Arc<http1::Builder>,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(http::handle(state, req).await) }
    });
    // Errors here are the client's (reset, malformed request): nothing to do.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// `herald mock-providers`: runs the providers until `shutdown` resolves,
/// printing one JSON line per successful send on stdout
/// (`serde_json::to_string(&Delivery)`), flushed as soon as no further line
/// is waiting, so a reading process sees each at once.
///
/// Listening addresses are reported through `tracing` (not stdout, which
/// carries only delivery lines). Returns an error if a port cannot be bound
/// or stdout cannot be written (e.g. the reader went away).
pub async fn run(cfg: SimulatorConfig, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sim = Simulator::start(cfg, tx).await?;
    for channel in Channel::ALL {
        for n in 1..=sim.providers(channel) {
            tracing::info!(
                "{} provider {n} listening on {}",
                channel.as_str(),
                sim.url(channel, n)
            );
        }
    }
    let mut writer = print_deliveries(rx);
    let early = tokio::select! {
        _ = shutdown => None,
        done = &mut writer => Some(done),
    };
    // Stopping drops every sender, so the writer drains what is left and ends.
    sim.shutdown().await;
    let done = match early {
        Some(done) => done,
        None => writer.await,
    };
    done.map_err(io::Error::other)?
}

/// Prints each delivery received on `rx` as one JSON line on stdout
/// (`serde_json::to_string(&Delivery)`), flushing as soon as no further line
/// is waiting. Runs on a blocking thread of the current tokio runtime until
/// every sender is dropped (e.g. after [`Simulator::shutdown`]); ends early
/// with the error if stdout cannot be written.
pub fn print_deliveries(rx: mpsc::UnboundedReceiver<Delivery>) -> JoinHandle<io::Result<()>> {
    tokio::task::spawn_blocking(move || write_lines(rx))
}

/// The one writer of delivery lines: blocks on the channel, writes all that
/// is queued, flushes when the queue is momentarily empty.
fn write_lines(mut rx: mpsc::UnboundedReceiver<Delivery>) -> io::Result<()> {
    // Not `stdout().lock()`: holding the lock for the whole run would block
    // any other writer to stdout in the process.
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    while let Some(delivery) = rx.blocking_recv() {
        write_line(&mut out, &delivery)?;
        while let Ok(delivery) = rx.try_recv() {
            write_line(&mut out, &delivery)?;
        }
        out.flush()?;
    }
    out.flush()
}

fn write_line(out: &mut impl Write, delivery: &Delivery) -> io::Result<()> {
    serde_json::to_writer(&mut *out, delivery)?;
    out.write_all(b"\n")
}
