//! The HTTP API's contract: what it accepts, what it refuses and how.
//! Herald runs in-process here, on a real socket.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use herald::config::{Config, Overrides};
use serde_json::{Value, json};
use support::{Backend, Client, Sim, TestStore};

store_matrix!(
    #[tokio::test]
    accepted_notifications_are_stored_and_readable,
    bad_input_gets_problem_details,
    health_and_readiness,
    dead_letters_can_be_listed_and_replayed,
    scheduled_notifications_wait_and_can_be_canceled,
    idempotency_keys_answer_retries_with_the_first_answer,
    batches_store_every_valid_item_and_name_the_bad_ones,
    poison_senders_never_fail_their_neighbours,
);

struct App {
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), herald::app::AppError>>,
    _dir: tempfile::TempDir,
    _store: TestStore,
    _sim: Sim,
}

/// Herald in-process on `backend`; `None` where that store is unavailable.
async fn start(backend: Backend, failure_rate: f64) -> Option<App> {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(backend).await?;
    let sim = Sim::start(failure_rate, Duration::ZERO).await;
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        sim.herald_config(&store.url, "body_limit_bytes = 2048"),
    )
    .unwrap();
    let config = Config::load(Some(&path), &Overrides::default()).unwrap();
    let (listener, addr) = herald::app::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(herald::app::serve(config, listener, async {
        let _ = rx.await;
    }));
    Some(App {
        client: Client::new(addr),
        stop: Some(tx),
        task,
        _dir: dir,
        _store: store,
        _sim: sim,
    })
}

/// Senders of NUL bytes and terminal escapes (in metadata, texts, subjects
/// and addresses) beside ordinary senders: the poison is refused with 422
/// at accept, on both engines, and every ordinary request is stored (202).
/// Before, a NUL reached PostgreSQL's group commit and failed the whole
/// batch, ordinary requests with it (503).
async fn poison_senders_never_fail_their_neighbours(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let addr: std::net::SocketAddr = app.client.base["http://".len()..].parse().unwrap();
    let client = std::sync::Arc::new(Client::new(addr));
    let poisons = [
        (
            "/v1/sms",
            json!({"phone": "01712345678", "text": "t", "metadata": {"order": "a\u{0}b"}}),
        ),
        (
            "/v1/sms",
            json!({"phone": "01712345678", "text": "nul\u{0}"}),
        ),
        (
            "/v1/email",
            json!({"subject": "s\u{0}", "body": "b", "recipients": ["a@b.io"]}),
        ),
        (
            "/v1/email",
            json!({"subject": "s", "body": "b", "recipients": ["x@ex\u{1b}[31mample\u{7}.com"]}),
        ),
        (
            "/v1/email",
            json!({"subject": "s", "body": "b", "recipients": ["a,b@example.com"]}),
        ),
        (
            "/v1/batch",
            json!({"notifications": [{"channel": "sms", "phone": "01712345678", "text": "t", "metadata": {"k": "\u{0}"}}]}),
        ),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..240 {
        let client = std::sync::Arc::clone(&client);
        let poison = (i % 4 == 0).then(|| poisons[(i / 4) % poisons.len()].clone());
        tasks.spawn(async move {
            match poison {
                Some((path, body)) => {
                    let a = client.post(path, &body).await;
                    (true, a.status == 422, a.status)
                }
                None => {
                    let body = json!({"phone": "01712345678", "text": format!("ordinary {i}"),
                        "metadata": {"order": format!("{i}")}});
                    let a = client.post("/v1/sms", &body).await;
                    (false, a.status == 202, a.status)
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (poison, as_expected, status) = r.unwrap();
        assert!(as_expected, "poison {poison}: answered {status}");
    }
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);
    assert_eq!(
        client.stats().await.values().sum::<u64>(),
        180,
        "every ordinary request, and no poison, is stored"
    );
}

/// Numbers beyond the contract's are accepted only where some provider of
/// the channel can send to them; elsewhere they are refused, never stored.
#[tokio::test]
async fn international_numbers_need_a_provider_that_takes_them() {
    // The contract's providers only: Bangladeshi numbers only.
    let Some(app) = start(Backend::Sqlite, 0.0).await else {
        return;
    };
    let c = &app.client;
    let sms = |phone: &str| json!({"phone": phone, "text": "t"});
    let refused = c.post("/v1/sms", &sms("+14155552671")).await;
    assert_eq!(bad_fields(&refused), ["phone"]);
    assert!(
        refused.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no provider")
    );
    for bad in [
        "14155552671",
        "+1415555267",
        "+1 415 555 2671",
        "+12345678901234567",
    ] {
        assert_eq!(
            bad_fields(&c.post("/v1/sms", &sms(bad)).await),
            ["phone"],
            "{bad}"
        );
    }
    assert_eq!(c.post("/v1/sms", &sms("+8801712345678")).await.status, 202);
    assert!(c.wait_until_settled(Duration::from_secs(20)).await);
    assert_eq!(
        c.stats().await.values().sum::<u64>(),
        1,
        "only the one accepted is stored"
    );

    // With a Twilio provider beside them, any E.164 number is taken.
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let path = dir.path().join("herald.toml");
    let toml = format!(
        "{}\n[[providers.sms]]\nname = \"twilio\"\nkind = \"twilio\"\nurl = \"http://127.0.0.1:9\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\ntimeout_ms = 1000\n",
        sim.herald_config(&store.url, "")
    );
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(config.providers.sms.len(), 4);
    let (listener, addr) = herald::app::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    tokio::spawn(herald::app::serve(config, listener, std::future::pending()));
    let c = Client::new(addr);
    assert_eq!(c.post("/v1/sms", &sms("+14155552671")).await.status, 202);
    assert_eq!(
        bad_fields(&c.post("/v1/sms", &sms("+1415555267")).await),
        ["phone"]
    );
}

fn assert_problem(a: &support::Answer, status: u16) -> &Value {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(a.body["status"], status);
    assert!(
        a.body["title"].is_string() && a.body["detail"].is_string(),
        "{}",
        a.body
    );
    &a.body
}

/// The fields a 422 names, in order.
fn bad_fields(a: &support::Answer) -> Vec<String> {
    assert_problem(a, 422)["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn accepted_notifications_are_stored_and_readable(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let a = app.client.sms("hello").await;
    assert_eq!(a.status, 202);
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ntf_"));
    // An idle dispatcher takes it in memory at once (the hand-off).
    assert_eq!(a.body["status"], "sending");
    assert_eq!(
        a.headers["location"],
        format!("/v1/notifications/{id}").as_str()
    );

    // The reference service's paths take the same bodies.
    let legacy = app
        .client
        .post(
            "/api/email",
            &json!({"subject": "s", "body": "b", "recipients": ["x@y.io"]}),
        )
        .await;
    assert_eq!(legacy.status, 202);
    let legacy_sms = app
        .client
        .post("/api/sms", &json!({"phone": "+8801712345678", "text": "t"}))
        .await;
    assert_eq!(legacy_sms.status, 202);

    assert!(app.client.wait_until_settled(Duration::from_secs(20)).await);
    let rec = app.client.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(rec.status, 200);
    let rec = rec.body;
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["channel"], "sms");
    assert_eq!(rec["status"], "sent");
    assert_eq!(
        rec["message"],
        json!({"phone": "01712345678", "text": "hello"})
    );
    assert!(rec["created_at"].as_str().unwrap().ends_with('Z'));
    let attempt = &rec["attempts"][0];
    for key in [
        "provider",
        "started_at",
        "duration_ms",
        "outcome",
        "http_status",
        "error",
    ] {
        assert!(attempt.get(key).is_some(), "attempt lacks {key}: {attempt}");
    }
}

async fn bad_input_gets_problem_details(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let c = &app.client;

    let p = assert_problem(
        &c.post_raw("/v1/sms", "application/json", "{not json").await,
        400,
    )
    .clone();
    assert!(p["detail"].as_str().unwrap().contains("line 1"));
    assert_problem(&c.post_raw("/v1/sms", "text/plain", "{}").await, 415);
    assert_problem(
        &c.post_raw("/v1/email", "application/x-www-form-urlencoded", "a=b")
            .await,
        415,
    );
    let big = json!({"phone": "01712345678", "text": "x".repeat(4096)}).to_string();
    assert_problem(&c.post_raw("/v1/sms", "application/json", big).await, 413);

    let sms = c
        .post("/v1/sms", &json!({"phone": "0171", "text": ""}))
        .await;
    assert_eq!(bad_fields(&sms), ["phone", "text"]);
    let email = json!({"subject": 3, "body": "b", "recipients": ["ok@x.io", "bad"]});
    let email = c.post("/v1/email", &email).await;
    assert_eq!(bad_fields(&email), ["subject", "recipients[1]"]);
    assert_problem(
        &c.post("/v1/sms", &json!(["not", "an", "object"])).await,
        422,
    );
    // Serde would read this array as the struct's two fields: refused too.
    assert_problem(
        &c.post("/v1/sms", &json!(["01712345678", "a tuple"])).await,
        422,
    );
    let repeated = r#"{"phone":"01712345678","phone":"01712345678","text":"t"}"#;
    assert_problem(
        &c.post_raw("/v1/sms", "application/json", repeated).await,
        422,
    );

    assert_problem(
        &c.get("/v1/notifications/ntf_00000000000000000000000000000000")
            .await,
        404,
    );
    assert_problem(&c.get("/v1/notifications/garbage").await, 404);
    // Not even UTF-8: still no such notification, as a problem.
    assert_problem(&c.get("/v1/notifications/%FF").await, 404);
    assert_problem(&c.delete("/v1/notifications/%FF").await, 404);
    assert_problem(&c.get("/nowhere").await, 404);
    assert_problem(&c.get("/v1/sms").await, 405);
    assert_problem(&c.get("/v1/notifications?status=lost").await, 400);

    // Nothing refused was stored.
    let stats = c.stats().await;
    assert_eq!(stats.values().sum::<u64>(), 0, "{stats:?}");
}

async fn health_and_readiness(backend: Backend) {
    let Some(mut app) = start(backend, 0.0).await else {
        return;
    };
    assert_eq!(app.client.get("/healthz").await.status, 200);
    let ready = app.client.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
    let providers = app.client.get("/v1/providers").await.body;
    assert_eq!(providers.as_array().unwrap().len(), 6);
    assert_eq!(providers[0]["breaker"], "closed");
    assert_eq!(providers[0]["kind"], "contract");

    app.stop.take().unwrap().send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut app.task).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "clean stop: {ended:?}");
}

async fn dead_letters_can_be_listed_and_replayed(backend: Backend) {
    // Every provider fails: with one round allowed, notifications die fast.
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sim = Sim::start(1.0, Duration::ZERO).await;
    let path = dir.path().join("herald.toml");
    let toml = sim
        .herald_config(&store.url, "")
        .replace("max_rounds = 40", "max_rounds = 1");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(Some(&path), &Overrides::default()).unwrap();
    let (listener, addr) = herald::app::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    tokio::spawn(herald::app::serve(config, listener, std::future::pending()));
    let c = Client::new(addr);

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            c.sms(&format!("doomed-{i}")).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(c.wait_until_settled(Duration::from_secs(20)).await);
    let rec = c.get(&format!("/v1/notifications/{}", ids[0])).await.body;
    assert_eq!(rec["status"], "dead", "{rec}");
    assert_eq!(
        rec["attempts"].as_array().unwrap().len(),
        3,
        "each provider once: {rec}"
    );
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 1 rounds")
    );

    let page = c.get("/v1/notifications?status=dead&limit=2").await.body;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let rest = c
        .get(&format!(
            "/v1/notifications?status=dead&limit=2&after={next}"
        ))
        .await
        .body;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    // The most recent first, each with why it died.
    let newest = c
        .get("/v1/notifications?status=dead&order=newest&limit=2")
        .await
        .body;
    let items = newest["items"].as_array().unwrap();
    assert_eq!(
        (items[0]["id"].as_str(), items[1]["id"].as_str()),
        (Some(ids[2].as_str()), Some(ids[1].as_str()))
    );
    assert!(
        items[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 1 rounds")
    );
    let oldest = c
        .get(&format!(
            "/v1/notifications?status=dead&order=newest&cursor={}",
            newest["next"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(oldest["items"][0]["id"].as_str(), Some(ids[0].as_str()));
    assert_problem(&c.get("/v1/notifications?order=sideways").await, 400);

    let replayed = c
        .post(&format!("/v1/notifications/{}/replay", ids[0]), &json!({}))
        .await;
    assert_eq!(replayed.status, 202, "{}", replayed.body);
    assert!(c.wait_until_settled(Duration::from_secs(20)).await);
    let rec = c.get(&format!("/v1/notifications/{}", ids[0])).await.body;
    assert_eq!(rec["status"], "dead");
    assert_eq!(
        rec["attempts"].as_array().unwrap().len(),
        6,
        "tried again: {rec}"
    );
    let delivered_id = c.get("/v1/notifications?status=sent").await.body;
    assert_eq!(delivered_id["items"].as_array().unwrap().len(), 0);
    assert_problem(
        &c.post(
            "/v1/notifications/ntf_00000000000000000000000000000000/replay",
            &json!({}),
        )
        .await,
        404,
    );
}

async fn scheduled_notifications_wait_and_can_be_canceled(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let c = &app.client;
    let an_hour = herald::domain::UnixMillis::now().plus(Duration::from_secs(3600));
    let send_at = serde_json::to_value(an_hour).unwrap();
    let a = c
        .post(
            "/v1/sms",
            &json!({"phone": "01712345678", "text": "later", "send_at": send_at,
                    "ttl_secs": 7200, "priority": "high"}),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["status"], "scheduled");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let rec = c.get(&format!("/v1/notifications/{id}")).await.body;
    assert_eq!(rec["status"], "scheduled");
    assert_eq!(rec["priority"], "high");
    assert_eq!(rec["next_attempt_at"], send_at);
    assert!(rec["expires_at"].is_string() && rec["retry_until"].is_string());

    let canceled = c.delete(&format!("/v1/notifications/{id}")).await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    assert_problem(&c.delete(&format!("/v1/notifications/{id}")).await, 409);
    assert_problem(
        &c.delete("/v1/notifications/ntf_0190c3f5a1b27c3d8e4f5a6b7c8d9e0f")
            .await,
        404,
    );

    // A send_at in the past means now.
    let now = c
        .post(
            "/v1/email",
            &json!({"subject": "s", "body": "b", "recipients": ["a@b.io"],
                    "send_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(now.status, 202);
    assert_ne!(now.body["status"], "scheduled");
    // Too far ahead, bad options: every bad field named with the message's.
    let bad = c
        .post(
            "/v1/sms",
            &json!({"phone": "1", "text": "x", "send_at": "2999-01-01T00:00:00Z",
                    "ttl_secs": 0, "priority": "urgent"}),
        )
        .await;
    assert_eq!(
        bad_fields(&bad),
        ["phone", "send_at", "ttl_secs", "priority"]
    );
    assert!(c.wait_until_settled(Duration::from_secs(20)).await);
    let stats = c.stats().await;
    assert_eq!(stats["canceled"], 1);
    assert_eq!(stats["sent"], 1);
}

async fn idempotency_keys_answer_retries_with_the_first_answer(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let c = &app.client;
    let body = json!({"phone": "01712345678", "text": "once"});
    let first = c.post_keyed("/v1/sms", "k-1", &body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = c.post_keyed("/v1/sms", "k-1", &body).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body, "same id, same answer");
    assert_eq!(again.headers["location"], first.headers["location"]);
    // The reference service's path is the same request.
    let alias = c.post_keyed("/api/sms", "k-1", &body).await;
    assert_eq!(alias.body["id"], first.body["id"]);
    // The same key with another body is refused, and stores nothing.
    let other = json!({"phone": "01712345678", "text": "twice?"});
    assert_problem(&c.post_keyed("/v1/sms", "k-1", &other).await, 409);
    assert_problem(&c.post_keyed("/v1/sms", "bad key", &body).await, 400);
    // Concurrent requests with one key: one notification.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let c = support::Client::new(c.base.strip_prefix("http://").unwrap().parse().unwrap());
        tasks.spawn(async move {
            let body = json!({"subject": "s", "body": "b", "recipients": ["a@b.io"]});
            c.post_keyed("/v1/email", "k-2", &body).await
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(a) = tasks.join_next().await {
        let a = a.unwrap();
        assert_eq!(a.status, 202);
        ids.insert(a.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert!(c.wait_until_settled(Duration::from_secs(20)).await);
    assert_eq!(c.stats().await["sent"], 2);
}

async fn batches_store_every_valid_item_and_name_the_bad_ones(backend: Backend) {
    let Some(app) = start(backend, 0.0).await else {
        return;
    };
    let c = &app.client;
    let body = json!({"notifications": [
        {"channel": "sms", "phone": "01712345678", "text": "one"},
        {"channel": "sms", "phone": "12", "text": ""},
        {"channel": "email", "subject": "two", "body": "b", "recipients": ["a@b.io"],
         "priority": "low", "metadata": {"campaign": "autumn"}},
        {"channel": "fax"},
        "not an object",
        {"channel": "sms", "phone": "01712345678", "text": "three",
         "send_at": "2999-01-01T00:00:00Z"},
    ]});
    let a = c.post_keyed("/v1/batch", "batch-1", &body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let results = a.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for i in [0, 2] {
        assert!(
            results[i]["id"].as_str().unwrap().starts_with("ntf_"),
            "{}",
            results[i]
        );
    }
    let fields = |i: usize| -> Vec<String> {
        results[i]["error"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(fields(1), ["phone", "text"]);
    assert_eq!(results[1]["error"]["status"], 422);
    assert_eq!(fields(3), ["channel"]);
    assert_eq!(fields(4), ["notification"]);
    assert_eq!(fields(5), ["send_at"]);
    // Retried with its key: the same answer, nothing new stored.
    let again = c.post_keyed("/v1/batch", "batch-1", &body).await;
    assert_eq!(again.body, a.body);

    let none_valid = c
        .post("/v1/batch", &json!({"notifications": [{"channel": "sms"}]}))
        .await;
    assert_eq!(
        bad_fields(&none_valid),
        ["notifications[0].phone", "notifications[0].text"]
    );
    assert_eq!(
        bad_fields(&c.post("/v1/batch", &json!({"notifications": []})).await),
        ["notifications"]
    );
    assert_eq!(
        bad_fields(&c.post("/v1/batch", &json!({})).await),
        ["notifications"]
    );
    // Larger than the single-request body limit (2 KiB here): the batch has its own.
    let many: Vec<Value> = (0..100)
        .map(|i| json!({"channel": "sms", "phone": "01712345678", "text": format!("bulk-{i}")}))
        .collect();
    let bulk = c.post("/v1/batch", &json!({"notifications": many})).await;
    assert_eq!(bulk.status, 202, "{}", bulk.body);
    assert_eq!(bulk.body["results"].as_array().unwrap().len(), 100);
    assert!(c.wait_until_settled(Duration::from_secs(30)).await);
    assert_eq!(c.stats().await["sent"], 102);
    // Listed in the batch's order, though accepted in one millisecond.
    let bulk_ids: Vec<&Value> = bulk.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    let listed = c.get("/v1/notifications?channel=sms&limit=200").await.body;
    let listed: Vec<&Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["id"])
        .filter(|id| bulk_ids.contains(id))
        .collect();
    assert_eq!(listed, bulk_ids);

    // Listing: filters, and a cursor through every page.
    let low = c.get("/v1/notifications?channel=email&priority=low").await;
    assert_eq!(low.status, 200, "{}", low.body);
    let items = low.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], results[2]["id"]);
    let tagged = c
        .get("/v1/notifications?metadata_key=campaign&metadata_value=autumn")
        .await;
    assert_eq!(tagged.body["items"][0]["id"], results[2]["id"]);
    let id = results[2]["id"].as_str().unwrap();
    let rec = c.get(&format!("/v1/notifications/{id}")).await.body;
    assert_eq!(rec["metadata"], json!({"campaign": "autumn"}));
    let mut seen = 0;
    let mut path = "/v1/notifications?status=sent&channel=sms&limit=40".to_owned();
    for _ in 0..10 {
        let page = c.get(&path).await.body;
        seen += page["items"].as_array().unwrap().len();
        match page["next"].as_str() {
            Some(next) => {
                path = format!("/v1/notifications?status=sent&channel=sms&limit=40&cursor={next}")
            }
            None => break,
        }
    }
    assert_eq!(seen, 101);
    assert_problem(&c.get("/v1/notifications?priority=urgent").await, 400);
    assert_problem(
        &c.get("/v1/notifications?created_after=yesterday").await,
        400,
    );
    assert_problem(&c.get("/v1/notifications?cursor=xyz").await, 400);
    // Both names of the cursor: refused, not one of them ignored unchecked.
    assert_problem(
        &c.get("/v1/notifications?cursor=ntf_0190c3f5a1b27c3d8e4f5a6b7c8d9e0f&after=xyz")
            .await,
        400,
    );
}
