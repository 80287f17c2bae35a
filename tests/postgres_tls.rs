//! The PostgreSQL store over TLS, against a real server with TLS on (the
//! cluster `scripts/test.sh` starts; `HERALD_TEST_PG_CA` names the CA that
//! signed its certificate).

#![allow(clippy::disallowed_methods)]

mod support;

use herald::domain::{Channel, NotificationId, UnixMillis};
use herald::store::{NewNotification, StoreOptions};
use support::tls::TestCa;

/// The CA of the test server, or `None` (with a notice) where the
/// PostgreSQL tests are skipped; under `CI=true` a missing CA fails.
fn pg_ca() -> Option<String> {
    support::pg_server_url()?;
    match std::env::var("HERALD_TEST_PG_CA") {
        Ok(ca) if !ca.is_empty() => Some(ca),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "HERALD_TEST_PG_CA is not set; ./scripts/test.sh starts a TLS server and sets it"
            )
        }
        _ => {
            eprintln!(
                "NOTICE: skipping a PostgreSQL TLS test: HERALD_TEST_PG_CA is not set \
                 (./scripts/test.sh starts a server with TLS and sets it)"
            );
            None
        }
    }
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_and_works() {
    let Some(ca) = pg_ca() else { return };
    let db = support::fresh_database(&support::pg_server_url().unwrap()).await;
    let url = with_params(&db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let store = herald::store::open(&url, &StoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}", herald::error::chain(&e)));
    let now = UnixMillis::now();
    let id = NotificationId::new_at(now);
    store
        .insert(NewNotification {
            id,
            channel: Channel::Sms,
            payload: r#"{"phone":"01712345678","text":"tls"}"#.to_owned(),
            created_at: now,
            expires_at: now.plus(std::time::Duration::from_secs(60)),
            deliver_by: None,
            send_at: None,
            priority: herald::domain::Priority::Normal,
            metadata: Default::default(),
            hedge: false,
            callback_url: None,
            created_by: None,
            lease: None,
        })
        .await
        .unwrap();
    assert!(store.get(id).await.unwrap().is_some());
    store.close().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let Some(_) = pg_ca() else { return };
    let db = support::fresh_database(&support::pg_server_url().unwrap()).await;
    let other = TestCa::new();
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = with_params(
            &db,
            &format!("sslmode={mode}&sslrootcert={}", other.ca_file.display()),
        );
        let mut options = StoreOptions::default();
        options.postgres.connect_timeout_ms = 2_000;
        let err = herald::store::open(&url, &options)
            .await
            .err()
            .unwrap_or_else(|| panic!("sslmode={mode} connected with the wrong CA"));
        let text = herald::error::chain(&err);
        assert!(
            text.contains("certificate") || text.contains("UnknownIssuer"),
            "sslmode={mode}: {text}"
        );
    }
}
