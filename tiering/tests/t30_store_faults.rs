//! How [`ObjectStore`] classifies a faulty S3 endpoint: statuses from a scripted fake server,
//! a refused connection, and a server that never answers. None of these needs a real S3.

use bytes::Bytes;
use strata_tiering::{ObjectStore, StoreConfig, TieringError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Small retry delays so the retry path runs in milliseconds.
fn fast_config() -> StoreConfig {
    StoreConfig {
        request_timeout_ms: 2_000,
        retry_attempts_max: 2,
        retry_delay_ms_min: 1,
        retry_delay_ms_max: 5,
        check_timeout_ms: 2_000,
    }
}

fn s3_url(port: u16) -> String {
    format!(
        "s3://strata-test?endpoint=http://127.0.0.1:{port}&region=us-east-1\
         &access_key_id=AK&secret_access_key=fake-secret-key-123"
    )
}

/// Serves every HTTP request with `status` and an empty body, reading the request (headers
/// and body) first so the client never sees a reset.
async fn fake_s3(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + body_len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + body_len);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
                    );
                    if sock.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn statuses_are_classified() {
    // (status, condition expected from put, from get, retryable)
    type Check = fn(&TieringError) -> bool;
    let cases: &[(&str, Check, Check, bool)] = &[
        (
            "503 Service Unavailable",
            |e| matches!(e, TieringError::Unavailable { .. }),
            |e| matches!(e, TieringError::Unavailable { .. }),
            true,
        ),
        (
            "500 Internal Server Error",
            |e| matches!(e, TieringError::Unavailable { .. }),
            |e| matches!(e, TieringError::Unavailable { .. }),
            true,
        ),
        (
            "429 Too Many Requests",
            |e| matches!(e, TieringError::Unavailable { .. }),
            |e| matches!(e, TieringError::Unavailable { .. }),
            true,
        ),
        (
            "403 Forbidden",
            |e| matches!(e, TieringError::PermissionDenied { .. }),
            |e| matches!(e, TieringError::PermissionDenied { .. }),
            false,
        ),
        (
            "404 Not Found",
            // A PUT that finds nothing: the bucket is missing.
            |e| matches!(e, TieringError::Rejected { .. }),
            |e| matches!(e, TieringError::NotFound { .. }),
            false,
        ),
    ];
    for &(status, put_is, get_is, retryable) in cases {
        let port = fake_s3(status).await;
        let store = ObjectStore::from_url_with_config(&s3_url(port), fast_config()).unwrap();
        let put = store
            .put("objects/x", Bytes::from_static(b"payload"))
            .await
            .unwrap_err();
        let get = store.get("objects/x").await.unwrap_err();
        for (what, err, is) in [("put", &put, put_is), ("get", &get, get_is)] {
            println!("{status} {what}: {err}");
            assert!(is(err), "{status} {what}: unexpected {err:?}");
            assert_eq!(err.is_retryable(), retryable, "{status} {what}: {err}");
            let text = err.to_string();
            assert!(!text.contains('\n'), "{status} {what}: {text}");
            assert!(text.contains("objects/x") || matches!(err, TieringError::NotFound { .. }));
            assert!(text.contains(store.url()), "{status} {what}: {text}");
            assert!(
                !text.contains("fake-secret-key-123"),
                "secret leaked: {text}"
            );
        }
        let m = store.metrics().snapshot();
        assert_eq!((m.put_requests, m.put_errors), (1, 1), "{status}");
        assert_eq!((m.get_requests, m.get_errors), (1, 1), "{status}");
        // Temporary failures are retried (2 retries per call), permanent ones are not.
        let expected_retries = if retryable { 4 } else { 0 };
        assert_eq!(m.retries, expected_retries, "{status}: {m:?}");
    }
}

#[tokio::test]
async fn refused_connection_fails_check_with_one_line() {
    // Port 1 on loopback: nothing listens, the kernel refuses at once.
    let store = ObjectStore::from_url(&s3_url(1)).unwrap();
    assert!(
        store.url().contains("secret_access_key=REDACTED"),
        "{}",
        store.url()
    );
    let started = std::time::Instant::now();
    let err = store.check().await.unwrap_err();
    println!("check() after {:?}: {err}", started.elapsed());
    // Not `Unreachable` (the probe's overall timeout): the refusal itself is reported.
    assert!(matches!(err, TieringError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("_strata/probe/"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert!(
        !text.contains("fake-secret-key-123"),
        "secret leaked: {text}"
    );
}

#[tokio::test]
async fn silent_server_fails_check_with_timeout() {
    // Accepts connections (the kernel does, from the backlog) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = StoreConfig {
        check_timeout_ms: 300,
        ..fast_config()
    };
    let store = ObjectStore::from_url_with_config(&s3_url(port), config).unwrap();
    let err = store.check().await.unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            err,
            TieringError::Unreachable {
                timeout_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(!err.to_string().contains('\n'));
    drop(listener);
}
