//! One conformance suite (STYLE.md §19) run against every object-store backend this machine
//! can reach: `memory://`, `fs://` (absolute and relative), and S3 when `STRATA_TEST_S3_URL`
//! names a real server (the test script starts SeaweedFS and sets it; see
//! `tests/s3-seaweedfs.sh`).

use bytes::Bytes;
use strata_tiering::{
    decode_footer_suffix, footer_suffix_len, ListedObject, ObjectBuilder, ObjectStore, StoreConfig,
    TieringError,
};
use strata_types::TopicId;

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn assert_one_line(err: &TieringError, must_name: &[&str]) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "error spans lines: {text}");
    for part in must_name {
        assert!(text.contains(part), "error {text:?} does not name {part:?}");
    }
}

/// A store with a 16 MiB multipart threshold and 8 MiB parts (the defaults are far larger, so
/// that compacted segments are one PUT), so the large-object case below exercises multipart.
fn small_parts(url: &str) -> Result<ObjectStore, TieringError> {
    ObjectStore::from_url_with_config(
        url,
        StoreConfig {
            multipart_threshold_bytes: 16 << 20,
            multipart_part_bytes: 8 << 20,
            ..StoreConfig::default()
        },
    )
}

/// The behaviour every backend must share. `prefix` keeps concurrent runs apart.
async fn conformance(store: &ObjectStore, prefix: &str) {
    let before = store.metrics().snapshot();
    store.check().await.expect("start-up probe");

    // put / get / overwrite
    let key = format!("{prefix}/objects/one");
    let body = pattern(10_000, 1);
    store.put(&key, body.clone()).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), body);
    let body2 = pattern(777, 2);
    store.put(&key, body2.clone()).await.unwrap();
    assert_eq!(
        store.get(&key).await.unwrap(),
        body2,
        "a PUT replaces the object"
    );

    // ranged reads, by table: (range, expected Ok slice or Err)
    let cases: &[(std::ops::Range<u64>, bool)] = &[
        (0..1, true),
        (0..777, true),
        (100..200, true),
        (776..777, true),
        (5..5, true),
        (700..800, false),
        (777..778, false),
        (10_000..10_001, false),
    ];
    for (range, ok) in cases {
        let got = store.get_range(&key, range.clone()).await;
        match (got, ok) {
            (Ok(bytes), true) => assert_eq!(
                bytes,
                body2.slice(range.start as usize..range.end as usize),
                "range {range:?}"
            ),
            (Err(e), false) => {
                assert!(
                    matches!(e, TieringError::RangeNotSatisfied { .. }),
                    "range {range:?}: {e}"
                );
                assert!(!e.is_retryable());
                assert_one_line(&e, &[&key, store.url()]);
            }
            (other, _) => panic!("range {range:?}: unexpected {other:?}"),
        }
    }

    // NotFound is classified, permanent, and names the store and key.
    let missing = format!("{prefix}/objects/missing");
    for err in [
        store.get(&missing).await.unwrap_err(),
        store.get_range(&missing, 0..10).await.unwrap_err(),
    ] {
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_retryable());
        assert_one_line(&err, &[&missing, store.url()]);
    }

    // delete is idempotent
    store.delete(&key).await.unwrap();
    assert!(store.get(&key).await.unwrap_err().is_not_found());
    store.delete(&key).await.unwrap();

    // bad keys never reach the store
    for bad in ["", "/abs", "dir/", "a//b", "a/../b", "./a", "a\nb"] {
        match store.put(bad, Bytes::from_static(b"x")).await {
            Err(TieringError::BadKey { .. }) => {}
            other => panic!("key {bad:?}: expected BadKey, got {other:?}"),
        }
    }

    // A real object: PUT it, then read the footer from a suffix and one block by range, the
    // way a cold read does.
    let topic = TopicId::random();
    let okey = format!("{prefix}/objects/packed");
    let mut builder = ObjectBuilder::new(okey.clone());
    builder.add_block(topic, 0, 0, 10, 5, &[pattern(3 << 20, 3)]);
    builder.add_block(topic, 1, 100, 101, 6, &[pattern(61, 4), pattern(100, 5)]);
    let (object, _) = builder.finish_with_crcs();
    store.put(&okey, object.clone()).await.unwrap();
    let len = object.len() as u64;
    let tail = store.get_range(&okey, len - 16..len).await.unwrap();
    let need = footer_suffix_len(&okey, &tail).unwrap();
    let suffix = store.get_range(&okey, len - need..len).await.unwrap();
    let entries = decode_footer_suffix(&okey, len, &suffix).unwrap();
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        let loc = &entry.location;
        let block = store
            .get_range(&okey, loc.position..loc.position + loc.len)
            .await
            .unwrap();
        entry.verify(&block).unwrap();
    }
    store.delete(&okey).await.unwrap();

    list_conformance(store, prefix).await;
    large_object_conformance(store, prefix).await;

    // counters moved (other tests may share nothing with this store, so exact deltas hold)
    let after = store.metrics().snapshot();
    assert!(after.put_requests - before.put_requests >= 4);
    assert!(after.put_bytes - before.put_bytes >= 10_000 + 777 + (3 << 20));
    assert!(after.get_requests > before.get_requests);
    assert!(after.get_errors - before.get_errors >= 5, "{after:?}");
    assert!(after.delete_requests - before.delete_requests >= 3);
    assert_eq!(
        after.put_errors, before.put_errors,
        "BadKey is not a store request"
    );
}

/// A body above the multipart threshold (16 MiB in these tests) round-trips; on S3 the counters
/// show one multipart upload (initiate + 6 parts of 8 MiB or less + complete), elsewhere none.
async fn large_object_conformance(store: &ObjectStore, prefix: &str) {
    let before = store.metrics().snapshot();
    let key = format!("{prefix}/objects/large");
    let len = (40 << 20) + 123;
    let body = pattern(len, 9);
    store.put(&key, body.clone()).await.unwrap();
    let got = store.get(&key).await.unwrap();
    assert!(got == body, "the {len}-byte object came back different");
    // A range across the first part boundary.
    let boundary = (8u64 << 20) - 10..(8u64 << 20) + 10;
    let got = store.get_range(&key, boundary.clone()).await.unwrap();
    assert_eq!(
        got,
        body.slice(boundary.start as usize..boundary.end as usize)
    );
    let listed = store.list(&key).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, len as u64);
    store.delete(&key).await.unwrap();

    let after = store.metrics().snapshot();
    let multipart = (
        after.multipart_uploads - before.multipart_uploads,
        after.multipart_initiate_requests - before.multipart_initiate_requests,
        after.multipart_part_requests - before.multipart_part_requests,
        after.multipart_complete_requests - before.multipart_complete_requests,
        after.multipart_abort_requests - before.multipart_abort_requests,
    );
    let single_puts = after.single_put_requests() - before.single_put_requests();
    if store.url().starts_with("s3://") {
        assert_eq!(multipart, (1, 1, 6, 1, 0), "{after:?}");
        assert_eq!(single_puts, 0);
        assert_eq!(after.write_requests() - before.write_requests(), 8);
    } else {
        assert_eq!(multipart, (0, 0, 0, 0, 0), "{after:?}");
        assert_eq!(single_puts, 1);
    }
    assert_eq!(after.put_requests - before.put_requests, 1);
    assert_eq!(after.put_bytes - before.put_bytes, len as u64);
}

/// `ObjectStore::list`: recursive, files only, keys relative to the root, sizes, string-prefix
/// matching, sorted, and counted as LIST requests.
async fn list_conformance(store: &ObjectStore, prefix: &str) {
    let before = store.metrics().snapshot();
    let objects: &[(&str, usize)] = &[
        ("list/a", 10),
        ("list/b/c", 3_000),
        ("list/b/d/e", 1),
        ("list/bb", 7),
        ("list/empty", 0),
        ("lis", 5),
        ("listing/x", 2),
    ];
    for (i, (key, len)) in objects.iter().enumerate() {
        let key = format!("{prefix}/{key}");
        store.put(&key, pattern(*len, i as u8)).await.unwrap();
    }
    let listed = |want: &[(&str, u64)]| -> Vec<ListedObject> {
        want.iter()
            .map(|(k, size)| ListedObject {
                key: format!("{prefix}/{k}"),
                size: *size,
            })
            .collect()
    };
    // (prefix relative to the test prefix, expected objects)
    let cases: &[(&str, &[(&str, u64)])] = &[
        (
            "list/",
            &[
                ("list/a", 10),
                ("list/b/c", 3_000),
                ("list/b/d/e", 1),
                ("list/bb", 7),
                ("list/empty", 0),
            ],
        ),
        // A prefix is matched by string, not by folder.
        (
            "list/b",
            &[("list/b/c", 3_000), ("list/b/d/e", 1), ("list/bb", 7)],
        ),
        ("list/b/", &[("list/b/c", 3_000), ("list/b/d/e", 1)]),
        ("list/b/d/e", &[("list/b/d/e", 1)]),
        (
            "lis",
            &[
                ("lis", 5),
                ("list/a", 10),
                ("list/b/c", 3_000),
                ("list/b/d/e", 1),
                ("list/bb", 7),
                ("list/empty", 0),
                ("listing/x", 2),
            ],
        ),
        ("list/zzz", &[]),
        ("nothing/here/", &[]),
    ];
    for (sub, want) in cases {
        let got = store.list(&format!("{prefix}/{sub}")).await.unwrap();
        assert_eq!(got, listed(want), "list({prefix}/{sub})");
    }
    // The whole store holds at least these, with keys relative to the root.
    let all = store.list("").await.unwrap();
    for want in listed(&[("list/a", 10), ("listing/x", 2)]) {
        assert!(all.contains(&want), "list(\"\") lacks {want:?}");
    }
    assert!(
        all.iter().all(|o| !o.key.starts_with(".strata-tmp")),
        "temporary files listed"
    );
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "not sorted");
    // Bad prefixes never reach the store.
    for bad in ["/abs", "a//b", "a/../b", "./a", "a\nb"] {
        match store.list(bad).await {
            Err(TieringError::BadKey { .. }) => {}
            other => panic!("prefix {bad:?}: expected BadKey, got {other:?}"),
        }
    }
    for (key, _) in objects {
        store.delete(&format!("{prefix}/{key}")).await.unwrap();
    }
    assert_eq!(
        store.list(&format!("{prefix}/list/")).await.unwrap(),
        vec![]
    );
    let after = store.metrics().snapshot();
    assert_eq!(after.list_requests - before.list_requests, 9, "{after:?}");
    assert_eq!(after.list_errors, before.list_errors);
    assert!(after.list_objects - before.list_objects >= 5 + 3 + 2 + 1 + 7 + 2);
}

#[tokio::test]
async fn memory_backend() {
    let store = small_parts("memory://").unwrap();
    assert_eq!(store.url(), "memory://");
    conformance(&store, "t").await;
    // clones share data and counters
    let clone = store.clone();
    clone.put("shared", Bytes::from_static(b"s")).await.unwrap();
    assert_eq!(store.get("shared").await.unwrap(), "s");
    assert_eq!(clone.metrics().snapshot(), store.metrics().snapshot());
}

#[tokio::test]
async fn fs_backend_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let url = format!("fs://{}", root.display());
    let store = small_parts(&url).unwrap();
    assert_eq!(store.url(), url);
    conformance(&store, "t").await;

    store
        .put("a/b/c", Bytes::from_static(b"on disk"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("a/b/c")).unwrap(), b"on disk");
    // writes go through a temporary file that is renamed away
    let tmp = root.join(".strata-tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "no temporary files left in {}", tmp.display());
}

#[tokio::test]
async fn fs_backend_relative_to_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    // Spell the tempdir relative to the working directory: ../../…/tmp/xyz
    let up = "../".repeat(cwd.components().count() - 1);
    let rel = format!(
        "{up}{}",
        dir.path().display().to_string().trim_start_matches('/')
    );
    let store = small_parts(&format!("fs://{rel}")).unwrap();
    store.put("k", Bytes::from_static(b"rel")).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("k")).unwrap(), b"rel");
    conformance(&store, "t").await;
}

#[tokio::test]
async fn s3_backend() {
    let Ok(url) = std::env::var("STRATA_TEST_S3_URL") else {
        println!("SKIPPED s3_backend: STRATA_TEST_S3_URL is unset (tests/s3-seaweedfs.sh sets it)");
        return;
    };
    let store = small_parts(&url).unwrap();
    let prefix = format!("t20-{}", uuid::Uuid::new_v4());
    conformance(&store, &prefix).await;
}

#[tokio::test]
async fn s3_read_only_identity_is_denied() {
    let Ok(url) = std::env::var("STRATA_TEST_S3_READONLY_URL") else {
        println!("SKIPPED s3_read_only_identity_is_denied: STRATA_TEST_S3_READONLY_URL is unset");
        return;
    };
    let store = ObjectStore::from_url(&url).unwrap();
    let err = store.check().await.unwrap_err();
    assert!(
        matches!(err, TieringError::PermissionDenied { .. }),
        "expected PermissionDenied, got {err}"
    );
    assert!(!err.is_retryable());
    assert_one_line(&err, &["_strata/probe/", store.url()]);
    assert!(
        !err.to_string().contains("ROSECRET"),
        "secret leaked: {err}"
    );
    println!("read-only check() error: {err}");
}
