//! `--spawn`: the provider simulator and Herald as child processes of this
//! very executable, on free loopback ports, with a scratch directory for the
//! config, the store and the logs; and `--floor`'s no-op server the same way.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::args::{BenchArgs, ScratchDir};
use super::messages::Marker;
use super::pin::{self, Pinning};
use super::{BenchError, noop};
use herald_contract::Channel;

/// How long a child may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the simulator reported delivering: for each line with this run's
/// marker, the request's sequence number and when the bench read the line.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    pub seen: Mutex<Vec<(u64, Instant)>>,
    /// Delivery lines read, with or without this run's marker.
    pub lines: AtomicU64,
}

pub struct Spawned {
    pub herald_addr: SocketAddr,
    pub herald: Child,
    pub simulator: Child,
    pub deliveries: Arc<DeliveryLog>,
    pub dir: ScratchDir,
}

/// Starts the simulator, then Herald pointed at it; returns once Herald
/// listens. Blocking: call it from `spawn_blocking`.
pub fn start(
    args: &BenchArgs,
    marker: &Marker,
    pinning: Option<Pinning>,
) -> Result<Spawned, BenchError> {
    let dir = ScratchDir::create(args.keep).map_err(|source| BenchError::Io {
        what: "creating a temporary directory".into(),
        source,
    })?;
    let exe = current_exe()?;

    // The simulator: every port chosen by the OS, reported on stderr.
    let mut simulator = pin::command(pinning, |p| p.others_cpu, exe.as_os_str())
        .args([
            "mock-providers",
            "--sms-ports",
            "0,0,0",
            "--email-ports",
            "0,0,0",
        ])
        .arg("--failure-rate")
        .arg(args.failure_rate.to_string())
        .arg("--latency-ms")
        .arg(args.simulator_latency_ms.to_string())
        .args(
            args.slow
                .iter()
                .flat_map(|s| ["--slow".to_owned(), s.to_string()]),
        )
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            what: "herald mock-providers",
            source,
        })?;
    let sim_stderr = simulator.stderr.take().expect("piped");
    let sim_stdout = simulator.stdout.take().expect("piped");
    let urls = provider_urls(sim_stderr, &dir.path.join("simulator.log"));
    let urls = match urls.recv_timeout(START_TIMEOUT) {
        Ok(urls) => urls,
        Err(_) => {
            let _ = simulator.kill();
            let _ = simulator.wait();
            return Err(BenchError::Start {
                what: "herald mock-providers",
                log: dir.path.join("simulator.log"),
            });
        }
    };
    let deliveries = Arc::new(DeliveryLog::default());
    read_deliveries(sim_stdout, marker.clone(), Arc::clone(&deliveries));

    // Herald, pointed at the simulator.
    let config = herald_config(&dir.path, &urls);
    let config_path = dir.path.join("herald.toml");
    std::fs::write(&config_path, config).map_err(|source| BenchError::Io {
        what: format!("writing {}", config_path.display()),
        source,
    })?;
    let herald_log = dir.path.join("herald.log");
    let log_file = std::fs::File::create(&herald_log).map_err(|source| BenchError::Io {
        what: format!("creating {}", herald_log.display()),
        source,
    })?;
    let mut cmd = pin::command(pinning, |p| p.herald_cpu, exe.as_os_str());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0"]);
    if let Some(store) = &args.store {
        cmd.arg("--store").arg(store);
    }
    let mut herald = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
    {
        Ok(child) => child,
        Err(source) => {
            stop(&mut simulator);
            return Err(BenchError::Spawn {
                what: "herald serve",
                source,
            });
        }
    };
    let addr = listening_addr(herald.stdout.take().expect("piped"), herald_listening);
    let herald_addr = match addr.recv_timeout(START_TIMEOUT) {
        Ok(addr) => addr,
        Err(_) => {
            stop(&mut herald);
            stop(&mut simulator);
            return Err(BenchError::Start {
                what: "herald serve",
                log: herald_log,
            });
        }
    };
    Ok(Spawned {
        herald_addr,
        herald,
        simulator,
        deliveries,
        dir,
    })
}

impl Spawned {
    /// SIGTERM to Herald (it drains), then to the simulator; each is killed
    /// if it has not exited within 15 s.
    pub fn stop(mut self) -> ScratchDir {
        stop(&mut self.herald);
        stop(&mut self.simulator);
        self.dir
    }
}

fn current_exe() -> Result<std::path::PathBuf, BenchError> {
    std::env::current_exe().map_err(|source| BenchError::Io {
        what: "finding the herald executable".into(),
        source,
    })
}

/// `herald noop-server`, started and listening.
pub struct NoopServer {
    pub addr: SocketAddr,
    child: Child,
}

/// Starts `herald noop-server` (on Herald's CPU when pinning) and returns
/// once it listens. Blocking: call it from `spawn_blocking`.
pub fn start_noop(pinning: Option<Pinning>) -> Result<NoopServer, BenchError> {
    let exe = current_exe()?;
    let mut child = pin::command(pinning, |p| p.herald_cpu, exe.as_os_str())
        .arg("noop-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            what: "herald noop-server",
            source,
        })?;
    let addr = listening_addr(
        child.stdout.take().expect("piped"),
        noop::parse_listening_line,
    );
    match addr.recv_timeout(START_TIMEOUT) {
        Ok(addr) => Ok(NoopServer { addr, child }),
        Err(_) => {
            stop(&mut child);
            Err(BenchError::NotListening {
                what: "herald noop-server",
            })
        }
    }
}

impl NoopServer {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then killed if it has not exited within 15 s.
    pub fn stop(mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
        // own child, not yet reaped, so it cannot name another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let until = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The simulator's provider URLs, in provider order per channel, read from
/// its log lines `… sms provider 1 listening on http://127.0.0.1:PORT/…`;
/// everything it logs is copied to `log`.
fn provider_urls(stderr: ChildStderr, log: &Path) -> mpsc::Receiver<[Vec<(u8, String)>; 2]> {
    let (tx, rx) = mpsc::channel();
    let mut log = std::fs::File::create(log).ok();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut found: [Vec<(u8, String)>; 2] = [Vec::new(), Vec::new()];
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Some((channel, n, url)) = parse_listening_line(&line) {
                let i = usize::from(channel == Channel::Email);
                found[i].push((n, url));
                if found[0].len() == 3
                    && found[1].len() == 3
                    && let Some(tx) = tx.take()
                {
                    let mut urls = std::mem::take(&mut found);
                    for list in &mut urls {
                        list.sort();
                    }
                    let _ = tx.send(urls);
                }
            }
        }
    });
    rx
}

/// `(channel, provider number, URL)` from a line that ends
/// `listening on http://127.0.0.1:PORT/api/<channel>/provider<N>`.
pub fn parse_listening_line(line: &str) -> Option<(Channel, u8, String)> {
    let at = line.find("listening on http://")? + "listening on ".len();
    let url: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    let path = &url[url["http://".len()..].find('/')? + "http://".len()..];
    let rest = path.strip_prefix("/api/")?;
    let (channel, provider) = rest.split_once("/provider")?;
    Some((Channel::parse(channel)?, provider.parse().ok()?, url))
}

/// Reads the simulator's stdout (one JSON line per successful send) and
/// notes each line with this run's marker.
fn read_deliveries(stdout: ChildStdout, marker: Marker, log: Arc<DeliveryLog>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(256 * 1024, stdout);
        let mut line = String::new();
        let mut batch = Vec::with_capacity(1024);
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let now = Instant::now();
            log.lines.fetch_add(1, Ordering::Relaxed);
            if let Some(seq) = marker.find_seq(&line) {
                batch.push((seq, now));
            }
            // Take the lock once per burst, not once per line.
            if reader.buffer().is_empty() && !batch.is_empty() {
                log.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append(&mut batch);
            }
        }
        log.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut batch);
    });
}

/// Herald's `herald listening on http://ADDR` line.
fn herald_listening(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("herald listening on http://")?
        .parse()
        .ok()
}

/// The address in the first line of stdout that `parse` finds one in; the
/// rest of stdout is drained so the child never blocks on a full pipe.
fn listening_addr(
    stdout: ChildStdout,
    parse: fn(&str) -> Option<SocketAddr>,
) -> mpsc::Receiver<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(addr) = parse(&line) {
                let _ = tx.send(addr);
                break;
            }
            line.clear();
        }
        let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
    });
    rx
}

/// A config file for Herald: the defaults, the store in `dir`, and the
/// simulator's providers.
fn herald_config(dir: &Path, urls: &[Vec<(u8, String)>; 2]) -> String {
    let store = dir.join("herald.db");
    let mut toml = format!("store = \"sqlite://{}\"\n", store.display());
    for (channel, list) in Channel::ALL.into_iter().zip(urls) {
        for (n, url) in list {
            toml.push_str(&format!(
                "\n[[providers.{channel}]]\nname = \"{channel}-provider{n}\"\nurl = \"{url}\"\n"
            ));
        }
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_simulators_listening_lines() {
        let line = "2026-11-22T20:50:04.123Z  INFO herald_sim: sms provider 2 listening on http://127.0.0.1:40123/api/sms/provider2";
        assert_eq!(
            parse_listening_line(line),
            Some((
                Channel::Sms,
                2,
                "http://127.0.0.1:40123/api/sms/provider2".into()
            ))
        );
        let colored = "\x1b[32m INFO\x1b[0m email provider 3 listening on http://127.0.0.1:1/api/email/provider3\x1b[0m";
        assert_eq!(parse_listening_line(colored).unwrap().0, Channel::Email);
        assert_eq!(parse_listening_line("herald started"), None);
    }

    #[test]
    fn config_names_every_provider() {
        let urls = [
            vec![(1, "http://127.0.0.1:1/api/sms/provider1".to_string())],
            vec![(1, "http://127.0.0.1:2/api/email/provider1".to_string())],
        ];
        let toml = herald_config(Path::new("/tmp/x"), &urls);
        assert!(toml.starts_with("store = \"sqlite:///tmp/x/herald.db\""));
        assert!(toml.contains("[[providers.sms]]\nname = \"sms-provider1\""));
        assert!(toml.contains("url = \"http://127.0.0.1:2/api/email/provider1\""));
    }
}
