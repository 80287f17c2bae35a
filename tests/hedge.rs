//! Hedged sends end to end: Herald as a real process, one simulated SMS
//! provider slow (3 s) beside a fast one.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant, SystemTime};

use herald::domain::Channel;
use herald_sim::{SimulatorConfig, parse_slow};
use serde_json::{Value, json};
use support::{Backend, Herald, Sim, TestStore, delivered_key};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_hedged_notification_is_not_held_up_by_a_slow_provider,
);

/// Herald hedging SMS after 200 ms, the slow provider first nine times in
/// ten; requests have time to finish (6 s) inside the lease (10 s).
fn config(sim: &Sim, store: &str) -> String {
    let mut toml = format!(
        r#"store = "{store}"
[postgres]
pool_size = 8
[dispatch]
poll_interval_ms = 20
lease_ms = 10000
[hedge]
sms_after_ms = 200
"#
    );
    for (n, weight) in [(1, 9), (2, 1)] {
        toml.push_str(&format!(
            "[[providers.sms]]\nname = \"sms-provider{n}\"\nurl = \"{}\"\nweight = {weight}\ntimeout_ms = 6000\n",
            sim.sim.url(Channel::Sms, n)
        ));
    }
    toml.push_str(&format!(
        "[[providers.email]]\nname = \"email-provider1\"\nurl = \"{}\"\n",
        sim.sim.url(Channel::Email, 1)
    ));
    toml
}

async fn a_hedged_notification_is_not_held_up_by_a_slow_provider(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start_with(SimulatorConfig {
        failure_rate: 0.0,
        slow: vec![parse_slow("sms:1=3000").unwrap()],
        sms_ports: vec![0, 0],
        email_ports: vec![0],
        ..SimulatorConfig::default()
    })
    .await;
    let herald = Herald::start(dir.path(), &config(&sim, &store.url));
    let client = herald.client();

    // Asked for on the single routes, their /api aliases and batch items;
    // anything but a boolean is refused.
    let bad = client
        .post(
            "/v1/sms",
            &json!({"phone": "01712345678", "text": "x", "hedge": "yes"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["errors"][0]["field"], "hedge");
    let mut hedged = Vec::new();
    for i in 0..10 {
        let text = format!("hedged-{i}");
        let body = json!({"phone": "01712345678", "text": text, "hedge": true});
        let path = if i % 2 == 0 { "/v1/sms" } else { "/api/sms" };
        let accepted_at = SystemTime::now();
        let a = client.post(path, &body).await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        hedged.push((a.body["id"].as_str().unwrap().to_owned(), text, accepted_at));
    }
    let batch = client
        .post(
            "/v1/batch",
            &json!({"notifications": [
                {"channel": "sms", "phone": "01712345678", "text": "hedged-batch", "hedge": true},
                {"channel": "sms", "phone": "01712345678", "text": "plain"}]}),
        )
        .await;
    assert_eq!(batch.status, 202, "{:?}", batch.body);
    let id_of = |i: usize| batch.body["results"][i]["id"].as_str().unwrap().to_owned();
    hedged.push((id_of(0), "hedged-batch".into(), SystemTime::now()));
    let plain = id_of(1);

    // Every hedged one went out within 2 s of its acceptance, through the
    // fast provider: never waiting for the slow one's 3 s.
    let until = Instant::now() + Duration::from_secs(15);
    let first_delivery = |text: &str| {
        sim.deliveries()
            .into_iter()
            .find(|d| d.channel == Channel::Sms && delivered_key(d) == text)
    };
    for (_, text, accepted_at) in &hedged {
        let delivery = loop {
            if let Some(d) = first_delivery(text) {
                break d;
            }
            assert!(Instant::now() < until, "{text} was never delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = delivery.ts.duration_since(*accepted_at).unwrap_or_default();
        assert!(
            took < Duration::from_secs(2),
            "{text} took {took:?}, as long as the slow provider"
        );
        assert_eq!(delivery.provider, 2, "{text}");
    }

    // The round waits for the slow request too, and records it.
    assert!(client.wait_until_settled(Duration::from_secs(20)).await);
    let mut raced = 0;
    for (id, text, _) in &hedged {
        let n = client.get(&format!("/v1/notifications/{id}")).await.body;
        assert_eq!(n["status"], "sent", "{text}: {n}");
        assert_eq!(n["hedge"], true);
        assert_eq!(n["delivered_by"], "sms-provider2");
        let attempts = n["attempts"].as_array().unwrap();
        if attempts.len() == 2 {
            let by = |p: &str| attempts.iter().find(|a| a["provider"] == p).unwrap();
            // Both delivered: the duplicate a hedge can make.
            assert_eq!(by("sms-provider1")["outcome"], "delivered");
            assert_eq!(by("sms-provider2")["outcome"], "delivered");
            assert!(by("sms-provider1")["duration_ms"].as_u64().unwrap() >= 3_000);
            raced += 1;
        } else {
            assert_eq!(attempts.len(), 1, "{n}");
            assert_eq!(attempts[0]["provider"], "sms-provider2");
        }
    }
    // The slow provider came first nine times in ten (none of eleven: one
    // chance in 10^11).
    assert!(raced > 0);
    let duplicates = sim.counts_by_key().values().filter(|&&c| c > 1).count();
    assert_eq!(duplicates, raced);

    // Not asked: never hedged, whichever provider came first.
    let n: Value = client.get(&format!("/v1/notifications/{plain}")).await.body;
    assert_eq!(n["hedge"], false);
    assert_eq!(n["attempts"].as_array().unwrap().len(), 1, "{n}");

    let text = client.metrics().await;
    assert!(
        text.contains(&format!(
            r#"herald_hedges_total{{outcome="won_by_hedge"}} {raced}"#
        )),
        "{text}"
    );
}
