//! Status webhooks through the real binary, on both stores: a receiver on
//! loopback that checks every signature with its own implementation of the
//! Standard Webhooks scheme, and answers 500 to each event's first attempt.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald::domain::Channel;
use serde_json::json;
use support::fixture::{Fixture, Recorded, reply};
use support::{Backend, Herald, Sim, TestStore};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_event_arrives_signed_and_a_500_is_retried_with_the_same_id,
    a_callback_url_gets_its_events_and_a_host_not_allowed_is_refused,
    a_receiver_that_never_answers_does_not_slow_delivery,
    a_failed_delivery_is_delivered_again_when_an_operator_asks,
);

/// A fresh `whsec_` secret: 32 random bytes.
fn new_secret() -> String {
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The receiver's own check of the Standard Webhooks signature: HMAC-SHA256
/// keyed with the secret's bytes over `id.timestamp.body`, compared with
/// each `v1,` entry of the header.
fn signature_is_valid(secret: &str, r: &Recorded) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!(
        "{}.{}.",
        r.header("webhook-id"),
        r.header("webhook-timestamp")
    )
    .into_bytes();
    signed.extend_from_slice(&r.body);
    r.header("webhook-signature").split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|sig| STANDARD.decode(sig).ok())
            .is_some_and(|sig| ring::hmac::verify(&key, &signed, &sig).is_ok())
    })
}

/// Answers 401 to a bad signature, 500 to the first attempt of each
/// webhook-id, 200 after.
async fn receiver(secret: &str) -> Fixture {
    let secret = secret.to_owned();
    Fixture::start(move |r, before| {
        if !signature_is_valid(&secret, r) {
            return reply(401, "{}");
        }
        let id = r.header("webhook-id");
        if before.iter().any(|b| b.header("webhook-id") == id) {
            reply(200, "{}")
        } else {
            reply(500, r#"{"error": "try again"}"#)
        }
    })
    .await
}

/// The requests `fixture` answered 200, by webhook-id, once each.
fn accepted(fixture: &Fixture) -> HashMap<String, Recorded> {
    let all = fixture.requests();
    let mut seen = HashMap::new();
    for (i, r) in all.iter().enumerate() {
        let id = r.header("webhook-id").to_owned();
        // The first one of an id got 500; any later one got 200.
        if all[..i].iter().any(|b| b.header("webhook-id") == id) {
            seen.entry(id).or_insert_with(|| r.clone());
        }
    }
    seen
}

async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// Webhook retries in fractions of a second, for `[webhooks_settings]`.
const FAST_RETRIES: &str = "base_ms = 50\ncap_ms = 200\npoll_interval_ms = 50\n";

/// Herald with SMS on the simulator and email on [`mailer`], a retry age of
/// 2 s (a notification failing for ever is dead quickly), `settings`
/// appended to its config, and `secret` in its environment as TEST_SECRET.
struct Rig {
    herald: Herald,
    store: TestStore,
    _dir: tempfile::TempDir,
    sim: Sim,
    _email: Fixture,
}

impl Rig {
    async fn start(backend: Backend, settings: &str, secret: &str) -> Option<Self> {
        let store = TestStore::new(backend).await?;
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(0.0, Duration::ZERO).await;
        let email = mailer().await;
        let base = sim
            .herald_config(&store.url, "")
            .replace("[retry]", "[retry]\nmax_age_secs = 2");
        let sms_only = base.split("[[providers.email]]").next().unwrap_or_default();
        let config = format!(
            "{sms_only}[[providers.email]]\nname = \"mailer\"\nurl = \"{}/api/email/provider1\"\ntimeout_ms = 1000\n{settings}",
            email.url()
        );
        let herald = Herald::start_with_env(dir.path(), &config, "all", &[("TEST_SECRET", secret)]);
        Some(Self {
            herald,
            store,
            _dir: dir,
            sim,
            _email: email,
        })
    }
}

/// An email provider answering by subject: `fail` 400 (refused for good),
/// `dead` and `expire` 500 (never taken), anything else 200.
async fn mailer() -> Fixture {
    Fixture::start(|r, _| {
        let subject = r.json()["subject"].as_str().unwrap_or_default().to_owned();
        match subject.as_str() {
            "fail" => reply(400, r#"{"error": "bad recipient"}"#),
            "dead" | "expire" => reply(500, r#"{"error": "down"}"#),
            _ => reply(200, r#"{"status": "sent"}"#),
        }
    })
    .await
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn every_event_arrives_signed_and_a_500_is_retried_with_the_same_id(backend: Backend) {
    let secret = new_secret();
    let hooks = receiver(&secret).await;
    let settings = format!(
        "[webhooks_settings]\n{FAST_RETRIES}[[webhooks]]\nurl = \"{}/hooks?token=abc\"\n\
         secret = \"${{TEST_SECRET}}\"\ntimeout_ms = 2000\n",
        hooks.url()
    );
    let Some(mut rig) = Rig::start(backend, &settings, &secret).await else {
        return;
    };
    let herald = &rig.herald;
    let client = herald.client();

    let mut ids = HashMap::new();
    let sent = [
        (
            "sent",
            client
                .post(
                    "/v1/sms",
                    &json!({"phone": "01712345678", "text": "hi", "metadata": {"order": "4711"}}),
                )
                .await,
        ),
        ("failed", client.email("fail").await),
        ("dead", client.email("dead").await),
        (
            "expired",
            client
                .post(
                    "/v1/email",
                    &json!({"subject": "expire", "body": "b", "recipients": ["a@example.com"],
                            "ttl_secs": 1}),
                )
                .await,
        ),
    ];
    for (status, a) in sent {
        assert_eq!(a.status, 202, "{status}: {:?}", a.body);
        ids.insert(a.body["id"].as_str().unwrap().to_owned(), status);
    }

    assert!(
        wait_for(Duration::from_secs(60), || accepted(&hooks).len() == 4).await,
        "{} requests: {:?}\n{}",
        hooks.requests().len(),
        hooks
            .requests()
            .iter()
            .map(Recorded::text)
            .collect::<Vec<_>>(),
        herald.logs()
    );
    let requests = hooks.requests();
    assert_eq!(requests.len(), 8, "each event once refused, once taken");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for r in &requests {
        assert!(signature_is_valid(&secret, r), "{}", r.text());
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("webhook-id").starts_with("msg_"));
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        assert!(ts.abs_diff(now) < 300, "timestamp {ts} is in seconds, now");
    }
    for (webhook_id, taken) in accepted(&hooks) {
        let first = requests
            .iter()
            .find(|r| r.header("webhook-id") == webhook_id)
            .unwrap();
        assert_eq!(first.body, taken.body, "the same payload on each retry");
        let body = taken.json();
        let data = &body["data"];
        let status = ids[data["id"].as_str().unwrap()];
        assert_eq!(body["type"], format!("notification.{status}"), "{body}");
        assert_eq!(data["status"], status);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        match status {
            "sent" => {
                assert_eq!(data["channel"], "sms");
                assert_eq!(data["metadata"]["order"], "4711");
                assert_eq!(data["attempts"]["count"], 1);
                let provider = data["attempts"]["last_provider"].as_str().unwrap();
                assert!(provider.starts_with("sms-provider"), "{data}");
                assert_eq!(data["attempts"]["last_outcome"], "delivered");
                assert!(data["error"].is_null());
            }
            "failed" => {
                assert_eq!(data["channel"], "email");
                assert_eq!(data["attempts"]["last_http_status"], 400);
                assert_eq!(data["attempts"]["last_outcome"], "rejected");
                assert!(data["error"].as_str().unwrap().contains("400"), "{data}");
            }
            "dead" => {
                assert!(data["attempts"]["count"].as_u64().unwrap() >= 1);
                assert_eq!(data["attempts"]["last_http_status"], 500);
                assert!(data["error"].as_str().unwrap().contains("500"), "{data}");
            }
            "expired" => {
                assert_eq!(data["attempts"]["last_outcome"], "transient");
                assert!(data["error"].as_str().is_some(), "{data}");
            }
            other => panic!("{other}"),
        }
    }

    // The operator's view (once the last result is written): each
    // delivered, after two attempts, the URL's query left out.
    let until = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = client.get("/v1/webhooks/deliveries?status=delivered").await;
        if listed.body["items"].as_array().map_or(0, Vec::len) == 4 || Instant::now() > until {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{}", listed.body);
    for item in items {
        assert_eq!(item["attempts"], 2);
        assert_eq!(item["last_http_status"], 200);
        assert_eq!(item["target"], "endpoint");
        assert_eq!(item["url"], format!("{}/hooks", hooks.url()));
    }
    let bad = client.get("/v1/webhooks/deliveries?status=lost").await;
    assert_eq!(bad.status, 400);
    // Counted just after the commit that the listing saw.
    let mut metrics = scrape(&client.base).await;
    for _ in 0..100 {
        if metric(
            &metrics,
            r#"herald_webhook_deliveries_total{outcome="delivered"}"#,
        ) == 4.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = scrape(&client.base).await;
    }
    assert_eq!(
        metric(
            &metrics,
            r#"herald_webhook_deliveries_total{outcome="delivered"}"#
        ),
        4.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"herald_webhook_deliveries_total{outcome="retried"}"#
        ),
        4.0
    );
    assert!(
        !rig.herald.logs_at_exit().contains(&secret),
        "the secret is never logged"
    );
}

/// A secret's rotation: with `previous_secret` set, every request carries
/// a signature under each, so a receiver holding only the old secret and
/// one holding only the new both verify it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_either_secret_verifies() {
    let (old, new) = (new_secret(), new_secret());
    let hooks = Fixture::start(|_, _| reply(200, "{}")).await;
    let settings = format!(
        "[webhooks_settings]\n{FAST_RETRIES}[[webhooks]]\nurl = \"{}/hooks\"\n\
         secret = \"${{TEST_SECRET}}\"\nprevious_secret = \"{old}\"\ntimeout_ms = 2000\n",
        hooks.url()
    );
    let mut rig = Rig::start(Backend::Sqlite, &settings, &new).await.unwrap();
    let client = rig.herald.client();
    assert_eq!(client.sms("rotating").await.status, 202);
    assert!(
        wait_for(Duration::from_secs(30), || !hooks.requests().is_empty()).await,
        "{}",
        rig.herald.logs()
    );
    let r = &hooks.requests()[0];
    assert_eq!(r.header("webhook-signature").split(' ').count(), 2);
    assert!(
        signature_is_valid(&old, r),
        "a receiver not changed over yet"
    );
    assert!(
        signature_is_valid(&new, r),
        "a receiver changed over already"
    );
    assert!(!signature_is_valid(&new_secret(), r));
    let logs = rig.herald.logs_at_exit();
    assert!(!logs.contains(&old) && !logs.contains(&new));
}

async fn a_callback_url_gets_its_events_and_a_host_not_allowed_is_refused(backend: Backend) {
    let secret = new_secret();
    let hooks = receiver(&secret).await;
    let settings = format!(
        "[webhooks_settings]\n{FAST_RETRIES}callback_allowed_hosts = [\"127.0.0.1\", \"*.example.com\"]\n\
         callback_http_hosts = [\"127.0.0.1\"]\ncallback_secret = \"${{TEST_SECRET}}\"\n\
         callback_allow_private_addresses = true\n"
    );
    let Some(mut rig) = Rig::start(backend, &settings, &secret).await else {
        return;
    };
    let herald = &rig.herald;
    let client = herald.client();
    let port = hooks.addr.port();

    let mut ours = Vec::new();
    for (path, body) in [
        (
            "/v1/sms",
            json!({"phone": "01712345678", "text": "a", "callback_url": format!("{}/cb/sms", hooks.url())}),
        ),
        (
            "/api/email",
            json!({"subject": "fail", "body": "b", "recipients": ["a@example.com"],
                   "callback_url": format!("{}/cb/email", hooks.url())}),
        ),
    ] {
        let a = client.post(path, &body).await;
        assert_eq!(a.status, 202, "{path}: {}", a.body);
        let id = a.body["id"].as_str().unwrap().to_owned();
        let rec = client.get(&format!("/v1/notifications/{id}")).await.body;
        assert_eq!(rec["callback_url"], body["callback_url"]);
        ours.push(id);
    }
    // A notification without a callback sends nothing: no endpoint is set.
    assert_eq!(client.sms("no callback").await.status, 202);

    for refused in [
        format!("http://localhost:{port}/cb"),
        "http://hooks.example.com/cb".to_owned(),
        "https://example.com/cb".to_owned(),
        "not a url".to_owned(),
    ] {
        let a = client
            .post(
                "/v1/sms",
                &json!({"phone": "01712345678", "text": "x", "callback_url": refused}),
            )
            .await;
        assert_eq!(a.status, 422, "{refused}");
        assert_eq!(a.body["errors"][0]["field"], "callback_url", "{}", a.body);
    }
    let batch = client
        .post(
            "/v1/batch",
            &json!({"notifications": [
                {"channel": "sms", "phone": "01712345678", "text": "b1",
                 "callback_url": format!("{}/cb/batch", hooks.url())},
                {"channel": "sms", "phone": "01712345678", "text": "b2",
                 "callback_url": "https://intranet.local/cb"},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 202, "{}", batch.body);
    let results = batch.body["results"].as_array().unwrap();
    assert_eq!(results[1]["error"]["errors"][0]["field"], "callback_url");
    ours.push(results[0]["id"].as_str().unwrap().to_owned());

    assert!(
        wait_for(Duration::from_secs(60), || accepted(&hooks).len() == 3).await,
        "{:?}\n{}",
        hooks
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        herald.logs()
    );
    // Each to its own callback_url, with its own event.
    let expected: HashMap<&str, (&str, &str)> = HashMap::from([
        (ours[0].as_str(), ("/cb/sms", "notification.sent")),
        (ours[1].as_str(), ("/cb/email", "notification.failed")),
        (ours[2].as_str(), ("/cb/batch", "notification.sent")),
    ]);
    for r in accepted(&hooks).values() {
        assert!(signature_is_valid(&secret, r));
        let body = r.json();
        let id = body["data"]["id"].as_str().unwrap();
        assert_eq!(
            expected.get(id),
            Some(&(r.path.as_str(), body["type"].as_str().unwrap())),
            "{body}"
        );
    }
    let callbacks = client.get("/v1/webhooks/deliveries").await.body;
    let items = callbacks["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "only the notifications that named one");
    assert!(items.iter().all(|d| d["target"] == "callback"));
    assert!(!rig.herald.logs_at_exit().contains(&secret));
}

/// A callback host allowed by name that resolves inside the network (here
/// `localhost`, to 127.0.0.1), or an allowed address that is internal, gets
/// nothing unless private addresses are allowed: checked on the addresses
/// the connection is made to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_resolves_to_a_private_address_is_refused() {
    let secret = new_secret();
    let hooks = Fixture::start(|_, _| reply(200, "{}")).await;
    let settings = format!(
        "[webhooks_settings]\n{FAST_RETRIES}callback_allowed_hosts = [\"localhost\", \"127.0.0.1\"]\n\
         callback_http_hosts = [\"localhost\", \"127.0.0.1\"]\ncallback_secret = \"${{TEST_SECRET}}\"\n"
    );
    let mut rig = Rig::start(Backend::Sqlite, &settings, &secret)
        .await
        .unwrap();
    let client = rig.herald.client();
    let port = hooks.addr.port();
    for url in [
        format!("http://localhost:{port}/by-name"),
        format!("http://127.0.0.1:{port}/by-address"),
    ] {
        let a = client
            .post(
                "/v1/sms",
                &json!({"phone": "01712345678", "text": "x", "callback_url": url}),
            )
            .await;
        assert_eq!(a.status, 202, "allowed by name: {}", a.body);
    }
    let until = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let listed = client
            .get("/v1/webhooks/deliveries?status=failed")
            .await
            .body;
        let items = listed["items"].as_array().cloned().unwrap_or_default();
        if items.len() == 2 {
            break items;
        }
        assert!(Instant::now() < until, "{listed}\n{}", rig.herald.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for item in &failed {
        assert_eq!(item["attempts"], 1, "refused for good, not retried: {item}");
        let error = item["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("private, loopback or link-local"), "{item}");
    }
    assert!(hooks.requests().is_empty(), "nothing reached the receiver");
    assert!(!rig.herald.logs_at_exit().contains(&secret));
}

async fn a_receiver_that_never_answers_does_not_slow_delivery(backend: Backend) {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let holder = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    // Each attempt would hold on for a minute, two at a time.
    let settings = format!(
        "[webhooks_settings]\nmax_in_flight = 2\n[[webhooks]]\nurl = \"{silent_url}\"\n\
         secret = \"${{TEST_SECRET}}\"\ntimeout_ms = 60000\n"
    );
    let Some(mut rig) = Rig::start(backend, &settings, &new_secret()).await else {
        return;
    };
    let client = std::sync::Arc::new(rig.herald.client());

    let ids = support::send_many(&client, Channel::Sms, "silent", 200, 8).await;
    assert_eq!(ids.len(), 200);
    // Delivered one after the other behind the receiver, they would take
    // 100 minutes; beside it, they are all delivered well before the first
    // attempt at the receiver times out.
    assert!(
        client.wait_until_settled(Duration::from_secs(40)).await,
        "{:?}",
        client.stats().await
    );
    assert_eq!(client.stats().await["sent"], 200);
    assert_eq!(rig.sim.delivered_count(), 200);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), accepted_rx.recv())
            .await
            .is_ok(),
        "the worker is trying the receiver"
    );
    let unfinished = |status: &'static str| {
        let client = std::sync::Arc::clone(&client);
        async move {
            let a = client
                .get(&format!(
                    "/v1/webhooks/deliveries?status={status}&limit=1000"
                ))
                .await;
            a.body["items"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(unfinished("delivered").await, 0);
    assert_eq!(
        unfinished("pending").await + unfinished("sending").await,
        200,
        "every event waits in the outbox"
    );

    // SIGTERM: the attempts still hanging are cut at the drain timeout and
    // their leases given back, so another instance could take them at once.
    rig.herald.sigterm();
    let status = rig.herald.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", rig.herald.logs());
    holder.abort();
    let opened = rig.store.open().await;
    let sending = opened
        .webhook_deliveries(Some(herald::store::WebhookStatus::Sending), None, 1000)
        .await
        .unwrap();
    assert!(sending.is_empty(), "leases given back: {sending:?}");
    let pending = opened
        .webhook_deliveries(Some(herald::store::WebhookStatus::Pending), None, 1000)
        .await
        .unwrap();
    assert_eq!(pending.len(), 200);
    opened.close().await;
}

#[tokio::test]
async fn a_callback_secret_is_required_once_callback_hosts_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.toml");
    std::fs::write(
        &path,
        "[webhooks_settings]\ncallback_allowed_hosts = [\"hooks.example.com\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("callback_secret"), "{err}");
}

/// The one webhook delivery in `status`, waited for up to 30 s.
async fn the_one(client: &support::Client, status: &str) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let page = client
            .get(&format!("/v1/webhooks/deliveries?status={status}"))
            .await;
        if let Some([item]) = page.body["items"].as_array().map(Vec::as_slice) {
            return item.clone();
        }
        assert!(
            Instant::now() < until,
            "no {status} delivery: {:?}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_failed_delivery_is_delivered_again_when_an_operator_asks(backend: Backend) {
    let secret = new_secret();
    // 410 (gone: failed at once, no retry) until the receiver is fixed.
    let fixed = Arc::new(AtomicBool::new(false));
    let hooks = {
        let (fixed, secret) = (Arc::clone(&fixed), secret.clone());
        Fixture::start(move |r, _| {
            if !signature_is_valid(&secret, r) {
                reply(401, "{}")
            } else if fixed.load(Ordering::SeqCst) {
                reply(200, "{}")
            } else {
                reply(410, r#"{"error": "no such hook yet"}"#)
            }
        })
        .await
    };
    let settings = format!(
        "[webhooks_settings]\n{FAST_RETRIES}[[webhooks]]\nurl = \"{}/hooks\"\n\
         secret = \"${{TEST_SECRET}}\"\nevents = [\"notification.sent\"]\n",
        hooks.url()
    );
    let Some(rig) = Rig::start(backend, &settings, &secret).await else {
        return;
    };
    let client = rig.herald.client();
    assert_eq!(client.sms("redeliver-me").await.status, 202);

    let item = the_one(&client, "failed").await;
    assert_eq!(item["last_http_status"], 410, "{item}");
    let id = item["id"].as_str().unwrap().to_owned();
    let redeliver = format!("/v1/webhooks/deliveries/{id}/redeliver");

    fixed.store(true, Ordering::SeqCst);
    let again = client.post(&redeliver, &json!({})).await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(again.body, json!({"id": id, "status": "pending"}));
    let delivered = the_one(&client, "delivered").await;
    assert_eq!(delivered["id"], id.as_str());
    assert_eq!(
        delivered["attempts"], 1,
        "a fresh attempt budget: {delivered}"
    );
    assert_eq!(delivered["last_http_status"], 200);
    // The same event and webhook-id, signed again.
    let sent = hooks.requests();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|r| r.header("webhook-id") == id));
    assert_eq!(sent[0].body, sent[1].body);

    // Only a failed one; an id that names none.
    let twice = client.post(&redeliver, &json!({})).await;
    assert_eq!(twice.status, 409, "{:?}", twice.body);
    assert!(
        twice.body["detail"]
            .as_str()
            .unwrap()
            .contains("this one is delivered")
    );
    for unknown in ["msg_01a2280ff6a070008694a7806ed00b50", "nope"] {
        let none = client
            .post(
                &format!("/v1/webhooks/deliveries/{unknown}/redeliver"),
                &json!({}),
            )
            .await;
        assert_eq!(none.status, 404, "{unknown}: {:?}", none.body);
    }
}
