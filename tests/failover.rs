//! Database failover: a primary and a synchronous streaming standby of the
//! tests' own (`scripts/pg-cluster.sh start-replicated`), the primary lost
//! or stopped, the standby promoted; Herald follows by itself.
//!
//! Each test starts its own cluster in a temp dir. They are skipped, with
//! the reason printed, only where no PostgreSQL binaries are found (the
//! script's `find-bin`; `scripts/test.sh` installs them), and fail under
//! `CI=true` instead.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use support::{Client, Herald, Sim, delivered_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Rounds in flight per instance: bounds the sends that may repeat.
const IN_FLIGHT: usize = 16;

/// A replicated cluster of a test's own; both servers stopped when dropped.
struct Replicated {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh")
}

impl Replicated {
    /// `None` (with the reason printed) where no PostgreSQL binaries are.
    fn start() -> Option<Self> {
        let found = Command::new(script())
            .arg("find-bin")
            .stderr(Stdio::null())
            .output()
            .expect("running scripts/pg-cluster.sh");
        if !found.status.success() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("no PostgreSQL binaries (initdb); ./scripts/test.sh installs them");
            }
            println!(
                "NOTICE: skipping a failover test: no PostgreSQL binaries (initdb on the PATH \
                 or in /usr/lib/postgresql/*/bin); ./scripts/test.sh installs them"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Self {
            dir,
            url: String::new(),
        };
        cluster.url = cluster.run(&["start-replicated"]);
        Some(cluster)
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(script())
            .arg(args[0])
            .arg(self.dir.path().join("pg"))
            .args(&args[1..])
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/pg-cluster.sh");
        assert!(out.status.success(), "pg-cluster.sh {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The URL of one server alone (`primary` or `standby`).
    fn node_url(&self, which: &str) -> String {
        self.run(&["node-url", which])
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}

fn config(sim: &Sim, url: &str, postgres: &str) -> String {
    sim.herald_config(url, "")
        .replace("[postgres]", &format!("[postgres]\n{postgres}"))
        .replace(
            "[dispatch]",
            &format!("[dispatch]\nmax_in_flight = {IN_FLIGHT}"),
        )
}

/// What the clients saw.
#[derive(Default)]
struct Sent {
    /// Keys POSTed at least once.
    tried: HashSet<String>,
    /// Key → the id of its 202 (every 202 for a key must name one id).
    accepted: HashMap<String, String>,
    /// 503s answered (each retried).
    unavailable: usize,
}

/// POSTs `count` SMS with idempotency keys `{prefix}-{i}` at about `rate`
/// a second, alternating between `clients`; each one that gets a 503 (or no
/// answer) is retried with the same key after its `Retry-After`, until it
/// gets its 202 or `limit` passes.
async fn steady_load(
    clients: Vec<Arc<Client>>,
    prefix: &str,
    count: usize,
    rate: u64,
    sent: Arc<Mutex<Sent>>,
    limit: Duration,
) {
    let until = Instant::now() + limit;
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_millis(1000 / rate.max(1));
    for i in 0..count {
        let client = Arc::clone(&clients[i % clients.len()]);
        let sent = Arc::clone(&sent);
        let key = format!("{prefix}-{i}");
        tasks.spawn(async move {
            let body = json!({"phone": "01712345678", "text": key});
            sent.lock().unwrap().tried.insert(key.clone());
            while Instant::now() < until {
                let a = client.post_keyed("/v1/sms", &key, &body).await;
                match a.status {
                    202 => {
                        let id = a.body["id"].as_str().unwrap().to_owned();
                        let mut s = sent.lock().unwrap();
                        if let Some(first) = s.accepted.insert(key.clone(), id.clone()) {
                            assert_eq!(first, id, "{key}: one key, one notification");
                        }
                        return;
                    }
                    0 | 503 => {
                        sent.lock().unwrap().unavailable += 1;
                        let wait = a
                            .headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .unwrap_or(1)
                            .min(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    other => panic!("{key}: unexpected {other}: {}", a.body),
                }
            }
        });
        tokio::time::sleep(gap).await;
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

trait GetText {
    async fn get_text(&self, path: &str) -> String;
}

impl GetText for Client {
    /// A GET's body as text (`/metrics` is not JSON).
    async fn get_text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Waits (up to `limit`) until every accepted key was delivered.
async fn wait_delivered(sim: &Sim, keys: &HashSet<String>, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let counts = sim.counts_by_key();
        let missing = keys.iter().filter(|k| !counts.contains_key(*k)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{missing} accepted notifications not delivered after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first delivery after `since` of a key not yet POSTed at the loss
/// of the primary (so it was accepted by the new one); waited for up to
/// `limit`.
async fn first_new_delivery(
    sim: &Sim,
    before: &HashSet<String>,
    since: SystemTime,
    limit: Duration,
) -> SystemTime {
    let until = Instant::now() + limit;
    loop {
        if let Some(d) = sim
            .deliveries()
            .iter()
            .filter(|d| d.ts >= since && !before.contains(&delivered_key(d)))
            .map(|d| d.ts)
            .min()
        {
            return d;
        }
        assert!(
            Instant::now() < until,
            "nothing new delivered after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_ready(client: &Client, ready: bool, limit: Duration) -> serde_json::Value {
    let until = Instant::now() + limit;
    loop {
        let a = client.get("/readyz").await;
        if (a.status == 200) == ready && a.status != 0 {
            return a.body;
        }
        assert!(
            Instant::now() < until,
            "/readyz did not turn {} within {limit:?}: {} {}",
            if ready { "200" } else { "503" },
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the outcome of a run: every key got its 202, every 202 was
/// delivered, and only sends in flight at the loss repeated.
async fn check_run(sim: &Sim, sent: &Mutex<Sent>, count: usize, what: &str) {
    let keys: HashSet<String> = {
        let s = sent.lock().unwrap();
        assert_eq!(
            s.accepted.len(),
            count,
            "every notification got its 202 in the end (retries on 503)"
        );
        s.accepted.keys().cloned().collect()
    };
    wait_delivered(sim, &keys, Duration::from_secs(30)).await;
    let counts = sim.counts_by_key();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let unavailable = sent.lock().unwrap().unavailable;
    println!(
        "{what}: {count} accepted, {count} delivered, {duplicates} sent twice, \
         {unavailable} answers 503 retried"
    );
    assert!(
        duplicates <= 2 * IN_FLIGHT,
        "{duplicates} duplicates: more than the sends in flight"
    );
    assert_eq!(counts.len(), count, "nothing else was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_then_promotion_loses_nothing() {
    let Some(cluster) = Replicated::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::from_millis(5)).await;
    let cfg = config(&sim, &cluster.url, "");
    let instances: Vec<Herald> = (0..2).map(|_| Herald::start(dir.path(), &cfg)).collect();
    let clients: Vec<Arc<Client>> = instances.iter().map(|h| Arc::new(h.client())).collect();
    for c in &clients {
        wait_ready(c, true, Duration::from_secs(10)).await;
    }

    const COUNT: usize = 300;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let load = tokio::spawn(steady_load(
        clients.clone(),
        "kill",
        COUNT,
        50,
        Arc::clone(&sent),
        Duration::from_secs(60),
    ));
    // Under load for a second and a half: then the primary's machine dies.
    let until = Instant::now() + Duration::from_secs(10);
    while sent.lock().unwrap().accepted.len() < 60 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.run(&["kill"]);
    let tried_at_kill = sent.lock().unwrap().tried.clone();
    // No primary for a moment: accepts answer 503, quickly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let a = clients[0]
        .post_keyed(
            "/v1/sms",
            "probe-while-down",
            &json!({"phone": "01712345678", "text": "probe-while-down"}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, 503, "no primary: {}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    println!("an accept with no primary answered 503 in {took:?}");
    let ready = clients[0].get("/readyz").await;
    assert_eq!(
        ready.status, 503,
        "not ready without a primary: {}",
        ready.body
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.run(&["promote"]);
    let promoted = SystemTime::now();
    let next = first_new_delivery(&sim, &tried_at_kill, promoted, Duration::from_secs(20)).await;
    println!(
        "promotion to the next delivery: {} ms (pg-cluster.sh promote returned, then a \
         notification accepted by the new primary was delivered)",
        next.duration_since(promoted)
            .unwrap_or_default()
            .as_millis()
    );

    load.await.unwrap();
    // The probe that got its 503 is retried too, as a client would.
    let retried = clients[1]
        .post_keyed(
            "/v1/sms",
            "probe-while-down",
            &json!({"phone": "01712345678", "text": "probe-while-down"}),
        )
        .await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    sent.lock().unwrap().accepted.insert(
        "probe-while-down".into(),
        retried.body["id"].as_str().unwrap().into(),
    );
    check_run(&sim, &sent, COUNT + 1, "kill -9 + promote").await;
    for c in &clients {
        wait_ready(c, true, Duration::from_secs(10)).await;
    }
    // The metrics tell the story: errors by kind, the reconnection, the
    // time without a primary, and the host now written to.
    let new_primary = cluster.node_url("primary");
    let host = new_primary
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap();
    let metrics = clients[0].get_text("/metrics").await;
    for needle in [
        "herald_store_connection_errors_total{kind=\"",
        "herald_store_reconnects_total{connection=\"pool\"}",
        "herald_store_reconnects_total{connection=\"listen\"}",
        "herald_store_unavailable_seconds_total",
        "herald_store_writable 1",
        &format!("herald_store_host_info{{host=\"{host}\"}} 1"),
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
    let logs = instances[0].logs();
    assert!(
        logs.matches("postgres: no writable primary").count() <= 2,
        "the outage is logged once per state change, not per attempt: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_switchover_loses_nothing() {
    let Some(cluster) = Replicated::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::from_millis(5)).await;
    let cfg = config(&sim, &cluster.url, "");
    let instances: Vec<Herald> = (0..2).map(|_| Herald::start(dir.path(), &cfg)).collect();
    let clients: Vec<Arc<Client>> = instances.iter().map(|h| Arc::new(h.client())).collect();

    const COUNT: usize = 150;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let load = tokio::spawn(steady_load(
        clients.clone(),
        "switch",
        COUNT,
        50,
        Arc::clone(&sent),
        Duration::from_secs(40),
    ));
    let until = Instant::now() + Duration::from_secs(10);
    while sent.lock().unwrap().accepted.len() < 40 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A planned switchover: the primary stopped (-m fast), the standby
    // promoted.
    cluster.run(&["stop-primary"]);
    cluster.run(&["promote"]);
    load.await.unwrap();
    check_run(&sim, &sent, COUNT, "switchover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_old_primary_back_read_only_is_not_used() {
    let Some(cluster) = Replicated::start() else {
        return;
    };
    let old_primary = cluster.node_url("primary");
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::from_millis(5)).await;
    let herald = Herald::start(dir.path(), &config(&sim, &cluster.url, ""));
    let client = herald.client();
    assert_eq!(client.sms("before").await.status, 202);

    cluster.run(&["kill"]);
    cluster.run(&["promote"]);
    // The old primary comes back as a read-only standby of the new one,
    // first in the URL's list of hosts.
    cluster.run(&["rejoin"]);
    assert_eq!(cluster.node_url("standby"), old_primary);

    // The running instance and a new one both write to the new primary.
    let fresh = Herald::start(dir.path(), &config(&sim, &cluster.url, ""));
    let mut ids = Vec::new();
    for (i, c) in [&client, &fresh.client()].into_iter().enumerate() {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let a = c.sms(&format!("after-{i}")).await;
            if a.status == 202 {
                ids.push(a.body["id"].as_str().unwrap().to_owned());
                break;
            }
            assert!(
                Instant::now() < until,
                "no 202 after the promotion: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let keys: HashSet<String> = ["before", "after-0", "after-1"].map(String::from).into();
    wait_delivered(&sim, &keys, Duration::from_secs(20)).await;

    // An instance pointed at the old primary alone never writes there: it
    // is a standby, so each connection to it is refused, and serve does
    // not start (it cannot even migrate) but says why.
    let path = dir.path().join("on-the-standby.toml");
    std::fs::write(&path, config(&sim, &old_primary, "")).unwrap();
    let (status, _, stderr) = support::serve_to_its_end(&path);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("standby"), "{stderr}");
}

/// A TCP proxy that, once armed, forwards the next `COMMIT` it sees to the
/// server and then cuts both sides before the server's answer comes back:
/// the commit happens, its caller never hears of it.
struct CommitCutter {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

/// A simple-protocol Query message carrying `COMMIT`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, c) = (Arc::clone(&armed), Arc::clone(&cuts));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(pump(client, server, Arc::clone(&a), Arc::clone(&c)));
            }
        });
        Self { addr, armed, cuts }
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_up = Arc::clone(&cut);
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let commit = chunk.windows(COMMIT.len()).any(|w| w == COMMIT);
            if commit && armed.swap(false, Ordering::SeqCst) {
                cut_up.store(true, Ordering::SeqCst);
                let _ = server_tx.write_all(chunk).await;
                // Long enough for the server to commit; its answer is
                // dropped below, then both sides are closed.
                tokio::time::sleep(Duration::from_millis(300)).await;
                cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if server_tx.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) {
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends both (dropping the halves closes them).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_doubt_answers_503_and_its_retry_the_first_answer() {
    let Some(cluster) = Replicated::start() else {
        return;
    };
    let primary = cluster.node_url("primary");
    let port: u16 = primary
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let proxy = CommitCutter::start(([127, 0, 0, 1], port).into()).await;
    // In clear, so that the proxy sees the COMMIT; an API instance only, so
    // that nothing else commits through it.
    let url = format!(
        "postgres://herald:herald@{}/postgres?sslmode=disable",
        proxy.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::from_millis(5)).await;
    let herald = Herald::start_as(dir.path(), &config(&sim, &url, ""), "api");
    let client = herald.client();
    wait_ready(&client, true, Duration::from_secs(10)).await;

    let body = json!({"phone": "01712345678", "text": "in-doubt"});
    proxy.armed.store(true, Ordering::SeqCst);
    let first = client.post_keyed("/v1/sms", "doubt-1", &body).await;
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the commit was cut");
    assert_eq!(
        first.status, 503,
        "a commit whose answer was lost is never a 202: {}",
        first.body
    );
    assert!(first.headers.contains_key("retry-after"));

    // It did commit: the notification and its key are stored.
    let (db, connection) = tokio_postgres::connect(&primary, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let stored: Vec<String> = db
        .query("SELECT id::text FROM notifications", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 1, "the first commit landed");
    let keys: i64 = db
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE key = 'doubt-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1, "the key was committed with its notification");

    // The retry with the same key returns the first answer.
    let until = Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let a = client.post_keyed("/v1/sms", "doubt-1", &body).await;
        if a.status != 503 {
            break a;
        }
        assert!(Instant::now() < until, "still 503: {}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retry.status, 202, "{}", retry.body);
    let id = retry.body["id"].as_str().unwrap();
    let record = client.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(
        record.status, 200,
        "the retry names the stored one: {}",
        record.body
    );
    let count: i64 = db
        .query_one("SELECT count(*) FROM notifications", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the retry stored nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_synchronous_replication_refuses_readiness_without_the_standby() {
    let Some(cluster) = Replicated::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::from_millis(5)).await;
    // Commits that wait for a standby that is gone wait for ever: requests
    // are cut off at http.request_timeout_ms.
    let cfg = config(&sim, &cluster.url, "require_synchronous_replication = true")
        + "\n[http]\nrequest_timeout_ms = 2000\n";
    let herald = Herald::start(dir.path(), &cfg);
    let client = herald.client();
    wait_ready(&client, true, Duration::from_secs(10)).await;

    cluster.run(&["stop-standby"]);
    let body = wait_ready(&client, false, Duration::from_secs(10)).await;
    println!("without the standby: /readyz {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("synchronous"), "the reason is given: {body}");
    herald.log_shows("require_synchronous_replication").await;

    // An accept now waits for a commit that waits for the standby: 503,
    // never a hang, and never a 202.
    let body = json!({"phone": "01712345678", "text": "while-blocked"});
    let started = Instant::now();
    let blocked = client.post_keyed("/v1/sms", "sync-1", &body).await;
    println!(
        "an accept while commits wait for the standby: {} in {:?}",
        blocked.status,
        started.elapsed()
    );
    assert_eq!(blocked.status, 503, "{}", blocked.body);

    cluster.run(&["start-standby"]);
    wait_ready(&client, true, Duration::from_secs(20)).await;
    // Commits flow again by themselves: the retry gets its 202, and the
    // notification is delivered once.
    let until = Instant::now() + Duration::from_secs(20);
    let retried = loop {
        let a = client.post_keyed("/v1/sms", "sync-1", &body).await;
        if a.status == 202 {
            break a;
        }
        assert!(
            Instant::now() < until,
            "no 202 with the standby back: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(retried.body["id"].is_string());
    let keys: HashSet<String> = ["while-blocked".to_owned()].into();
    wait_delivered(&sim, &keys, Duration::from_secs(20)).await;
    assert_eq!(sim.counts_by_key()["while-blocked"], 1);
}
