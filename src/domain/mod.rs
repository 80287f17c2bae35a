//! The domain: notifications and the rules for accepting them. No I/O here.

pub mod notification;
pub mod validation;

pub use notification::{
    Attempt, AttemptOutcome, Channel, Email, Message, NotificationId, Sms, Status, UnixMillis,
};
