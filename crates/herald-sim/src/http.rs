//! One simulated provider's answers, request by request, modelled on the
//! reference Express program: `app.use(express.json())` in front of one
//! `app.post('/api/<channel>/provider<N>', ...)` route, with Express's own
//! HTML pages for unknown routes and body-parser errors.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::Delivery;
use herald_contract::{Channel, is_blank, is_valid_email, is_valid_phone};

/// body-parser's default `limit: '100kb'`.
const JSON_LIMIT: usize = 100 * 1024;

const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const HTML_UTF8: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");
const EXPRESS: HeaderValue = HeaderValue::from_static("Express");

const ERR_PHONE: &str = r#"{"error":"Invalid or missing phone number"}"#;
const ERR_TEXT: &str = r#"{"error":"Invalid or missing text"}"#;
const ERR_SUBJECT: &str = r#"{"error":"Invalid or missing subject"}"#;
const ERR_BODY: &str = r#"{"error":"Invalid or missing body"}"#;
const ERR_RECIPIENTS: &str = r#"{"error":"Invalid or missing recipients list"}"#;

/// Everything one provider needs to answer, shared by its connections and
/// kept across stop and restart (so a seeded run stays one sequence).
pub(super) struct ProviderState {
    channel: Channel,
    number: u8,
    port: u16,
    failure_rate: f64,
    latency: Duration,
    rng: Mutex<fastrand::Rng>,
    sink: mpsc::UnboundedSender<Delivery>,
    path: String,
    sent: Bytes,
    failed: Bytes,
}

impl ProviderState {
    pub(super) fn new(
        channel: Channel,
        number: u8,
        port: u16,
        failure_rate: f64,
        latency: Duration,
        rng: fastrand::Rng,
        sink: mpsc::UnboundedSender<Delivery>,
    ) -> Self {
        let name = channel.as_str();
        let sent = serde_json::json!({
            "message": format!("{} sent via Provider {number}", name.to_ascii_uppercase())
        });
        let failed = serde_json::json!({
            "error": format!("Failed to send {name} via Provider {number}")
        });
        Self {
            channel,
            number,
            port,
            failure_rate,
            latency,
            rng: Mutex::new(rng),
            sink,
            path: format!("/api/{name}/provider{number}"),
            sent: Bytes::from(to_json_vec(&sent)),
            failed: Bytes::from(to_json_vec(&failed)),
        }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Express routing: case-insensitive, optional trailing slash.
    fn is_route(&self, path: &str) -> bool {
        let path = path.strip_suffix('/').unwrap_or(path);
        path.eq_ignore_ascii_case(&self.path)
    }
}

fn to_json_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serializes")
}

/// A response body held in memory, sent with a `Content-Length`.
pub(super) struct Full(Option<Bytes>);

impl Full {
    fn new(bytes: Bytes) -> Self {
        Self((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for Full {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

pub(super) async fn handle(state: Arc<ProviderState>, req: Request<Incoming>) -> Response<Full> {
    let (parts, body) = req.into_parts();
    // `express.json()` runs before routing, so its errors win over a 404.
    let value = match parse_body(&parts.headers, body).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let path = parts.uri.path();
    if !state.is_route(path) {
        return not_found(&parts.method, path);
    }
    match parts.method {
        Method::POST => {}
        // Express answers OPTIONS on a known path with the allowed methods.
        Method::OPTIONS => {
            let mut resp = respond(StatusCode::OK, HTML_UTF8, Bytes::from_static(b"POST"));
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        _ => return not_found(&parts.method, path),
    }

    let valid = match state.channel {
        Channel::Sms => validate_sms(&value),
        Channel::Email => validate_email(&value),
    };
    if let Err(error) = valid {
        return respond(StatusCode::BAD_REQUEST, JSON_UTF8, error);
    }

    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let draw = state
        .rng
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .f64();
    if draw < state.failure_rate {
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON_UTF8,
            state.failed.clone(),
        );
    }
    // A closed sink only means nobody is listening.
    let _ = state.sink.send(Delivery {
        ts: SystemTime::now(),
        channel: state.channel,
        provider: state.number,
        port: state.port,
        body: value,
    });
    respond(StatusCode::OK, JSON_UTF8, state.sent.clone())
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(X_POWERED_BY, EXPRESS);
    headers.insert(header::CONTENT_TYPE, content_type);
    resp
}

/// Express's (finalhandler's) error page.
fn html_error(status: StatusCode, text: &str) -> Response<Full> {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape_html(text)
    );
    let mut resp = respond(status, HTML_UTF8, Bytes::from(page));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found(method: &Method, path: &str) -> Response<Full> {
    html_error(
        StatusCode::NOT_FOUND,
        &format!("Cannot {method} {}", encode_url(path)),
    )
}

/// The `encodeurl` package: percent-encode what may not appear in a URL,
/// leaving valid `%XX` escapes alone.
fn encode_url(path: &str) -> String {
    let allowed = |b: u8| matches!(b, 0x21 | 0x25 | 0x26..=0x3B | 0x3D | 0x3F..=0x5B | 0x5D | 0x5F | 0x61..=0x7A | 0x7E);
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let valid_escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if allowed(b) && (b != b'%' || valid_escape) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `express.json()` with its defaults: only `application/json` bodies are
/// parsed (anything else leaves the body `{}`), UTF charsets only, 100 kB,
/// strict (the top level must be an object or an array).
async fn parse_body(headers: &HeaderMap, body: Incoming) -> Result<Value, Response<Full>> {
    let empty = || Value::Object(serde_json::Map::new());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        // Not for this parser; Node reads and discards the body.
        drain(body).await;
        return Ok(empty());
    }
    let charset = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
    if let Some(charset) = charset.filter(|c| !c.starts_with("utf-")) {
        drain(body).await;
        return Err(html_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "UnsupportedMediaTypeError: unsupported charset \"{}\"",
                charset.to_ascii_uppercase()
            ),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > JSON_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = match collect(body, JSON_LIMIT).await {
        Ok(bytes) => bytes,
        Err(ReadError::TooLarge) => return Err(too_large()),
        Err(ReadError::Aborted) => {
            return Err(html_error(
                StatusCode::BAD_REQUEST,
                "BadRequestError: request aborted",
            ));
        }
    };
    // iconv-lite replaces bad UTF-8 and strips a byte order mark.
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.is_empty() {
        return Ok(empty());
    }
    let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
    match start.chars().next() {
        Some('{' | '[') => {}
        Some(c) => {
            let at = text.len() - start.len();
            return Err(syntax_error(&format!(
                "Unexpected token {c} in JSON at position {at}"
            )));
        }
        None => return Err(syntax_error("Unexpected end of JSON input")),
    }
    serde_json::from_str(text).map_err(|e| syntax_error(&json_error_message(text, &e)))
}

fn too_large() -> Response<Full> {
    html_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLargeError: request entity too large",
    )
}

fn syntax_error(message: &str) -> Response<Full> {
    html_error(StatusCode::BAD_REQUEST, &format!("SyntaxError: {message}"))
}

/// An approximation of V8's `JSON.parse` message for a serde_json error.
fn json_error_message(text: &str, e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "Unexpected end of JSON input".to_owned();
    }
    // serde_json reports a 1-based line and byte column.
    let line_start: usize = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let at = (line_start + e.column().saturating_sub(1)).min(text.len());
    match text.get(at..).and_then(|rest| rest.chars().next()) {
        Some(c) => format!("Unexpected token {c} in JSON at position {at}"),
        None => format!("Unexpected token in JSON at position {at}"),
    }
}

enum ReadError {
    TooLarge,
    Aborted,
}

async fn next_frame(body: &mut Incoming) -> Option<Result<Frame<Bytes>, hyper::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

async fn collect(mut body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    // Usually the body is one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = next_frame(&mut body).await {
        let frame = frame.map_err(|_| ReadError::Aborted)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let mut buf = BytesMut::with_capacity(head.len() + data.len());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

async fn drain(mut body: Incoming) {
    while let Some(Ok(_)) = next_frame(&mut body).await {}
}

fn error_body(message: &str) -> Bytes {
    Bytes::from(to_json_vec(&serde_json::json!({ "error": message })))
}

/// The reference server's SMS checks, in its order.
fn validate_sms(v: &Value) -> Result<(), Bytes> {
    match v.get("phone") {
        Some(Value::String(p)) if is_valid_phone(p) => {}
        _ => return Err(Bytes::from_static(ERR_PHONE.as_bytes())),
    }
    match v.get("text") {
        Some(Value::String(t)) if !is_blank(t) => Ok(()),
        _ => Err(Bytes::from_static(ERR_TEXT.as_bytes())),
    }
}

/// The reference server's email checks, in its order.
fn validate_email(v: &Value) -> Result<(), Bytes> {
    let text = |field: &str| matches!(v.get(field), Some(Value::String(s)) if !is_blank(s));
    if !text("subject") {
        return Err(Bytes::from_static(ERR_SUBJECT.as_bytes()));
    }
    if !text("body") {
        return Err(Bytes::from_static(ERR_BODY.as_bytes()));
    }
    let recipients = match v.get("recipients") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return Err(Bytes::from_static(ERR_RECIPIENTS.as_bytes())),
    };
    for r in recipients {
        match r {
            Value::String(a) if is_valid_email(a) => {}
            other => {
                return Err(error_body(&format!(
                    "Invalid email in recipients: {}",
                    js_string(other)
                )));
            }
        }
    }
    Ok(())
}

/// `String(value)` in JavaScript, near enough: what a template literal shows.
pub(super) fn js_string(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => js_number(n),
        Value::String(s) => s.clone(),
        // Array.prototype.join: null and undefined become empty strings.
        Value::Array(items) => items
            .iter()
            .map(|i| {
                if i.is_null() {
                    String::new()
                } else {
                    js_string(i)
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

fn js_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.fract() == 0.0 && f.abs() < 1e21 {
            // `1.0` and `-0.0` print as `1` and `0` in JavaScript.
            return format!("{}", f as i128);
        }
        return format!("{f}");
    }
    n.to_string()
}
