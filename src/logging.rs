//! What the log may say about a message: phone numbers and addresses are
//! masked (`0171*****78`, `a***@example.com`) and texts never appear, unless
//! the operator turned on `log.personal_data_for_debugging`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::Message;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG`, when set,
    /// takes precedence (and may name levels per module).
    pub level: String,
    /// Logs phone numbers and addresses unmasked: for debugging only.
    pub personal_data_for_debugging: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            personal_data_for_debugging: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

static UNMASKED: AtomicBool = AtomicBool::new(false);

/// Called once at start-up from the config.
pub fn show_personal_data(show: bool) {
    UNMASKED.store(show, Ordering::Relaxed);
    if show {
        tracing::warn!(
            "log.personal_data_for_debugging is on: phone numbers and addresses are logged unmasked"
        );
    }
}

/// Who a message goes to, as the log may show it.
pub fn recipients(message: &Message) -> String {
    let unmasked = UNMASKED.load(Ordering::Relaxed);
    match message {
        Message::Sms(sms) if unmasked => sms.phone.clone(),
        Message::Sms(sms) => mask_phone(&sms.phone),
        Message::Email(email) if unmasked => email.recipients.join(","),
        Message::Email(email) => email
            .recipients
            .iter()
            .map(|a| mask_address(a))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The first four and last two characters; all masked when shorter than 8.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 8 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..4].iter().collect();
    out.push_str(&"*".repeat(chars.len() - 6));
    out.extend(&chars[chars.len() - 2..]);
    out
}

/// The local part's first character, then the domain.
pub fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// `s` as a log line may hold it: control characters (ESC, BEL, NUL, C1,
/// line breaks) and the Unicode line separators escaped, so that text from
/// outside (a provider's answer, an SMTP reply, an error) can neither
/// drive the operator's terminal nor forge a line of its own.
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !s.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if escaped(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The text log's fields, as tracing-subscriber's default writes them
/// (`message name=value ...`), but with every value escaped by
/// [`escape_control`]: the default escapes the message only, and writes a
/// `%value` field raw. (The JSON log needs none: JSON escapes them.)
pub struct EscapedFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    result: std::fmt::Result,
    first: bool,
}

impl tracing::field::Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let text = format!("{value:?}");
        let text = escape_control(&text);
        let pad = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{pad}{text}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.writer, "{pad}{name}={text}")
            }
        };
    }
}

/// How long a log line may wait for others to share its write to stderr.
const GATHER: Duration = Duration::from_millis(10);

/// Bytes of log lines that may wait; past this the line's own thread
/// writes them out, so a slow stderr holds callers back instead of growing
/// the buffer.
const MOST_WAITING: usize = 256 * 1024;

/// Log lines on their way to stderr. A busy instance logs a few lines per
/// notification; a `write` to stderr for each cost about as much as the
/// line's formatting. Lines are gathered here instead and written by a
/// thread of their own, at most [`GATHER`] after the first of a batch
/// arrived, in the order they were logged.
struct Batches {
    waiting: Mutex<Vec<u8>>,
    /// Held while a batch is written, so batches reach stderr in order.
    writing: Mutex<()>,
    arrived: Condvar,
}

static BATCHES: Batches = Batches {
    waiting: Mutex::new(Vec::new()),
    writing: Mutex::new(()),
    arrived: Condvar::new(),
};

static WRITER_THREAD: Once = Once::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batches {
    fn add(&self, line: &[u8]) {
        let mut waiting = lock(&self.waiting);
        let first = waiting.is_empty();
        waiting.extend_from_slice(line);
        let full = waiting.len() >= MOST_WAITING;
        drop(waiting);
        if full {
            self.write_out();
        } else if first {
            self.arrived.notify_one();
        }
    }

    /// Writes what waits, behind any batch being written.
    fn write_out(&self) {
        let _writing = lock(&self.writing);
        let batch = std::mem::take(&mut *lock(&self.waiting));
        if !batch.is_empty() {
            // Nowhere to report a failing stderr; the lines are dropped.
            let _ = std::io::stderr().write_all(&batch);
        }
    }

    fn run(&self) {
        loop {
            let mut waiting = lock(&self.waiting);
            while waiting.is_empty() {
                waiting = self
                    .arrived
                    .wait(waiting)
                    .unwrap_or_else(|p| p.into_inner());
            }
            drop(waiting);
            std::thread::sleep(GATHER);
            self.write_out();
        }
    }
}

/// Where `tracing`'s lines go when written in batches: a line is whole in
/// one `write` call, which appends it to the batch.
pub struct BatchedStderr;

impl Write for BatchedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        BATCHES.add(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines written to stderr in batches (see [`BatchedStderr`]), by a
/// thread started on the first call; call [`flush`] before exiting.
pub fn batched_stderr() -> BatchedStderr {
    WRITER_THREAD.call_once(|| {
        let started = std::thread::Builder::new()
            .name("herald-log".into())
            .spawn(|| BATCHES.run());
        if let Err(e) = started {
            eprintln!("could not start the log writer thread ({e}); log lines are written 256 KiB at a time");
        }
    });
    BatchedStderr
}

/// Writes every log line still waiting; also run before a panic's message
/// is printed, so the lines that led to it come first.
pub fn flush() {
    BATCHES.write_out();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_addresses_are_masked() {
        assert_eq!(mask_phone("01712345678"), "0171*****78");
        assert_eq!(mask_phone("+8801712345678"), "+880********78");
        assert_eq!(mask_phone("1234567"), "*******");
        assert_eq!(mask_address("alice@example.com"), "a***@example.com");
        assert_eq!(mask_address("a@b@example.com"), "a***@example.com");
        assert_eq!(mask_address("nobody"), "***");
    }

    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the text log shows of fields from outside: a provider's answer
    /// with terminal escapes and a forged line, as `%` and `?` fields, in
    /// the message and in a span's fields.
    #[test]
    fn the_text_log_escapes_control_characters_from_outside() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        let hostile = "x@ex\u{1b}[31mample\u{7}.com\n2026-01-01 INFO forged\u{9b}\u{2028}";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", peer = %hostile);
            let _in = span.enter();
            tracing::error!(error = %hostile, debug = ?hostile, plain = hostile, "answer {hostile}");
        });
        let log = String::from_utf8(lock(&sink.0).clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "one line, none forged: {log:?}");
        for raw in ['\u{1b}', '\u{7}', '\u{9b}', '\u{2028}'] {
            assert!(!log.contains(raw), "{raw:?} reached the log: {log:?}");
        }
        assert!(
            log.contains("x@ex\\u{1b}[31mample\\u{7}.com\\n2026"),
            "{log}"
        );
        assert!(log.contains("error=x@ex"), "{log}");
        assert!(log.contains("peer=x@ex"), "{log}");
        assert_eq!(escape_control("plain ü text"), "plain ü text");
    }
}
