//! The webhook outbox: one row per event and receiver, written in the same
//! transaction as the notification's final transition, so an event is
//! never lost nor invented by a crash between the two. The webhook worker
//! claims due rows under a lease, as the dispatcher claims notifications.

use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use super::LeaseToken;
use super::rows::WEBHOOK_COLUMNS;
use crate::domain::webhook::{EndedNotification, WebhookEvent, WebhookId};
use crate::domain::{NotificationId, Status, UnixMillis};

/// Where the events of ending notifications go: the configured endpoints
/// (each with the events it takes) and, when callbacks are enabled, each
/// notification's own `callback_url`. Every instance that delivers must
/// hold the same routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookRoutes {
    pub endpoints: Vec<WebhookRoute>,
    pub callbacks: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRoute {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

impl WebhookRoutes {
    /// Nothing can ever be sent: the stores skip the outbox entirely.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && !self.callbacks
    }

    /// The final statuses some configured endpoint takes the event of;
    /// other endings matter only when they carry a `callback_url`.
    pub(crate) fn routed_statuses(&self) -> Vec<&'static str> {
        Status::ALL
            .into_iter()
            .filter(|s| {
                WebhookEvent::for_status(*s)
                    .is_some_and(|e| self.endpoints.iter().any(|r| r.events.contains(&e)))
            })
            .map(Status::as_str)
            .collect()
    }

    /// The outbox rows of one ended notification: one per endpoint taking
    /// its event, and one for its `callback_url`.
    pub(crate) fn deliveries(&self, ended: &EndedNotification) -> Vec<NewWebhookDelivery> {
        let Some(event) = ended.event() else {
            return Vec::new();
        };
        let mut targets: Vec<(WebhookTarget, &str)> = self
            .endpoints
            .iter()
            .filter(|r| r.events.contains(&event))
            .map(|r| (WebhookTarget::Endpoint, r.url.as_str()))
            .collect();
        if self.callbacks
            && let Some(url) = &ended.callback_url
        {
            targets.push((WebhookTarget::Callback, url));
        }
        if targets.is_empty() {
            return Vec::new();
        }
        let payload = ended.payload(event);
        targets
            .into_iter()
            .map(|(target, url)| NewWebhookDelivery {
                id: WebhookId::new_at(ended.ended_at),
                notification_id: ended.id,
                event,
                target,
                url: url.to_owned(),
                payload: payload.clone(),
                created_at: ended.ended_at,
            })
            .collect()
    }
}

/// Whose URL a delivery goes to, and so which secret signs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookTarget {
    /// A `[[webhooks]]` endpoint of the settings.
    Endpoint,
    /// The notification's own `callback_url`.
    Callback,
}

impl WebhookTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookTarget::Endpoint => "endpoint",
            WebhookTarget::Callback => "callback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [WebhookTarget::Endpoint, WebhookTarget::Callback]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// An outbox row as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhookDelivery {
    pub id: WebhookId,
    pub notification_id: NotificationId,
    pub event: WebhookEvent,
    pub target: WebhookTarget,
    pub url: String,
    pub payload: String,
    pub created_at: UnixMillis,
}

/// What asking to deliver a webhook again found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliverOutcome {
    /// Pending again, due at once, with a fresh attempt budget.
    Requeued,
    NotFound,
    /// Only a `failed` delivery can be delivered again.
    NotFailed(WebhookStatus),
}

/// A delivery's place in its life: `pending` (due at its time), `sending`
/// (leased by a worker), then `delivered` or `failed` for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    Pending,
    Sending,
    Delivered,
    Failed,
}

impl WebhookStatus {
    pub const ALL: [WebhookStatus; 4] = [
        WebhookStatus::Pending,
        WebhookStatus::Sending,
        WebhookStatus::Delivered,
        WebhookStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Pending => "pending",
            WebhookStatus::Sending => "sending",
            WebhookStatus::Delivered => "delivered",
            WebhookStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedWebhook {
    pub id: WebhookId,
    pub notification_id: NotificationId,
    pub event: WebhookEvent,
    pub target: WebhookTarget,
    pub url: String,
    pub payload: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    /// When its event happened.
    pub created_at: UnixMillis,
    pub lease: LeaseToken,
    pub lease_until: UnixMillis,
}

/// How an attempt (or a decision not to make one) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookCompletion {
    /// The receiver answered 2xx.
    Delivered { http_status: u16 },
    /// The attempt failed; try again at `at`.
    Retry {
        at: UnixMillis,
        http_status: Option<u16>,
        error: String,
    },
    /// No more attempts: kept, `failed`, for the operator.
    Failed {
        http_status: Option<u16>,
        error: String,
    },
    /// Not attempted (its endpoint's breaker is open): due again at `at`,
    /// no attempt used up.
    Deferred { at: UnixMillis },
    /// Given back unattempted (shutdown): due again at once.
    Released,
}

/// One delivery's result, written under the lease it was claimed with.
#[derive(Debug, Clone)]
pub struct WebhookReport {
    pub id: WebhookId,
    pub lease: LeaseToken,
    pub completion: WebhookCompletion,
    pub at: UnixMillis,
}

/// A delivery as the admin listing shows it: one event to one receiver.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct WebhookDeliveryRecord {
    pub id: WebhookId,
    pub notification_id: NotificationId,
    pub event: WebhookEvent,
    pub target: WebhookTarget,
    /// Without its query string, which may carry a token.
    pub url: String,
    pub status: WebhookStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When its event happened.
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When it is next due, while it is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<UnixMillis>,
    /// The last attempt's HTTP status, if the receiver answered.
    #[schema(required = true)]
    pub last_http_status: Option<u16>,
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// The listing's query for an engine whose n-th placeholder is
/// `placeholder(n)`; its parameters are the status (NULL for any), the id
/// to list after, and the limit. With a status given it walks the
/// (status, id) index.
pub(crate) fn listing_query(status_given: bool, placeholder: fn(usize) -> String) -> String {
    let (status, after, limit) = (placeholder(1), placeholder(2), placeholder(3));
    let filter = match status_given {
        true => format!("status = {status}"),
        false => format!("CAST({status} AS TEXT) IS NULL"),
    };
    format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhook_deliveries
          WHERE {filter} AND id > {after} ORDER BY id LIMIT {limit}"
    )
}

/// A report as the columns both engines write.
pub(crate) struct WebhookColumns<'a> {
    pub status: &'static str,
    pub due_at: Option<i64>,
    /// Whether an attempt was made (and so counted).
    pub counted: bool,
    pub http_status: Option<u16>,
    pub error: Option<&'a str>,
}

pub(crate) fn webhook_columns(r: &WebhookReport) -> WebhookColumns<'_> {
    let (status, due_at, counted, http_status, error) = match &r.completion {
        WebhookCompletion::Delivered { http_status } => {
            ("delivered", None, true, Some(*http_status), None)
        }
        WebhookCompletion::Retry {
            at,
            http_status,
            error,
        } => (
            "pending",
            Some(at.0),
            true,
            *http_status,
            Some(error.as_str()),
        ),
        WebhookCompletion::Failed { http_status, error } => {
            ("failed", None, true, *http_status, Some(error.as_str()))
        }
        WebhookCompletion::Deferred { at } => ("pending", Some(at.0), false, None, None),
        WebhookCompletion::Released => ("pending", Some(r.at.0), false, None, None),
    };
    WebhookColumns {
        status,
        due_at,
        counted,
        http_status,
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::Channel;

    fn ended(status: Status, callback_url: Option<&str>) -> EndedNotification {
        EndedNotification {
            id: NotificationId::new(),
            channel: Channel::Email,
            status,
            created_at: UnixMillis(1_000),
            ended_at: UnixMillis(2_000),
            error: None,
            attempts: 1,
            last_attempt: None,
            metadata: BTreeMap::new(),
            callback_url: callback_url.map(str::to_owned),
        }
    }

    #[test]
    fn one_row_per_endpoint_taking_the_event_and_one_for_the_callback() {
        let routes = WebhookRoutes {
            endpoints: vec![
                WebhookRoute {
                    url: "https://all.example.com/h".into(),
                    events: WebhookEvent::ALL.to_vec(),
                },
                WebhookRoute {
                    url: "https://failures.example.com/h".into(),
                    events: vec![WebhookEvent::Failed, WebhookEvent::Dead],
                },
            ],
            callbacks: true,
        };
        assert_eq!(
            routes.routed_statuses(),
            [
                "sent",
                "delivered",
                "undelivered",
                "bounced",
                "failed",
                "dead",
                "expired"
            ]
        );
        let rows = routes.deliveries(&ended(Status::Sent, Some("https://cb.example.com/x")));
        let urls: Vec<_> = rows.iter().map(|r| (r.target, r.url.as_str())).collect();
        assert_eq!(
            urls,
            [
                (WebhookTarget::Endpoint, "https://all.example.com/h"),
                (WebhookTarget::Callback, "https://cb.example.com/x"),
            ]
        );
        assert_ne!(rows[0].id, rows[1].id, "an id per receiver");
        assert_eq!(rows[0].payload, rows[1].payload);
        assert_eq!(rows[0].created_at, UnixMillis(2_000));

        assert_eq!(routes.deliveries(&ended(Status::Dead, None)).len(), 2);
        assert!(routes.deliveries(&ended(Status::Canceled, None)).is_empty());

        let no_callbacks = WebhookRoutes {
            callbacks: false,
            ..routes
        };
        assert_eq!(
            no_callbacks
                .deliveries(&ended(Status::Sent, Some("https://cb.example.com/x")))
                .len(),
            1
        );
        assert!(WebhookRoutes::default().is_empty());
    }
}
