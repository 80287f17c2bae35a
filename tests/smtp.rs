//! The `smtp` kind end to end: `herald serve` delivering to a real SMTP
//! server on loopback (aiosmtpd, tests/fixtures/smtp_server.py) that can
//! answer 451 once, or 550, and records what it received.

#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::smtp::SmtpFixture;
use support::tls::{HttpsFixture, TestCa};
use support::{Client, Herald};

/// A config with short timings; `email` holds the email providers' tables.
fn config(dir: &Path, email: &str) -> String {
    format!(
        r#"store = "sqlite://{}"
[dispatch]
poll_interval_ms = 20
lease_ms = 15000
[retry]
base_ms = 50
cap_ms = 300
max_rounds = 20
[health]
cooldown_min_ms = 100
cooldown_max_ms = 300
[[providers.sms]]
name = "sms-unused"
url = "http://127.0.0.1:9/api/sms/provider1"
{email}"#,
        dir.join("herald.db").display()
    )
}

fn smtp_provider(url: &str, ca_file: Option<&Path>, weight: u32) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    format!(
        "[[providers.email]]\nname = \"smtp\"\nkind = \"smtp\"\nurl = \"{url}\"\nfrom = \"Herald <noreply@example.test>\"\ntimeout_ms = 10000\nweight = {weight}\n{ca}"
    )
}

async fn send(client: &Client, subject: &str, to: &str, extra: Value) -> String {
    let mut body = json!({"subject": subject, "body": "plain body", "recipients": [to]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = client.post("/v1/email", &body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

async fn record(client: &Client, id: &str) -> Value {
    client.get(&format!("/v1/notifications/{id}")).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivers_retries_a_451_and_fails_a_550() {
    let Some(smtp) = SmtpFixture::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let herald = Herald::start(
        dir.path(),
        &config(dir.path(), &smtp_provider(&url, None, 1)),
    );
    let client = herald.client();

    let ok = send(
        &client,
        "hello over smtp",
        "ok@example.test",
        json!({"html": "<p>html body</p>", "reply_to": "replies@example.test"}),
    )
    .await;
    let soft = send(&client, "soft", "soft451@example.test", json!({})).await;
    let hard = send(&client, "hard", "hard550@example.test", json!({})).await;
    assert!(client.wait_until_settled(Duration::from_secs(60)).await);

    let ok = record(&client, &ok).await;
    assert_eq!(ok["status"], "sent", "{ok}");
    let id = ok["attempts"][0]["provider_message_id"].as_str().unwrap();
    assert!(id.contains("queued as Q"), "{id}");

    let soft = record(&client, &soft).await;
    assert_eq!(soft["status"], "sent", "{soft}");
    let outcomes: Vec<&str> = soft["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["transient", "delivered"], "{soft}");
    assert!(
        soft["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("451")
    );

    let hard = record(&client, &hard).await;
    assert_eq!(hard["status"], "failed", "{hard}");
    assert_eq!(hard["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(hard["attempts"][0]["outcome"], "rejected");
    assert!(
        hard["last_error"].as_str().unwrap().contains("550"),
        "{hard}"
    );

    let received = smtp.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let m = received
        .iter()
        .find(|m| m["subject"] == "hello over smtp")
        .unwrap();
    assert_eq!(m["mail_from"], "noreply@example.test");
    assert_eq!(m["rcpt_tos"], json!(["ok@example.test"]));
    assert_eq!(m["from"], "Herald <noreply@example.test>");
    assert_eq!(m["to"], "ok@example.test");
    assert_eq!(m["reply_to"], "replies@example.test");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["text"], "plain body");
    assert_eq!(m["html"], "<p>html body</p>");
    assert_eq!(m["tls"], false);
    assert!(m["message_id"].as_str().unwrap().starts_with('<'), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_over_starttls_with_a_private_ca() {
    let ca = TestCa::new();
    let Some(smtp) = SmtpFixture::start(Some(&ca)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}?tls=required", smtp.port);
    let herald = Herald::start(
        dir.path(),
        &config(dir.path(), &smtp_provider(&url, Some(&ca.ca_file), 1)),
    );
    let client = herald.client();
    let id = send(&client, "over starttls", "ok@example.test", json!({})).await;
    assert!(client.wait_until_settled(Duration::from_secs(60)).await);
    let r = record(&client, &id).await;
    assert_eq!(r["status"], "sent", "{r}");
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["subject"], "over starttls");
    assert_eq!(received[0]["text"], "plain body");
    assert_eq!(received[0]["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_failing_beside_smtp_every_email_is_delivered_by_failover() {
    let Some(smtp) = SmtpFixture::start(None) else {
        return;
    };
    let ca = TestCa::new();
    let sendgrid = HttpsFixture::start(&ca, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let email = format!(
        "[[providers.email]]\nname = \"sendgrid\"\nkind = \"sendgrid\"\nurl = \"{}\"\napi_key = \"SG.test\"\nfrom = \"noreply@example.test\"\nweight = 50\nca_file = \"{}\"\n{}",
        sendgrid.url(""),
        ca.ca_file.display(),
        smtp_provider(&format!("smtp://127.0.0.1:{}", smtp.port), None, 1)
    );
    let herald = Herald::start(dir.path(), &config(dir.path(), &email));
    let client = herald.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(send(&client, &format!("mixed-{i}"), "ok@example.test", json!({})).await);
    }
    assert!(client.wait_until_settled(Duration::from_secs(60)).await);
    for id in &ids {
        let r = record(&client, id).await;
        assert_eq!(r["status"], "sent", "{r}");
        assert_eq!(r["delivered_by"], "smtp", "{r}");
    }
    assert!(!sendgrid.bodies().is_empty(), "sendgrid was never tried");
    let mut subjects: Vec<String> = smtp
        .received()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (0..6).map(|i| format!("mixed-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_smtp_server_that_is_not_there_is_transient_and_unreachable() {
    use figment::providers::Format as _;
    use herald::config::ProviderConfig;
    use herald::domain::{AttemptOutcome, Channel, Email, Message, NotificationId};
    use herald::provider::Outgoing;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let toml = format!(
        "name = \"smtp\"\nkind = \"smtp\"\nurl = \"smtp://127.0.0.1:{port}\"\nfrom = \"noreply@example.test\"\ntimeout_ms = 2000\n"
    );
    let config: ProviderConfig = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .unwrap();
    let provider = herald::provider::build(&config, Channel::Email).unwrap();
    let message = Message::Email(Email {
        subject: "s".into(),
        body: "b".into(),
        recipients: vec!["ok@example.test".into()],
        html: None,
        reply_to: None,
    });
    let verdict = provider
        .send(&Outgoing {
            id: NotificationId::new(),
            payload: message.to_provider_json().into(),
            message,
        })
        .await;
    assert_eq!(verdict.outcome, AttemptOutcome::Transient, "{verdict:?}");
    assert!(verdict.unreachable, "{verdict:?}");
}
