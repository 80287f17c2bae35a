//! HTTPS on Herald's own listener: `herald serve` as a real process with a
//! certificate of a throwaway CA made at run time, clients that trust that
//! CA or not, clients that never finish a handshake, and a renewal by SIGHUP.

#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::ProtocolVersion;
use serde_json::json;
use support::tls::{HttpsConnection, TestCa, client_config};
use support::{Backend, Herald, Sim, TestStore, assert_all_closed, read_until_closed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `[http]` lines that turn TLS on with the CA's certificate.
fn tls_settings(ca: &TestCa, more: &str) -> String {
    format!(
        "[http]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{more}\n",
        ca.cert_file.display(),
        ca.key_file.display()
    )
}

/// Herald over TLS with `more` `[http]` settings, on a SQLite store.
async fn herald_with(
    ca: &TestCa,
    more: &str,
    env: &[(&str, &str)],
) -> (Herald, Sim, TestStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n{}",
        sim.herald_config(&store.url, ""),
        tls_settings(ca, more)
    );
    let herald = Herald::start_with_env(dir.path(), &config, "all", env);
    (herald, sim, store, dir)
}

/// Waits up to 10 s for `needle` in Herald's log.
async fn an_sms_goes_in_and_comes_back_over_https(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!(
        "{}\n{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
        sim.herald_config(&store.url, ""),
        tls_settings(&ca, "")
    );
    let herald = Herald::start(dir.path(), &config);

    let mut https = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .expect("a client that trusts the CA gets through");
    assert_eq!(https.peer, ca.leaf.cert);
    assert_eq!(https.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, accepted) = https
        .request(
            "POST",
            "/v1/sms",
            Some(&json!({"phone": "01712345678", "text": "over https"})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let path = format!("/v1/notifications/{}", accepted["id"].as_str().unwrap());
    // Read back on the same connection, until the simulator took it.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = https.request("GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] == "sent" {
            break;
        }
        assert!(Instant::now() < until, "not delivered: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.delivered_count(), 1);

    // Either version the server allows.
    for (version, wanted) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut c = HttpsConnection::open_with(herald.addr, client_config(&ca.ca_file, &[version]))
            .await
            .unwrap();
        assert_eq!(c.version, wanted);
        assert_eq!(c.request("GET", "/healthz", None).await.0, 200);
    }

    // metrics.listen serves HTTPS with the same certificate.
    let metrics = herald.metrics_addr().await;
    let mut scraper = HttpsConnection::open(metrics, &ca.ca_file).await.unwrap();
    assert_eq!(scraper.peer, ca.leaf.cert);
    assert_eq!(scraper.request("GET", "/metrics", None).await.0, 200);
}

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_sms_goes_in_and_comes_back_over_https
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_and_plain_http_do_not_reach_the_api() {
    let ca = TestCa::new();
    let (herald, sim, _store, _dir) =
        herald_with(&ca, "", &[("RUST_LOG", "info,herald::app=debug")]).await;

    // A client that trusts another CA refuses the certificate.
    let other = TestCa::new();
    let Err(refused) = HttpsConnection::open(herald.addr, &other.ca_file).await else {
        panic!("a client that does not trust the CA got through");
    };
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );
    herald.log_shows("TLS handshake failed").await;

    // Plain HTTP to the TLS port: a readable 400 sent in clear, before any
    // routing.
    let mut plain = TcpStream::connect(herald.addr).await.unwrap();
    plain
        .write_all(
            b"POST /v1/sms HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
              content-length: 44\r\n\r\n{\"phone\": \"01712345678\", \"text\": \"plain\"}",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut plain, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.contains("application/problem+json") && answer.contains("/problems/https-required"),
        "{answer:?}"
    );
    herald
        .log_shows("answered plain HTTP on the TLS listener")
        .await;

    // Neither stopped the listener nor counted as the server's error.
    let mut https = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .unwrap();
    let (status, stats) = https.request("GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    let stored: u64 = stats["by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(stored, 0, "nothing was stored: {stats}");
    assert_eq!(sim.delivered_count(), 0);
    let logs = herald.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_closed_in_the_header_read_timeout() {
    let ca = TestCa::new();
    let (herald, _sim, _store, _dir) = herald_with(&ca, "header_read_timeout_ms = 300", &[]).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        // Half a ClientHello: a record header announcing 512 bytes, and 5 of them.
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
            .await
            .unwrap();
        held.push(s);
    }
    // And some that never send a byte.
    for _ in 0..50 {
        held.push(TcpStream::connect(herald.addr).await.unwrap());
    }
    assert_all_closed(&mut held).await;
    let mut https = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .unwrap();
    assert_eq!(https.request("GET", "/healthz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_mid_handshake_count_against_the_cap() {
    let ca = TestCa::new();
    let (herald, _sim, _store, _dir) = herald_with(&ca, "max_connections = 4", &[]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(herald.addr).await.unwrap());
    }
    // The fifth is closed before a handshake.
    let over = HttpsConnection::open(herald.addr, &ca.ca_file).await;
    assert!(over.is_err(), "a fifth connection got through");
    // Room again once the held ones go.
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = HttpsConnection::open(herald.addr, &ca.ca_file).await {
            assert_eq!(c.request("GET", "/healthz", None).await.0, 200);
            break;
        }
        assert!(Instant::now() < until, "no room after the others closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_and_keeps_it_over_a_bad_one() {
    let ca = TestCa::new();
    let (herald, _sim, _store, _dir) = herald_with(&ca, "", &[]).await;
    let mut before = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .unwrap();
    assert_eq!(before.peer, ca.leaf.cert);

    let renewed = ca.issue();
    std::fs::write(&ca.cert_file, &renewed.cert_pem).unwrap();
    std::fs::write(&ca.key_file, &renewed.key_pem).unwrap();
    herald.sighup();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let c = HttpsConnection::open(herald.addr, &ca.ca_file)
            .await
            .unwrap();
        if c.peer == renewed.cert {
            break;
        }
        assert!(Instant::now() < until, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    herald.log_shows("TLS certificate reloaded").await;
    // A connection opened before keeps going on its own handshake.
    assert_eq!(before.request("GET", "/healthz", None).await.0, 200);

    // A renewal caught half-way: a new certificate beside the old key.
    let next = ca.issue();
    std::fs::write(&ca.cert_file, &next.cert_pem).unwrap();
    herald.sighup();
    herald
        .log_shows("the TLS certificate and key were refused")
        .await;
    let mut after = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .unwrap();
    assert_eq!(after.peer, renewed.cert, "the pair in use stays");
    assert_eq!(after.request("GET", "/healthz", None).await.0, 200);
    let logs = herald.logs();
    assert!(logs.contains(&ca.key_file.display().to_string()), "{logs}");
    for key in [&ca.leaf.key_pem, &renewed.key_pem, &next.key_pem] {
        assert!(!logs.contains(key.lines().nth(1).unwrap()), "{logs}");
    }
}

/// `herald serve` with `config` to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_or_past_its_end_is_warned_about_and_its_expiry_measured() {
    let ca = TestCa::new();
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let install = |leaf: &support::tls::Leaf| {
        std::fs::write(&ca.cert_file, &leaf.cert_pem).unwrap();
        std::fs::write(&ca.key_file, &leaf.key_pem).unwrap();
    };
    let expiry = |at: time::OffsetDateTime| {
        format!(
            "herald_tls_certificate_expiry_timestamp_seconds{{cert_file=\"{}\"}} {}",
            ca.cert_file.display(),
            at.unix_timestamp()
        )
    };
    let soon = now + time::Duration::days(3);
    install(&ca.issue_until(soon));
    let (herald, _sim, _store, _dir) = herald_with(&ca, "", &[]).await;
    herald
        .log_shows("the TLS certificate expires soon: renew it, then send SIGHUP")
        .await;
    assert!(herald.logs().contains("days_left=2"), "{}", herald.logs());
    let mut c = HttpsConnection::open(herald.addr, &ca.ca_file)
        .await
        .unwrap();
    let (status, metrics) = c.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains(&expiry(soon)), "{metrics}");

    // Served all the same once expired (clients decide), but said loudly.
    let past = now - time::Duration::days(1);
    install(&ca.issue_until(past));
    herald.sighup();
    herald.log_shows("the TLS certificate has expired").await;
    let (_, metrics) = c.get_text("/metrics").await;
    assert!(metrics.contains(&expiry(past)), "{metrics}");

    // A renewal far from its end: measured, not warned about.
    let later = now + time::Duration::days(90);
    install(&ca.issue_until(later));
    herald.sighup();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = c.get_text("/metrics").await;
        if metrics.contains(&expiry(later)) {
            break;
        }
        assert!(Instant::now() < until, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = herald.logs();
    assert_eq!(logs.matches("expires soon").count(), 1, "{logs}");
    assert_eq!(logs.matches("has expired").count(), 1, "{logs}");
}

fn serve_with(dir: &Path, config: &str) -> (std::process::ExitStatus, String, String) {
    let path = dir.join("herald.toml");
    std::fs::write(&path, config).unwrap();
    support::serve_to_its_end(&path)
}

#[tokio::test]
async fn a_pair_that_does_not_load_stops_serve_at_start_up() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "store = \"sqlite://{}\"\n",
        dir.path().join("h.db").display()
    );

    // Another certificate's key.
    let other = ca.issue();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let config = format!(
        "{store}[http]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        ca.cert_file.display(),
        other_key.display()
    );
    let (status, stdout, stderr) = serve_with(dir.path(), &config);
    assert!(!status.success());
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(
        stderr.contains(&other_key.display().to_string()),
        "{stderr}"
    );
    assert!(
        !stderr.contains(other.key_pem.lines().nth(1).unwrap()),
        "{stderr}"
    );

    // A certificate file that is not there.
    let missing = dir.path().join("missing.pem");
    let config = format!(
        "{store}[http]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        missing.display(),
        ca.key_file.display()
    );
    let (status, stdout, stderr) = serve_with(dir.path(), &config);
    assert!(!status.success());
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
