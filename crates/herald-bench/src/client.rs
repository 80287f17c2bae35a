//! One keep-alive HTTP/1.1 connection to Herald, on hyper directly: no pool,
//! no per-request allocation beyond the request itself, so the bench is not
//! what limits the throughput it measures.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::BenchError;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, BenchError> {
        debug_assert!(addr.ip().is_loopback(), "the bench only sends to loopback");
        let io_err = |source| BenchError::Connect { addr, source };
        let stream = TcpStream::connect(addr).await.map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| BenchError::Http { addr, source })?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes.
            let _ = conn.await;
        });
        let host = HeaderValue::try_from(addr.to_string()).expect("an address is a valid header");
        Ok(Conn { sender, host, addr })
    }

    /// POSTs a JSON body; answers the status once the whole response body
    /// has been read (so the connection can carry the next request).
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<StatusCode, BenchError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = path.parse().expect("bench paths are valid");
        req.headers_mut().insert(HOST, self.host.clone());
        req.headers_mut().insert(CONTENT_TYPE, JSON);
        self.send(req).await.map(|(status, _)| status)
    }

    /// GETs a path, answering the status and body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), BenchError> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = path.parse().expect("bench paths are valid");
        req.headers_mut().insert(HOST, self.host.clone());
        self.send(req).await
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BenchError> {
        let addr = self.addr;
        let http_err = |source| BenchError::Http { addr, source };
        self.sender.ready().await.map_err(http_err)?;
        let res = self.sender.send_request(req).await.map_err(http_err)?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(http_err)?;
        Ok((status, body.to_bytes()))
    }
}
