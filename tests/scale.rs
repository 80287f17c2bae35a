//! Several Herald instances on one PostgreSQL database, as real processes:
//! sharing the work, one of them killed, the database restarted, and
//! instances split into `api` and `worker` roles.
//!
//! PostgreSQL only (see `support::pg_server_url` for when these skip).

#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::domain::Channel;
use support::{Backend, Client, Herald, PgCluster, Sim, TestStore, send_many};

/// Rounds in flight at once per instance: the most a killed instance can
/// have sent without recording it.
const IN_FLIGHT: usize = 32;

fn config(sim: &Sim, store: &str) -> String {
    sim.herald_config(store, "").replace(
        "[dispatch]",
        &format!("[dispatch]\nmax_in_flight = {IN_FLIGHT}"),
    )
}

/// Sends `count` SMS split over `clients`, each key `<prefix>-<client>-<i>`.
/// Waits until nothing is pending, then checks that every notification
/// accepted was delivered (asking another instance than the one waited on).
async fn settle(clients: &[Arc<Client>], accepted: usize, limit: Duration) {
    assert!(
        clients[0].wait_until_settled(limit).await,
        "{:?}",
        clients[0].stats().await
    );
    assert_eq!(clients[1].stats().await["sent"], accepted as u64);
}

/// Each key was sent exactly once, and nothing else was sent.
fn assert_each_delivered_once(sim: &Sim, keys: &[String]) {
    let counts = sim.counts_by_key();
    for key in keys {
        assert_eq!(counts.get(key), Some(&1), "{key} delivered exactly once");
    }
    assert_eq!(counts.len(), keys.len(), "nothing else was delivered");
}

async fn send_over(clients: &[Arc<Client>], prefix: &str, count: usize) -> Vec<String> {
    let per = count / clients.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (k, client) in clients.iter().enumerate() {
        let client = Arc::clone(client);
        let prefix = format!("{prefix}-{k}");
        tasks.spawn(async move {
            (
                prefix.clone(),
                send_many(&client, Channel::Sms, &prefix, per, 16).await,
            )
        });
    }
    let mut keys = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (prefix, ids) = done.unwrap();
        assert_eq!(ids.len(), per, "every notification was accepted");
        keys.extend((0..per).map(|i| format!("{prefix}-{i}")));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work_and_send_nothing_twice() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.5, Duration::ZERO).await;
    let cfg = config(&sim, &store.url);
    let instances: Vec<Herald> = (0..3).map(|_| Herald::start(dir.path(), &cfg)).collect();
    let clients: Vec<Arc<Client>> = instances.iter().map(|h| Arc::new(h.client())).collect();

    let keys = send_over(&clients, "share", 9_999).await;
    settle(&clients, keys.len(), Duration::from_secs(240)).await;
    assert_each_delivered_once(&sim, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_of_three_loses_nothing() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Slow enough answers that the victim has many sends in flight.
    let sim = Sim::start(0.5, Duration::from_millis(20)).await;
    let cfg = config(&sim, &store.url);
    let mut instances: Vec<Herald> = (0..3).map(|_| Herald::start(dir.path(), &cfg)).collect();
    // Sent through the two that survive, so every request is answered.
    let clients: Vec<Arc<Client>> = instances[1..]
        .iter()
        .map(|h| Arc::new(h.client()))
        .collect();

    let sending = {
        let clients = clients.clone();
        tokio::spawn(async move { send_over(&clients, "kill", 10_000).await })
    };
    let until = Instant::now() + Duration::from_secs(120);
    while sim.delivered_count() < 1_500 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_kill = sim.delivered_count();
    instances[0].kill9();
    let keys = sending.await.unwrap();
    assert!(
        at_kill < keys.len() / 2,
        "killed mid-run ({at_kill} delivered)"
    );

    settle(&clients, keys.len(), Duration::from_secs(240)).await;
    let counts = sim.counts_by_key();
    let missing = keys.iter().filter(|k| !counts.contains_key(*k)).count();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!("kill -9 at {at_kill} delivered: {duplicates} sent twice, {missing} missing");
    assert_eq!(missing, 0, "every accepted notification was delivered");
    assert!(
        duplicates <= IN_FLIGHT,
        "{duplicates} duplicates: more than the killed instance had in flight"
    );
    assert_eq!(counts.len(), keys.len(), "nothing else was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_run_loses_nothing() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.5, Duration::from_millis(5)).await;
    let cfg = config(&sim, &cluster.url);
    let instances: Vec<Herald> = (0..2).map(|_| Herald::start(dir.path(), &cfg)).collect();
    let clients: Vec<Arc<Client>> = instances.iter().map(|h| Arc::new(h.client())).collect();

    // Senders keep going through the outage; only 202s count as accepted.
    let sending = {
        let clients = clients.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (k, client) in clients.into_iter().enumerate() {
                tasks.spawn(async move {
                    let mut accepted = Vec::new();
                    let mut refused = 0;
                    for i in 0..1_500 {
                        let key = format!("restart-{k}-{i}");
                        match client.sms(&key).await.status {
                            202 => accepted.push(key),
                            // 0: no answer in time; not acknowledged either.
                            503 | 0 => refused += 1,
                            other => panic!("unexpected answer {other}"),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (accepted, refused)
                });
            }
            let mut accepted = Vec::new();
            let mut refused = 0;
            while let Some(done) = tasks.join_next().await {
                let (a, r) = done.unwrap();
                accepted.extend(a);
                refused += r;
            }
            (accepted, refused)
        })
    };

    let until = Instant::now() + Duration::from_secs(60);
    while sim.delivered_count() < 200 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.stop();
    // While it is down nothing is acknowledged: the API says 503.
    let probe = &clients[0];
    assert_eq!(probe.sms("while-down").await.status, 503);
    assert_eq!(probe.get("/readyz").await.status, 503);
    assert_eq!(probe.get("/healthz").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.restart();

    let (accepted, refused) = sending.await.unwrap();
    println!(
        "database restart: {} accepted, {refused} refused with 503",
        accepted.len()
    );
    assert!(!accepted.is_empty());
    // Recovered by itself: the same processes accept and deliver again.
    let until = Instant::now() + Duration::from_secs(60);
    while probe.get("/readyz").await.status != 200 {
        assert!(Instant::now() < until, "not ready again after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = send_many(probe, Channel::Sms, "after-restart", 100, 8).await;
    assert_eq!(after.len(), 100, "accepting again");
    assert!(
        probe.wait_until_settled(Duration::from_secs(180)).await,
        "{:?}",
        probe.stats().await
    );
    let counts = sim.counts_by_key();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted notifications never delivered, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    for i in 0..100 {
        assert!(counts.contains_key(&format!("after-restart-{i}")));
    }
    assert!(!counts.contains_key("while-down"), "a 503 stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_and_two_worker_instances_deliver_everything() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.5, Duration::ZERO).await;
    let cfg = config(&sim, &store.url);
    let apis: Vec<Herald> = (0..2)
        .map(|_| Herald::start_as(dir.path(), &cfg, "api"))
        .collect();
    let workers: Vec<Herald> = (0..2)
        .map(|_| Herald::start_as(dir.path(), &cfg, "worker"))
        .collect();

    for worker in &workers {
        let c = worker.client();
        assert_eq!(c.get("/healthz").await.status, 200);
        assert_eq!(c.get("/readyz").await.status, 200);
        assert_eq!(
            c.sms("to-a-worker").await.status,
            404,
            "workers take no work"
        );
    }

    let clients: Vec<Arc<Client>> = apis.iter().map(|h| Arc::new(h.client())).collect();
    let keys = send_over(&clients, "roles", 2_000).await;
    settle(&clients, keys.len(), Duration::from_secs(120)).await;
    assert_each_delivered_once(&sim, &keys);
}

/// New work reaches a worker through NOTIFY: with polling every ten minutes,
/// only the wake-up can have delivered these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_woken_by_other_instances_not_by_polling() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let cfg =
        config(&sim, &store.url).replace("poll_interval_ms = 20", "poll_interval_ms = 600000");
    let api = Herald::start_as(dir.path(), &cfg, "api");
    let worker = Herald::start_as(dir.path(), &cfg, "worker");
    let until = Instant::now() + Duration::from_secs(30);
    while worker.client().get("/readyz").await.status != 200 {
        assert!(Instant::now() < until, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the worker's first, empty claim and its LISTEN happen.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = api.client();
    for round in 0..3 {
        let key = format!("woken-{round}");
        assert_eq!(client.sms(&key).await.status, 202);
        let until = Instant::now() + Duration::from_secs(60);
        while !sim.counts_by_key().contains_key(&key) {
            assert!(Instant::now() < until, "{key} was never picked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(worker);
}
