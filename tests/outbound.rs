//! What Herald's outbound connections withstand, end to end through
//! `herald serve` (issue 17): hostile providers and receivers on loopback
//! answering NUL bytes, bodies of hundreds of megabytes, refusals quoting
//! the recipient; an SMTP server that offers no STARTTLS; crafted
//! recipients that must not open a breaker; credentials for plain HTTP.

#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::fixture::{Fixture, reply};
use support::smtp::SmtpFixture;
use support::{Backend, Client, Herald, TestStore};

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_nul_byte_in_an_answer_is_stored_escaped_and_the_message_sent_once,
);

/// Short timings; `sms` and `email` hold the channels' provider tables,
/// `extra` any table after them.
fn config(store: &str, sms: &str, email: &str, extra: &str) -> String {
    format!(
        r#"store = "{store}"
[dispatch]
poll_interval_ms = 20
lease_ms = 4000
[retry]
base_ms = 50
cap_ms = 300
max_rounds = 3
[health]
consecutive_failures = 3
cooldown_min_ms = 100
cooldown_max_ms = 300
{sms}
{email}
{extra}"#
    )
}

fn contract(channel: &str, name: &str, url: &str) -> String {
    format!("[[providers.{channel}]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout_ms = 2000\n")
}

fn secret() -> String {
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn webhook(url: &str) -> String {
    format!(
        "[webhooks_settings]\nbase_ms = 50\ncap_ms = 200\npoll_interval_ms = 50\n\
         [[webhooks]]\nurl = \"{url}\"\nsecret = \"{}\"\ntimeout_ms = 2000\n",
        secret()
    )
}

async fn accept(client: &Client, path: &str, body: Value) -> String {
    let a = client.post(path, &body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

/// The notification once its status is `want`, waited for up to 30 s.
async fn reaches(client: &Client, id: &str, want: &str, herald: &Herald) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let n = client.get(&format!("/v1/notifications/{id}")).await.body;
        if n["status"] == want {
            return n;
        }
        assert!(
            Instant::now() < until,
            "{id} never became {want}: {n}\n{}",
            herald.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The webhook deliveries in `status`, once there are `count`, waited for
/// up to 30 s.
async fn deliveries(client: &Client, status: &str, count: usize, herald: &Herald) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let page = client
            .get(&format!("/v1/webhooks/deliveries?status={status}"))
            .await
            .body;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= count {
            return items;
        }
        assert!(
            Instant::now() < until,
            "no {count} {status} deliveries: {page}\n{}",
            herald.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 2: PostgreSQL refuses a NUL in a `text` column; kept as it came,
/// the round's result could never be written, the lease lapsed and the
/// SMS was sent again and again. Both the provider's answer and the
/// webhook receiver's carry one.
async fn a_nul_byte_in_an_answer_is_stored_escaped_and_the_message_sent_once(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let sms = Fixture::start(|_, _| reply(400, "{\"error\": \"bad\u{0}number\"}")).await;
    let email = Fixture::start(|_, _| reply(200, "{}")).await;
    // 410: the delivery fails for good at once, its result written once.
    let hooks = Fixture::start(|_, _| reply(410, "gone\u{0}away")).await;
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &config(
            &store.url,
            &contract("sms", "nul-sms", &format!("{}/sms", sms.url())),
            &contract("email", "mail", &format!("{}/email", email.url())),
            &webhook(&format!("{}/hooks", hooks.url())),
        ),
    );
    let client = herald.client();
    let id = accept(
        &client,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "hi"}),
    )
    .await;

    let n = reaches(&client, &id, "failed", &herald).await;
    let error = n["last_error"].as_str().unwrap();
    assert!(error.contains("bad\\u0000number"), "{n}");
    assert!(!error.contains('\0'), "{n}");
    let failed = deliveries(&client, "failed", 1, &herald).await;
    let error = failed[0]["last_error"].as_str().unwrap();
    assert!(error.contains("gone\\u0000away"), "{failed:?}");

    // Both results are written: nothing is sent again, even after a lease
    // would have lapsed.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(sms.requests().len(), 1, "the SMS was sent again");
    assert_eq!(hooks.requests().len(), 1, "the webhook was sent again");
}

/// A server on loopback answering every request with `status` and a body
/// of `len` bytes, streamed in chunks until the peer goes away, never held
/// in memory. Counts, per connection, what it managed to write.
struct Endless {
    url: String,
    written: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endless {
    async fn start(status: &'static str, len: usize) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small send buffer: what was written is close to what was read.
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let written = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::clone(&written);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 16 * 1024];
                    let mut sent = 0;
                    while sent < len {
                        match stream.write(&chunk[..chunk.len().min(len - sent)]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => sent += n,
                        }
                    }
                    counts.lock().unwrap().push(sent);
                });
            }
        });
        Self { url, written, task }
    }

    /// What each finished connection was written, waited for until `count`
    /// have finished (up to 60 s: a connection kept open never finishes).
    async fn finished(&self, count: usize) -> Vec<usize> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let written = self.written.lock().unwrap().clone();
            if written.len() >= count {
                return written;
            }
            assert!(
                Instant::now() < until,
                "the connection was kept open: Herald waited for the rest of the body"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Item 6: a provider and a webhook receiver answering 256 MiB each. Herald
/// reads 64 KiB of each and drops the connection: what the servers managed
/// to write is that plus the sockets' buffers, never the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_answers_are_read_up_to_a_bound_and_their_connections_dropped() {
    const HUGE: usize = 256 * 1024 * 1024;
    const BOUND: usize = 16 * 1024 * 1024;
    let Some(store) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    // 400: refused for good, one request; 410 likewise for the webhook.
    let provider = Endless::start("400 Bad Request", HUGE).await;
    let receiver = Endless::start("410 Gone", HUGE).await;
    let dir = tempfile::tempdir().unwrap();
    let email = Fixture::start(|_, _| reply(200, "{}")).await;
    let herald = Herald::start(
        dir.path(),
        &config(
            &store.url,
            &contract("sms", "huge-sms", &format!("{}/sms", provider.url)),
            &contract("email", "mail", &format!("{}/email", email.url())),
            &webhook(&format!("{}/hooks", receiver.url)),
        ),
    );
    let client = herald.client();
    let id = accept(
        &client,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "hi"}),
    )
    .await;
    let n = reaches(&client, &id, "failed", &herald).await;
    let error = n["last_error"].as_str().unwrap();
    assert!(error.starts_with("HTTP 400: xxx"), "{n}");
    assert!(error.len() < 1024, "{n}");
    let failed = deliveries(&client, "failed", 1, &herald).await;
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 410: xxx")
    );

    for server in [&provider, &receiver] {
        let written = server.finished(1).await;
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            written[0] < BOUND,
            "{} bytes were written to Herald",
            written[0]
        );
    }
}

/// Item 9: refusals quoting the recipient reach neither the stored error
/// nor the webhook payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_and_numbers_in_refusals_are_redacted_before_they_are_stored_or_sent() {
    let Some(store) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let sms = Fixture::start(|_, _| {
        reply(
            400,
            r#"{"error": "The 'To' number +8801712345678 is not a mobile number"}"#,
        )
    })
    .await;
    let email = Fixture::start(|r, _| {
        let to = r.json()["recipients"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        reply(
            422,
            format!(r#"{{"error": "550 5.1.1 <{to}>: Recipient address rejected"}}"#),
        )
    })
    .await;
    let hooks = Fixture::start(|_, _| reply(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let herald = Herald::start(
        dir.path(),
        &config(
            &store.url,
            &contract("sms", "sms", &format!("{}/sms", sms.url())),
            &contract("email", "mail", &format!("{}/email", email.url())),
            &webhook(&format!("{}/hooks", hooks.url())),
        ),
    );
    let client = herald.client();
    let texted = accept(
        &client,
        "/v1/sms",
        json!({"phone": "01712345678", "text": "hi"}),
    )
    .await;
    let mailed = accept(
        &client,
        "/v1/email",
        json!({"subject": "s", "body": "b", "recipients": ["jane.private@example.com"]}),
    )
    .await;

    for (id, secret, marker) in [
        (&texted, "1712345678", "[number]"),
        (&mailed, "jane.private", "[address]"),
    ] {
        let n = reaches(&client, id, "failed", &herald).await;
        let error = n["last_error"].as_str().unwrap();
        assert!(error.contains(marker), "{n}");
        assert!(!error.contains(secret), "{n}");
        let attempt = n["attempts"][0]["error"].as_str().unwrap();
        assert!(!attempt.contains(secret), "{n}");
    }
    deliveries(&client, "delivered", 2, &herald).await;
    let payloads = hooks.requests();
    assert_eq!(payloads.len(), 2);
    for p in &payloads {
        let text = p.text();
        assert!(!text.contains("1712345678"), "{text}");
        assert!(!text.contains("jane.private"), "{text}");
        let data = &p.json()["data"];
        let error = data["attempts"]["last_error"].as_str().unwrap();
        assert!(
            error.contains("[number]") || error.contains("[address]"),
            "{text}"
        );
    }
}

/// Lines an SMTP server received, in order.
type Heard = Arc<Mutex<Vec<String>>>;

/// An SMTP server on 127.0.0.1 that offers AUTH but no STARTTLS (as a
/// network that strips STARTTLS would make a real one look), accepts
/// everything and records every line it receives.
///
/// On 127.0.0.1, and on [::1] at the same port where it can be had: the
/// test names it `localhost`, which may resolve to either first.
async fn plaintext_smtp() -> (u16, Heard, Vec<tokio::task::JoinHandle<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard: Heard = Arc::default();
    let mut tasks = vec![serve_plaintext(listener, Arc::clone(&heard))];
    if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
        tasks.push(serve_plaintext(v6, Arc::clone(&heard)));
    }
    (port, heard, tasks)
}

fn serve_plaintext(listener: tokio::net::TcpListener, lines: Heard) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let lines = Arc::clone(&lines);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                if write.write_all(b"220 plain ESMTP\r\n").await.is_err() {
                    return;
                }
                let mut in_data = false;
                // Bounded: a connection gets at most this many lines.
                for _ in 0..1000 {
                    let mut line = String::new();
                    match read.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    lines.lock().unwrap().push(line.trim_end().to_owned());
                    let verb = line.to_ascii_uppercase();
                    let answer: &[u8] = if in_data {
                        if line.trim_end() != "." {
                            continue;
                        }
                        in_data = false;
                        b"250 2.0.0 queued\r\n"
                    } else if verb.starts_with("EHLO") {
                        b"250-plain\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
                    } else if verb.starts_with("AUTH") {
                        b"235 2.7.0 accepted\r\n"
                    } else if verb.starts_with("DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if verb.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// Item 1: a username and password with a plain `smtp://` URL mean
/// STARTTLS required; a server that does not offer it fails the
/// connection as the provider's fault and never hears AUTH.
///
/// The server is on 127.0.0.1, and a loopback address may go without TLS
/// (a relay on the same host). The URL names it `localhost`, which Herald
/// does not take as loopback (a name is resolved at connect time, and
/// Herald cannot vouch for where it leads): that is the rule any other
/// host name gets, exercised here against a server that is really there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_credentials_are_never_sent_to_a_server_without_starttls() {
    let Some(store) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let (port, heard, _server) = plaintext_smtp().await;
    let sms = Fixture::start(|_, _| reply(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let email = format!(
        "[[providers.email]]\nname = \"smtp\"\nkind = \"smtp\"\nurl = \"smtp://localhost:{port}\"\n\
         from = \"noreply@example.test\"\nusername = \"herald\"\npassword = \"pw-in-clear-4711\"\n\
         timeout_ms = 2000\n"
    );
    let herald = Herald::start(
        dir.path(),
        &config(
            &store.url,
            &contract("sms", "sms", &format!("{}/sms", sms.url())),
            &email,
            "",
        ),
    );
    let client = herald.client();
    let id = accept(
        &client,
        "/v1/email",
        json!({"subject": "s", "body": "b", "recipients": ["ok@example.test"]}),
    )
    .await;
    let n = reaches(&client, &id, "dead", &herald).await;
    let attempt = &n["attempts"][0];
    assert_eq!(attempt["outcome"], "provider_fault", "{n}");
    assert!(
        attempt["error"].as_str().unwrap().contains("STARTTLS"),
        "{n}"
    );
    // The provider's health shows it.
    let providers = client.get("/v1/providers").await.body;
    let smtp = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "smtp")
        .unwrap();
    assert!(smtp["failures"].as_u64().unwrap() >= 1, "{smtp}");

    let heard = heard.lock().unwrap().clone();
    assert!(
        heard
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("EHLO")),
        "{heard:?}"
    );
    for line in &heard {
        let verb = line.to_ascii_uppercase();
        assert!(
            !verb.starts_with("AUTH") && !verb.starts_with("MAIL"),
            "{heard:?}"
        );
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode("\0herald\0pw-in-clear-4711");
    assert!(
        !heard
            .iter()
            .any(|l| l.contains(&encoded) || l.contains("pw-in-clear")),
        "{heard:?}"
    );
}

/// Item 1, at start-up: `?tls=none` with credentials off loopback is
/// refused with an error saying why, the password nowhere in it.
#[test]
fn smtp_credentials_over_tls_none_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let email = "[[providers.email]]\nname = \"smtp\"\nkind = \"smtp\"\n\
                 url = \"smtp://mail.example.com:587?tls=none\"\nfrom = \"noreply@example.test\"\n\
                 username = \"herald\"\npassword = \"pw-in-clear-4711\"\ntimeout_ms = 2000\n";
    let path = dir.path().join("herald.toml");
    let store = format!("sqlite://{}", dir.path().join("herald.db").display());
    std::fs::write(
        &path,
        config(
            &store,
            &contract("sms", "sms", "http://127.0.0.1:9/sms"),
            email,
            "",
        ),
    )
    .unwrap();
    let (status, stdout, stderr) = support::serve_to_its_end(&path);
    assert!(!status.success());
    assert!(stderr.contains("provider smtp"), "{stderr}");
    assert!(stderr.contains("in clear"), "{stderr}");
    assert!(stderr.contains("?tls=required"), "{stderr}");
    assert!(!stderr.contains("pw-in-clear") && !stdout.contains("pw-in-clear"));
}

/// Item 4: a recipient the SMTP server cannot take (a non-ASCII address,
/// no SMTPUTF8) is the message's failure: rejected, and never counted
/// against the provider. Three of them left its breaker open (three
/// provider faults in a row here), and legitimate mail behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_recipients_do_not_open_the_smtp_breaker() {
    // aiosmtpd, as the fixture runs it, offers no SMTPUTF8.
    let Some(smtp) = SmtpFixture::start(None) else {
        return;
    };
    let Some(store) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let sms = Fixture::start(|_, _| reply(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let email = format!(
        "[[providers.email]]\nname = \"smtp\"\nkind = \"smtp\"\nurl = \"smtp://127.0.0.1:{}\"\n\
         from = \"noreply@example.test\"\ntimeout_ms = 2000\n",
        smtp.port
    );
    let herald = Herald::start(
        dir.path(),
        &config(
            &store.url,
            &contract("sms", "sms", &format!("{}/sms", sms.url())),
            &email,
            "",
        ),
    );
    let client = herald.client();
    let mut crafted = Vec::new();
    for i in 0..3 {
        crafted.push(
            accept(
                &client,
                "/v1/email",
                json!({"subject": format!("crafted {i}"), "body": "b",
                       "recipients": [format!("x{i}@exämple.com")]}),
            )
            .await,
        );
    }
    for id in &crafted {
        let n = reaches(&client, id, "failed", &herald).await;
        assert_eq!(n["attempts"].as_array().unwrap().len(), 1, "{n}");
        assert_eq!(n["attempts"][0]["outcome"], "rejected", "{n}");
        assert!(
            n["last_error"].as_str().unwrap().contains("SMTPUTF8"),
            "{n}"
        );
    }
    let providers = client.get("/v1/providers").await.body;
    let health = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "smtp")
        .unwrap()
        .clone();
    assert_eq!(health["breaker"], "closed", "{health}");
    assert_eq!(health["failures"], 0, "{health}");

    let legit = accept(
        &client,
        "/v1/email",
        json!({"subject": "legit", "body": "b", "recipients": ["ok@example.test"]}),
    )
    .await;
    let n = reaches(&client, &legit, "sent", &herald).await;
    assert_eq!(n["attempts"].as_array().unwrap().len(), 1, "{n}");
    let received = smtp.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["subject"], "legit");
}

/// Item 11: a kind that sends credentials, at a plain `http://` URL off
/// loopback, stops the start unless the provider says `allow_insecure`,
/// which then starts with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_over_plain_http_need_allow_insecure_and_get_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("herald.db").display());
    // TEST-NET-1: never contacted, no SMS is sent.
    let twilio = |allow: &str| {
        format!(
            "[[providers.sms]]\nname = \"tw\"\nkind = \"twilio\"\nurl = \"http://192.0.2.10:8080\"\n\
             account_sid = \"AC123\"\nauth_token = \"tw-token-4711\"\nfrom = \"+15005550006\"\ntimeout_ms = 2000\n{allow}"
        )
    };
    let email = contract("email", "mail", "http://127.0.0.1:9/email");
    let path = dir.path().join("refused.toml");
    std::fs::write(&path, config(&store, &twilio(""), &email, "")).unwrap();
    let (status, _, stderr) = support::serve_to_its_end(&path);
    assert!(!status.success());
    assert!(stderr.contains("provider tw"), "{stderr}");
    assert!(stderr.contains("http://192.0.2.10:8080"), "{stderr}");
    assert!(stderr.contains("allow_insecure = true"), "{stderr}");
    assert!(!stderr.contains("tw-token-4711"), "{stderr}");

    let herald = Herald::start(
        dir.path(),
        &config(&store, &twilio("allow_insecure = true\n"), &email, ""),
    );
    herald
        .log_shows("credentials are sent over plain HTTP, in clear")
        .await;
    assert!(!herald.logs().contains("tw-token-4711"));
}
