//! The log of a run through the real binary: JSON lines, the request id on
//! a request's lines, lifecycle events by notification id, and no phone
//! number, address or message text.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Backend, Herald, Sim, TestStore};

const PHONE: &str = "01799887766";
const ADDRESS: &str = "alice.secret@example.com";
const TEXT: &str = "secret-text-7f3a";
const SUBJECT: &str = "secret-subject-91c2";
const BODY: &str = "secret-body-4d8e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_ids_and_no_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    // Failures too, so that retries and their attempts are logged.
    let sim = Sim::start(0.5, Duration::ZERO).await;
    let config = format!(
        "{}\n[log]\nformat = \"json\"\n",
        sim.herald_config(&store.url, "")
    );
    let mut herald = Herald::start(dir.path(), &config);
    let client = herald.client();
    let http = reqwest::Client::new();

    let sms = http
        .post(format!("{}/v1/sms", client.base))
        .header("content-type", "application/json")
        .header("x-request-id", "req-abc-123")
        .body(json!({"phone": PHONE, "text": TEXT}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(sms.status(), 202);
    assert_eq!(sms.headers()["x-request-id"], "req-abc-123");
    let sms_id = serde_json::from_slice::<Value>(&sms.bytes().await.unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let email = http
        .post(format!("{}/v1/email", client.base))
        .header("content-type", "application/json")
        .body(json!({"subject": SUBJECT, "body": BODY, "recipients": [ADDRESS]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(email.status(), 202);
    let generated = email.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(generated.len() >= 16, "a generated id: {generated}");
    let email_id = serde_json::from_slice::<Value>(&email.bytes().await.unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A bad one is refused too, with its text in the body.
    let bad = client
        .post("/v1/sms", &json!({"phone": "12", "text": TEXT}))
        .await;
    assert_eq!(bad.status, 422);
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);

    let log = herald.logs_at_exit();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    for secret in [PHONE, ADDRESS, "alice.secret", TEXT, SUBJECT, BODY] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    let event = |id: &str, message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["id"] == id && l["fields"]["message"] == message)
            .cloned()
    };
    let accepted = event(&sms_id, "accepted").expect("the SMS's acceptance is logged");
    assert_eq!(accepted["fields"]["to"], "0179*****66");
    assert_eq!(accepted["span"]["request_id"], "req-abc-123");
    let accepted = event(&email_id, "accepted").expect("the email's acceptance is logged");
    assert_eq!(accepted["fields"]["to"], "a***@example.com");
    assert_eq!(accepted["span"]["request_id"], generated.as_str());
    for id in [&sms_id, &email_id] {
        let attempt = event(id, "attempt").expect("attempts are logged");
        assert!(attempt["fields"]["provider"].is_string());
        assert!(attempt["fields"]["outcome"].is_string());
        assert!(attempt["fields"]["ms"].is_u64());
        assert!(
            event(id, "sent").is_some(),
            "the provider's acceptance is logged"
        );
    }
}

/// A recipient whose domain holds ESC and BEL, and metadata with a forged
/// line: refused at accept (422), and nothing of them reaches the text log
/// raw. Before, the email was accepted and its masked recipient
/// (`x***@ex\x1b[31mample\x07.com`) reached the log as terminal escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_reach_the_text_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let mut herald = Herald::start(dir.path(), &sim.herald_config(&store.url, ""));
    let client = herald.client();
    let hostile = "x@ex\u{1b}[31mample\u{7}.com";
    let email = client
        .post(
            "/v1/email",
            &json!({"subject": "s", "body": "b", "recipients": [hostile]}),
        )
        .await;
    assert_eq!(email.status, 422, "{}", email.body);
    assert_eq!(email.body["errors"][0]["field"], "recipients[0]");
    let sms = client
        .post(
            "/v1/sms",
            &json!({"phone": PHONE, "text": "t", "metadata": {"k": "v\n2026-01-01 INFO forged\u{1b}[2J"}}),
        )
        .await;
    assert_eq!(sms.status, 422, "{}", sms.body);
    // An ordinary one still goes through, so the log has lines to look at.
    assert_eq!(client.sms("ordinary").await.status, 202);
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);

    let log = herald.logs_at_exit();
    assert!(log.contains("accepted"), "{log}");
    for raw in ['\u{1b}', '\u{7}'] {
        assert!(!log.contains(raw), "{raw:?} reached the log raw:\n{log}");
    }
    assert!(!log.contains("forged"), "{log}");
}

/// `postgres://u:p@host/db` as `postgres://u@host/db?password=p`: the
/// password in libpq's query parameter instead of the user info.
fn password_in_query(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    let sep = if host.contains('?') { '&' } else { '?' };
    (
        format!("{scheme}://{user}@{host}{sep}password={password}"),
        password.to_owned(),
    )
}

/// A password given as `?password=` is masked wherever a store URL is
/// shown, as one in `user:pass@` is: `migrate`'s error and `serve`'s
/// start-up line. Before, both printed it in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_store_urls_query_is_never_shown() {
    // Nothing listens on port 1: migrate fails, and says which store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "migrate",
            "--store",
            "postgres://herald@127.0.0.1:1/herald?connect_timeout=2&password=s3cret-q",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("s3cret-q"), "{stderr}");
    assert!(stderr.contains("password=***"), "{stderr}");

    // Against a real server, the password in the query is the one used.
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let (url, password) = password_in_query(&store.url);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let mut herald = Herald::start(dir.path(), &sim.herald_config(&url, ""));
    assert_eq!(herald.client().sms("t").await.status, 202);
    let log = herald.logs_at_exit();
    let started = log
        .lines()
        .find(|l| l.contains("herald started"))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    assert!(started.contains("password=***"), "{started}");
    // And which TLS the store gets: no sslmode on loopback is libpq's prefer.
    assert!(
        started.contains("store_tls=\"prefer (the default on loopback)\""),
        "{started}"
    );
    assert!(!log.contains(&format!("password={password}")), "{log}");
}
