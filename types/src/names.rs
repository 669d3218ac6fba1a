//! Validated names and ids.
//!
//! A [`TopicName`] is checked once, where it enters the system (a Kafka request, the CLI, the
//! config); past that boundary code can rely on it. A [`TopicId`] is a random UUID given to a
//! topic when it is created: storage (WAL entries, objects, the index) keys data by id, never by
//! name, so a topic deleted and created again under the same name never sees old data.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {len} bytes long; the maximum is {TOPIC_NAME_BYTES_MAX}")]
    TooLong { len: usize },
    #[error("topic name `{name}` is not allowed")]
    Reserved { name: String },
    #[error("topic name `{name}` has the character {ch:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadChar { name: String, ch: char },
}

/// A topic name that follows Kafka's rules: 1..=249 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(String);

impl TopicName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > TOPIC_NAME_BYTES_MAX {
            return Err(NameError::TooLong { len: name.len() });
        }
        if name == "." || name == ".." {
            return Err(NameError::Reserved { name });
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar { name, ch });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TopicName> for String {
    fn from(value: TopicName) -> Self {
        value.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The stable identity of a topic (Kafka's topic id is a UUID too).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub uuid::Uuid);

impl TopicId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({})", self.0)
    }
}

/// One partition of one topic, by id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct PartitionKey {
    pub topic: TopicId,
    pub partition: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool) {
        assert_eq!(TopicName::new(name).is_ok(), ok, "{name:?}");
    }

    #[test]
    fn topic_name_rules() {
        for (name, ok) in [
            ("orders", true),
            ("a.b_c-D9", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a b", false),
            ("ü", false),
            ("x/y", false),
        ] {
            check(name, ok);
        }
        check(&"x".repeat(249), true);
        check(&"x".repeat(250), false);
    }

    #[test]
    fn topic_name_serde_validates() {
        let err = serde_json::from_str::<TopicName>("\"bad name\"");
        assert!(err.is_err());
        let ok: TopicName = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(ok.as_str(), "good");
    }
}
