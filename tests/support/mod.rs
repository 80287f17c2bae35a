//! What the integration tests share: the provider simulator in-process,
//! Herald as a real child process, and a small typed client.
//!
//! Everything listens on 127.0.0.1 with ports chosen by the OS, and every
//! wait is bounded.
//!
//! # The store matrix
//!
//! Tests that take a [`Backend`] run once per store ([`store_matrix!`]). The
//! PostgreSQL variants need a server: `HERALD_TEST_PG_URL` names one
//! (`scripts/test.sh` starts a throwaway cluster and sets it), and each test
//! creates a fresh database of its own there. Without it they fail under
//! `CI=true`, and elsewhere skip with a notice on stderr.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod smtp;
pub mod tls;

use herald::domain::Channel;

pub mod fixture;
use herald_sim::{Delivery, Simulator, SimulatorConfig};
use serde_json::Value;

/// The simulator, with every delivery it made kept for counting.
pub struct Sim {
    pub sim: Simulator,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Sim {
    pub async fn start(failure_rate: f64, latency: Duration) -> Self {
        Self::start_with(SimulatorConfig {
            failure_rate,
            latency,
            sms_ports: vec![0, 0, 0],
            email_ports: vec![0, 0, 0],
            ..SimulatorConfig::default()
        })
        .await
    }

    pub async fn start_with(cfg: SimulatorConfig) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sim = Simulator::start(cfg, tx).await.expect("simulator starts");
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&deliveries);
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                sink.lock().unwrap().push(d);
            }
        });
        Self { sim, deliveries }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    pub fn delivered_count(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }

    /// How many times each text (SMS) or subject (email) was delivered.
    pub fn counts_by_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for d in self.deliveries.lock().unwrap().iter() {
            *counts.entry(delivered_key(d)).or_insert(0) += 1;
        }
        counts
    }

    /// A config file pointing Herald at this simulator and at the store
    /// `store` (a URL), with short timings so the tests run in seconds.
    /// `top` holds top-level settings, placed before any table.
    pub fn herald_config(&self, store: &str, top: &str) -> String {
        let mut toml = format!(
            r#"{top}
store = "{store}"
[postgres]
pool_size = 8
[dispatch]
poll_interval_ms = 20
lease_ms = 4000
drain_timeout_ms = 5000
[retry]
base_ms = 50
cap_ms = 500
max_rounds = 40
[health]
cooldown_min_ms = 100
cooldown_max_ms = 500
"#
        );
        for channel in Channel::ALL {
            for n in 1..=self.sim.providers(channel) {
                toml.push_str(&format!(
                    "[[providers.{channel}]]\nname = \"{channel}-provider{n}\"\nurl = \"{}\"\ntimeout_ms = 1000\n",
                    self.sim.url(channel, n)
                ));
            }
        }
        toml
    }
}

/// Whether `python3` can import `module`. Where it cannot, the test is
/// skipped with a notice, and fails under `CI=true` (`scripts/test.sh`
/// installs the modules the tests use).
pub fn python_has(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 with {module} is missing; ./scripts/test.sh installs it");
        }
        eprintln!(
            "NOTICE: skipping a test: python3 -c 'import {module}' failed \
             (./scripts/test.sh installs it)"
        );
    }
    found
}

/// `herald serve` as a child process.
pub struct Herald {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// The config file it was started with (a reload reads it again).
    pub config: PathBuf,
}

impl Herald {
    /// Starts `herald serve` with `config` (written to a file in `dir`) on
    /// a free port and waits until it listens.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_as(dir, config, "all")
    }

    /// Like [`Herald::start`], in the given role (`all`, `api`, `worker`);
    /// each instance gets a config file of its own.
    pub fn start_as(dir: &Path, config: &str, role: &str) -> Self {
        Self::start_with_env(dir, config, role, &[("RUST_LOG", "info")])
    }

    /// Like [`Herald::start_as`], with extra environment variables (which
    /// may set `RUST_LOG`).
    pub fn start_with_env(dir: &Path, config: &str, role: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(dir, config, role, "127.0.0.1:0", env)
    }

    /// Like [`Herald::start`], on `addr` (to restart one where it was).
    pub fn start_on(dir: &Path, config: &str, addr: SocketAddr) -> Self {
        Self::spawn(dir, config, "all", &addr.to_string(), &[])
    }

    fn spawn(dir: &Path, config: &str, role: &str, listen: &str, env: &[(&str, &str)]) -> Self {
        let config_path = dir.join(format!("herald-{}.toml", fastrand::u64(..)));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("herald-{}.log", fastrand::u64(..)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(listen)
            .arg("--role")
            .arg(role)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("herald starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let url = line.strip_prefix("herald listening on ");
                if let Some(addr) = url.and_then(|u| {
                    u.strip_prefix("http://")
                        .or_else(|| u.strip_prefix("https://"))
                }) {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("herald did not start: {}", read(&log)));
        Self {
            child,
            addr,
            log,
            config: config_path,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// SIGHUP: reload the config file's providers.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    /// Stops serve (SIGTERM) and reads its whole log: what a check that a
    /// line is absent needs, since serve writes its lines in batches, up to
    /// 10 ms after they were logged, and all of them at exit.
    pub fn logs_at_exit(&mut self) -> String {
        self.sigterm();
        let exit = self.wait_exit(Duration::from_secs(30));
        assert!(exit.is_some(), "serve did not exit: {}", self.logs());
        self.logs()
    }

    /// Waits up to 10 s for `needle` in the log: serve writes its lines in
    /// batches, up to 10 ms after they were logged.
    pub async fn log_shows(&self, needle: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(Instant::now() < until, "no {needle:?} in: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address `metrics.listen` got, which the log says; waited for
    /// up to 10 s.
    pub async fn metrics_addr(&self) -> SocketAddr {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.logs().lines().find_map(|l| {
                let rest = l.split("metrics listening").nth(1)?;
                let addr = rest.split("addr=").nth(1)?.split_whitespace().next()?;
                addr.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(Instant::now() < until, "{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `herald COMMAND ARGS --store STORE` to its end; its stdout (a
/// failure fails the test, with its stderr).
pub fn herald_cli(command: &str, store: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg(command)
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald {command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `herald serve --config CONFIG` (on a free port) to its end, which
/// must come within 20 s: how it exited, its stdout and its stderr.
pub fn serve_to_its_end(config: &Path) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("herald serve kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads until the peer closes the connection (or resets it); what it sent
/// meanwhile, or `None` if it still holds the connection after `limit`.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts that the server closes every one of `held` within 20 s.
pub async fn assert_all_closed(held: &mut [tokio::net::TcpStream]) {
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, Duration::from_secs(20))
                .await
                .is_some(),
            "connection {i} is still open"
        );
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub struct Client {
    http: reqwest::Client,
    pub base: String,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    /// The Prometheus text of `GET /metrics` (sent without this client's
    /// headers, as a scraper would).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn new(addr: SocketAddr) -> Self {
        Self::with_headers(addr, reqwest::header::HeaderMap::new())
    }

    /// A client that sends `key` as `Authorization: Bearer` on every request.
    pub fn with_key(addr: SocketAddr, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        Self::with_headers(addr, headers)
    }

    fn with_headers(addr: SocketAddr, headers: reqwest::header::HeaderMap) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .default_headers(headers)
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        Self::answer(resp).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, "application/json", body.to_string())
            .await
    }

    /// A JSON POST with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> Answer {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await;
        Self::answer(resp).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await;
        Self::answer(resp).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await;
        Self::answer(resp).await
    }

    /// A request that got no answer reads as status 0.
    async fn answer(resp: reqwest::Result<reqwest::Response>) -> Answer {
        let Ok(resp) = resp else {
            return Answer {
                status: 0,
                headers: Default::default(),
                body: Value::Null,
            };
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn sms(&self, text: &str) -> Answer {
        self.post(
            "/v1/sms",
            &serde_json::json!({"phone": "01712345678", "text": text}),
        )
        .await
    }

    pub async fn email(&self, subject: &str) -> Answer {
        self.post(
            "/v1/email",
            &serde_json::json!({"subject": subject, "body": "body", "recipients": ["a@example.com"]}),
        )
        .await
    }

    pub async fn stats(&self) -> HashMap<String, u64> {
        let a = self.get("/v1/stats").await;
        serde_json::from_value(a.body["by_status"].clone()).unwrap_or_default()
    }

    /// Polls until nothing is queued, sending or retrying; false on timeout.
    pub async fn wait_until_settled(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let s = self.stats().await;
            let pending: u64 = ["queued", "sending", "retrying"]
                .iter()
                .map(|k| s.get(*k).copied().unwrap_or(0))
                .sum();
            if !s.is_empty() && pending == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn provider_state(&self, name: &str) -> String {
        let a = self.get("/v1/providers").await;
        a.body
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p["breaker"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }
}

/// Sends `count` SMS (or emails) with unique texts, `concurrency` at a
/// time; returns the ids of those accepted.
pub async fn send_many(
    client: &Arc<Client>,
    channel: Channel,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..concurrency {
        let client = Arc::clone(client);
        let next = Arc::clone(&next);
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let text = format!("{prefix}-{i}");
                let a = match channel {
                    Channel::Sms => client.sms(&text).await,
                    Channel::Email => client.email(&text).await,
                };
                if a.status == 202 {
                    ids.push(a.body["id"].as_str().unwrap().to_owned());
                }
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}

/// The unique text or subject a delivery carried.
pub fn delivered_key(d: &Delivery) -> String {
    match d.channel {
        Channel::Sms => d.body["text"].as_str().unwrap_or_default().to_owned(),
        Channel::Email => d.body["subject"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Runs `herald keys ARGS --store URL`; its stdout.
pub fn herald_keys(store: &str, args: &[&str]) -> String {
    herald_cli("keys", store, args)
}

/// Creates a key (`herald keys create ARGS`); returns the key, which is
/// the output's last line.
pub fn create_key(store: &str, args: &[&str]) -> String {
    let out = herald_keys(store, &[&["create"], args].concat());
    out.lines().last().unwrap().trim().to_owned()
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn name(backend: Backend)` once per store, as
/// `sqlite::name` and `postgres::name`, under the given test attribute.
#[macro_export]
macro_rules! store_matrix {
    (#[$attr:meta] $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[$attr]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[$attr]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The server the PostgreSQL variants use, or `None` (with a notice) when
/// there is none; under `CI=true` a missing server fails the test.
pub fn pg_server_url() -> Option<String> {
    match std::env::var("HERALD_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "HERALD_TEST_PG_URL is not set, so the PostgreSQL tests cannot run; \
             ./scripts/test.sh starts a server and sets it"
        ),
        _ => {
            eprintln!(
                "NOTICE: skipping a PostgreSQL test: HERALD_TEST_PG_URL is not set \
                 (./scripts/test.sh starts a server and sets it)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// Creates an empty database of its own on the server at `server`.
pub async fn fresh_database(server: &str) -> String {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
    let driver = tokio::spawn(connection);
    let name = format!("herald_test_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    drop(client);
    let _ = driver.await;
    with_database(server, &name)
}

/// A store for one test: a SQLite file in a temp dir, or a fresh database.
pub struct TestStore {
    pub url: String,
    pub backend: Backend,
    _dir: tempfile::TempDir,
}

impl TestStore {
    /// `None` when the backend is not available here (see [`pg_server_url`]).
    pub async fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("herald.db").display()),
            Backend::Postgres => fresh_database(&pg_server_url()?).await,
        };
        Some(Self {
            url,
            backend,
            _dir: dir,
        })
    }

    pub async fn open(&self) -> Arc<dyn herald::store::Store> {
        self.open_with(&herald::store::StoreOptions::default())
            .await
    }

    pub async fn open_with(
        &self,
        options: &herald::store::StoreOptions,
    ) -> Arc<dyn herald::store::Store> {
        herald::store::open(&self.url, options)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {}", self.url, herald::error::chain(&e)))
    }
}

/// A PostgreSQL cluster of a test's own, to stop and start at will
/// (`scripts/pg-cluster.sh`). Stopped when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub url: String,
}

impl PgCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh")
    }

    fn run(verb: &str, dir: &Path) -> String {
        let out = Command::new(Self::script())
            .arg(verb)
            .arg(dir.join("pg"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/pg-cluster.sh");
        assert!(out.status.success(), "pg-cluster.sh {verb} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `None` (with a notice) where the PostgreSQL tests are skipped.
    pub fn start() -> Option<Self> {
        pg_server_url()?;
        let dir = tempfile::tempdir().unwrap();
        let url = Self::run("start", dir.path());
        Some(Self { dir, url })
    }

    pub fn stop(&self) {
        Self::run("stop", self.dir.path());
    }

    pub fn restart(&self) {
        Self::run("start", self.dir.path());
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}
