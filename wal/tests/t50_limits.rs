//! Limits: `wal_bytes_max` (Full, retryable, cleared by trim), `entry_bytes_max`, and config
//! validation that names the offending key.

mod common;

use common::*;
use strata_wal::format::{record_bytes, SEGMENT_HEADER_BYTES};
use strata_wal::{Wal, WalConfig, WalError};

#[test]
fn full_until_trimmed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = WalConfig {
        dir: tmp.path().to_path_buf(),
        segment_bytes_max: 24 + 4 * 36,
        wal_bytes_max: 500,
        entry_bytes_max: 100,
        background_unlink: false,
    };
    let (mut wal, _) = open(&cfg);
    let mut accepted = 0u64;
    let err = loop {
        match wal.append(&payload(accepted + 1, 20)) {
            Ok(lsn) => {
                accepted += 1;
                assert_eq!(lsn, accepted);
            }
            Err(e) => break e,
        }
        assert!(accepted < 100, "the WAL never filled up");
    };
    match &err {
        WalError::Full { bytes, max: 500 } => {
            assert_eq!(*bytes, wal.bytes_on_disk());
            assert!(*bytes <= 500);
            // The refused append would have needed a new segment (header + record).
            assert!(bytes + SEGMENT_HEADER_BYTES + record_bytes(20) > 500);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(!wal.is_poisoned());
    assert_eq!(wal.last_lsn(), accepted, "a refused append changes nothing");
    // Still full on retry; a smaller entry that fits the active segment may go through, so
    // retry with the same size.
    assert!(matches!(
        wal.append(&payload(accepted + 1, 20)),
        Err(WalError::Full { .. })
    ));

    wal.sync().expect("sync");
    assert_accounting_matches_disk(&wal, tmp.path());
    wal.trim(accepted).expect("trim");
    assert_eq!(wal.bytes_on_disk(), SEGMENT_HEADER_BYTES);
    for _ in 0..5 {
        let lsn = wal.last_lsn() + 1;
        assert_eq!(
            wal.append(&payload(lsn, 20)).expect("append after trim"),
            lsn
        );
    }
    wal.sync().expect("sync");
    drop(wal);
    let (wal, recovered) = open(&cfg);
    let lsns: Vec<u64> = recovered.iter().map(|e| e.lsn).collect();
    assert_eq!(lsns, (accepted + 1..=accepted + 5).collect::<Vec<_>>());
    assert_eq!(wal.last_lsn(), accepted + 5);
}

#[test]
fn entry_too_large_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(tmp.path(), 1 << 20);
    cfg.entry_bytes_max = 100;
    let (mut wal, _) = open(&cfg);
    let cases: &[(usize, bool)] = &[(0, true), (100, true), (101, false), (1 << 20, false)];
    for &(len, accepted) in cases {
        let before = wal.last_lsn();
        match wal.append(&vec![1; len]) {
            Ok(lsn) => {
                assert!(accepted, "len {len} was accepted");
                assert_eq!(lsn, before + 1);
            }
            Err(e @ WalError::EntryTooLarge { .. }) => {
                assert!(!accepted, "len {len} was refused");
                assert!(
                    matches!(e, WalError::EntryTooLarge { len: l, max: 100 } if l == len),
                    "{e}"
                );
                assert!(!e.is_retryable());
                assert_eq!(wal.last_lsn(), before);
            }
            Err(e) => panic!("len {len}: unexpected {e}"),
        }
    }
    wal.sync().expect("sync");
    assert_accounting_matches_disk(&wal, tmp.path());
}

#[test]
fn invalid_configs_name_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = config(tmp.path(), 1 << 20);
    let cases: Vec<(&str, WalConfig)> = vec![
        (
            "dir",
            WalConfig {
                dir: "".into(),
                ..base.clone()
            },
        ),
        (
            "entry_bytes_max",
            WalConfig {
                entry_bytes_max: 0,
                ..base.clone()
            },
        ),
        (
            "entry_bytes_max",
            WalConfig {
                entry_bytes_max: u32::MAX,
                ..base.clone()
            },
        ),
        (
            "segment_bytes_max",
            WalConfig {
                segment_bytes_max: 40,
                ..base.clone()
            },
        ),
        (
            "wal_bytes_max",
            WalConfig {
                wal_bytes_max: 24 + 16 + 4095,
                ..base.clone()
            },
        ),
    ];
    for (key, cfg) in cases {
        match Wal::open(cfg) {
            Err(WalError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("key {key}: expected InvalidConfig, got {other:?}"),
        }
    }
    let smallest = WalConfig {
        segment_bytes_max: 41,
        wal_bytes_max: 24 + 16 + 4096,
        ..base
    };
    smallest.validate().expect("the smallest valid config");
    assert!(
        WalConfig::new(tmp.path()).validate().is_ok(),
        "defaults are valid"
    );
}
