//! Dependencies point down (STYLE.md §2): each crate may depend only on the crates listed
//! here. A new edge is an architecture change — update ARCHITECTURE.md and this table together.

use std::collections::BTreeSet;

const ALLOWED: &[(&str, &[&str])] = &[
    ("types", &[]),
    // `strata_types::histogram`: a replica server times its group commits for /metrics.
    ("wal", &["strata-types"]),
    // `strata_wal::shrink_for_delete`: an `fs://` delete shares the WAL's disk, and frees its
    // blocks in the WAL's steps so the group commit's fdatasync never waits on a big discard.
    ("tiering", &["strata-types", "strata-wal"]),
    ("meta", &["strata-types"]),
    (
        "broker",
        &[
            "strata-types",
            "strata-wal",
            "strata-tiering",
            "strata-meta",
        ],
    ),
    // The Lambda entry is a second top of the graph beside the `strata` binary: it reuses the
    // broker library's direct-mode writer, reader and compactor rather than copying them.
    (
        "lambda",
        &[
            "strata-types",
            "strata-tiering",
            "strata-meta",
            "strata-broker",
        ],
    ),
    // A test client (the Rust rdkafka crate); it links nothing of ours.
    ("tests/rdkafka-client", &[]),
];

/// Names of `strata-*` crates in the `[dependencies]` table of a manifest.
fn strata_deps(manifest: &str) -> BTreeSet<String> {
    let table: toml::Table = manifest.parse().expect("manifest parses");
    table
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter(|k| k.starts_with("strata-"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crates_depend_only_downwards() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (dir, allowed) in ALLOWED {
        let manifest = std::fs::read_to_string(format!("{root}/{dir}/Cargo.toml"))
            .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let extra: Vec<_> = strata_deps(&manifest)
            .difference(&allowed)
            .cloned()
            .collect();
        assert!(
            extra.is_empty(),
            "{dir} depends on {extra:?}, which the layering does not allow"
        );
    }
}

#[test]
fn only_tiering_knows_opendal_and_only_meta_knows_openraft() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (dir, _) in ALLOWED {
        let manifest = std::fs::read_to_string(format!("{root}/{dir}/Cargo.toml")).unwrap();
        let table: toml::Table = manifest.parse().unwrap();
        let deps = table.get("dependencies").and_then(|d| d.as_table());
        let has = |name: &str| deps.is_some_and(|d| d.contains_key(name));
        assert_eq!(has("opendal"), *dir == "tiering", "{dir}: opendal");
        assert_eq!(has("openraft"), *dir == "meta", "{dir}: openraft");
        assert_eq!(has("redb"), *dir == "meta", "{dir}: redb");
    }
}
