//! The domain: notifications and the rules for accepting them. No I/O here.

pub mod callback;
pub mod notification;
pub mod options;
pub mod receipt;
pub mod rfc3339;
pub mod schema;
pub mod validation;
pub mod webhook;

pub use notification::{
    Attempt, AttemptOutcome, Channel, Email, Message, NotificationId, Priority, Sms, Status,
    UnixMillis,
};
pub use receipt::{Receipt, ReceiptOutcome};
