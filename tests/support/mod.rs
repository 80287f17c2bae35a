//! What the integration tests share: the provider simulator in-process,
//! Herald as a real child process, and a small typed client.
//!
//! Everything listens on 127.0.0.1 with ports chosen by the OS, and every
//! wait is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::domain::Channel;
use herald::simulator::{Delivery, Simulator, SimulatorConfig};
use serde_json::Value;

/// The simulator, with every delivery it made kept for counting.
pub struct Sim {
    pub sim: Simulator,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Sim {
    pub async fn start(failure_rate: f64, latency: Duration) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = SimulatorConfig {
            failure_rate,
            latency,
            sms_ports: vec![0, 0, 0],
            email_ports: vec![0, 0, 0],
            ..SimulatorConfig::default()
        };
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

    /// How many times each distinct body was delivered.
    pub fn delivery_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for d in self.deliveries.lock().unwrap().iter() {
            *counts.entry(d.body.to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// A config file pointing Herald at this simulator, with short timings
    /// so the tests run in seconds.
    /// `top` holds top-level settings, placed before any table.
    pub fn herald_config(&self, store: &Path, top: &str) -> String {
        let mut toml = format!(
            r#"{top}
store = "sqlite://{store}"
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
"#,
            store = store.display()
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

/// `herald serve` as a child process.
pub struct Herald {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Herald {
    /// Starts `herald serve --config <dir>/herald.toml` on a free port and
    /// waits until it listens.
    pub fn start(dir: &Path, config: &str) -> Self {
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!(
            "herald-{}.log",
            std::process::id() ^ fastrand::u32(..)
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("herald starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on http://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("herald did not start: {}", read(&log)));
        Self { child, addr, log }
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
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
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
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
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
