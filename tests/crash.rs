//! Crashes and shutdowns: nothing accepted is lost.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::domain::Channel;
use support::{Backend, Herald, Sim, TestStore, send_many};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    kill_9_then_restart_loses_nothing,
    sigterm_under_load_drains_and_exits_cleanly,
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
    assert_eq!(client.stats().await["delivered"], 2000);

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
        assert_eq!(rec["status"], "delivered", "{rec}");
        assert!(counts.contains_key(rec["message"]["subject"].as_str().unwrap()));
    }
    assert_eq!(client.stats().await["delivered"], accepted.len() as u64);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "a clean drain sends nothing twice");
}
