//! Crashes and shutdowns: nothing accepted is lost.

#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::domain::Channel;
use serde_json::json;
use support::{Backend, Client, Herald, Sim, TestStore, send_many};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    kill_9_then_restart_loses_nothing,
    sigterm_under_load_drains_and_exits_cleanly,
    kill_storm_with_retrying_clients_stores_each_notification_once,
);

/// Providers answer slowly enough that many sends are in flight at the kill.
const LATENCY: Duration = Duration::from_millis(20);
/// Rounds in flight at once: few enough that a backlog builds up.
const IN_FLIGHT: usize = 32;

async fn kill_9_then_restart_loses_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start(0.5, LATENCY).await;
    let config = sim.herald_config(&store.url, "").replace(
        "[dispatch]",
        &format!("[dispatch]\nmax_in_flight = {IN_FLIGHT}"),
    );
    let mut herald = Herald::start(dir.path(), &config);
    let client = Arc::new(herald.client());

    let ids = send_many(&client, Channel::Sms, "crash", 2000, 32).await;
    assert_eq!(ids.len(), 2000);
    // Kill it mid-delivery: some delivered, many queued, some in flight.
    let until = Instant::now() + Duration::from_secs(30);
    while sim.delivered_count() < 200 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_kill = sim.delivered_count();
    herald.kill9();
    assert!(
        at_kill < 1000,
        "killed with a backlog ({at_kill} delivered)"
    );

    let herald = Herald::start(dir.path(), &config);
    let client = herald.client();
    assert!(
        client.wait_until_settled(Duration::from_secs(120)).await,
        "{:?}",
        client.stats().await
    );
    assert_eq!(client.stats().await["sent"], 2000);

    let counts = sim.counts_by_key();
    let missing = (0..2000)
        .filter(|i| !counts.contains_key(&format!("crash-{i}")))
        .count();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!("kill -9 at {at_kill} delivered: {duplicates} sent twice, {missing} missing");
    assert_eq!(missing, 0, "every accepted notification was delivered");
    // Only sends in flight at the kill can repeat: at most one per slot.
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
}

async fn sigterm_under_load_drains_and_exits_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start(0.5, LATENCY).await;
    let config = sim.herald_config(&store.url, "");
    let mut herald = Herald::start(dir.path(), &config);
    let client = Arc::new(herald.client());

    // Keep sending while the signal arrives.
    let sender = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { send_many(&client, Channel::Email, "term", 1500, 16).await })
    };
    let until = Instant::now() + Duration::from_secs(30);
    while sim.delivered_count() < 100 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    herald.sigterm();
    let drain = Duration::from_secs(5);
    let status = tokio::task::block_in_place(|| herald.wait_exit(drain + Duration::from_secs(3)))
        .unwrap_or_else(|| panic!("did not exit within the drain timeout:\n{}", herald.logs()));
    assert!(status.success(), "exit status {status:?}");
    let accepted = sender.await.unwrap();
    assert!(!accepted.is_empty());

    let herald = Herald::start(dir.path(), &config);
    let client = herald.client();
    assert!(client.wait_until_settled(Duration::from_secs(120)).await);
    let counts = sim.counts_by_key();
    for id in &accepted {
        let rec = client.get(&format!("/v1/notifications/{id}")).await.body;
        assert_eq!(rec["status"], "sent", "{rec}");
        assert!(counts.contains_key(rec["message"]["subject"].as_str().unwrap()));
    }
    assert_eq!(client.stats().await["sent"], accepted.len() as u64);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "a clean drain sends nothing twice");
}

/// Clients that retry with their `Idempotency-Key` whenever an answer is
/// lost (the connection died with Herald, or Herald was down) while Herald
/// is killed again and again: every notification is stored exactly once, so
/// no duplicate comes from a client's retry; the only sends that may repeat
/// are those in flight at a kill.
async fn kill_storm_with_retrying_clients_stores_each_notification_once(backend: Backend) {
    const COUNT: usize = 600;
    const SENDERS: usize = 8;
    const KILLS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start(0.5, LATENCY).await;
    let config = sim.herald_config(&store.url, "").replace(
        "[dispatch]",
        &format!("[dispatch]\nmax_in_flight = {IN_FLIGHT}"),
    );
    let mut herald = Herald::start(dir.path(), &config);
    let addr = Arc::new(Mutex::new(herald.addr));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lost_answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let addr = Arc::clone(&addr);
        let next = Arc::clone(&next);
        let lost = Arc::clone(&lost_answers);
        senders.spawn(async move {
            let mut ids = Vec::new();
            let mut client: Option<(SocketAddr, Client)> = None;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= COUNT {
                    return ids;
                }
                let body = json!({"phone": "01712345678", "text": format!("storm-{i}")});
                let key = format!("storm-key-{i}");
                // Retry until accepted, bounded: the kills end well before.
                let until = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < until, "storm-{i} was never accepted");
                    let current = *addr.lock().unwrap();
                    if client.as_ref().is_none_or(|(a, _)| *a != current) {
                        client = Some((current, Client::new(current)));
                    }
                    let (_, c) = client.as_ref().unwrap();
                    let a = c.post_keyed("/v1/sms", &key, &body).await;
                    if a.status == 202 {
                        ids.push((i, a.body["id"].as_str().unwrap().to_owned()));
                        break;
                    }
                    lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }

    for kill in 0..KILLS {
        let until = Instant::now() + Duration::from_secs(30);
        let target = (kill + 1) * COUNT / (KILLS + 2);
        while next.load(std::sync::atomic::Ordering::Relaxed) < target && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        herald.kill9();
        herald = Herald::start(dir.path(), &config);
        *addr.lock().unwrap() = herald.addr;
    }
    let mut accepted = Vec::new();
    while let Some(ids) = senders.join_next().await {
        accepted.extend(ids.unwrap());
    }
    assert_eq!(accepted.len(), COUNT);

    let client = herald.client();
    assert!(
        client.wait_until_settled(Duration::from_secs(120)).await,
        "{:?}",
        client.stats().await
    );
    let stats = client.stats().await;
    let stored: u64 = stats.values().sum();
    let counts = sim.counts_by_key();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let retries = lost_answers.load(std::sync::atomic::Ordering::Relaxed);
    println!("{KILLS} kills: {retries} client retries, {stored} stored, {duplicates} sent twice");
    assert!(retries > 0, "the kills cut some answers short");
    // Not one notification more than the clients meant to send.
    assert_eq!(stored, COUNT as u64, "{stats:?}");
    assert_eq!(stats["sent"], COUNT as u64);
    for i in 0..COUNT {
        assert!(
            counts.contains_key(&format!("storm-{i}")),
            "storm-{i} never sent"
        );
    }
    // What repeats is only what was in flight at a kill.
    assert!(duplicates <= KILLS * IN_FLIGHT, "{duplicates} duplicates");
}
