//! Providers over https://: a throwaway CA made at run time, an HTTPS
//! server on loopback with a certificate it signed, and Herald trusting that
//! CA through a provider's `ca_file`, or not.

#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::config::ProviderConfig;
use herald::domain::{AttemptOutcome, Channel, Email, Message, NotificationId};
use herald::provider::{Outgoing, Provider};
use support::Herald;
use support::tls::{HttpsFixture, TestCa};

fn email(subject: &str) -> Outgoing {
    let message = Message::Email(Email {
        subject: subject.to_owned(),
        body: "body".to_owned(),
        recipients: vec!["a@example.com".to_owned()],
        html: None,
        reply_to: None,
    });
    Outgoing {
        id: NotificationId::new(),
        payload: Bytes::from(message.to_provider_json()),
        message,
    }
}

fn provider(url: &str, ca_file: Option<&std::path::Path>) -> Arc<dyn Provider> {
    let mut config = ProviderConfig::contract("tls".into(), url.into());
    config.common.max_in_flight = 4;
    config.common.ca_file = ca_file.map(Into::into);
    herald::provider::build(&config, Channel::Email).unwrap()
}

#[tokio::test]
async fn an_https_provider_is_trusted_through_its_ca_file_only() {
    let ca = TestCa::new();
    let fixture = HttpsFixture::start(&ca, 200).await;
    let url = fixture.url("/api/email/provider1");

    let sent = email("over-tls");
    let verdict = provider(&url, Some(&ca.ca_file)).send(&sent).await;
    assert_eq!(verdict.outcome, AttemptOutcome::Delivered, "{verdict:?}");
    assert_eq!(verdict.http_status, Some(200));
    assert_eq!(fixture.bodies(), vec![sent.payload.clone()]);

    // The public roots do not know the throwaway CA, and another CA is not
    // this one: the handshake fails, nothing is sent, and it reads as a
    // provider that cannot be reached.
    let other = TestCa::new();
    for ca_file in [None, Some(other.ca_file.as_path())] {
        let verdict = provider(&url, ca_file).send(&email("untrusted")).await;
        assert_eq!(verdict.outcome, AttemptOutcome::Transient, "{verdict:?}");
        assert!(verdict.unreachable, "{verdict:?}");
        assert_eq!(verdict.http_status, None);
        let error = verdict.error.unwrap();
        assert!(error.contains("certificate"), "{error}");
    }
    assert_eq!(fixture.bodies().len(), 1, "nothing sent without trust");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_delivers_through_an_https_provider() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let fixture = HttpsFixture::start(&ca, 200).await;
    let mut config = format!(
        "store = \"sqlite://{}\"\n[dispatch]\npoll_interval_ms = 20\n",
        dir.path().join("herald.db").display()
    );
    for channel in Channel::ALL {
        config.push_str(&format!(
            "[[providers.{channel}]]\nname = \"{channel}-tls\"\nurl = \"{}\"\nca_file = \"{}\"\n",
            fixture.url(&format!("/api/{channel}/provider1")),
            ca.ca_file.display()
        ));
    }
    let herald = Herald::start(dir.path(), &config);
    let client = herald.client();
    let accepted = client.email("tls-end-to-end").await;
    assert_eq!(accepted.status, 202);
    assert!(client.wait_until_settled(Duration::from_secs(30)).await);
    let record = client
        .get(&format!(
            "/v1/notifications/{}",
            accepted.body["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(record.body["status"], "sent", "{}", record.body);
    assert_eq!(record.body["delivered_by"], "email-tls");
    let bodies = fixture.bodies();
    assert_eq!(bodies.len(), 1);
    let received: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(received["subject"], "tls-end-to-end");
}

#[test]
fn a_ca_file_that_cannot_be_read_stops_herald_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let config = dir.path().join("herald.toml");
    let mut toml = format!(
        "store = \"sqlite://{}\"\n",
        dir.path().join("herald.db").display()
    );
    for channel in Channel::ALL {
        toml.push_str(&format!(
            "[[providers.{channel}]]\nname = \"{channel}-tls\"\nurl = \"https://127.0.0.1:9/x\"\nca_file = \"{}\"\n",
            missing.display()
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let (status, stdout, stderr) = support::serve_to_its_end(&config);
    assert!(!status.success());
    // The providers are built before serve says it listens.
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("could not read the CA file") && stderr.contains("no-such-ca.pem"),
        "{stderr}"
    );
}
