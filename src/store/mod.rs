//! Storage: the source of truth for every accepted notification, its
//! schedule, its lease and its history.
//!
//! The dispatcher holds nothing that is not also here: a process may die at
//! any point and another (or the same, restarted) picks the work up again
//! when the lease lapses.
//!
//! Two engines implement [`Store`] with the same semantics: [`SqliteStore`]
//! (one machine) and [`PostgresStore`] (several instances sharing one
//! database); [`open`] picks one by the URL's scheme.
//!
//! Beside the notifications the store keeps the webhook outbox
//! ([`outbox`]): the events of notifications that ended, written in the
//! transaction that ended them.

mod outbox;
mod postgres;
mod rows;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::domain::webhook::WebhookId;
use crate::domain::{Attempt, Channel, NotificationId, Priority, Status, UnixMillis};

pub use outbox::{
    ClaimedWebhook, NewWebhookDelivery, RedeliverOutcome, WebhookCompletion, WebhookDeliveryRecord,
    WebhookReport, WebhookRoute, WebhookRoutes, WebhookStatus, WebhookTarget,
};
pub use postgres::{MIGRATIONS as POSTGRES_MIGRATIONS, PostgresOptions, PostgresStore};
pub use sqlite::{MIGRATIONS as SQLITE_MIGRATIONS, SqliteOptions, SqliteStore, Synchronous};

use crate::error::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the operation.
    #[error("the database failed")]
    Backend(#[source] BoxError),
    /// The store has been shut down.
    #[error("the store is closed")]
    Closed,
    /// A row could not be read back into the domain.
    #[error("a stored row is invalid: {what}")]
    Corrupt { what: &'static str },
    /// The store answers, but does not meet what readiness asks of it.
    #[error("the store is not ready: {0}")]
    NotReady(String),
    #[error(
        "unsupported store URL {0:?} (expected sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB)"
    )]
    BadUrl(String),
}

/// The store's state, as the dashboard shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct StoreState {
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    /// Whether the last write reached a writable primary.
    pub writable: bool,
    /// `host:port` of the server the last connection was made to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Unix milliseconds since which `writable` holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Why it is not writable, or not ready: the last connection error's
    /// kind, or what the synchronous replication check found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl StoreState {
    /// A store of this process's own: always writable.
    pub fn local(engine: &'static str) -> Self {
        Self {
            engine,
            writable: true,
            ..Self::default()
        }
    }
}

impl StoreError {
    /// The kind of connection error this is (the server went away, shut
    /// down, became read-only, could not be reached), or `None`: what a
    /// caller logs once per outage instead of once per request.
    /// A pool with no free connection in time is not one: that is load,
    /// logged as any other failure.
    pub fn connection_kind(&self) -> Option<&'static str> {
        postgres::connection_kind(self)
    }
}

/// Random per claim: a dispatcher whose lease lapsed and was claimed again
/// holds a stale token, and its writes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub i64);

impl LeaseToken {
    pub fn random() -> Self {
        // Non-negative so it reads the same in every database.
        Self(fastrand::i64(1..i64::MAX))
    }
}

/// A notification as accepted, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: NotificationId,
    pub channel: Channel,
    /// The provider body, JSON.
    pub payload: String,
    pub created_at: UnixMillis,
    /// Herald's own limit: after this, no more rounds; the notification is
    /// `dead` (`retry.max_age_secs` after acceptance).
    pub expires_at: UnixMillis,
    /// The client's deadline: not delivered by then, it ends `expired` and
    /// is never sent late.
    pub deliver_by: Option<UnixMillis>,
    /// Stored `scheduled`, due at this time; `None`: due at once.
    pub send_at: Option<UnixMillis>,
    pub priority: Priority,
    /// The client's labels (bounded by validation).
    pub metadata: BTreeMap<String, String>,
    /// The client asked for hedged sends.
    pub hedge: bool,
    /// Where its end is called back besides the configured webhooks
    /// (checked against the allowed hosts at accept).
    pub callback_url: Option<String>,
    /// The name of the API key that sent it (`None` with keys off): a key
    /// without the admin scope sees and cancels only its own.
    pub created_by: Option<String>,
    /// Stored already `sending` under this lease, for a dispatcher that was
    /// handed it in memory; `None`: stored `queued` (or `scheduled`).
    pub lease: Option<Lease>,
}

impl NewNotification {
    /// Due at its creation, with none of a client's options (set them on
    /// the result); its id carries `created_at`, and past `expires_at` it is
    /// `dead`.
    pub fn due_now(
        channel: Channel,
        payload: String,
        created_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> Self {
        Self {
            id: NotificationId::new_at(created_at),
            channel,
            payload,
            created_at,
            expires_at,
            deliver_by: None,
            send_at: None,
            priority: Priority::Normal,
            metadata: BTreeMap::new(),
            hedge: false,
            callback_url: None,
            created_by: None,
            lease: None,
        }
    }

    /// The status it is stored with.
    pub fn initial_status(&self) -> Status {
        match (self.lease, self.send_at) {
            (Some(_), _) => Status::Sending,
            (None, Some(_)) => Status::Scheduled,
            (None, None) => Status::Queued,
        }
    }

    /// When it is first due: its lease's end when handed off, else its
    /// scheduled time or its creation.
    pub fn due_at(&self) -> UnixMillis {
        match (self.lease, self.send_at) {
            (Some(lease), _) => lease.until,
            (None, Some(at)) => at,
            (None, None) => self.created_at,
        }
    }
}

/// Who holds a notification's round, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub token: LeaseToken,
    pub until: UnixMillis,
}

/// A notification claimed for one round of delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: NotificationId,
    pub channel: Channel,
    pub payload: Bytes,
    /// Rounds already spent.
    pub rounds: u32,
    pub created_at: UnixMillis,
    /// No more rounds after this (Herald's retry age).
    pub expires_at: UnixMillis,
    /// The client's deadline: no attempt starts after it.
    pub deliver_by: Option<UnixMillis>,
    /// The client asked for hedged sends.
    pub hedge: bool,
    pub lease: LeaseToken,
    pub lease_until: UnixMillis,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A provider accepted it: the notification is `sent`.
    Sent { provider: String },
    /// A provider refused the message for good.
    Failed { error: String },
    /// Try again at `at`; `counted` is false when no provider could even be
    /// tried (all paused or open), which does not use up a round.
    Retry {
        at: UnixMillis,
        counted: bool,
        error: Option<String>,
    },
    /// Out of rounds or past its age.
    Dead { error: String },
    /// Past the client's deadline before a provider took it.
    Expired { error: String },
    /// Given back unfinished (shutdown): ready again at once.
    Released,
}

impl Completion {
    /// Whether the notification ends here (and so sends its event).
    pub fn ends(&self) -> bool {
        matches!(
            self,
            Completion::Sent { .. }
                | Completion::Failed { .. }
                | Completion::Dead { .. }
                | Completion::Expired { .. }
        )
    }
}

/// The result of one round, written back under the lease it was claimed with.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub id: NotificationId,
    pub lease: LeaseToken,
    pub attempts: Vec<Attempt>,
    pub completion: Completion,
    pub at: UnixMillis,
}

/// What a round's error text says when the store would not take the
/// round's result as it came (see [`RoundReport::minimal`]).
pub const STORE_FAULT: &str = "store fault: this round's result could not be stored as it came \
    (its error texts and provider message ids were dropped); the message was not sent again";

impl RoundReport {
    /// The report without any text from outside: every attempt keeps its
    /// provider, time, outcome and HTTP status but loses its error and
    /// message id, and the completion's error says [`STORE_FAULT`]. What the
    /// round decided (sent, failed, retry, dead) and whether it used
    /// up a round are kept, so the notification ends or retries as it
    /// would have, instead of its round being redone and its provider sent
    /// to again.
    pub fn minimal(&self) -> RoundReport {
        let attempts = self
            .attempts
            .iter()
            .map(|a| Attempt {
                error: None,
                provider_message_id: None,
                ..a.clone()
            })
            .collect();
        let fault = || STORE_FAULT.to_owned();
        let completion = match &self.completion {
            Completion::Sent { provider } => Completion::Sent {
                provider: provider.clone(),
            },
            Completion::Failed { .. } => Completion::Failed { error: fault() },
            Completion::Dead { .. } => Completion::Dead { error: fault() },
            Completion::Expired { .. } => Completion::Expired { error: fault() },
            Completion::Retry { at, counted, .. } => Completion::Retry {
                at: *at,
                counted: *counted,
                error: Some(fault()),
            },
            Completion::Released => Completion::Released,
        };
        RoundReport {
            id: self.id,
            lease: self.lease,
            attempts,
            completion,
            at: self.at,
        }
    }
}

/// The report's lease was no longer current: someone else owns the work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lease on this notification was lost")]
pub struct LeaseLost;

/// Everything known about one notification.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Notification)]
pub struct NotificationRecord {
    pub id: NotificationId,
    pub channel: Channel,
    pub status: Status,
    pub priority: Priority,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When it is next due: its scheduled time, or its next round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<UnixMillis>,
    /// Herald's retry age: no rounds after this (then `dead`).
    pub retry_until: UnixMillis,
    /// The client's deadline: not delivered by then, `expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<UnixMillis>,
    /// Delivery rounds so far.
    pub rounds: u32,
    /// The provider that accepted it.
    pub delivered_by: Option<String>,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The client asked for hedged sends.
    pub hedge: bool,
    /// Where this notification's webhook events go, besides `[[webhooks]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The API key that sent it; kept out of the answer (which the key
    /// itself, or an admin, reads).
    #[serde(skip)]
    pub created_by: Option<String>,
    /// The message as its provider receives it.
    #[schema(schema_with = crate::domain::schema::message)]
    pub message: serde_json::Value,
    /// Every request to a provider, oldest first.
    pub attempts: Vec<Attempt>,
}

/// A line of a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationSummary {
    pub id: NotificationId,
    pub channel: Channel,
    pub status: Status,
    pub priority: Priority,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub rounds: u32,
    pub last_error: Option<String>,
}

/// What a listing selects; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// One metadata entry, key and value.
    pub metadata: Option<(String, String)>,
    pub status: Option<Status>,
    pub channel: Option<Channel>,
    pub priority: Option<Priority>,
    /// Created at or after this.
    pub created_from: Option<UnixMillis>,
    /// Created before this.
    pub created_before: Option<UnixMillis>,
    /// Newest first (the cursor then pages towards older ones).
    pub newest_first: bool,
    /// Only those the API key of this name created.
    pub created_by: Option<String>,
}

impl ListFilter {
    pub fn status(status: Status) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }

    /// The listing's query with its parameters, for an engine whose n-th
    /// placeholder is `placeholder(n)`. Creation bounds are id bounds (ids
    /// carry their creation time), so a listing walks the primary key, or
    /// the `(status, id)` index when a status is given, in id order (or
    /// backwards, newest first).
    pub(crate) fn query(
        &self,
        after: Option<NotificationId>,
        limit: usize,
        placeholder: fn(usize) -> String,
    ) -> (String, Vec<ListParam>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        // Each `?` of a condition takes the next parameter.
        let mut add = |condition: &str, given: Vec<ListParam>| {
            let mut parts = condition.split('?');
            let mut sql = parts.next().unwrap_or_default().to_owned();
            for (part, param) in parts.zip(given) {
                params.push(param);
                sql.push_str(&placeholder(params.len()));
                sql.push_str(part);
            }
            conditions.push(sql);
        };
        if let Some(status) = self.status {
            add(
                "status = ?",
                vec![ListParam::Text(status.as_str().to_owned())],
            );
        }
        if let Some(channel) = self.channel {
            add(
                "channel = ?",
                vec![ListParam::Text(channel.as_str().to_owned())],
            );
        }
        if let Some(priority) = self.priority {
            add("priority = ?", vec![ListParam::Rank(priority.rank())]);
        }
        if let Some(key) = &self.created_by {
            add("created_by = ?", vec![ListParam::Text(key.clone())]);
        }
        if let Some((key, value)) = &self.metadata {
            add(
                "id IN (SELECT notification_id FROM notification_metadata
                         WHERE key = ? AND value = ?)",
                vec![ListParam::Text(key.clone()), ListParam::Text(value.clone())],
            );
        }
        if let Some(after) = after {
            let past = if self.newest_first {
                "id < ?"
            } else {
                "id > ?"
            };
            add(past, vec![ListParam::Id(after)]);
        }
        if let Some(from) = self.created_from {
            add(
                "id >= ?",
                vec![ListParam::Id(NotificationId::first_at(from))],
            );
        }
        if let Some(before) = self.created_before {
            add(
                "id < ?",
                vec![ListParam::Id(NotificationId::first_at(before))],
            );
        }
        add("TRUE LIMIT ?", vec![ListParam::Limit(limit as i64)]);
        let limit = conditions.pop().unwrap_or_default();
        let filter = if conditions.is_empty() {
            "TRUE".to_owned()
        } else {
            conditions.join(" AND ")
        };
        (
            format!(
                "SELECT {} FROM notifications WHERE {filter} ORDER BY id {} {}",
                rows::SUMMARY_COLUMNS,
                if self.newest_first { "DESC" } else { "ASC" },
                limit.trim_start_matches("TRUE ")
            ),
            params,
        )
    }
}

/// A parameter of a listing's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListParam {
    Text(String),
    Rank(i16),
    Id(NotificationId),
    Limit(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    Requeued,
    NotFound,
    /// Only `dead` and `failed` notifications can be replayed.
    NotReplayable(Status),
}

/// A client's `Idempotency-Key` and the answer its first request got,
/// stored in the same transaction as that request's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Whose key it is: keys of different callers never meet.
    pub scope: String,
    pub key: String,
    /// What the request asked for (its kind and body), to tell a retry
    /// from a different request reusing the key.
    pub fingerprint: String,
    pub status_code: u16,
    /// The JSON body of the first answer.
    pub response: String,
    pub created_at: UnixMillis,
    /// A stored key created before this has expired and is replaced.
    pub expired_before: UnixMillis,
}

/// The answer stored with a key that was already used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub fingerprint: String,
    pub status_code: u16,
    pub response: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedInsert {
    /// The key was new: the notifications are stored with it.
    Stored,
    /// The key was used before (and has not expired): nothing was stored.
    Replayed(StoredAnswer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Canceled,
    NotFound,
    /// Only `scheduled`, `queued` and `retrying` notifications can be
    /// canceled: a `sending` one may already be at a provider.
    NotCancelable(Status),
}

/// An API key as stored: its SHA-256, never the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// Unique; what `herald keys revoke` names and idempotency keys are
    /// scoped by.
    pub name: String,
    pub key_hash: Vec<u8>,
    /// Comma-separated: `send`, `read`, `admin`.
    pub scopes: String,
    pub rate_per_sec: Option<f64>,
    pub burst: Option<u32>,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Returns once the notification is durably committed.
    async fn insert(&self, notification: NewNotification) -> Result<(), StoreError>;

    /// Stores every one of `notifications` in one commit (a batch).
    async fn insert_many(&self, notifications: Vec<NewNotification>) -> Result<(), StoreError>;

    /// Stores `notifications` with `key`, all or nothing, unless the key is
    /// already stored: then nothing is stored and the first answer comes
    /// back. Concurrent calls with one key store exactly once (a unique
    /// index); a repeated key never fails the other writes committed with it.
    async fn insert_keyed(
        &self,
        notifications: Vec<NewNotification>,
        key: IdempotencyKey,
    ) -> Result<KeyedInsert, StoreError>;

    /// Claims up to `limit` notifications that are due at `now` (including
    /// ones whose lease lapsed), leasing each for `lease`.
    async fn claim(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Writes rounds back; each one only if its lease is still current.
    async fn complete(
        &self,
        reports: Vec<RoundReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError>;

    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>, StoreError>;

    /// The notifications `filter` selects, oldest first (or newest first),
    /// past the `after` id when given (ids grow with creation time, so a
    /// page boundary is stable under inserts).
    async fn list(
        &self,
        filter: ListFilter,
        after: Option<NotificationId>,
        limit: usize,
    ) -> Result<Vec<NotificationSummary>, StoreError>;

    /// Puts a dead or failed notification back in the queue with a fresh
    /// round budget that ends at `expires_at`.
    async fn replay(
        &self,
        id: NotificationId,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<ReplayOutcome, StoreError>;

    /// Takes back a notification that has not started sending: it becomes
    /// `canceled` and is never sent. A claim that races it either took the
    /// row first (then `NotCancelable(Sending)`) or never sees it.
    async fn cancel(
        &self,
        id: NotificationId,
        now: UnixMillis,
    ) -> Result<CancelOutcome, StoreError>;

    /// How many notifications are in each status.
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError>;

    /// How many notifications are unfinished (queued, retrying, sending):
    /// read through the index of unfinished rows, so its cost follows the
    /// backlog, not the table.
    async fn backlog(&self) -> Result<Vec<(Status, u64)>, StoreError>;

    /// Deletes up to `limit` delivered notifications (and their attempts)
    /// last updated before `before`; returns how many.
    async fn purge(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError>;

    /// Deletes up to `limit` idempotency keys created before `before`;
    /// returns how many.
    async fn purge_keys(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError>;

    /// Claims up to `limit` webhook deliveries due at `now` (including ones
    /// whose lease lapsed), oldest due first, leasing each for `lease`.
    /// Concurrent claims never get the same delivery.
    async fn claim_webhooks(
        &self,
        now: UnixMillis,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedWebhook>, StoreError>;

    /// Writes deliveries' results back; each one only if its lease is
    /// still current.
    async fn complete_webhooks(
        &self,
        reports: Vec<WebhookReport>,
    ) -> Result<Vec<Result<(), LeaseLost>>, StoreError>;

    /// Webhook deliveries, oldest first, of one status when given, after
    /// the `after` id when given (ids grow with the event's time).
    async fn webhook_deliveries(
        &self,
        status: Option<WebhookStatus>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError>;

    /// Makes a `failed` webhook delivery `pending` again, due at `now`, with
    /// the attempts and the maximum age of a new one (its `created_at`
    /// becomes `now`); its id, and so the `webhook-id` receivers dedupe by,
    /// stays.
    async fn redeliver_webhook(
        &self,
        id: WebhookId,
        now: UnixMillis,
    ) -> Result<RedeliverOutcome, StoreError>;

    /// How many webhook deliveries are unfinished (pending, sending), read
    /// through the index of unfinished rows.
    async fn webhook_backlog(&self) -> Result<Vec<(WebhookStatus, u64)>, StoreError>;

    /// Deletes up to `limit` delivered webhook deliveries last updated
    /// before `before`; returns how many. Failed ones are kept.
    async fn purge_webhooks(&self, before: UnixMillis, limit: usize) -> Result<u64, StoreError>;

    /// Poked after a commit that added webhook deliveries, so this
    /// process's webhook worker need not wait for its poll.
    fn webhooks_added(&self) -> Arc<Notify>;

    /// Stores a new API key; `false` when one with its name exists already
    /// (revoked or not: a name is never reused).
    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<bool, StoreError>;

    /// Revokes the key named `name` as of `at`; `false` when there is no
    /// such key or it was revoked already.
    async fn revoke_api_key(&self, name: &str, at: UnixMillis) -> Result<bool, StoreError>;

    /// Every API key, revoked ones too, by name.
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Takes the provider named `name` out of rotation as of `at`
    /// (`disabled`), or puts it back, for every instance; `false` when it
    /// already was so (a disabled one keeps its first `at`).
    async fn set_provider_disabled(
        &self,
        name: &str,
        disabled: bool,
        at: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// The providers out of rotation, by name, each with when it was taken out.
    async fn disabled_providers(&self) -> Result<Vec<(String, UnixMillis)>, StoreError>;

    /// The store answers and can commit a write: a one-row probe, cheap
    /// enough for every readiness check (a full disk fails it).
    async fn ping(&self) -> Result<(), StoreError>;

    /// What the store knows of its server, for the dashboard.
    fn state(&self) -> StoreState {
        StoreState::local("sqlite")
    }

    /// Asks to be poked through `wake` when another process stores ready
    /// work. A store only one process uses has nothing to tell.
    fn subscribe(&self, wake: Arc<Notify>) {
        let _ = wake;
    }

    /// Flushes and stops; later calls fail with [`StoreError::Closed`].
    async fn close(&self);
}

/// What each engine can be tuned with, and where the events of ending
/// notifications go.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub sqlite: SqliteOptions,
    pub postgres: PostgresOptions,
    pub webhooks: WebhookRoutes,
}

/// Opens the store a URL names (`sqlite://PATH`, `postgres://…` or
/// `postgresql://…`), creating or migrating its schema as needed.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let routes = Arc::new(options.webhooks.clone());
    if let Some(path) = url.strip_prefix("sqlite://") {
        let store = SqliteStore::open_routed(path, options.sqlite, routes).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::open(url, options.postgres, routes).await?;
        return Ok(Arc::new(store));
    }
    Err(StoreError::BadUrl(redacted(url)))
}

/// The TLS to a PostgreSQL store (`None` for SQLite), as the start-up line
/// says it: with no `sslmode` in the URL, `prefer` on loopback and
/// `verify-full` elsewhere.
pub fn tls_mode(url: &str) -> Option<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::tls_mode(url)
    } else {
        None
    }
}

/// A store URL without its password, for logs and errors: the one in its
/// user info (`user:***@`) and a `password` query parameter (`?password=***`,
/// which libpq and tokio-postgres read as well).
pub fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = without_user_password(base);
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// `password`, however its letters are cased or percent-encoded.
fn is_password_key(key: &str) -> bool {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .eq_ignore_ascii_case("password")
}

fn without_user_password(url: &str) -> String {
    let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) else {
        return url.to_owned();
    };
    if at < scheme {
        return url.to_owned();
    }
    match url[scheme + 3..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// Written on rows a claim found past their client's deadline.
pub(crate) const EXPIRED_UNSENT: &str = "expired before it could be delivered";

/// A report's completion as the columns both engines write.
pub(crate) struct CompletionColumns<'a> {
    /// `None`: queued or retrying, by whether a round was ever counted.
    pub status: Option<&'static str>,
    pub due_at: Option<i64>,
    /// Whether this round uses up one of the notification's rounds.
    pub counted: bool,
    pub provider: Option<&'a str>,
    pub error: Option<&'a str>,
}

pub(crate) fn completion_columns(r: &RoundReport) -> CompletionColumns<'_> {
    let counted = matches!(
        r.completion,
        Completion::Retry { counted: true, .. }
            | Completion::Dead { .. }
            | Completion::Expired { .. }
            | Completion::Failed { .. }
            | Completion::Sent { .. }
    ) && !r.attempts.is_empty();
    let (status, due_at, provider, error) = match &r.completion {
        Completion::Sent { provider } => (Some("sent"), None, Some(provider.as_str()), None),
        Completion::Failed { error } => (Some("failed"), None, None, Some(error.as_str())),
        Completion::Dead { error } => (Some("dead"), None, None, Some(error.as_str())),
        Completion::Expired { error } => (Some("expired"), None, None, Some(error.as_str())),
        Completion::Retry {
            at,
            counted: true,
            error,
        } => (Some("retrying"), Some(at.0), None, error.as_deref()),
        Completion::Retry {
            at,
            counted: false,
            error,
        } => (None, Some(at.0), None, error.as_deref()),
        Completion::Released => (None, Some(r.at.0), None, None),
    };
    CompletionColumns {
        status,
        due_at,
        counted,
        provider,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://herald:s3cret@db:5432/herald"),
            "postgres://herald:***@db:5432/herald"
        );
        assert_eq!(redacted("postgres://herald@db/h"), "postgres://herald@db/h");
        assert_eq!(redacted("sqlite://herald.db"), "sqlite://herald.db");
        // libpq's query parameter, alone or beside a password in user info.
        assert_eq!(
            redacted("postgres://herald@db/h?sslmode=require&password=s3cret"),
            "postgres://herald@db/h?sslmode=require&password=***"
        );
        assert_eq!(
            redacted("postgres://u:a@b@db/h?PassWord=x&pass%77ord=y&application_name=a@b"),
            "postgres://u:***@db/h?PassWord=***&pass%77ord=***&application_name=a@b"
        );
        assert_eq!(
            redacted("mysql://u@db/h?password=s3cret"),
            "mysql://u@db/h?password=***"
        );
    }
}
