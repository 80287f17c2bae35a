//! The bodies the bench sends, each with a unique marker, and the parsing of
//! the simulator's delivery lines back to the request that caused them.

use bytes::Bytes;

use super::args::ChannelMix;
use herald_contract::Channel;

/// Tags every text of one run: `hb<run id in hex>-<sequence number>`.
#[derive(Debug, Clone)]
pub struct Marker {
    prefix: String,
}

impl Marker {
    pub fn new(run: u32) -> Self {
        Self {
            prefix: format!("hb{run:08x}-"),
        }
    }

    pub fn random() -> Self {
        Self::new(fastrand::u32(..))
    }

    /// The unique text of request `seq`.
    pub fn text(&self, seq: u64) -> String {
        format!("{}{seq}", self.prefix)
    }

    /// The sequence number of the request a line mentions, if the line
    /// carries this run's marker (as a delivery line of the simulator does:
    /// `{"ts":…,"channel":"sms",…,"body":{"phone":…,"text":"hb…-42"}}`).
    pub fn find_seq(&self, line: &str) -> Option<u64> {
        let at = line.find(&self.prefix)? + self.prefix.len();
        let digits = &line[at..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    }
}

/// The channel of request `seq` under a mix.
pub fn channel_of(mix: ChannelMix, seq: u64) -> Channel {
    match mix {
        ChannelMix::Sms => Channel::Sms,
        ChannelMix::Email => Channel::Email,
        ChannelMix::Mix if seq.is_multiple_of(2) => Channel::Sms,
        ChannelMix::Mix => Channel::Email,
    }
}

/// Path and JSON body of request `seq`.
pub fn request(marker: &Marker, mix: ChannelMix, seq: u64) -> (&'static str, Bytes) {
    let text = marker.text(seq);
    match channel_of(mix, seq) {
        Channel::Sms => (
            "/v1/sms",
            Bytes::from(format!(r#"{{"phone":"01712345678","text":"{text}"}}"#)),
        ),
        Channel::Email => (
            "/v1/email",
            Bytes::from(format!(
                r#"{{"subject":"Herald bench","body":"{text}","recipients":["bench@example.com"]}}"#
            )),
        ),
    }
}

/// The options every notification of a load carries beside its message,
/// as JSON object members (`"priority":"high","hedge":true`); `None`: none.
pub fn options(priority: Option<&str>, hedge: bool) -> Option<String> {
    let mut members = Vec::new();
    if let Some(p) = priority {
        members.push(format!(r#""priority":"{p}""#));
    }
    if hedge {
        members.push(r#""hedge":true"#.to_owned());
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// One notification of a batch: the single request's body with its
/// channel (and options) added.
fn batch_item(marker: &Marker, mix: ChannelMix, seq: u64, options: Option<&str>) -> String {
    let (path, body) = request(marker, mix, seq);
    let channel = if path == "/v1/sms" { "sms" } else { "email" };
    let fields = std::str::from_utf8(&body[1..]).expect("bench bodies are UTF-8");
    match options {
        Some(o) => format!(r#"{{"channel":"{channel}",{o},{fields}"#),
        None => format!(r#"{{"channel":"{channel}",{fields}"#),
    }
}

/// `POST /v1/batch`'s body for requests `first..first + n`.
pub fn batch_request(
    marker: &Marker,
    mix: ChannelMix,
    first: u64,
    n: u64,
    options: Option<&str>,
) -> (&'static str, Bytes) {
    let items: Vec<String> = (first..first + n)
        .map(|seq| batch_item(marker, mix, seq, options))
        .collect();
    (
        "/v1/batch",
        Bytes::from(format!(r#"{{"notifications":[{}]}}"#, items.join(","))),
    )
}

/// A single request's body with [`options`] added.
pub fn with_options(body: Bytes, options: &str) -> Bytes {
    let fields = std::str::from_utf8(&body[1..]).expect("bench bodies are UTF-8");
    Bytes::from(format!(r#"{{{options},{fields}"#))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::domain::validation::{RawEmail, RawSms, validate_email, validate_sms};

    #[test]
    fn bodies_are_valid_and_unique() {
        let m = Marker::new(0xabc);
        let (path, sms) = request(&m, ChannelMix::Mix, 4);
        assert_eq!(path, "/v1/sms");
        let raw: RawSms = serde_json::from_slice(&sms).unwrap();
        assert!(validate_sms(raw).is_ok());
        let (path, email) = request(&m, ChannelMix::Mix, 5);
        assert_eq!(path, "/v1/email");
        let raw: RawEmail = serde_json::from_slice(&email).unwrap();
        assert!(validate_email(raw).is_ok());
        assert_ne!(
            request(&m, ChannelMix::Sms, 1).1,
            request(&m, ChannelMix::Sms, 2).1
        );
    }

    #[test]
    fn batches_carry_every_request_of_their_range() {
        let m = Marker::new(7);
        let high = options(Some("high"), false);
        let (path, body) = batch_request(&m, ChannelMix::Mix, 10, 3, high.as_deref());
        assert_eq!(path, "/v1/batch");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let items = v["notifications"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["channel"], "sms");
        assert_eq!(items[1]["channel"], "email");
        assert_eq!(items[2]["priority"], "high");
        assert_eq!(m.find_seq(&items[2].to_string()), Some(12));
        let both = options(Some("low"), true).unwrap();
        let single = with_options(request(&m, ChannelMix::Sms, 1).1, &both);
        let v: serde_json::Value = serde_json::from_slice(&single).unwrap();
        assert_eq!(v["priority"], "low");
        assert_eq!(v["hedge"], true);
        let raw: RawSms = serde_json::from_slice(&single).unwrap();
        assert!(validate_sms(raw).is_ok());
        assert_eq!(options(None, false), None);
    }

    #[test]
    fn delivery_lines_map_back_to_their_request() {
        let m = Marker::new(0xdeadbeef);
        let sms = r#"{"ts":"2026-11-22T20:50:04.123Z","channel":"sms","provider":2,"port":40001,"body":{"phone":"01712345678","text":"hbdeadbeef-12345"}}"#;
        assert_eq!(m.find_seq(sms), Some(12345));
        let email = r#"{"ts":"2026-11-22T20:50:04.123Z","channel":"email","provider":1,"port":40004,"body":{"body":"hbdeadbeef-7","recipients":["bench@example.com"],"subject":"Herald bench"}}"#;
        assert_eq!(m.find_seq(email), Some(7));
        // Another run's marker, or none at all.
        assert_eq!(Marker::new(1).find_seq(sms), None);
        assert_eq!(m.find_seq(r#"{"body":{"text":"hello"}}"#), None);
        assert_eq!(m.find_seq("hbdeadbeef-"), None);
        // The same text the sender made.
        assert_eq!(m.find_seq(&m.text(u64::MAX)), Some(u64::MAX));
    }
}
