//! One client connection: its TLS handshake when the listener has TLS,
//! then served by hyper, watched for clients that hold it without using it.
//!
//! hyper's own header timeout also runs while a keep-alive connection sits
//! idle, so the two limits could not differ; each connection instead tracks
//! what it is doing (waiting for a head, answering, sending an answer,
//! idle) and is closed once it has spent too long waiting.

use crate::resilience::clock;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// How long a connection may wait in each phase.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request's head.
    Head,
    /// A request is being answered; the request timeout covers it.
    Busy,
    /// The answer's body is being written (an event stream writes for as
    /// long as it is open): each write must follow the last within the
    /// idle timeout, so a client that stops reading is still let go.
    Sending,
    /// Between requests, no byte of the next one seen.
    Idle,
}

/// What a connection is doing, and since when.
struct Activity(Mutex<(Phase, Instant)>);

impl Activity {
    fn set(&self, phase: Phase) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (phase, clock::instant());
    }

    fn get(&self) -> (Phase, Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes went out: a body being sent made progress.
    fn wrote_bytes(&self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == Phase::Sending {
            state.1 = clock::instant();
        }
    }

    /// Bytes arrived: an idle connection now waits for the rest of a head.
    fn saw_bytes(&self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == Phase::Idle {
            *state = (Phase::Head, clock::instant());
        }
    }

    /// When the current phase runs out, if it does.
    fn deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        match self.get() {
            (Phase::Head, since) => Some(since + timeouts.header_read),
            (Phase::Idle | Phase::Sending, since) => Some(since + timeouts.idle),
            (Phase::Busy, _) => None,
        }
    }
}

/// Marks the connection idle when the answer is done (or abandoned).
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// An answer's body; the connection is [`Phase::Sending`] until it is sent
/// (or dropped), not idle.
struct Answering<B> {
    body: B,
    _busy: BusyGuard,
}

impl<B: Body + Unpin> Body for Answering<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection (TCP, or TLS over it), reporting what it reads to the
/// connection's [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.saw_bytes();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_bytes();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_bytes();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `stream` until the client closes it, it waits too long, or `stop`
/// turns true (then the request under way is finished first). With `tls`,
/// the handshake comes first. `_slot` is the connection's place under the
/// connection caps, held through the handshake too.
pub(super) async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    _slot: super::http::Slot,
) {
    // Small answers to small requests: never wait to fill a segment.
    let _ = stream.set_nodelay(true);
    // A fresh connection waits for its first head.
    let activity = Arc::new(Activity(Mutex::new((Phase::Head, clock::instant()))));
    let Some(tls) = tls else {
        return serve_http(stream, router, timeouts, stop, activity).await;
    };
    // The handshake and the first head share the head's deadline, counted
    // from the opening: a client that stops mid-handshake holds no more
    // than one that stops mid-header.
    let (_, opened) = activity.get();
    let deadline = opened + timeouts.header_read;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
        () = super::http::stopped(&mut stop) => return,
    };
    match peeked {
        // A handshake starts with 0x16; a request line with a method in
        // capitals. Without this, plain HTTP gets a TLS alert that no HTTP
        // client can show.
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            return answer_https_required(stream, deadline).await;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!("closing a connection that sent nothing in time");
            return;
        }
    }
    let handshake = tokio::time::timeout_at(deadline, tls.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            // A client that does not trust the certificate, or speaks
            // neither TLS nor HTTP: its problem, not the server's.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("closing a connection whose TLS handshake did not finish in time");
                return;
            }
        },
        () = super::http::stopped(&mut stop) => return,
    };
    serve_http(stream, router, timeouts, stop, activity).await;
}

/// Answers plain HTTP on a TLS listener with a readable 400, then closes.
/// What the client sent is read and dropped first (up to `deadline`), since
/// closing over unread bytes resets the connection and can lose the answer.
async fn answer_https_required(mut stream: TcpStream, deadline: Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tracing::debug!("answered plain HTTP on the TLS listener with 400");
    let answer = super::http::closing_answer(&crate::api::problem::Problem::https_required(), "");
    let exchange = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout_at(deadline, exchange).await;
}

/// HTTP/1.1 on an open connection.
async fn serve_http<S>(
    stream: S,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let app = TowerToHyperService::new(router);
    let tracked = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request| {
        tracked.set(Phase::Busy);
        let busy = BusyGuard(Arc::clone(&tracked));
        let answer = hyper::service::Service::call(&app, request);
        async move {
            let answered = answer.await?;
            busy.0.set(Phase::Sending);
            Ok::<_, std::convert::Infallible>(answered.map(|body| Answering { body, _busy: busy }))
        }
    });
    let conn = http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    // The phase may change while this sleeps: look again at least this often.
    let tick = timeouts.header_read.min(timeouts.idle);
    loop {
        let next_look = clock::instant() + tick;
        let wake_at = activity
            .deadline(timeouts)
            .map_or(next_look, |d| d.min(next_look));
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake_at) => {
                let (phase, _) = activity.get();
                if activity.deadline(timeouts).is_some_and(|d| d <= clock::instant()) {
                    tracing::debug!(?phase, "closing a connection that waited too long");
                    return;
                }
            }
            () = super::http::stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
