//! `herald bench`'s flags, and the check that every target is on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::BenchError;
use herald_sim::parse_rate;

/// Longest run `--count` alone may take: every load loop is bounded in time.
pub const DEFAULT_TIME_CAP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["target", "spawn"])))]
pub struct BenchArgs {
    /// A running Herald to drive, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    pub target: Option<String>,
    /// Start `herald mock-providers` and `herald serve` as child processes
    /// on free loopback ports, with a store in a temporary directory.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: the store URL for the spawned Herald
    /// [default: sqlite:// in a temporary directory].
    #[arg(long, requires = "spawn")]
    pub store: Option<String>,
    /// Closed loop: this many connections, each sending its next request as
    /// soon as the previous one is answered. With --rate: the most requests
    /// (and connections) in flight at once.
    #[arg(long, short = 'c', default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Open loop: send this many requests per second on a fixed schedule,
    /// whatever the answers' latency.
    #[arg(long, short = 'r')]
    pub rate: Option<u32>,
    /// How long to send [default: 10s, or up to 10 min with --count].
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests to send (the run ends at --count or --duration,
    /// whichever comes first).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// What to send.
    #[arg(long, value_enum, default_value_t = ChannelMix::Sms)]
    pub channel: ChannelMix,
    /// Send through `POST /v1/batch`, this many notifications per request
    /// (--count still counts requests; accepted/s counts notifications).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: Option<u32>,
    /// The priority of every notification the load sends.
    #[arg(long, value_parser = ["high", "normal", "low"])]
    pub priority: Option<String>,
    /// Every notification the load sends asks to be hedged (`"hedge":
    /// true`); the delay is the spawned Herald's `hedge.*_after_ms`
    /// (`HERALD_HEDGE__SMS_AFTER_MS=100`, say).
    #[arg(long)]
    pub hedge: bool,
    /// Before the load, store this many `low` notifications (in batches of
    /// 1,000, not measured): the backlog a `--priority high` load must not
    /// wait behind.
    #[arg(long, default_value_t = 0)]
    pub backlog_low: u64,
    /// After the load, wait up to this long for the backlog to drain
    /// (0s: don't wait).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How often to read `GET /v1/stats` for the backlog.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// With --spawn: the simulator's delay before answering, in ms.
    #[arg(long, default_value_t = 0, requires = "spawn")]
    pub simulator_latency_ms: u64,
    /// With --spawn: one simulated provider slower than the rest, as
    /// `CHANNEL:N=MS` (`sms:1=2000`); repeat for more.
    #[arg(long, requires = "spawn", value_parser = herald_sim::parse_slow)]
    pub slow: Vec<herald_sim::Slow>,
    /// With --spawn: the simulator's share of valid requests answered 500.
    #[arg(long, default_value_t = 0.5, requires = "spawn", value_parser = parse_rate)]
    pub failure_rate: f64,
    /// With --spawn: keep the temporary directory (config, store, logs).
    #[arg(long, requires = "spawn")]
    pub keep: bool,
    /// Before the load, measure the floor: the same load against a no-op
    /// server of Herald's HTTP stack (`herald noop-server`), and hyper's
    /// pooled client against it for the provider side; the report gives
    /// Herald's CPU per notification as multiples of them.
    #[arg(long)]
    pub floor: bool,
    /// With --spawn: Herald (and the no-op server) on CPU 0, the simulator
    /// and the bench on CPU 1 (util-linux's `taskset`); the report adds each
    /// core's use.
    #[arg(long, requires = "spawn")]
    pub pin: bool,
    /// Write the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMix {
    Sms,
    Email,
    /// Alternately SMS and email.
    Mix,
}

impl ChannelMix {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelMix::Sms => "sms",
            ChannelMix::Email => "email",
            ChannelMix::Mix => "mix",
        }
    }
}

impl BenchArgs {
    /// The time bound of the load phase.
    pub fn time_limit(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d,
            (None, Some(_)) => DEFAULT_TIME_CAP,
            (None, None) => Duration::from_secs(10),
        }
    }
}

/// Where `--target` points, once it is known to be on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
}

impl Target {
    /// Accepts `http://HOST[:PORT][/]` where HOST is a loopback address
    /// (`127.0.0.0/8`, `[::1]`) or `localhost`; refuses everything else, so
    /// the bench can only ever send to this machine.
    pub fn parse(url: &str) -> Result<Target, BenchError> {
        let refuse = |why: &str| BenchError::Target {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| refuse("only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(refuse("user info is not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| refuse("unclosed '[' in the host"))?;
            (host, after)
        } else {
            match authority.rfind(':') {
                Some(i) => (&authority[..i], &authority[i..]),
                None => (authority, ""),
            }
        };
        let port = match port {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|&p| p != 0)
                .ok_or_else(|| refuse("bad port"))?,
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>()
                .map_err(|_| refuse("the host must be a loopback IP address or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(refuse(
                "the bench only sends to this machine (127.0.0.0/8 or [::1])",
            ));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// The spawned processes' scratch space.
#[derive(Debug)]
pub struct ScratchDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl ScratchDir {
    pub fn create(keep: bool) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("herald-bench-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Self { path, keep })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_are_accepted() {
        for (url, addr) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
            ("http://127.1.2.3:9", "127.1.2.3:9"),
            ("http://localhost:8080", "127.0.0.1:8080"),
            ("http://[::1]:8080/v1", "[::1]:8080"),
            ("http://127.0.0.1", "127.0.0.1:80"),
        ] {
            assert_eq!(
                Target::parse(url).unwrap().addr,
                addr.parse::<SocketAddr>().unwrap(),
                "{url}"
            );
        }
    }

    #[test]
    fn other_targets_are_refused() {
        for url in [
            "http://10.0.0.1:8080",
            "http://192.168.1.10:8080",
            "http://8.8.8.8",
            "http://example.com:8080",
            "http://[2001:db8::1]:80",
            "http://0.0.0.0:8080",
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            "http://user@127.0.0.1:8080",
            "http://127.0.0.1:0",
            "http://127.0.0.1:x",
            "http://localhost.example.com",
        ] {
            assert!(Target::parse(url).is_err(), "{url} was accepted");
        }
    }
}
