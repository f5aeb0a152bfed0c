//! The error body of every HTTP response Shoal itself produces.

use serde::{Deserialize, Serialize};

/// `{"code": "...", "message": "..."}`: `code` is stable and meant for
/// programs, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The body serialised as JSON. Serialising two strings cannot fail, but
    /// a fallback keeps this total.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"code":"{}","message":"unprintable error"}}"#,
                self.code
            )
        })
    }
}
