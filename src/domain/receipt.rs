//! Delivery receipts: what a provider reports, after it accepted a message,
//! about whether the message reached the handset or the mailbox. Each
//! provider kind reads its own callbacks into these (`receipt/`); the store
//! applies them (`Store::apply_receipt`); dispatch acts on them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Channel, NotificationId, Status, UnixMillis};

/// What Herald makes of one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// On its way (queued, sending, buffered, deferred, accepted): not final.
    Pending,
    /// It reached the handset or the mailbox.
    Delivered,
    /// It did not, for good, because of the route (a carrier filter, the
    /// provider's own error, a queue overflow): another provider may reach
    /// the recipient.
    RouteFailed,
    /// It did not, for good, because of the recipient (unknown number,
    /// landline, blocked, hard bounce): no provider will reach them.
    RecipientFailed,
}

impl ReceiptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptOutcome::Pending => "pending",
            ReceiptOutcome::Delivered => "delivered",
            ReceiptOutcome::RouteFailed => "route_failed",
            ReceiptOutcome::RecipientFailed => "recipient_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ReceiptOutcome::Pending,
            "delivered" => ReceiptOutcome::Delivered,
            "route_failed" => ReceiptOutcome::RouteFailed,
            "recipient_failed" => ReceiptOutcome::RecipientFailed,
            _ => return None,
        })
    }

    /// Whether no later receipt for the same message (or part) can say more.
    pub fn is_final(self) -> bool {
        !matches!(self, ReceiptOutcome::Pending)
    }

    /// The status a notification of `channel` ends in when this is its
    /// final receipt; `None` while pending.
    pub fn final_status(self, channel: Channel) -> Option<Status> {
        match self {
            ReceiptOutcome::Pending => None,
            ReceiptOutcome::Delivered => Some(Status::Delivered),
            ReceiptOutcome::RouteFailed | ReceiptOutcome::RecipientFailed => Some(match channel {
                Channel::Sms => Status::Undelivered,
                Channel::Email => Status::Bounced,
            }),
        }
    }
}

/// One receipt, as a provider kind read it from a verified callback. A
/// callback may carry several (SendGrid batches its events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Herald's id, where the provider echoes one Herald set on the send
    /// (Vonage `client-ref`, SendGrid `custom_args`, Mailgun `v:` variables).
    pub notification_id: Option<NotificationId>,
    /// The provider's id for the message (or, for a long SMS, for the part).
    pub provider_message_id: Option<String>,
    /// The provider's own word for the status (`delivered`, `30007`'s
    /// `undelivered`, `bounce`), kept as it came (made fit to store).
    pub provider_status: String,
    /// The provider's error code, when it gave one.
    pub error_code: Option<String>,
    pub outcome: ReceiptOutcome,
    /// When the provider says it happened, if it says.
    pub at: Option<UnixMillis>,
}
