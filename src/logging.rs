//! What the log may say about a message: phone numbers and addresses are
//! masked (`0171*****78`, `a***@example.com`) and texts never appear, unless
//! the operator turned on `log.personal_data_for_debugging`.

use std::sync::atomic::{AtomicBool, Ordering};

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
}
