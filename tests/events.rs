//! `GET /v1/events` and the dashboard's files through the real binary:
//! who may read them, what a snapshot holds, that a stream outlives the idle
//! timeout, and that a revoked key or a shutdown ends it (the shutdown
//! without waiting out its drain timeout).

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Client, Herald, Sim, TestStore, create_key, herald_keys};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    the_event_stream_pushes_snapshots_until_revoked_or_shut_down,
);

/// An open event stream, read one `snapshot` at a time.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(base: &str, key: &str) -> Self {
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/events"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next snapshot; `None` once the stream ended. Panics if none
    /// comes within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let until = Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                assert_eq!(event, "snapshot", "{block}");
                return Some(serde_json::from_str(&data).unwrap());
            }
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => panic!("no snapshot within {limit:?}"),
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(_) => return None,
            }
        }
    }
}

async fn the_event_stream_pushes_snapshots_until_revoked_or_shut_down(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let ops = create_key(&store.url, &["--name", "ops", "--scopes", "admin"]);
    let reader = create_key(&store.url, &["--name", "reader", "--scopes", "read"]);
    let sender = create_key(&store.url, &["--name", "app", "--scopes", "send"]);
    let sim = Sim::start(0.0, Duration::ZERO).await;
    // A short idle timeout, which a stream must outlive; a drain timeout
    // far longer than the wait for the exit below.
    let config = sim
        .herald_config(&store.url, "")
        .replace("drain_timeout_ms = 5000", "drain_timeout_ms = 30000")
        + "[auth]\nrequired = true\nrefresh_ms = 100\n[http]\nidle_timeout_ms = 2500\n";
    let mut herald = Herald::start(dir.path(), &config);
    let base = herald.client().base;

    // The page and its files need no key, and allow nothing from elsewhere.
    let anyone = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = anyone.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/dashboard");
    for (path, kind, holds) in [
        ("/dashboard", "text/html", "/dashboard/app.js"),
        ("/dashboard/app.js", "text/javascript", "/v1/events"),
        ("/dashboard/style.css", "text/css", ".card"),
    ] {
        let page = anyone.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
        assert!(page.text().await.unwrap().contains(holds), "{path}");
    }

    // The stream needs the admin scope.
    let events = format!("{base}/v1/events");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(anyone.get(&events).send().await.unwrap()), 401);
    let as_reader = anyone.get(&events).bearer_auth(&reader).send().await;
    assert_eq!(status(as_reader.unwrap()), 403);

    let mut stream = Events::open(&base, &ops).await;
    let first = stream.next(Duration::from_secs(10)).await.unwrap();
    let providers = first["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 6, "{first}");
    for p in providers {
        assert_eq!(p["breaker"], "closed");
        assert_eq!(p["in_flight"], 0);
        assert!(p["latency_ms"]["p50"].is_null(), "no request yet: {p}");
    }
    assert_eq!(first["totals"]["accepted"], 0);
    assert!(first["samples"].is_array());

    // Traffic shows up in the samples, the totals and the providers'
    // latencies, all pushed; the stream stays open past the idle timeout.
    let app = Client::with_key(herald.addr, &sender);
    for i in 0..20 {
        assert_eq!(app.sms(&format!("live-{i}")).await.status, 202);
    }
    let mut accepted_seen = 0.0;
    let mut a_sample = Value::Null;
    let mut snapshots = 1;
    let mut last = first;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && (snapshots < 6 || last["totals"]["sent"] != 20) {
        last = stream
            .next(Duration::from_secs(10))
            .await
            .expect("still open");
        snapshots += 1;
        for s in last["samples"].as_array().unwrap() {
            accepted_seen += s["accepted"].as_f64().unwrap();
            a_sample = s.clone();
        }
    }
    assert!(snapshots >= 6, "{snapshots} snapshots");
    assert_eq!(last["totals"]["sent"], 20, "{last}");
    assert!(accepted_seen > 0.0, "the samples counted the accepts");
    for status in ["scheduled", "queued", "retrying", "sending"] {
        assert!(a_sample["backlog"][status].is_u64(), "{a_sample}");
    }
    let used = last["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["channel"] == "sms" && p["latency_ms"]["p99"].is_u64())
        .count();
    assert!(used > 0, "{last}");

    // GET /v1/providers has the same fields.
    let listed = Client::with_key(herald.addr, &ops)
        .get("/v1/providers")
        .await
        .body;
    let sms1 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["channel"] == "sms" && p["latency_ms"]["p50"].is_u64())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(sms1["in_flight"], 0);

    // A stream opened now gets the history at once.
    let mut late = Events::open(&base, &ops).await;
    let history = late.next(Duration::from_secs(10)).await.unwrap();
    assert!(
        history["samples"].as_array().unwrap().len() >= 5,
        "{history}"
    );

    // A revoked key's stream ends, and it cannot open another.
    let watcher = create_key(&store.url, &["--name", "watcher", "--scopes", "admin"]);
    let mut watched = None;
    for _ in 0..100 {
        // The new key is known once the instance re-read its keys.
        let r = anyone
            .get(&events)
            .bearer_auth(&watcher)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            watched = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut watched = Events {
        response: watched.expect("the new key works"),
        buffer: String::new(),
    };
    assert!(watched.next(Duration::from_secs(10)).await.is_some());
    herald_keys(&store.url, &["revoke", "watcher"]);
    let mut ended = false;
    for _ in 0..30 {
        if watched.next(Duration::from_secs(10)).await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the revoked key's stream ended");
    let again = anyone.get(&events).bearer_auth(&watcher).send().await;
    assert_eq!(status(again.unwrap()), 401);

    // Shutdown ends both streams and does not wait out the drain timeout.
    herald.sigterm();
    for s in [&mut stream, &mut late] {
        let mut ended = false;
        for _ in 0..20 {
            if s.next(Duration::from_secs(10)).await.is_none() {
                ended = true;
                break;
            }
        }
        assert!(ended, "the stream ended");
    }
    let exit = herald.wait_exit(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "exited cleanly, well within the drain timeout: {exit:?}\n{}",
        herald.logs()
    );
}
