//! Helpers shared by every layer's error type.

/// A cause of any type, kept as the source of a layer's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and all its causes on one line, for logs and attempt histories.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
