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
        ..StoreConfig::default()
    }
}

fn s3_url(port: u16) -> String {
    format!(
        "s3://strata-test?endpoint=http://127.0.0.1:{port}&region=us-east-1\
         &access_key_id=AK&secret_access_key=fake-secret-key-123"
    )
}

/// What the fake S3 does with every request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Reads the whole request, answers with this status line and body (an S3 XML error or
    /// nothing), and keeps the connection alive.
    Status(&'static str, &'static str),
    /// A connection reset (RST) mid-body: a PUT's upload is cut after its first 64 KiB; a
    /// GET's answer promises 1,000 body bytes and the connection is reset after 100 (and
    /// every resumed read is reset before its first byte).
    ResetMidBody,
    /// Reads the request and never answers.
    Silent,
}

const SLOW_DOWN_XML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
    <Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>";
const INTERNAL_ERROR_XML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
    <Message>We encountered an internal error. Please try again.</Message></Error>";
const TOO_MANY_REQUESTS_XML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>TooManyRequests</Code>\
    <Message>Too many requests.</Message></Error>";
const BAD_REQUEST_XML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
    <Message>Invalid argument.</Message></Error>";

/// Reads one HTTP request (head and content-length body) from `sock` into `buf`; false when
/// the client went away.
async fn read_request(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
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
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + body_len);
        return true;
    }
}

/// A scripted S3 endpoint on a free loopback port: every request gets `reply`.
async fn fake_s3(reply: Reply) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Reply::ResetMidBody = reply {
                    reset_mid_body(sock).await;
                    return;
                }
                while read_request(&mut sock, &mut buf).await {
                    match reply {
                        Reply::Status(status, body) => {
                            let content_type = if body.is_empty() {
                                ""
                            } else {
                                "content-type: application/xml\r\n"
                            };
                            let response = format!(
                                "HTTP/1.1 {status}\r\n{content_type}content-length: {}\r\n\
                                 connection: keep-alive\r\n\r\n{body}",
                                body.len()
                            );
                            if sock.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Reply::ResetMidBody => unreachable!("handled above"),
                        Reply::Silent => {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// Cuts one request mid-body with a TCP RST (SO_LINGER 0, then close).
async fn reset_mid_body(mut sock: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.starts_with("get") && !head.contains("\r\nrange: bytes=100-") {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: \"x\"\r\n\r\n";
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.write_all(&[b'x'; 100]).await;
        let _ = sock.flush().await;
    } else if head.starts_with("get") {
        // OpenDAL resumes a broken read from where it stopped; that resume is cut before
        // its first byte, every time, so the read cannot finish.
        let head = "HTTP/1.1 206 Partial Content\r\ncontent-length: 900\r\n\
                    content-range: bytes 100-999/1000\r\netag: \"x\"\r\n\r\n";
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.flush().await;
    } else {
        // Let the client get well into its body, then cut it.
        while buf.len() < end + 4 + (64 << 10) {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    // SO_LINGER 0 makes close send RST. Tokio deprecates it because a *non-zero* linger
    // blocks the thread on drop; a zero one does not.
    #[allow(deprecated)]
    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
    drop(sock);
}

type Check = fn(&TieringError) -> bool;

fn unavailable(e: &TieringError) -> bool {
    matches!(e, TieringError::Unavailable { .. })
}

/// One scripted failure: what the store must make of it.
struct Case {
    reply: Reply,
    /// Condition expected from a PUT and from a GET.
    put_is: Check,
    get_is: Check,
    retryable: bool,
    /// Must appear in both errors (the S3 error code, when there is one).
    detail: &'static str,
}

#[tokio::test]
async fn statuses_are_classified() {
    let case = |reply, put_is, get_is, retryable, detail| Case {
        reply,
        put_is,
        get_is,
        retryable,
        detail,
    };
    let cases = [
        case(
            Reply::Status("503 Service Unavailable", ""),
            unavailable,
            unavailable,
            true,
            "503",
        ),
        // S3's throttling answer: 503 with the SlowDown code in an XML body.
        case(
            Reply::Status("503 Slow Down", SLOW_DOWN_XML),
            unavailable,
            unavailable,
            true,
            "SlowDown",
        ),
        case(
            Reply::Status("500 Internal Server Error", ""),
            unavailable,
            unavailable,
            true,
            "500",
        ),
        case(
            Reply::Status("500 Internal Server Error", INTERNAL_ERROR_XML),
            unavailable,
            unavailable,
            true,
            "InternalError",
        ),
        case(
            Reply::Status("502 Bad Gateway", ""),
            unavailable,
            unavailable,
            true,
            "502",
        ),
        case(
            Reply::Status("504 Gateway Timeout", ""),
            unavailable,
            unavailable,
            true,
            "504",
        ),
        case(
            Reply::Status("429 Too Many Requests", ""),
            unavailable,
            unavailable,
            true,
            "429",
        ),
        case(
            Reply::Status("429 Too Many Requests", TOO_MANY_REQUESTS_XML),
            unavailable,
            unavailable,
            true,
            "TooManyRequests",
        ),
        // A connection dropped while the answer's body is on its way.
        case(
            Reply::ResetMidBody,
            unavailable,
            unavailable,
            true,
            "objects/x",
        ),
        case(
            Reply::Status("403 Forbidden", ""),
            |e| matches!(e, TieringError::PermissionDenied { .. }),
            |e| matches!(e, TieringError::PermissionDenied { .. }),
            false,
            "403",
        ),
        case(
            Reply::Status("404 Not Found", ""),
            // A PUT that finds nothing: the bucket is missing.
            |e| matches!(e, TieringError::Rejected { .. }),
            |e| matches!(e, TieringError::NotFound { .. }),
            false,
            "",
        ),
        case(
            Reply::Status("400 Bad Request", BAD_REQUEST_XML),
            |e| matches!(e, TieringError::Rejected { .. }),
            |e| matches!(e, TieringError::Rejected { .. }),
            false,
            "InvalidArgument",
        ),
        case(
            Reply::Status("400 Bad Request", ""),
            |e| matches!(e, TieringError::Rejected { .. }),
            |e| matches!(e, TieringError::Rejected { .. }),
            false,
            "400",
        ),
    ];
    for Case {
        reply,
        put_is,
        get_is,
        retryable,
        detail,
    } in cases
    {
        let port = fake_s3(reply).await;
        let store = ObjectStore::from_url_with_config(&s3_url(port), fast_config()).unwrap();
        // Large enough that a reset lands while it is still being sent.
        let put = store
            .put("objects/x", Bytes::from(vec![b'p'; 1 << 20]))
            .await
            .unwrap_err();
        let get = store.get("objects/x").await.unwrap_err();
        for (what, err, is) in [("put", &put, put_is), ("get", &get, get_is)] {
            println!("{reply:?} {what}: {err}");
            assert!(is(err), "{reply:?} {what}: unexpected {err:?}");
            assert_eq!(err.is_retryable(), retryable, "{reply:?} {what}: {err}");
            let text = err.to_string();
            assert!(!text.contains('\n'), "{reply:?} {what}: {text}");
            assert!(text.contains("objects/x") || matches!(err, TieringError::NotFound { .. }));
            assert!(text.contains(store.url()), "{reply:?} {what}: {text}");
            if !matches!(err, TieringError::NotFound { .. }) {
                assert!(
                    text.contains(detail),
                    "{reply:?} {what}: {text} lacks {detail:?}"
                );
            }
            assert!(
                !text.contains("fake-secret-key-123"),
                "secret leaked: {text}"
            );
        }
        let m = store.metrics().snapshot();
        assert_eq!((m.put_requests, m.put_errors), (1, 1), "{reply:?}");
        assert_eq!((m.get_requests, m.get_errors), (1, 1), "{reply:?}");
        // Temporary failures are retried (2 retries per call), permanent ones are not.
        let expected_retries = if retryable { 4 } else { 0 };
        assert_eq!(m.retries, expected_retries, "{reply:?}: {m:?}");
    }
}

/// A server that takes requests and never answers: each attempt times out, is retried, and
/// the call ends retryable — in bounded time.
#[tokio::test]
async fn silent_server_times_out_each_attempt_and_is_retryable() {
    let port = fake_s3(Reply::Silent).await;
    let config = StoreConfig {
        request_timeout_ms: 200,
        ..fast_config()
    };
    let store = ObjectStore::from_url_with_config(&s3_url(port), config).unwrap();
    let started = std::time::Instant::now();
    let err = store
        .put("objects/x", Bytes::from_static(b"payload"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    println!("after {elapsed:?}: {err}");
    assert!(unavailable(&err), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().to_lowercase().contains("timeout"), "{err}");
    let m = store.metrics().snapshot();
    assert_eq!(
        (m.put_requests, m.put_errors, m.retries),
        (1, 1, 2),
        "{m:?}"
    );
    // Three attempts of 200 ms and two short backoffs; far below the default 30 s timeout.
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

/// A multipart upload whose every request fails temporarily: retried, then aborted, and
/// counted as one multipart upload that did not complete.
#[tokio::test]
async fn failed_multipart_upload_is_aborted_and_counted() {
    let port = fake_s3(Reply::Status("503 Slow Down", SLOW_DOWN_XML)).await;
    let config = StoreConfig {
        multipart_threshold_bytes: 1,
        multipart_part_bytes: 5 << 20,
        ..fast_config()
    };
    let store = ObjectStore::from_url_with_config(&s3_url(port), config).unwrap();
    let err = store
        .put("objects/big", Bytes::from(vec![7u8; (11 << 20) + 1]))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(unavailable(&err) && err.is_retryable(), "{err:?}");
    let m = store.metrics().snapshot();
    assert_eq!((m.put_requests, m.put_errors), (1, 1), "{m:?}");
    assert_eq!(
        (
            m.multipart_uploads,
            m.multipart_initiate_requests,
            m.multipart_part_requests,
            m.multipart_complete_requests,
            m.multipart_abort_requests
        ),
        (1, 1, 3, 0, 1),
        "{m:?}"
    );
    assert!(m.retries >= 2, "{m:?}");
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
