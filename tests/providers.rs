//! The real providers' kinds, end to end: `herald serve` as a process,
//! each provider's API as a fixture on loopback that answers as the
//! provider documents and records exactly what Herald sent.

#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::fixture::{Fixture, Recorded, reply};
use support::{Backend, Client, Herald, TestStore};

/// Short timings, as the other end to end tests use, and `providers`.
/// Their providers wait 10 s for an answer: the fixtures answer at once,
/// and a timeout on a loaded CI machine would send twice (at least once is
/// the guarantee), where these tests count what each fixture received.
fn config(store: &TestStore, providers: &str) -> String {
    format!(
        r#"store = "{}"
[dispatch]
poll_interval_ms = 20
lease_ms = 15000
drain_timeout_ms = 5000
[retry]
base_ms = 50
cap_ms = 500
max_rounds = 40
[health]
cooldown_min_ms = 100
cooldown_max_ms = 500
{providers}"#,
        store.url
    )
}

/// A contract provider that always delivers.
async fn contract_fixture() -> Fixture {
    Fixture::start(|_, _| reply(200, r#"{"message": "sent"}"#)).await
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

async fn record(client: &Client, id: &str) -> Value {
    client.get(&format!("/v1/notifications/{id}")).await.body
}

async fn accept(client: &Client, path: &str, body: Value) -> String {
    let a = client.post(path, &body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

/// The only request whose body holds `needle`.
fn one(fixture: &Fixture, needle: &str) -> Recorded {
    let found = fixture.requests_with(needle);
    assert_eq!(found.len(), 1, "{needle}: {found:?}");
    found.into_iter().next().unwrap()
}

const TWILIO_TOKEN: &str = "tw-secret-4f9a0c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_messages_are_sent_and_every_answer_classified() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let twilio = Fixture::start(|r, earlier| {
        let body = r.field("Body").unwrap_or_default();
        let seen = earlier
            .iter()
            .filter(|e| e.field("Body").as_deref() == Some(&body))
            .count();
        let error = |status: u16, code: u32| {
            reply(
                status,
                json!({"code": code, "message": "m", "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}).to_string(),
            )
        };
        if body.starts_with("invalid") {
            error(400, 21211)
        } else if body.starts_with("queue-full") && seen == 0 {
            error(400, 21611)
        } else {
            let sid = format!("SM{:032x}", earlier.len());
            reply(
                201,
                json!({"sid": sid, "status": "queued", "body": body, "to": r.field("To")})
                    .to_string(),
            )
        }
    })
    .await;
    let email = contract_fixture().await;
    let providers = format!(
        r#"
[[providers.sms]]
name = "twilio"
kind = "twilio"
url = "{}"
account_sid = "AC0123456789abcdef"
auth_token = "${{HERALD_TEST_TWILIO_TOKEN}}"
from = "+15005550006"
timeout_ms = 10000
[[providers.email]]
name = "contract-email"
url = "{}/api/email/provider1"
timeout_ms = 10000
"#,
        twilio.url(),
        email.url()
    );
    let mut herald = Herald::start_with_env(
        dir.path(),
        &config(&store, &providers),
        "all",
        &[
            ("HERALD_TEST_TWILIO_TOKEN", TWILIO_TOKEN),
            ("RUST_LOG", "debug"),
        ],
    );
    let c = herald.client();

    let local = accept(
        &c,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "ok-local"}),
    )
    .await;
    let intl = accept(
        &c,
        "/v1/sms",
        json!({"phone": "+14155552671", "text": "ok-intl"}),
    )
    .await;
    let invalid = accept(
        &c,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "invalid-1"}),
    )
    .await;
    let full = accept(
        &c,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "queue-full-1"}),
    )
    .await;
    let plain = accept(
        &c,
        "/v1/email",
        json!({"subject": "plain", "body": "b", "recipients": ["a@example.com"]}),
    )
    .await;
    let rich = accept(
        &c,
        "/v1/email",
        json!({"subject": "rich", "body": "b", "recipients": ["a@example.com"],
               "html": "<p>b</p>", "reply_to": "r@example.com"}),
    )
    .await;
    assert!(
        c.wait_until_settled(Duration::from_secs(30)).await,
        "{:?}",
        c.stats().await
    );

    // What Twilio received: the documented path, auth and form fields.
    let sent = one(&twilio, "ok-local");
    assert_eq!(sent.method, "POST");
    assert_eq!(
        sent.path,
        "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json"
    );
    assert_eq!(
        sent.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        sent.header("authorization"),
        basic("AC0123456789abcdef", TWILIO_TOKEN)
    );
    assert_eq!(sent.field("To").as_deref(), Some("+8801712345678"), "E.164");
    assert_eq!(sent.field("From").as_deref(), Some("+15005550006"));
    assert_eq!(sent.field("Body").as_deref(), Some("ok-local"));
    assert_eq!(sent.form_keys(), ["To", "From", "Body"]);
    assert_eq!(
        one(&twilio, "ok-intl").field("To").as_deref(),
        Some("+14155552671")
    );

    // How each answer was classified.
    let rec = record(&c, &local).await;
    assert_eq!(rec["status"], "sent", "{rec}");
    let attempt = &rec["attempts"][0];
    assert_eq!(attempt["http_status"], 201);
    assert!(
        attempt["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("SM"),
        "{rec}"
    );
    assert_eq!(record(&c, &intl).await["status"], "sent");

    let rec = record(&c, &invalid).await;
    assert_eq!(
        rec["status"], "failed",
        "21211 is the message's fault: {rec}"
    );
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "never retried: {rec}");
    assert_eq!(attempts[0]["outcome"], "rejected");
    assert_eq!(attempts[0]["http_status"], 400);

    let rec = record(&c, &full).await;
    assert_eq!(rec["status"], "sent", "21611 is temporary: {rec}");
    let outcomes: Vec<&str> = rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["transient", "delivered"], "{rec}");

    // The contract's providers get the contract's fields only.
    let sent = one(&email, "plain");
    assert_eq!(
        sent.text(),
        r#"{"subject":"plain","body":"b","recipients":["a@example.com"]}"#,
        "the stored bytes, unchanged"
    );
    let sent = one(&email, "rich").json();
    assert_eq!(
        sent,
        json!({"subject": "rich", "body": "b", "recipients": ["a@example.com"]})
    );
    assert_eq!(record(&c, &plain).await["status"], "sent");
    let rec = record(&c, &rich).await;
    assert_eq!(rec["status"], "sent");
    assert_eq!(
        rec["message"]["html"], "<p>b</p>",
        "kept for the kinds that send it"
    );

    // The token never shows: not in the API, not in the debug log.
    let providers = c.get("/v1/providers").await.body.to_string();
    assert!(providers.contains("twilio") && !providers.contains(TWILIO_TOKEN));
    for id in [&local, &invalid, &full] {
        assert!(!record(&c, id).await.to_string().contains(TWILIO_TOKEN));
    }
    let logs = herald.logs_at_exit();
    assert!(logs.contains("DEBUG"), "the log was at debug level");
    assert!(!logs.contains(TWILIO_TOKEN), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_failures_inside_http_200_are_read_and_failed_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let vonage = Fixture::start(|r, earlier| {
        let text = r.field("text").unwrap_or_default();
        let part = |status: &str, extra: Value| {
            let mut m = json!({"to": r.field("to"), "status": status});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            reply(200, json!({"message-count": "1", "messages": [m]}).to_string())
        };
        if text.starts_with("barred") {
            part("7", json!({"error-text": "Number barred."}))
        } else if text.starts_with("throttled") && earlier.iter().all(|e| e.field("text") != Some(text.clone())) {
            part("1", json!({"error-text": "Throughput Rate Exceeded"}))
        } else {
            part(
                "0",
                json!({"message-id": format!("0A{:014X}", earlier.len()), "remaining-balance": "9.5", "message-price": "0.03", "network": "47001"}),
            )
        }
    })
    .await;
    // The same API with credentials it refuses: still HTTP 200.
    let refusing = Fixture::start(|_, _| {
        reply(
            200,
            json!({"message-count": "1", "messages": [{"status": "4", "error-text": "Bad Credentials"}]})
                .to_string(),
        )
    })
    .await;
    let email = contract_fixture().await;
    let providers = format!(
        r#"
[[providers.sms]]
name = "vonage-refusing"
kind = "vonage"
url = "{}"
api_key = "k-bad"
api_secret = "s-bad"
from = "Herald"
weight = 1000000
timeout_ms = 10000
[[providers.sms]]
name = "vonage"
kind = "vonage"
url = "{}"
api_key = "k-123"
api_secret = "${{HERALD_TEST_VONAGE_SECRET}}"
from = "Herald"
timeout_ms = 10000
[[providers.email]]
name = "contract-email"
url = "{}/api/email/provider1"
timeout_ms = 10000
"#,
        refusing.url(),
        vonage.url(),
        email.url()
    );
    let herald = Herald::start_with_env(
        dir.path(),
        &config(&store, &providers),
        "all",
        &[("HERALD_TEST_VONAGE_SECRET", "vn-secret-77e1")],
    );
    let c = herald.client();

    let ok = accept(
        &c,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "ok-1 বাংলা"}),
    )
    .await;
    assert!(c.wait_until_settled(Duration::from_secs(30)).await);
    let rec = record(&c, &ok).await;
    assert_eq!(rec["status"], "sent", "{rec}");
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(
        attempts[0]["provider"], "vonage-refusing",
        "the heavier weight first: {rec}"
    );
    assert_eq!(attempts[0]["outcome"], "provider_fault", "{rec}");
    assert_eq!(attempts[0]["http_status"], 200);
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("status 4"),
        "{rec}"
    );
    let last = attempts.last().unwrap();
    assert_eq!(last["provider"], "vonage");
    assert!(
        last["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("0A")
    );
    // Said loudly.
    herald.log_shows("an operator must act").await;

    let sent = one(&vonage, "ok-1");
    assert_eq!(sent.path, "/sms/json");
    assert_eq!(
        sent.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(sent.field("api_key").as_deref(), Some("k-123"));
    assert_eq!(sent.field("api_secret").as_deref(), Some("vn-secret-77e1"));
    assert_eq!(sent.field("from").as_deref(), Some("Herald"));
    assert_eq!(
        sent.field("to").as_deref(),
        Some("8801712345678"),
        "E.164 without +"
    );
    assert_eq!(sent.field("text").as_deref(), Some("ok-1 বাংলা"));
    assert_eq!(sent.field("type").as_deref(), Some("unicode"));
    assert_eq!(
        sent.field("client-ref").as_deref(),
        Some(ok.as_str()),
        "correlation"
    );

    let barred = accept(
        &c,
        "/v1/sms",
        json!({"phone": "+14155552671", "text": "barred-1"}),
    )
    .await;
    let throttled = accept(
        &c,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "throttled-1"}),
    )
    .await;
    assert!(c.wait_until_settled(Duration::from_secs(30)).await);
    let rec = record(&c, &barred).await;
    assert_eq!(
        rec["status"], "failed",
        "status 7 is the number's fault: {rec}"
    );
    let last = rec["attempts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["provider"].as_str(), last["outcome"].as_str()),
        (Some("vonage"), Some("rejected"))
    );
    assert_eq!(
        one(&vonage, "barred-1").field("to").as_deref(),
        Some("14155552671")
    );

    let rec = record(&c, &throttled).await;
    assert_eq!(rec["status"], "sent", "{rec}");
    let vonage_outcomes: Vec<&str> = rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["provider"] == "vonage")
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(vonage_outcomes, ["throttled", "delivered"], "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_failing_beside_mailgun_every_email_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sendgrid = Fixture::start(|_, _| {
        reply(
            500,
            r#"{"errors":[{"message":"Internal server error","field":null}]}"#,
        )
    })
    .await;
    let mailgun = Fixture::start(|_, earlier| {
        reply(
            200,
            json!({"id": format!("<{}.herald@mg.example.test>", earlier.len()), "message": "Queued. Thank you."})
                .to_string(),
        )
    })
    .await;
    let sms = contract_fixture().await;
    let providers = format!(
        r#"
[[providers.sms]]
name = "contract-sms"
url = "{}/api/sms/provider1"
timeout_ms = 10000
[[providers.email]]
name = "sendgrid"
kind = "sendgrid"
url = "{}"
api_key = "${{HERALD_TEST_SENDGRID_KEY}}"
from = "Herald <noreply@example.test>"
weight = 1000000
timeout_ms = 10000
[[providers.email]]
name = "mailgun"
kind = "mailgun"
url = "{}"
domain = "mg.example.test"
api_key = "${{HERALD_TEST_MAILGUN_KEY}}"
from = "Herald <noreply@mg.example.test>"
timeout_ms = 10000
"#,
        sms.url(),
        sendgrid.url(),
        mailgun.url()
    );
    let herald = Herald::start_with_env(
        dir.path(),
        &config(&store, &providers),
        "all",
        &[
            ("HERALD_TEST_SENDGRID_KEY", "SG.sg-secret-11"),
            ("HERALD_TEST_MAILGUN_KEY", "mg-secret-22"),
        ],
    );
    let c = Arc::new(herald.client());

    let rich = accept(
        &c,
        "/v1/email",
        json!({"subject": "rich", "body": "text body", "recipients": ["a@example.com", "b@example.com"],
               "html": "<p>html body</p>", "reply_to": "help@example.com"}),
    )
    .await;
    let mut ids = vec![rich.clone()];
    for i in 0..9 {
        ids.push(
            accept(
                &c,
                "/v1/email",
                json!({"subject": format!("plain-{i}"), "body": "b", "recipients": ["a@example.com"]}),
            )
            .await,
        );
    }
    assert!(
        c.wait_until_settled(Duration::from_secs(30)).await,
        "{:?}",
        c.stats().await
    );
    assert_eq!(c.stats().await["sent"], 10);
    for id in &ids {
        let rec = record(&c, id).await;
        assert_eq!(rec["delivered_by"], "mailgun", "{rec}");
        let last = rec["attempts"].as_array().unwrap().last().unwrap().clone();
        assert!(
            last["provider_message_id"]
                .as_str()
                .unwrap()
                .ends_with("@mg.example.test>")
        );
    }
    let rec = record(&c, &rich).await;
    let first = &rec["attempts"][0];
    assert_eq!(
        (first["provider"].as_str(), first["outcome"].as_str()),
        (Some("sendgrid"), Some("transient")),
        "{rec}"
    );
    assert_eq!(first["http_status"], 500);

    // SendGrid got the documented JSON, with Herald's id in custom_args.
    let sent = one(&sendgrid, "rich");
    assert_eq!(sent.path, "/v3/mail/send");
    assert_eq!(sent.header("authorization"), "Bearer SG.sg-secret-11");
    assert_eq!(sent.header("content-type"), "application/json");
    assert_eq!(
        sent.json(),
        json!({
            "personalizations": [{
                "to": [{"email": "a@example.com"}, {"email": "b@example.com"}],
                "custom_args": {"herald_id": rich},
            }],
            "from": {"email": "noreply@example.test", "name": "Herald"},
            "reply_to": {"email": "help@example.com"},
            "subject": "rich",
            "content": [
                {"type": "text/plain", "value": "text body"},
                {"type": "text/html", "value": "<p>html body</p>"},
            ],
        })
    );

    // Mailgun got the documented form.
    let sent = one(&mailgun, "rich");
    assert_eq!(sent.path, "/v3/mg.example.test/messages");
    assert_eq!(sent.header("authorization"), basic("api", "mg-secret-22"));
    assert_eq!(
        sent.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        sent.field("from").as_deref(),
        Some("Herald <noreply@mg.example.test>")
    );
    assert_eq!(sent.fields("to"), ["a@example.com", "b@example.com"]);
    assert_eq!(sent.field("subject").as_deref(), Some("rich"));
    assert_eq!(sent.field("text").as_deref(), Some("text body"));
    assert_eq!(sent.field("html").as_deref(), Some("<p>html body</p>"));
    assert_eq!(
        sent.field("h:Reply-To").as_deref(),
        Some("help@example.com")
    );
    assert_eq!(sent.field("v:herald-id").as_deref(), Some(rich.as_str()));
    let plain = one(&mailgun, "plain-0");
    assert_eq!(plain.field("html"), None);
    assert_eq!(plain.field("h:Reply-To"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_provider_gets_no_more_than_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let twilio = Fixture::start(|_, earlier| {
        reply(
            201,
            json!({"sid": format!("SM{}", earlier.len()), "status": "queued"}).to_string(),
        )
    })
    .await;
    let email = contract_fixture().await;
    let providers = format!(
        r#"
[[providers.sms]]
name = "twilio"
kind = "twilio"
url = "{}"
account_sid = "AC1"
auth_token = "t"
messaging_service_sid = "MG1"
rate_per_sec = 5
burst = 1
timeout_ms = 10000
[[providers.email]]
name = "contract-email"
url = "{}/api/email/provider1"
timeout_ms = 10000
"#,
        twilio.url(),
        email.url()
    );
    let herald = Herald::start(dir.path(), &config(&store, &providers));
    let c = Arc::new(herald.client());
    let ids = support::send_many(&c, herald::domain::Channel::Sms, "paced", 20, 20).await;
    assert_eq!(ids.len(), 20);
    assert!(
        c.wait_until_settled(Duration::from_secs(60)).await,
        "{:?}",
        c.stats().await
    );
    assert_eq!(c.stats().await["sent"], 20);

    let requests = twilio.requests();
    assert_eq!(requests.len(), 20, "one request each");
    assert_eq!(
        requests[0].field("MessagingServiceSid").as_deref(),
        Some("MG1")
    );
    assert_eq!(requests[0].field("From"), None);
    // In any one second, at most the rate plus the burst arrived.
    let mut times: Vec<_> = requests.iter().map(|r| r.at).collect();
    times.sort();
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 5 + 1, "{in_window} requests within one second");
    }
}
