//! What a notification is: its channel, its message, its life cycle.

use std::cmp::Ordering as Cmp;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

pub use herald_contract::Channel;

/// Notification ids are UUIDv7 (time-ordered, so inserts stay at the end of
/// the index) shown with a prefix that says what they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotificationId(Uuid);

impl NotificationId {
    const PREFIX: &'static str = "ntf_";

    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// An id whose time part is `t`, for a notification created at `t`.
    /// The ids one process makes for the same millisecond count up, so they
    /// sort in the order they were made (a batch's items, sends in a row).
    pub fn new_at(t: UnixMillis) -> Self {
        let millis = t.0.max(0) as u64;
        // A thread-local generator instead of the OS's: `Uuid::new_v7` asks
        // the kernel for every id, a syscall on each accepted request.
        let mut random = [0u8; 10];
        fastrand::fill(&mut random);
        if let Some(sequence) = next_in_millisecond(millis) {
            // The 12 bits after the version: RFC 9562's counter (6.2).
            random[..2].copy_from_slice(&sequence.to_be_bytes());
        }
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The smallest id made at or after `t`: since ids start with their
    /// creation time, `id < first_at(t)` means "created before `t`", which
    /// an index on ids answers without reading anything newer.
    pub fn first_at(t: UnixMillis) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&(t.0.max(0) as u64).to_be_bytes()[2..]);
        Self(Uuid::from_bytes(bytes))
    }
}

/// The newest millisecond an id was made for, and how many were made for
/// it, as `millis << 12 | count - 1`.
static LAST_ID: AtomicU64 = AtomicU64::new(0);

/// The place of the next id of `millis` among those made before it for
/// the same millisecond; `None` (a random place) for a millisecond older
/// than the newest (a clock set back, or an id made for a past time) and
/// past 4,096 ids in one millisecond.
fn next_in_millisecond(millis: u64) -> Option<u16> {
    let mut last = LAST_ID.load(Ordering::Relaxed);
    loop {
        let next = match millis.cmp(&(last >> 12)) {
            Cmp::Greater => millis << 12,
            Cmp::Equal if last & 0xfff < 0xfff => last + 1,
            _ => return None,
        };
        match LAST_ID.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((next & 0xfff) as u16),
            Err(seen) => last = seen,
        }
    }
}

impl Default for NotificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a notification id (expected ntf_ followed by 32 hex digits)")]
pub struct BadNotificationId;

impl FromStr for NotificationId {
    type Err = BadNotificationId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid_after(Self::PREFIX, s)
            .map(Self)
            .ok_or(BadNotificationId)
    }
}

/// The UUID of a prefixed id: the prefix, then exactly 32 hex digits.
pub(crate) fn uuid_after(prefix: &str, s: &str) -> Option<Uuid> {
    s.strip_prefix(prefix)
        .filter(|hex| hex.len() == 32)
        .and_then(|hex| Uuid::try_parse(hex).ok())
}

impl Serialize for NotificationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch: what is stored, so
/// that schedules and leases mean the same to every process and survive
/// restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The wall-clock instant `at` (zero before 1970). Read the clock with
    /// [`UnixMillis::now`], defined in `resilience::clock`.
    pub fn from_system(at: SystemTime) -> Self {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(since.as_millis() as i64)
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_millis() as i64))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

impl std::fmt::Display for UnixMillis {
    /// RFC 3339, in UTC, to the millisecond.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64);
        humantime::format_rfc3339_millis(t).fmt(f)
    }
}

impl Serialize for UnixMillis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The life cycle: (`scheduled` →) `queued` → `sending` → `sent` (a
/// provider accepted it), or → `retrying` → `sending` … → `dead` once
/// retries are exhausted, or → `failed` when a provider refuses the message
/// for good. A client may cancel what has not started sending (`canceled`);
/// what is not sent by the client's own deadline ends `expired`, never sent
/// late. After `sent`, a provider's receipt may say `delivered` (it reached
/// the handset or mailbox), `undelivered` (SMS) or `bounced` (email): it
/// did not, for good. Statuses only move forward (`Status::may_move_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Scheduled,
    Queued,
    Sending,
    Retrying,
    /// A provider accepted it; final for providers that send no receipts.
    Sent,
    /// A receipt confirmed it reached the handset or mailbox.
    Delivered,
    /// A receipt said the SMS did not reach the handset, for good.
    Undelivered,
    /// A receipt said the email bounced, for good.
    Bounced,
    Failed,
    Dead,
    Canceled,
    Expired,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Scheduled,
        Status::Queued,
        Status::Sending,
        Status::Retrying,
        Status::Sent,
        Status::Delivered,
        Status::Undelivered,
        Status::Bounced,
        Status::Failed,
        Status::Dead,
        Status::Canceled,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Retrying => "retrying",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Undelivered => "undelivered",
            Status::Bounced => "bounced",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Canceled => "canceled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No more rounds: a provider accepted it, refused it, or Herald gave
    /// up. A `sent` one may still learn its receipt ([`Status::may_move_to`]).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Sent
                | Status::Delivered
                | Status::Undelivered
                | Status::Bounced
                | Status::Failed
                | Status::Dead
                | Status::Canceled
                | Status::Expired
        )
    }

    /// Waiting for its turn, not yet handed to a provider: a client may
    /// still take it back.
    pub fn is_cancelable(self) -> bool {
        matches!(self, Status::Scheduled | Status::Queued | Status::Retrying)
    }

    /// Whether a notification in `self` may move to `next`. Statuses only
    /// move forward, so a late or repeated receipt never takes one back
    /// (`delivered` stays `delivered` when a `sent` receipt comes after
    /// it) and the same status twice is no move. The one way back is a
    /// replay: `dead` or `failed` queued again.
    pub fn may_move_to(self, next: Status) -> bool {
        use Status::*;
        match self {
            Scheduled => matches!(next, Queued | Sending | Canceled | Expired | Dead),
            Queued => matches!(next, Sending | Canceled | Expired | Dead),
            // A lapsed lease is claimed again: `sending` once more.
            Sending => matches!(next, Sending | Retrying | Sent | Failed | Dead | Expired),
            Retrying => matches!(next, Sending | Canceled | Expired | Dead),
            Sent => matches!(next, Delivered | Undelivered | Bounced),
            Failed | Dead => next == Queued,
            Delivered | Undelivered | Bounced | Canceled | Expired => false,
        }
    }
}

/// Which work a claim takes first: `high` (one-time codes) before `normal`
/// before `low` (newsletters); within one priority, in due order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// As stored: smaller is taken first, so an ascending index walk is the
    /// claim order.
    pub fn rank(self) -> i16 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    pub fn from_rank(rank: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| i64::from(p.rank()) == rank)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provider contract's SMS body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = SmsMessage)]
pub struct Sms {
    pub phone: String,
    pub text: String,
}

/// An email: the provider contract's body, plus what real email providers
/// also carry. The extras are stored only when given, so an email without
/// them is stored as exactly the contract's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = EmailMessage)]
pub struct Email {
    pub subject: String,
    /// The text body.
    pub body: String,
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl Email {
    pub fn has_extras(&self) -> bool {
        self.html.is_some() || self.reply_to.is_some()
    }
}

/// A validated message, ready to be stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Sms(Sms),
    Email(Email),
}

impl Message {
    pub fn channel(&self) -> Channel {
        match self {
            Message::Sms(_) => Channel::Sms,
            Message::Email(_) => Channel::Email,
        }
    }

    /// Reads back a message stored by [`Message::to_provider_json`].
    pub fn from_stored(channel: Channel, payload: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(match channel {
            Channel::Sms => Message::Sms(serde_json::from_slice(payload)?),
            Channel::Email => Message::Email(serde_json::from_slice(payload)?),
        })
    }

    /// The body a provider receives. It is computed once, at accept time, and
    /// stored as is, so dispatch never re-encodes.
    pub fn to_provider_json(&self) -> String {
        let encoded = match self {
            Message::Sms(sms) => serde_json::to_string(sms),
            Message::Email(email) => serde_json::to_string(email),
        };
        encoded.expect("plain strings always encode")
    }
}

/// How one attempt at one provider ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider accepted the message (2xx).
    Delivered,
    /// The message or its recipient is at fault: no provider will take it.
    Rejected,
    /// The provider is at fault (credentials, suspended account, no
    /// credit): another provider may take the message; an operator must act.
    ProviderFault,
    /// Worth trying again: 5xx, 408, a timeout or a connection error.
    Transient,
    /// The provider asked to be held off (429 and its equivalents).
    Throttled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::ProviderFault => "provider_fault",
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::Throttled => "throttled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(AttemptOutcome::Delivered),
            "rejected" => Some(AttemptOutcome::Rejected),
            "provider_fault" => Some(AttemptOutcome::ProviderFault),
            "transient" => Some(AttemptOutcome::Transient),
            "throttled" => Some(AttemptOutcome::Throttled),
            _ => None,
        }
    }
}

/// One request to one provider, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Attempt {
    pub provider: String,
    pub started_at: UnixMillis,
    #[schema(minimum = 0)]
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// The id the provider gave the message, when it accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        use Status::*;
        // Every move allowed, and nothing else.
        let allowed: &[(Status, &[Status])] = &[
            (Scheduled, &[Queued, Sending, Canceled, Expired, Dead]),
            (Queued, &[Sending, Canceled, Expired, Dead]),
            (Sending, &[Sending, Retrying, Sent, Failed, Dead, Expired]),
            (Retrying, &[Sending, Canceled, Expired, Dead]),
            (Sent, &[Delivered, Undelivered, Bounced]),
            (Delivered, &[]),
            (Undelivered, &[]),
            (Bounced, &[]),
            (Failed, &[Queued]),
            (Dead, &[Queued]),
            (Canceled, &[]),
            (Expired, &[]),
        ];
        assert_eq!(allowed.len(), Status::ALL.len());
        for from in Status::ALL {
            let (_, to) = allowed.iter().find(|(f, _)| *f == from).unwrap();
            for next in Status::ALL {
                assert_eq!(
                    from.may_move_to(next),
                    to.contains(&next),
                    "{from} -> {next}"
                );
            }
        }
        // What receipts rely on: a late `sent` never undoes a receipt, the
        // same receipt twice is no move, a receipt never reopens one.
        for receipt in [Delivered, Undelivered, Bounced] {
            assert!(Sent.may_move_to(receipt));
            assert!(!receipt.may_move_to(Sent));
            assert!(!receipt.may_move_to(receipt));
            assert!(receipt.is_final());
            for other in Status::ALL {
                assert!(!receipt.may_move_to(other), "{receipt} -> {other}");
            }
        }
        assert!(!Sent.may_move_to(Sent));
        // Nothing reaches a receipt's status except from `sent`.
        for from in Status::ALL.into_iter().filter(|s| *s != Sent) {
            for receipt in [Delivered, Undelivered, Bounced] {
                assert!(!from.may_move_to(receipt), "{from} -> {receipt}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_by_name() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Status::Sent.as_str(), "sent");
        assert_eq!(Status::parse("accepted"), None);
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = NotificationId::new();
        let shown = id.to_string();
        assert!(shown.starts_with("ntf_") && shown.len() == 36);
        assert_eq!(shown.parse::<NotificationId>().unwrap(), id);
        for bad in [
            "",
            "ntf_",
            "ntf_xyz",
            "msg_0190c3f5a1b27c3d8e4f5a6b7c8d9e0f",
            &shown[4..],
        ] {
            assert!(bad.parse::<NotificationId>().is_err(), "{bad}");
        }
        // Uuid::try_parse accepts hyphenated forms; ours are only the simple one.
        assert!(
            format!("ntf_{}", id.as_uuid())
                .parse::<NotificationId>()
                .is_err()
        );
    }

    #[test]
    fn first_at_bounds_ids_by_creation_time() {
        let before = UnixMillis::now();
        let id = NotificationId::new();
        let after = UnixMillis(UnixMillis::now().0 + 1);
        assert!(NotificationId::first_at(before) <= id);
        assert!(id < NotificationId::first_at(after));
        assert!(
            NotificationId::first_at(UnixMillis(-5)) <= NotificationId::first_at(UnixMillis(0))
        );
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = NotificationId::new();
        let b = NotificationId::new();
        assert!(a < b);
    }

    #[test]
    fn ids_of_one_millisecond_sort_in_the_order_they_were_made() {
        // Far ahead of the other tests' times, which then get random places.
        let t = UnixMillis(32_503_680_000_000);
        let made: Vec<_> = (0..4096).map(|_| NotificationId::new_at(t)).collect();
        assert!(made.windows(2).all(|w| w[0] < w[1]));
        assert!(made.iter().all(|id| *id >= NotificationId::first_at(t)));
        assert!(
            made.iter()
                .all(|id| *id < NotificationId::first_at(UnixMillis(t.0 + 1)))
        );
        // Past 4,096 in one millisecond, and for a past one: random places,
        // still within their millisecond.
        let more = NotificationId::new_at(t);
        assert!(more >= NotificationId::first_at(t));
        let past = NotificationId::new_at(UnixMillis(t.0 - 1));
        assert!(past < NotificationId::first_at(t));
    }

    #[test]
    fn provider_bodies_match_the_contract() {
        let sms = Message::Sms(Sms {
            phone: "01712345678".into(),
            text: "hi \"there\"".into(),
        });
        assert_eq!(
            sms.to_provider_json(),
            r#"{"phone":"01712345678","text":"hi \"there\""}"#
        );
        let email = Message::Email(Email {
            subject: "s".into(),
            body: "b".into(),
            recipients: vec!["a@b.c".into()],
            html: None,
            reply_to: None,
        });
        assert_eq!(
            email.to_provider_json(),
            r#"{"subject":"s","body":"b","recipients":["a@b.c"]}"#
        );
    }

    #[test]
    fn statuses_parse_back() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert!(Status::Dead.is_final() && !Status::Retrying.is_final());
        assert!(Status::Canceled.is_final() && Status::Expired.is_final());
        assert!(Status::Scheduled.is_cancelable() && !Status::Sending.is_cancelable());
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
            assert_eq!(Priority::from_rank(p.rank().into()), Some(p));
        }
        assert!(Priority::High.rank() < Priority::Low.rank());
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        let t = UnixMillis(1_700_000_000_123);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2023-11-14T22:13:20.123Z\""
        );
    }
}
