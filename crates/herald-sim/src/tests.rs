use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;

const LIMIT: Duration = Duration::from_secs(5);

fn config(failure_rate: f64) -> SimulatorConfig {
    SimulatorConfig {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        failure_rate,
        latency: Duration::ZERO,
        slow: Vec::new(),
        sms_ports: vec![0; 3],
        email_ports: vec![0; 3],
        seed: Some(7),
    }
}

async fn start(cfg: SimulatorConfig) -> (Simulator, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sim = Simulator::start(cfg, tx).await.expect("simulator starts");
    (sim, rx)
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json; charset=utf-8");
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    content_type: &str,
    body: &str,
) -> Answer {
    let resp = timeout(
        LIMIT,
        client
            .request(method, url)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send(),
    )
    .await
    .expect("answer in time")
    .expect("request succeeds");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.text().await.expect("body");
    Answer {
        status,
        content_type,
        body,
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Answer {
    send(
        client,
        reqwest::Method::POST,
        url,
        "application/json",
        &body.to_string(),
    )
    .await
}

fn express_html(text: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>{text}</pre>\n</body>\n</html>\n"
    )
}

fn sms_ok() -> Value {
    json!({"phone": "+8801712345678", "text": "hello"})
}

fn email_ok() -> Value {
    json!({"subject": "s", "body": "b", "recipients": ["a@b.co", "c@d.io"]})
}

#[tokio::test]
async fn sms_validation_messages() {
    let (sim, mut rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Sms, 1);
    let cases = [
        (json!({}), "Invalid or missing phone number"),
        (json!([]), "Invalid or missing phone number"),
        (json!({"text": "hi"}), "Invalid or missing phone number"),
        (
            json!({"phone": "123", "text": "hi"}),
            "Invalid or missing phone number",
        ),
        (
            json!({"phone": 8801712345678u64, "text": "hi"}),
            "Invalid or missing phone number",
        ),
        (
            json!({"phone": "01712345678", "text": " \n "}),
            "Invalid or missing text",
        ),
        (
            json!({"phone": "01712345678", "text": 5}),
            "Invalid or missing text",
        ),
        (json!({"phone": "01712345678"}), "Invalid or missing text"),
        // Phone is checked before text.
        (
            json!({"phone": "x", "text": ""}),
            "Invalid or missing phone number",
        ),
    ];
    for (body, message) in cases {
        let a = post(&client, &url, &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.json(), json!({"error": message}), "{body}");
        assert_eq!(a.body, format!(r#"{{"error":"{message}"}}"#));
    }
    assert!(rx.try_recv().is_err(), "no delivery for a refused request");
    sim.shutdown().await;
}

#[tokio::test]
async fn email_validation_messages() {
    let (sim, mut rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Email, 3);
    let r = |recipients: Value| json!({"subject": "s", "body": "b", "recipients": recipients});
    let cases = [
        (json!({}), "Invalid or missing subject".to_owned()),
        (
            json!({"subject": "  ", "body": "b", "recipients": ["a@b.c"]}),
            "Invalid or missing subject".into(),
        ),
        (
            json!({"subject": "s", "recipients": ["a@b.c"]}),
            "Invalid or missing body".into(),
        ),
        (
            json!({"subject": "s", "body": ["b"], "recipients": ["a@b.c"]}),
            "Invalid or missing body".into(),
        ),
        (
            json!({"subject": "s", "body": "b"}),
            "Invalid or missing recipients list".into(),
        ),
        (r(json!([])), "Invalid or missing recipients list".into()),
        (
            r(json!("a@b.c")),
            "Invalid or missing recipients list".into(),
        ),
        (
            r(json!(["a@b.c", "nope"])),
            "Invalid email in recipients: nope".into(),
        ),
        (
            r(json!(["a@b.c", 42, "nope"])),
            "Invalid email in recipients: 42".into(),
        ),
        (r(json!([1.0])), "Invalid email in recipients: 1".into()),
        (r(json!([null])), "Invalid email in recipients: null".into()),
        (
            r(json!([["x", null, 2]])),
            "Invalid email in recipients: x,,2".into(),
        ),
        (
            r(json!([{"a": 1}])),
            "Invalid email in recipients: [object Object]".into(),
        ),
    ];
    for (body, message) in cases {
        let a = post(&client, &url, &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.json(), json!({"error": message}), "{body}");
    }
    assert!(rx.try_recv().is_err(), "no delivery for a refused request");
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_get_express_404_pages() {
    let (sim, _rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    // The port of SMS provider 2 answers only its own path.
    let base = format!("http://{}", sim.addr(Channel::Sms, 2));
    let cases = [
        (
            reqwest::Method::POST,
            "/api/sms/provider1",
            "Cannot POST /api/sms/provider1",
        ),
        (
            reqwest::Method::POST,
            "/api/email/provider2",
            "Cannot POST /api/email/provider2",
        ),
        (reqwest::Method::POST, "/", "Cannot POST /"),
        (
            reqwest::Method::GET,
            "/api/sms/provider2",
            "Cannot GET /api/sms/provider2",
        ),
        (
            reqwest::Method::PUT,
            "/api/sms/provider2?x=1",
            "Cannot PUT /api/sms/provider2",
        ),
    ];
    for (method, path, text) in cases {
        let a = send(
            &client,
            method,
            &format!("{base}{path}"),
            "application/json",
            "{}",
        )
        .await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.content_type, "text/html; charset=utf-8");
        assert_eq!(a.body, express_html(text));
    }
    // The path is shown URL-encoded, then HTML-escaped, like finalhandler.
    let mut stream = TcpStream::connect(sim.addr(Channel::Sms, 2)).await.unwrap();
    let answer = raw_post(&mut stream, "/a{b}&'%zz%41", "{}").await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(
        answer.ends_with(&express_html("Cannot POST /a%7Bb%7D&amp;&#39;%25zz%41")),
        "{answer}"
    );
    // Express routes case-insensitively and ignores a trailing slash.
    for path in ["/api/sms/provider2/", "/API/SMS/Provider2"] {
        let a = post(&client, &format!("{base}{path}"), &sms_ok()).await;
        assert_eq!(a.status, 200, "{path}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_json_gets_an_html_400() {
    let (sim, mut rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Sms, 1);
    let cases = [
        ("{\"phone\": ", "SyntaxError: Unexpected end of JSON input"),
        (
            "{bad}",
            "SyntaxError: Unexpected token b in JSON at position 1",
        ),
        (
            "\"01712345678\"",
            "SyntaxError: Unexpected token &quot; in JSON at position 0",
        ),
        (
            "  42",
            "SyntaxError: Unexpected token 4 in JSON at position 2",
        ),
        (
            "null",
            "SyntaxError: Unexpected token n in JSON at position 0",
        ),
        ("   ", "SyntaxError: Unexpected end of JSON input"),
        (
            "{} x",
            "SyntaxError: Unexpected token x in JSON at position 3",
        ),
    ];
    for (body, text) in cases {
        let a = send(
            &client,
            reqwest::Method::POST,
            &url,
            "application/json",
            body,
        )
        .await;
        assert_eq!(a.status, 400, "{body:?}");
        assert_eq!(a.content_type, "text/html; charset=utf-8");
        assert_eq!(a.body, express_html(text), "{body:?}");
    }
    // The parser runs before routing: a bad body on an unknown path is a 400 too.
    let bad_path = format!("http://{}/nowhere", sim.addr(Channel::Sms, 1));
    let a = send(
        &client,
        reqwest::Method::POST,
        &bad_path,
        "application/json",
        "{",
    )
    .await;
    assert_eq!(a.status, 400);
    // An empty JSON body is `{}`.
    let a = send(&client, reqwest::Method::POST, &url, "application/json", "").await;
    assert_eq!(
        a.json(),
        json!({"error": "Invalid or missing phone number"})
    );
    // Over body-parser's 100 kB limit.
    let big = json!({"phone": "01712345678", "text": "x".repeat(110_000)}).to_string();
    let a = send(
        &client,
        reqwest::Method::POST,
        &url,
        "application/json",
        &big,
    )
    .await;
    assert_eq!(a.status, 413);
    assert_eq!(
        a.body,
        express_html("PayloadTooLargeError: request entity too large")
    );
    assert!(rx.try_recv().is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn non_json_content_type_reads_as_an_empty_body() {
    let (sim, mut rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    let sms = sms_ok().to_string();
    let email = email_ok().to_string();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let a = send(
            &client,
            reqwest::Method::POST,
            &sim.url(Channel::Sms, 1),
            content_type,
            &sms,
        )
        .await;
        assert_eq!(a.status, 400);
        assert_eq!(
            a.json(),
            json!({"error": "Invalid or missing phone number"})
        );
        let a = send(
            &client,
            reqwest::Method::POST,
            &sim.url(Channel::Email, 1),
            content_type,
            &email,
        )
        .await;
        assert_eq!(a.status, 400);
        assert_eq!(a.json(), json!({"error": "Invalid or missing subject"}));
    }
    // Parameters and case do not matter.
    let a = send(
        &client,
        reqwest::Method::POST,
        &sim.url(Channel::Sms, 1),
        "Application/JSON; charset=UTF-8",
        &sms,
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(rx.try_recv().is_ok());
    sim.shutdown().await;
}

#[tokio::test]
async fn failure_rate_zero_always_delivers() {
    let (sim, mut rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    for channel in Channel::ALL {
        assert_eq!(sim.providers(channel), 3);
        for n in 1..=3u8 {
            let body = match channel {
                Channel::Sms => sms_ok(),
                Channel::Email => email_ok(),
            };
            for _ in 0..5 {
                let a = post(&client, &sim.url(channel, n), &body).await;
                assert_eq!(a.status, 200);
                let word = channel.as_str().to_ascii_uppercase();
                assert_eq!(
                    a.json(),
                    json!({"message": format!("{word} sent via Provider {n}")})
                );
                let d = rx.try_recv().expect("a delivery per success");
                assert_eq!(d.channel, channel);
                assert_eq!(d.provider, n);
                assert_eq!(d.port, sim.addr(channel, n).port());
                assert_eq!(d.body, body);
            }
        }
    }
    assert!(rx.try_recv().is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn failure_rate_one_never_delivers() {
    let (sim, mut rx) = start(config(1.0)).await;
    let client = reqwest::Client::new();
    for n in 1..=3u8 {
        for _ in 0..5 {
            let a = post(&client, &sim.url(Channel::Sms, n), &sms_ok()).await;
            assert_eq!(a.status, 500);
            assert_eq!(
                a.json(),
                json!({"error": format!("Failed to send sms via Provider {n}")})
            );
            let a = post(&client, &sim.url(Channel::Email, n), &email_ok()).await;
            assert_eq!(a.status, 500);
            assert_eq!(
                a.json(),
                json!({"error": format!("Failed to send email via Provider {n}")})
            );
        }
    }
    assert!(rx.try_recv().is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn half_fail_at_one_half() {
    let (sim, mut rx) = start(config(0.5)).await;
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Sms, 2);
    let total = 400;
    let mut failed = 0;
    for _ in 0..total {
        match post(&client, &url, &sms_ok()).await.status {
            500 => failed += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((140..=260).contains(&failed), "{failed} of {total} failed");
    let mut delivered = 0;
    while rx.try_recv().is_ok() {
        delivered += 1;
    }
    assert_eq!(delivered, total - failed);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_seed_makes_runs_reproducible() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (sim, _rx) = start(config(0.5)).await;
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(
                post(&client, &sim.url(Channel::Email, 1), &email_ok())
                    .await
                    .status,
            );
        }
        runs.push(statuses);
        sim.shutdown().await;
    }
    assert_eq!(runs[0], runs[1]);
}

/// Writes one keep-alive request on `stream` and reads its answer.
async fn raw_post(stream: &mut TcpStream, path: &str, body: &str) -> String {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    timeout(LIMIT, async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the answer");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if rest.len() >= len {
                    return text.into_owned();
                }
            }
        }
    })
    .await
    .expect("answer in time")
}

#[tokio::test]
async fn stop_drops_open_connections_and_start_restores_the_port() {
    let (mut sim, mut rx) = start(config(0.0)).await;
    let addr = sim.addr(Channel::Sms, 3);
    let path = "/api/sms/provider3";
    let body = sms_ok().to_string();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = raw_post(&mut stream, path, &body).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let mut other = TcpStream::connect(sim.addr(Channel::Sms, 1)).await.unwrap();

    // A pooled reqwest connection too.
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Sms, 3);
    assert_eq!(post(&client, &url, &sms_ok()).await.status, 200);

    sim.stop_provider(Channel::Sms, 3).await;
    assert!(!sim.is_running(Channel::Sms, 3));
    // The idle keep-alive connection is already closed: EOF or reset at once.
    let mut buf = [0u8; 64];
    let read = timeout(Duration::from_millis(500), stream.read(&mut buf))
        .await
        .expect("the connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // New connections are refused.
    let err = TcpStream::connect(addr).await.expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let started = Instant::now();
    let result = timeout(
        LIMIT,
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send(),
    )
    .await
    .expect("the client fails fast");
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The other providers are untouched.
    let answer = raw_post(&mut other, "/api/sms/provider1", &body).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // Stopping twice is harmless; so is starting a running provider.
    sim.stop_provider(Channel::Sms, 3).await;
    sim.start_provider(Channel::Sms, 3).await.expect("restart");
    sim.start_provider(Channel::Sms, 3).await.expect("no-op");
    assert_eq!(sim.addr(Channel::Sms, 3), addr);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = raw_post(&mut stream, path, &body).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(post(&client, &url, &sms_ok()).await.status, 200);

    let mut delivered = 0;
    while let Ok(d) = rx.try_recv() {
        delivered += 1;
        assert_eq!(d.channel, Channel::Sms);
    }
    assert_eq!(delivered, 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn stop_cuts_requests_in_flight() {
    let mut cfg = config(0.0);
    cfg.latency = Duration::from_secs(30);
    let (mut sim, mut rx) = start(cfg).await;
    let url = sim.url(Channel::Email, 2);
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(email_ok().to_string())
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sim.stop_provider(Channel::Email, 2).await;
    let result = timeout(LIMIT, pending).await.expect("cut at once").unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(rx.try_recv().is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_valid_requests_only() {
    let mut cfg = config(0.0);
    cfg.latency = Duration::from_millis(300);
    let (sim, _rx) = start(cfg).await;
    let client = reqwest::Client::new();
    let url = sim.url(Channel::Sms, 1);
    let t = Instant::now();
    assert_eq!(post(&client, &url, &json!({})).await.status, 400);
    assert!(t.elapsed() < Duration::from_millis(250));
    let t = Instant::now();
    assert_eq!(post(&client, &url, &sms_ok()).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_provider_delays_only_its_own_answers() {
    let mut cfg = config(0.0);
    cfg.slow = vec![parse_slow("sms:2=300").unwrap()];
    let (sim, _rx) = start(cfg).await;
    let client = reqwest::Client::new();
    let t = Instant::now();
    assert_eq!(
        post(&client, &sim.url(Channel::Sms, 2), &sms_ok())
            .await
            .status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(
        post(&client, &sim.url(Channel::Sms, 1), &sms_ok())
            .await
            .status,
        200
    );
    assert!(t.elapsed() < Duration::from_millis(300));
    sim.shutdown().await;

    // Only providers that exist can be slow.
    let mut cfg = config(0.0);
    cfg.slow = vec![parse_slow("email:4=10").unwrap()];
    let (tx, _rx) = mpsc::unbounded_channel();
    assert!(Simulator::start(cfg, tx).await.is_err());
}

#[tokio::test]
async fn options_lists_post() {
    let (sim, _rx) = start(config(0.0)).await;
    let client = reqwest::Client::new();
    let resp = client
        .request(reqwest::Method::OPTIONS, sim.url(Channel::Sms, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(resp.text().await.unwrap(), "POST");
    sim.shutdown().await;
}

#[tokio::test]
async fn urls_and_bad_configs() {
    let (sim, _rx) = start(config(0.5)).await;
    let addr = sim.addr(Channel::Email, 1);
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(addr.port(), 0);
    assert_eq!(
        sim.url(Channel::Email, 1),
        format!("http://127.0.0.1:{}/api/email/provider1", addr.port())
    );
    sim.shutdown().await;

    let defaults = SimulatorConfig::default();
    assert_eq!(defaults.sms_ports, [8071, 8072, 8073]);
    assert_eq!(defaults.email_ports, [8091, 8092, 8093]);
    assert_eq!(defaults.failure_rate, 0.5);

    let (tx, _rx) = mpsc::unbounded_channel();
    let err = Simulator::start(config(1.5), tx)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    // A port in use is an error, and the providers already bound close again.
    let (sim, _rx) = start(config(0.0)).await;
    let taken = sim.addr(Channel::Sms, 1).port();
    let mut cfg = config(0.0);
    cfg.sms_ports = vec![0];
    cfg.email_ports = vec![taken];
    let (tx, _rx2) = mpsc::unbounded_channel();
    assert!(Simulator::start(cfg, tx).await.is_err());
    sim.shutdown().await;
}

#[test]
fn delivery_lines() {
    let d = Delivery {
        ts: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        channel: Channel::Email,
        provider: 2,
        port: 8092,
        body: json!({"subject": "s"}),
    };
    let mut out = Vec::new();
    write_line(&mut out, &d).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"ts\":\"2023-11-14T22:13:20.123Z\",\"channel\":\"email\",\"provider\":2,\"port\":8092,\"body\":{\"subject\":\"s\"}}\n"
    );
}

#[tokio::test]
async fn run_stops_when_told() {
    let mut cfg = config(0.5);
    cfg.sms_ports = vec![0];
    cfg.email_ports = vec![0];
    timeout(LIMIT, run(cfg, std::future::ready(())))
        .await
        .expect("stops in time")
        .expect("runs");
}
