//! MQTT topic names and topic filters: validation and matching (MQTT 3.1.1 §4.7, 5.0 §4.7).
//!
//! A topic *name* (what a PUBLISH carries) has no wildcards; a topic *filter* (what a
//! SUBSCRIBE carries, and what a `[[mqtt.kafka_mapping]]` rule names) may use `+` for exactly
//! one level and `#` for the rest (last level only, alone in it). Topics starting with `$`
//! (`$SYS/...`) are not matched by a filter whose first level is a wildcard.
//!
//! Pure functions, no allocation on the matching path.

/// The longest topic name or filter: MQTT strings are length-prefixed with a `u16`.
pub const TOPIC_BYTES_MAX: usize = 65_535;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 65535 bytes")]
    TooLong,
    #[error("contains a NUL character")]
    Nul,
    #[error("a topic name must not contain the wildcards `+` or `#`")]
    WildcardInName,
    #[error("`#` must be the last level and alone in it")]
    BadMultiLevel,
    #[error("`+` must be alone in its level")]
    BadSingleLevel,
    #[error(
        "a shared subscription is `$share/<group>/<filter>` with a group free of `+`, `#` and `/`"
    )]
    BadShare,
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name (PUBLISH, will, Kafka record key).
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (SUBSCRIBE, UNSUBSCRIBE, mapping rules).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// The prefix of a shared subscription's filter (MQTT 5 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Splits a shared subscription `$share/<group>/<filter>` into its group and filter (both
/// checked); `Ok(None)` for an ordinary filter.
pub fn split_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::BadShare);
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::BadShare);
    }
    validate_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Whether topic name `topic` matches the (valid) filter `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    // Without wildcards a filter matches exactly its own name (the common case, and the
    // router asks once per session per message): no level splitting.
    if !filter.bytes().any(|b| b == b'+' || b == b'#') {
        return filter == topic;
    }
    // A leading wildcard never matches a `$` topic (MQTT 3.1.1 §4.7.2, 5.0 §4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true, // also matches the parent level ("a/#" ~ "a")
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(filter: &str, topic: &str, expected: bool) {
        assert!(
            validate_filter(filter).is_ok(),
            "filter {filter:?} should be valid"
        );
        assert!(
            validate_name(topic).is_ok(),
            "topic {topic:?} should be valid"
        );
        assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("+", "/a", false),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("sensors/#", "sensors/room1/temp", true),
            ("sensors/#", "sensor/x", false),
            // `$` topics are not matched by a leading wildcard, only by a literal first level.
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("a/#", "a/$b", true),
            // Case and spaces are significant.
            ("A/b", "a/b", false),
            ("a b", "a b", true),
        ];
        for (filter, topic, expected) in cases {
            check(filter, topic, *expected);
        }
    }

    #[test]
    fn validation_table() {
        let filters: &[(&str, Result<(), TopicError>)] = &[
            ("a/b", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("+/+/#", Ok(())),
            ("/", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/#/b", Err(TopicError::BadMultiLevel)),
            ("a#", Err(TopicError::BadMultiLevel)),
            ("a/b#", Err(TopicError::BadMultiLevel)),
            ("a+/b", Err(TopicError::BadSingleLevel)),
            ("a/+b", Err(TopicError::BadSingleLevel)),
            ("a\0b", Err(TopicError::Nul)),
        ];
        for (filter, expected) in filters {
            assert_eq!(validate_filter(filter), *expected, "filter {filter:?}");
        }
        let names: &[(&str, Result<(), TopicError>)] = &[
            ("a/b", Ok(())),
            ("/", Ok(())),
            ("$SYS/x", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/+", Err(TopicError::WildcardInName)),
            ("a/#", Err(TopicError::WildcardInName)),
        ];
        for (name, expected) in names {
            assert_eq!(validate_name(name), *expected, "name {name:?}");
        }
        assert_eq!(
            validate_name(&"x".repeat(TOPIC_BYTES_MAX + 1)),
            Err(TopicError::TooLong)
        );
    }

    type Split<'a> = Result<Option<(&'a str, &'a str)>, TopicError>;

    #[test]
    fn shared_subscription_table() {
        let cases: &[(&str, Split)] = &[
            ("a/b", Ok(None)),
            ("$share/g/a/#", Ok(Some(("g", "a/#")))),
            ("$share/g/+", Ok(Some(("g", "+")))),
            ("$share/g", Err(TopicError::BadShare)),
            ("$share//a", Err(TopicError::BadShare)),
            ("$share/g+/a", Err(TopicError::BadShare)),
            ("$share/#/a", Err(TopicError::BadShare)),
            ("$share/g/", Err(TopicError::Empty)),
            ("$share/g/a/#/b", Err(TopicError::BadMultiLevel)),
        ];
        for (filter, expected) in cases {
            assert_eq!(split_shared(filter), *expected, "{filter:?}");
        }
    }
}
