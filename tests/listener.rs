//! The HTTP listener under clients that hold connections without using
//! them, and readiness while the store cannot write. Herald runs as a real
//! child process.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use support::{Backend, Herald, Sim, TestStore, assert_all_closed, read_until_closed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Herald with `http` settings on a SQLite store.
async fn herald_with(http: &str) -> (Herald, Sim, TestStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let config = format!("{}\n[http]\n{http}\n", sim.herald_config(&store.url, ""));
    let herald = Herald::start(dir.path(), &config);
    (herald, sim, store, dir)
}

/// Reads one answer (head and a body of `content-length` bytes).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("reading an answer");
        assert!(n > 0, "closed before answering: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sending_half_a_header_are_closed() {
    let (herald, _sim, _store, _dir) = herald_with("header_read_timeout_ms = 300").await;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(b"POST /v1/sms HTTP/1.1\r\nhost: herald\r\ncontent-ty")
            .await
            .unwrap();
        held.push(s);
    }
    // And some that never send a byte.
    for _ in 0..100 {
        held.push(TcpStream::connect(herald.addr).await.unwrap());
    }
    assert_all_closed(&mut held).await;
    let a = herald.client().get("/healthz").await;
    assert_eq!(a.status, 200, "still serving");
}

/// One address holding its share of connections with half-sent heads: a
/// health check from that address is still answered (a load balancer often
/// shares it), an ordinary request from it is refused, and another address
/// is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_connection_cap_gets_health_checks_only() {
    let (herald, _sim, _store, _dir) =
        herald_with("max_connections_per_client = 20\nheader_read_timeout_ms = 30000").await;
    let mut held = Vec::new();
    // Past the client's cap, and past the room kept for connections over it.
    for _ in 0..80 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(b"GET /v1/stats HTTP/1.1\r\nhost: 127.0.0.1\r\nx-wai")
            .await
            .unwrap();
        held.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        let answer = read_answer(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let mut s = TcpStream::connect(herald.addr).await.unwrap();
    s.write_all(b"GET /v1/stats HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("/problems/too-many-client-connections"),
        "{answer}"
    );
    // Another client is not held up by this one.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(herald.addr).await.unwrap();
    s.write_all(b"GET /v1/stats HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Room again for the first address once its connections close.
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let a = herald.client().get("/v1/stats").await;
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < until, "still refused: {}", a.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The review's attack with the default settings: 1,030 half-sent
/// requests from one address. `/healthz` still answers 200, from that
/// address and from another, and another address is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_sent_requests_from_one_address_leave_health_checks_answered() {
    let (herald, _sim, _store, _dir) = herald_with("").await;
    let mut held = Vec::new();
    for _ in 0..1030 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(b"POST /v1/sms HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty")
            .await
            .unwrap();
        held.push(s);
    }
    let mut s = TcpStream::connect(herald.addr).await.unwrap();
    s.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for path in ["/healthz", "/v1/stats"] {
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut s = other.connect(herald.addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    drop(held);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (herald, _sim, _store, _dir) =
        herald_with("idle_timeout_ms = 300\nheader_read_timeout_ms = 60000").await;
    let mut s = TcpStream::connect(herald.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(HEALTHZ).await.unwrap();
        assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    }
    let rest = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert_eq!(rest.as_deref(), Some(""), "closed without another answer");
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once() {
    let (herald, _sim, _store, _dir) = herald_with("max_connections = 8").await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(herald.addr).await.unwrap();
        let _ = s.write_all(HEALTHZ).await;
        let answer = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .expect("refused, not queued");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
        assert!(!answer.contains("200 OK"));
    }
    // Room again once the held ones go.
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let a = herald.client().get("/healthz").await;
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < until, "no room after the others closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_request_that_takes_too_long_gets_503() {
    let (herald, _sim, _store, _dir) = herald_with("request_timeout_ms = 300").await;
    let mut s = TcpStream::connect(herald.addr).await.unwrap();
    // A body announced but never finished.
    s.write_all(
        b"POST /v1/sms HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"phone\":",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("/problems/request-timeout"), "{answer}");
}

/// Sets the file size limit of process `pid` (RLIMIT_FSIZE), soft only.
fn limit_file_size(pid: u32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a live child process of this test.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

async fn wait_for_readyz(client: &support::Client, status: u16) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if client.get("/readyz").await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A store that cannot grow its files (as with a full disk) refuses every
/// write; `/readyz` says so, and recovers once writes commit again.
#[tokio::test]
async fn readyz_is_503_while_the_store_cannot_write() {
    let (herald, _sim, _store, _dir) = herald_with("").await;
    let client = herald.client();
    assert_eq!(client.get("/readyz").await.status, 200);
    limit_file_size(herald.pid(), 1);
    assert_eq!(client.sms("no room").await.status, 503);
    assert!(wait_for_readyz(&client, 503).await, "{}", herald.logs());
    assert_eq!(client.get("/healthz").await.status, 200, "alive, not ready");

    limit_file_size(herald.pid(), libc::RLIM_INFINITY);
    assert!(wait_for_readyz(&client, 200).await, "{}", herald.logs());
    assert_eq!(client.sms("room again").await.status, 202);
}
