//! `GET /metrics` through the real binary: the names are there and the
//! counts move as work happens.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use support::{Backend, Herald, Sim, TestStore};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    metrics_count_the_work_done,
);

async fn scrape(client: &support::Client) -> String {
    let resp = reqwest::get(format!("{}/metrics", client.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.unwrap()
}

/// The value of the sample named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_count_the_work_done(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let herald = Herald::start(dir.path(), &sim.herald_config(&store.url, ""));
    let client = herald.client();

    let before = scrape(&client).await;
    assert_eq!(value(&before, r#"herald_in_flight"#), Some(0.0));
    for i in 0..5 {
        assert_eq!(client.sms(&format!("m{i}")).await.status, 202);
    }
    for i in 0..3 {
        assert_eq!(client.email(&format!("e{i}")).await.status, 202);
    }
    let a = client.sms("").await;
    assert_eq!(a.status, 422);
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);
    let id = client.sms("one more").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        client.get(&format!("/v1/notifications/{id}")).await.status,
        200
    );
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);

    // Outcomes are counted once their result is written; allow a moment.
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&client).await;
        let delivered = value(
            &text,
            r#"herald_notifications_total{channel="sms",outcome="sent"}"#,
        );
        if delivered == Some(6.0) || Instant::now() > until {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (series, expected) in [
        (
            r#"herald_notifications_total{channel="sms",outcome="accepted"}"#,
            6.0,
        ),
        (
            r#"herald_notifications_total{channel="sms",outcome="sent"}"#,
            6.0,
        ),
        (
            r#"herald_notifications_total{channel="email",outcome="accepted"}"#,
            3.0,
        ),
        (
            r#"herald_notifications_total{channel="email",outcome="sent"}"#,
            3.0,
        ),
        (
            r#"herald_http_requests_total{route="/v1/sms",status="202"}"#,
            6.0,
        ),
        (
            r#"herald_http_requests_total{route="/v1/sms",status="422"}"#,
            1.0,
        ),
        (
            r#"herald_http_requests_total{route="/v1/notifications/{id}",status="200"}"#,
            1.0,
        ),
        ("herald_accept_duration_seconds_count", 9.0),
        ("herald_in_flight", 0.0),
        (
            r#"herald_provider_breaker_state{provider="sms-provider1"}"#,
            0.0,
        ),
        (
            r#"herald_provider_window_failure_ratio{provider="email-provider3"}"#,
            0.0,
        ),
    ] {
        assert_eq!(value(&text, series), Some(expected), "{series} in:\n{text}");
    }
    let attempts: f64 = text
        .lines()
        .filter(|l| l.starts_with("herald_attempts_total{") && l.contains(r#"outcome="delivered""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(attempts, 9.0, "{text}");
    assert!(value(&text, "herald_store_commit_duration_seconds_count").unwrap() >= 1.0);
    assert!(value(&text, "herald_store_commit_batch_size_count").unwrap() >= 1.0);
    assert!(text.contains(r#"herald_provider_request_duration_seconds_count{provider="#));
    // The backlog gauge comes from its own query, refreshed every few seconds.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(&client).await;
        if value(&text, r#"herald_backlog{status="queued"}"#) == Some(0.0)
            && value(&text, r#"herald_backlog{status="sending"}"#) == Some(0.0)
        {
            break;
        }
        assert!(Instant::now() < until, "no backlog gauge:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With `metrics.listen`, `/metrics` is served there and not on the API's
/// address.
#[tokio::test]
async fn metrics_on_an_address_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        sim.herald_config(&store.url, "")
    );
    let herald = Herald::start(dir.path(), &config);
    assert_eq!(herald.client().get("/metrics").await.status, 404);
    let addr = herald.metrics_addr().await;
    assert_eq!(herald.client().sms("counted").await.status, 202);
    let text = scrape(&support::Client::new(addr)).await;
    assert!(
        value(
            &text,
            r#"herald_notifications_total{channel="sms",outcome="accepted"}"#
        ) >= Some(1.0),
        "{text}"
    );
}
