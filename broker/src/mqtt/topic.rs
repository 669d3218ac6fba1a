//! MQTT topic names and topic filters: validation and matching (MQTT 3.1.1 §4.7, 5.0 §4.7).
//!
//! A topic *name* (what a PUBLISH carries) has no wildcards; a topic *filter* (what a
//! SUBSCRIBE carries, and what a `[[mqtt.kafka_mapping]]` rule names) may use `+` for exactly
//! one level and `#` for the rest (last level only, alone in it). Topics starting with `$`
//! (`$SYS/...`) are not matched by a filter whose first level is a wildcard.
//!
//! Pure functions, no allocation on the matching path; and [`FilterIndex`], the ordinary
//! subscriptions by filter, which finds the holders of the filters matching a topic name
//! without looking at the others.

use std::collections::{BTreeSet, HashMap};

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

/// Filters with more levels than this are not put in [`FilterIndex`]'s level trie but in a
/// list scanned per topic: it bounds the trie's depth, and so the recursion that walks and
/// drops it (a filter may have up to 32768 levels).
pub const TRIE_LEVELS_MAX: usize = 32;

/// Which client ids hold which (valid, not shared) filters, looked up by topic name: the
/// holders of every filter that [`matches`] the name, found by walking only the levels the
/// name can match. Filters without wildcards are a hash map by the one name they match; the
/// others a trie by level with a `+` child and a `#` set per node; filters deeper than
/// [`TRIE_LEVELS_MAX`] a list.
#[derive(Debug, Default)]
pub struct FilterIndex {
    exact: HashMap<String, BTreeSet<String>>,
    wild: Level,
    deep: HashMap<String, BTreeSet<String>>,
    /// (filter, client id) pairs held.
    len: usize,
}

/// One level of [`FilterIndex`]'s trie: what the filters that reached it hold next.
#[derive(Debug, Default)]
struct Level {
    /// The next level is this literal.
    children: HashMap<String, Level>,
    /// The next level is `+`.
    plus: Option<Box<Level>>,
    /// The next level is `#`: the holders of filters matching this level and all below it.
    hash: BTreeSet<String>,
    /// The filter ends here.
    end: BTreeSet<String>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.end.is_empty()
    }

    /// Removes `id` from the filter whose remaining levels are `rest`, and the levels left
    /// empty below this one. Recursion depth: at most [`TRIE_LEVELS_MAX`].
    fn remove(&mut self, mut rest: std::str::Split<'_, char>, id: &str) -> bool {
        let Some(level) = rest.next() else {
            return self.end.remove(id);
        };
        if level == "#" {
            return self.hash.remove(id);
        }
        if level == "+" {
            let Some(child) = self.plus.as_deref_mut() else {
                return false;
            };
            let removed = child.remove(rest, id);
            if child.is_empty() {
                self.plus = None;
            }
            return removed;
        }
        let Some(child) = self.children.get_mut(level) else {
            return false;
        };
        let removed = child.remove(rest, id);
        if child.is_empty() {
            self.children.remove(level);
        }
        removed
    }

    /// Adds to `out` the holders of the filters below this level matching the topic's
    /// remaining levels `rest`. `dollar_root`: this is the root and the topic starts with `$`
    /// (a leading wildcard does not match it).
    fn matching<'a>(
        &'a self,
        mut rest: std::str::Split<'_, char>,
        dollar_root: bool,
        out: &mut Vec<&'a str>,
        sets: &mut usize,
    ) {
        if !dollar_root {
            // `x/#` also matches `x` itself.
            take(&self.hash, out, sets);
        }
        let Some(level) = rest.next() else {
            take(&self.end, out, sets);
            return;
        };
        if let Some(child) = self.children.get(level) {
            child.matching(rest.clone(), false, out, sets);
        }
        if let Some(child) = self.plus.as_deref().filter(|_| !dollar_root) {
            child.matching(rest, false, out, sets);
        }
    }
}

/// Adds a matching filter's holders to `out`, counting the filters that had any.
fn take<'a>(holders: &'a BTreeSet<String>, out: &mut Vec<&'a str>, sets: &mut usize) {
    if !holders.is_empty() {
        out.extend(holders.iter().map(String::as_str));
        *sets += 1;
    }
}

fn has_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

impl FilterIndex {
    /// Records that `id` holds the valid filter `filter`; false when it did already.
    pub fn insert(&mut self, filter: &str, id: &str) -> bool {
        debug_assert!(validate_filter(filter).is_ok(), "{filter:?}");
        debug_assert!(!filter.starts_with(SHARE_PREFIX));
        let set = if !has_wildcard(filter) {
            self.exact.entry(filter.to_string()).or_default()
        } else if filter.split('/').count() > TRIE_LEVELS_MAX {
            self.deep.entry(filter.to_string()).or_default()
        } else {
            let mut node = &mut self.wild;
            let mut hash = false;
            for level in filter.split('/') {
                match level {
                    "#" => {
                        hash = true;
                        break;
                    }
                    "+" => node = node.plus.get_or_insert_with(Box::default),
                    _ => node = node.children.entry(level.to_string()).or_default(),
                }
            }
            if hash {
                &mut node.hash
            } else {
                &mut node.end
            }
        };
        let added = set.insert(id.to_string());
        self.len += usize::from(added);
        added
    }

    /// Forgets that `id` holds `filter`; false when it did not.
    pub fn remove(&mut self, filter: &str, id: &str) -> bool {
        let removed = if !has_wildcard(filter) {
            remove_from(&mut self.exact, filter, id)
        } else if filter.split('/').count() > TRIE_LEVELS_MAX {
            remove_from(&mut self.deep, filter, id)
        } else {
            self.wild.remove(filter.split('/'), id)
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Adds to `out` the holders of every filter matching topic name `topic`, once per
    /// matching filter (a client holding two matching filters is there twice), in no
    /// particular order. Returns how many filters with holders matched: with at most one,
    /// `out` is sorted and without repeats already (a fan-out to one filter's subscribers
    /// needs no sort).
    pub fn matching<'a>(&'a self, topic: &str, out: &mut Vec<&'a str>) -> usize {
        let mut sets = 0;
        if let Some(ids) = self.exact.get(topic) {
            take(ids, out, &mut sets);
        }
        self.wild
            .matching(topic.split('/'), topic.starts_with('$'), out, &mut sets);
        for (filter, ids) in &self.deep {
            if matches(filter, topic) {
                take(ids, out, &mut sets);
            }
        }
        sets
    }

    /// Whether `id` holds `filter`.
    #[cfg(test)]
    pub fn holds(&self, filter: &str, id: &str) -> bool {
        if !has_wildcard(filter) {
            return self.exact.get(filter).is_some_and(|ids| ids.contains(id));
        }
        if filter.split('/').count() > TRIE_LEVELS_MAX {
            return self.deep.get(filter).is_some_and(|ids| ids.contains(id));
        }
        let mut node = &self.wild;
        for level in filter.split('/') {
            let next = match level {
                "#" => return node.hash.contains(id),
                "+" => node.plus.as_deref(),
                _ => node.children.get(level),
            };
            let Some(next) = next else { return false };
            node = next;
        }
        node.end.contains(id)
    }

    /// (filter, client id) pairs held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        debug_assert_eq!(
            self.len == 0,
            self.exact.is_empty() && self.deep.is_empty() && self.wild.is_empty()
        );
        self.len == 0
    }
}

fn remove_from(map: &mut HashMap<String, BTreeSet<String>>, filter: &str, id: &str) -> bool {
    let Some(ids) = map.get_mut(filter) else {
        return false;
    };
    let removed = ids.remove(id);
    if ids.is_empty() {
        map.remove(filter);
    }
    removed
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
    fn filter_index_agrees_with_matches() {
        let deep = format!("{}#", "x/".repeat(TRIE_LEVELS_MAX));
        let mut filters: Vec<String> = [
            "a/b", "a/+", "a/#", "+", "+/+", "/+", "#", "+/#", "a/+/#", "a/+/c", "$SYS/#",
            "$SYS/+", "+/uptime", "a b", "A/b", "/", "//", "+/",
        ]
        .iter()
        .map(|f| f.to_string())
        .collect();
        filters.push(deep.clone());
        let topics = [
            "a/b",
            "a/c",
            "a/b/c",
            "a",
            "/a",
            "/",
            "a//c",
            "$SYS/uptime",
            "$SYS",
            "a/$b",
            "a b",
            "sensors/x",
            &"x/".repeat(TRIE_LEVELS_MAX + 3),
        ];
        let mut index = FilterIndex::default();
        for (i, f) in filters.iter().enumerate() {
            assert!(index.insert(f, &i.to_string()));
            assert!(!index.insert(f, &i.to_string()), "held already");
        }
        assert_eq!(index.len(), filters.len());
        for topic in topics {
            let mut got: Vec<usize> = Vec::new();
            let mut out = Vec::new();
            let sets = index.matching(topic, &mut out);
            got.extend(out.iter().map(|id| id.parse::<usize>().unwrap()));
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(&filters[i], topic))
                .collect();
            assert_eq!(got, want, "{topic:?}");
            // One holder per filter here: every matching filter counts.
            assert_eq!(sets, want.len(), "{topic:?}");
        }
        for (i, f) in filters.iter().enumerate() {
            assert!(index.holds(f, &i.to_string()) && !index.holds(f, "nobody"));
            assert!(!index.remove(f, "nobody"));
            assert!(index.remove(f, &i.to_string()));
            assert!(!index.remove(f, &i.to_string()));
        }
        assert!(index.is_empty(), "every level pruned: {index:?}");
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
