//! API keys through the real binary: `herald keys` against the store a
//! running `herald serve` uses, and what the API answers each key.

#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use support::{Backend, Herald, Sim, TestStore, create_key as create, herald_keys as keys};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    keys_and_scopes_guard_the_api,
    a_key_sees_and_cancels_only_its_own_notifications,
);

struct Call {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: Option<(&str, &str)>,
    body: Option<Value>,
) -> Call {
    let mut req = http.request(method, url);
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Call {
        status,
        headers,
        body,
    }
}

async fn keys_and_scopes_guard_the_api(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let url = store.url.clone();
    // The keys table exists once the store is migrated.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate", "--store", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sender = create(&url, &["--name", "sender", "--scopes", "send"]);
    let reader = create(&url, &["--name", "reader", "--scopes", "read"]);
    let admin = create(&url, &["--name", "ops", "--scopes", "read,admin"]);
    let slow = create(
        &url,
        &[
            "--name",
            "slow",
            "--scopes",
            "send",
            "--rate-per-sec",
            "0.01",
            "--burst",
            "1",
        ],
    );
    assert!(sender.starts_with("hrd_") && sender != reader);
    let listed = keys(&url, &["list"]);
    assert!(listed.contains("sender\tsend\t") && listed.contains("slow\tsend\t0.01\t1\t"));
    for key in [&sender, &reader, &admin, &slow] {
        assert!(!listed.contains(key.as_str()), "list never shows a key");
    }

    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n[auth]\nrequired = true\nrefresh_ms = 100\n",
        sim.herald_config(&url, "")
    );
    let herald = Herald::start(dir.path(), &config);
    let base = herald.client().base;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sms = || Some(json!({"phone": "01712345678", "text": "hi"}));
    let bearer = |key: &str| format!("Bearer {key}");
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    // Health checks stay open.
    let a = call(&http, get.clone(), format!("{base}/healthz"), None, None).await;
    assert_eq!(a.status, 200);
    // No key, an unknown key: 401, problem+json, WWW-Authenticate.
    for auth in [None, Some(("authorization", "Bearer hrd_not-a-key"))] {
        let a = call(&http, post.clone(), format!("{base}/v1/sms"), auth, sms()).await;
        assert_eq!(a.status, 401);
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert_eq!(a.body["status"], 401);
    }
    // The wrong scope: 403.
    let a = call(
        &http,
        post.clone(),
        format!("{base}/v1/sms"),
        Some(("authorization", &bearer(&reader))),
        sms(),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    // The right one, in either header: 202.
    let a = call(
        &http,
        post.clone(),
        format!("{base}/v1/sms"),
        Some(("authorization", &bearer(&sender))),
        sms(),
    )
    .await;
    assert_eq!(a.status, 202);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let a = call(
        &http,
        post.clone(),
        format!("{base}/v1/sms"),
        Some(("x-api-key", &sender)),
        sms(),
    )
    .await;
    assert_eq!(a.status, 202);
    // Reading needs read; metrics need admin.
    let read = format!("{base}/v1/notifications/{id}");
    let a = call(
        &http,
        get.clone(),
        read.clone(),
        Some(("x-api-key", &sender)),
        None,
    )
    .await;
    assert_eq!(a.status, 403);
    // A read key reads only what it sent (here nothing), an admin all.
    let a = call(
        &http,
        get.clone(),
        read.clone(),
        Some(("x-api-key", &reader)),
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    let a = call(&http, get.clone(), read, Some(("x-api-key", &admin)), None).await;
    assert_eq!(a.status, 200);
    let metrics = format!("{base}/metrics");
    let a = call(
        &http,
        get.clone(),
        metrics.clone(),
        Some(("x-api-key", &reader)),
        None,
    )
    .await;
    assert_eq!(a.status, 403);
    let a = call(
        &http,
        get.clone(),
        metrics,
        Some(("x-api-key", &admin)),
        None,
    )
    .await;
    assert_eq!(a.status, 200);

    // A key's idempotency keys are its own.
    let keyed = |key: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let resp = http
                .post(format!("{base}/v1/sms"))
                .header("x-api-key", key)
                .header("idempotency-key", "order-1")
                .header("content-type", "application/json")
                .body(json!({"phone": "01712345678", "text": "once"}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            body["id"].clone()
        }
    };
    let first = keyed(sender.clone()).await;
    assert_eq!(
        keyed(sender.clone()).await,
        first,
        "a retry by the same key"
    );
    assert_ne!(
        keyed(slow.clone()).await,
        first,
        "another key, another scope"
    );

    // The slow key spent its one token above: 429 with the headers.
    let a = call(
        &http,
        post.clone(),
        format!("{base}/v1/sms"),
        Some(("x-api-key", &slow)),
        sms(),
    )
    .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(a.headers["ratelimit-limit"], "1");
    assert_eq!(a.headers["ratelimit-remaining"], "0");
    assert!(a.headers.contains_key("ratelimit-reset"));

    // Revoked: refused within the refresh interval (bounded wait).
    keys(&url, &["revoke", "sender"]);
    assert!(
        keys(&url, &["list"])
            .lines()
            .any(|l| l.starts_with("sender\t") && !l.ends_with("\t-"))
    );
    let mut status = 0;
    for _ in 0..100 {
        status = call(
            &http,
            post.clone(),
            format!("{base}/v1/sms"),
            Some(("x-api-key", &sender)),
            sms(),
        )
        .await
        .status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "a revoked key is refused");

    // No key reaches the log.
    let log = herald.logs();
    for key in [&sender, &reader, &admin, &slow] {
        assert!(!log.contains(key.as_str()), "a key in the log");
    }
}

/// Keys given to different applications: each reads, lists and cancels
/// only the notifications it sent; another key's are answered as missing.
/// An admin key sees every one.
async fn a_key_sees_and_cancels_only_its_own_notifications(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let url = store.url.clone();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate", "--store", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let billing = create(&url, &["--name", "billing", "--scopes", "send,read"]);
    let shop = create(&url, &["--name", "shop", "--scopes", "send,read"]);
    let ops = create(&url, &["--name", "ops", "--scopes", "admin"]);
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n[auth]\nrequired = true\nrefresh_ms = 100\n",
        sim.herald_config(&url, "")
    );
    let herald = Herald::start(dir.path(), &config);
    let base = herald.client().base;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let send = |k: &str, text: &str| {
        let an_hour = herald::domain::UnixMillis::now().plus(Duration::from_secs(3600));
        let body = json!({"phone": "01712345678", "text": text, "send_at": an_hour});
        let (http, base, k) = (http.clone(), base.clone(), k.to_owned());
        async move {
            let a = call(
                &http,
                reqwest::Method::POST,
                format!("{base}/v1/sms"),
                Some(("x-api-key", &k)),
                Some(body),
            )
            .await;
            assert_eq!(a.status, 202, "{}", a.body);
            a.body["id"].as_str().unwrap().to_owned()
        }
    };
    let ask = |method: reqwest::Method, path: String, k: &str| {
        let (http, base, k) = (http.clone(), base.clone(), k.to_owned());
        async move {
            call(
                &http,
                method,
                format!("{base}{path}"),
                Some(("x-api-key", &k)),
                None,
            )
            .await
        }
    };
    let listed = |k: &str| {
        let ask = ask(reqwest::Method::GET, "/v1/notifications".into(), k);
        async move {
            ask.await.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let (get, delete) = (reqwest::Method::GET, reqwest::Method::DELETE);
    let bills = send(&billing, "invoice").await;
    let order = send(&shop, "order").await;
    let path = format!("/v1/notifications/{bills}");

    assert_eq!(ask(get.clone(), path.clone(), &billing).await.status, 200);
    let theirs = ask(get.clone(), path.clone(), &shop).await;
    assert_eq!(
        theirs.status, 404,
        "as if it did not exist: {}",
        theirs.body
    );
    assert_eq!(theirs.body["type"], "/problems/not-found");
    assert_eq!(listed(&billing).await, std::slice::from_ref(&bills));
    assert_eq!(listed(&shop).await, std::slice::from_ref(&order));
    assert_eq!(listed(&ops).await, [bills.clone(), order.clone()]);
    assert_eq!(ask(get.clone(), path.clone(), &ops).await.status, 200);

    // Another key cannot cancel it; nothing changed.
    assert_eq!(ask(delete.clone(), path.clone(), &shop).await.status, 404);
    let still = ask(get.clone(), path.clone(), &billing).await;
    assert_eq!(still.body["status"], "scheduled");
    let mine = ask(delete.clone(), path.clone(), &billing).await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.body["status"], "canceled");
    let other = format!("/v1/notifications/{order}");
    assert_eq!(
        ask(delete, other.clone(), &ops).await.status,
        403,
        "admin does not send"
    );
    assert_eq!(ask(get, other, &shop).await.body["status"], "scheduled");
}

#[test]
fn serving_beyond_loopback_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("h.db").display());
    // Refused before it binds: nothing listens on 0.0.0.0.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "0.0.0.0:0", "--store", &store])
        .env("HERALD_AUTH__REQUIRED", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-no-auth"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}
