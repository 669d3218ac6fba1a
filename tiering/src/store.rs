//! [`ObjectStore`]: object storage behind one URL.
//!
//! A thin wrapper around an OpenDAL `Operator` that:
//!
//! - builds the operator from a URL (the `--object-store` flag), rejecting unknown schemes and
//!   query keys with a message that names the URL and the problem;
//! - applies OpenDAL's `TimeoutLayer` (per request) under its `RetryLayer` (exponential backoff
//!   with jitter), in that order, as OpenDAL requires for the two to compose;
//! - turns OpenDAL errors into one-line [`TieringError`]s that name the URL (secrets redacted)
//!   and the key, and say whether to retry;
//! - counts requests, bytes, errors and retries in [`StoreMetrics`], shared by every clone;
//! - uploads a body above [`StoreConfig::multipart_threshold_bytes`] as a multipart upload
//!   (parts of [`StoreConfig::multipart_part_bytes`], [`StoreConfig::multipart_concurrency_max`]
//!   at once) on S3, GCS and Azure, and counts its initiate, part, complete and abort requests;
//! - lists a prefix ([`ObjectStore::list`]) for the orphan sweeper — never on a request path.
//!
//! # URLs
//!
//! | URL | backend |
//! | --- | --- |
//! | `fs:///abs/path`, `fs://rel/path` | local directory (relative to the process's working directory, resolved once at start) |
//! | `memory://` | process memory; every `from_url` makes a new, empty store (clones share it) |
//! | `s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1` | S3 or an S3-compatible server, path-style addressing |
//! | `gcs://bucket[/prefix]?credential_path=/path/key.json` | Google Cloud Storage |
//! | `azblob://container[/prefix]?account_name=…&endpoint=…` | Azure Blob Storage |
//! | `webhdfs://host:port/path?user_name=…` | HDFS through its WebHDFS REST API |
//!
//! Query keys per scheme:
//!
//! - `s3`: `endpoint`, `region` (else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1` when
//!   an endpoint is given), `access_key_id`, `secret_access_key`, `session_token`,
//!   `allow_anonymous=true` (unsigned requests), `virtual_host_style=true`. Credentials come
//!   from the query, else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
//!   else OpenDAL's default AWS chain (profile, web identity, instance metadata).
//! - `gcs`: `credential_path`, `credential` (base64 service-account JSON), `endpoint`, `scope`,
//!   `service_account`, `token`, `allow_anonymous=true`.
//! - `azblob`: `endpoint` (default `https://<account_name>.blob.core.windows.net`),
//!   `account_name`, `account_key`, `sas_token`.
//! - `webhdfs`: `user_name`, `delegation`, `tls=true` (use `https://` for the endpoint),
//!   `disable_list_batch=true` (plain LISTSTATUS, for namenodes or gateways without
//!   LISTSTATUS_BATCH), `atomic_write_dir=/abs/hdfs/dir` (write each object there, then rename
//!   it into place, so a crashed upload never leaves a partial object under its key).
//! - `fs`, `memory`: none.
//!
//! Secrets (`secret_access_key`, `session_token`, `credential`, `token`, `account_key`,
//! `sas_token`, `delegation`, and any user-info in the URL) never appear in [`ObjectStore::url`]
//! or in error messages. `hdfs://` (the native client) is not built in; use `webhdfs://`.
//!
//! # Keys
//!
//! Keys are relative paths (`objects/0001/…`): not empty, at most [`KEY_BYTES_MAX`] bytes, no
//! leading or trailing `/`, no empty, `.` or `..` segments, no control characters.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opendal::layers::{RetryEvent, RetryLayer, TimeoutLayer};
use opendal::{services, EntryMode, ErrorKind, Operator};
use tracing::debug;

use crate::pool::ReadPool;
use crate::TieringError;

/// Longest key accepted (S3's limit).
pub const KEY_BYTES_MAX: usize = 1024;
/// The `fs://` backend's folder for in-flight writes (renamed into place when complete).
macro_rules! fs_tmp_folder {
    () => {
        ".strata-tmp"
    };
}
const FS_TMP_FOLDER: &str = fs_tmp_folder!();
/// [`FS_TMP_FOLDER`] as a key prefix, for listings that must skip it.
const FS_TMP_DIR: &str = concat!(fs_tmp_folder!(), "/");
/// Key prefix of the start-up probe objects written (and deleted) by [`ObjectStore::check`].
pub const PROBE_PREFIX: &str = "_strata/probe/";

/// Query keys whose values are secrets: redacted in [`ObjectStore::url`] and error messages.
const SECRET_QUERY_KEYS: &[&str] = &[
    "secret_access_key",
    "session_token",
    "credential",
    "token",
    "account_key",
    "sas_token",
    "delegation",
];
/// Secrets shorter than this are not scrubbed out of error details (a two-letter test key
/// would mangle ordinary words); real credentials are far longer.
const SECRET_SCRUB_BYTES_MIN: usize = 8;
const REDACTED: &str = "REDACTED";

/// Timeouts, retry policy and multipart upload. The defaults suit a broker; tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bound on each attempt of a request (OpenDAL `TimeoutLayer`, both control and IO; a
    /// multipart upload bounds each part).
    pub request_timeout_ms: u64,
    /// Retries after the first attempt of a request that failed temporarily.
    pub retry_attempts_max: usize,
    /// First backoff delay; each retry doubles it, with jitter.
    pub retry_delay_ms_min: u64,
    /// Largest backoff delay.
    pub retry_delay_ms_max: u64,
    /// Bound on the whole start-up probe ([`ObjectStore::check`]).
    pub check_timeout_ms: u64,
    /// A PUT of a body larger than this is a multipart upload on backends that have one
    /// (S3, GCS: initiate + parts + complete; Azure: blocks + block list); at or below it,
    /// one request. `u64::MAX` turns multipart off.
    pub multipart_threshold_bytes: u64,
    /// Size of each part but the last (raised to the backend's minimum, 5 MiB on S3 and GCS).
    pub multipart_part_bytes: usize,
    /// Parts of one upload in flight at once.
    pub multipart_concurrency_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            retry_attempts_max: 4,
            retry_delay_ms_min: 100,
            retry_delay_ms_max: 5_000,
            check_timeout_ms: 5_000,
            // Every part is a billed PUT-class request: a compacted segment (256 MiB) goes up
            // in one PUT (S3 takes up to 5 GiB), larger bodies in 64 MiB parts.
            multipart_threshold_bytes: 1 << 30,
            multipart_part_bytes: 64 << 20,
            multipart_concurrency_max: 4,
        }
    }
}

/// The kind of request an error or counter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Put,
    Get,
    Delete,
    List,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Put => "PUT",
            Self::Get => "GET",
            Self::Delete => "DELETE",
            Self::List => "LIST",
        })
    }
}

/// Request counters, shared by every clone of an [`ObjectStore`]. Counts are of calls to
/// `ObjectStore` (one call may be several HTTP attempts; `retries` counts the extra ones).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    put_requests: AtomicU64,
    put_bytes: AtomicU64,
    put_errors: AtomicU64,
    put_duration_us: AtomicU64,
    get_requests: AtomicU64,
    get_bytes: AtomicU64,
    get_errors: AtomicU64,
    get_duration_us: AtomicU64,
    delete_requests: AtomicU64,
    delete_errors: AtomicU64,
    list_requests: AtomicU64,
    list_errors: AtomicU64,
    list_duration_us: AtomicU64,
    list_objects: AtomicU64,
    multipart_uploads: AtomicU64,
    multipart_initiate_requests: AtomicU64,
    multipart_part_requests: AtomicU64,
    multipart_complete_requests: AtomicU64,
    multipart_abort_requests: AtomicU64,
    retries: AtomicU64,
}

/// A plain copy of [`StoreMetrics`] at one moment, for rendering (e.g. as Prometheus
/// counters). All values only grow.
///
/// What goes over the wire: a PUT call is one request, or — when `multipart_uploads` counts
/// it — an initiate, its parts, a complete (and an abort when it failed); see
/// [`StoreMetricsSnapshot::write_requests`]. Attempts the retry layer repeated are in
/// `retries` (for a multipart upload, a repeated part or complete; OpenDAL does not say
/// which), not in the per-op counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetricsSnapshot {
    pub put_requests: u64,
    /// Body bytes of successful PUTs.
    pub put_bytes: u64,
    pub put_errors: u64,
    /// Total time spent in PUT calls, successful or not, in microseconds.
    pub put_duration_us: u64,
    /// GETs, whole-object and ranged.
    pub get_requests: u64,
    /// Bytes returned by successful GETs.
    pub get_bytes: u64,
    pub get_errors: u64,
    /// Total time spent in GET calls, successful or not, in microseconds.
    pub get_duration_us: u64,
    pub delete_requests: u64,
    pub delete_errors: u64,
    /// Calls to [`ObjectStore::list`] (one call may be several paged LIST requests).
    pub list_requests: u64,
    pub list_errors: u64,
    /// Total time spent in LIST calls, successful or not, in microseconds.
    pub list_duration_us: u64,
    /// Objects returned by successful LISTs.
    pub list_objects: u64,
    /// PUT calls (counted in `put_requests` too) sent as a multipart upload rather than one
    /// request. Each is, on the wire, the requests counted below.
    pub multipart_uploads: u64,
    /// "Create multipart upload" requests (S3, GCS; Azure block blobs have none).
    pub multipart_initiate_requests: u64,
    /// Part uploads (S3 UploadPart, Azure Put Block): exact for uploads that succeeded; a
    /// failed upload counts the parts it was split into, an upper bound of what was sent.
    pub multipart_part_requests: u64,
    /// "Complete multipart upload" (Azure: Put Block List) requests of successful uploads.
    pub multipart_complete_requests: u64,
    /// Abort requests sent after a multipart upload failed, so its parts are not billed.
    pub multipart_abort_requests: u64,
    /// Attempts repeated by the retry layer after a temporary failure.
    pub retries: u64,
}

impl StoreMetricsSnapshot {
    /// PUTs that were one request each (not multipart).
    pub fn single_put_requests(&self) -> u64 {
        self.put_requests.saturating_sub(self.multipart_uploads)
    }

    /// Write requests sent, first attempts only: single PUTs plus every multipart request.
    pub fn write_requests(&self) -> u64 {
        self.single_put_requests()
            + self.multipart_initiate_requests
            + self.multipart_part_requests
            + self.multipart_complete_requests
            + self.multipart_abort_requests
    }
}

impl StoreMetrics {
    pub fn snapshot(&self) -> StoreMetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreMetricsSnapshot {
            put_requests: load(&self.put_requests),
            put_bytes: load(&self.put_bytes),
            put_errors: load(&self.put_errors),
            put_duration_us: load(&self.put_duration_us),
            get_requests: load(&self.get_requests),
            get_bytes: load(&self.get_bytes),
            get_errors: load(&self.get_errors),
            get_duration_us: load(&self.get_duration_us),
            delete_requests: load(&self.delete_requests),
            delete_errors: load(&self.delete_errors),
            list_requests: load(&self.list_requests),
            list_errors: load(&self.list_errors),
            list_duration_us: load(&self.list_duration_us),
            list_objects: load(&self.list_objects),
            multipart_uploads: load(&self.multipart_uploads),
            multipart_initiate_requests: load(&self.multipart_initiate_requests),
            multipart_part_requests: load(&self.multipart_part_requests),
            multipart_complete_requests: load(&self.multipart_complete_requests),
            multipart_abort_requests: load(&self.multipart_abort_requests),
            retries: load(&self.retries),
        }
    }

    fn record_multipart(&self, plan: &MultipartPlan, ok: bool, aborted: bool) {
        let add = |c: &AtomicU64, n: u64| c.fetch_add(n, Ordering::Relaxed);
        add(&self.multipart_uploads, 1);
        add(&self.multipart_initiate_requests, u64::from(plan.initiate));
        add(&self.multipart_part_requests, plan.parts);
        add(&self.multipart_complete_requests, u64::from(ok));
        add(&self.multipart_abort_requests, u64::from(aborted));
    }

    fn record(&self, op: StoreOp, ok: bool, bytes: u64, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (requests, errors, bytes_counter, duration) = match op {
            StoreOp::Put => (
                &self.put_requests,
                &self.put_errors,
                Some(&self.put_bytes),
                Some(&self.put_duration_us),
            ),
            StoreOp::Get => (
                &self.get_requests,
                &self.get_errors,
                Some(&self.get_bytes),
                Some(&self.get_duration_us),
            ),
            StoreOp::Delete => (&self.delete_requests, &self.delete_errors, None, None),
            // For a LIST the "bytes" are the number of objects returned.
            StoreOp::List => (
                &self.list_requests,
                &self.list_errors,
                Some(&self.list_objects),
                Some(&self.list_duration_us),
            ),
        };
        requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            errors.fetch_add(1, Ordering::Relaxed);
        } else if let Some(counter) = bytes_counter {
            counter.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(counter) = duration {
            counter.fetch_add(us, Ordering::Relaxed);
        }
    }
}

tokio::task_local! {
    /// Retries the `RetryLayer` made for the store call running in this task (see
    /// [`counting_retries`]); the layer's notifications run in the caller's task.
    static CALL_RETRIES: Cell<u32>;
}

/// Runs one store call and returns how many times the retry layer repeated (part of) it.
async fn counting_retries<T>(call: impl Future<Output = T>) -> (T, u32) {
    CALL_RETRIES
        .scope(Cell::new(0), async move {
            let out = call.await;
            (out, CALL_RETRIES.with(Cell::get))
        })
        .await
}

/// Counts every retry the `RetryLayer` makes, and logs it at debug level: the final error is
/// logged once by whoever handles it, and the `retries` counter shows a struggling store.
struct RetryCounter {
    metrics: Arc<StoreMetrics>,
    url: String,
    secrets: Arc<[String]>,
}

impl opendal::layers::RetryInterceptor for RetryCounter {
    fn intercept(&self, event: RetryEvent<'_>) {
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        let _ = CALL_RETRIES.try_with(|n| n.set(n.get() + 1));
        debug!(
            store = %self.url,
            op = ?event.op,
            attempt = event.attempt,
            retry_after_ms = event.retry_after.as_millis() as u64,
            error = %describe(event.err, &self.secrets),
            "object store request failed; retrying"
        );
    }
}

/// One object found by [`ObjectStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// The key, relative to the store root (what [`ObjectStore::put`] was given).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Object storage behind one URL. Cheap to clone; clones share the connection pool and the
/// counters.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Timeout + retry: every steady-state request.
    op: Operator,
    /// Timeout only: the start-up probe, which should fail fast and say why.
    probe_op: Operator,
    /// The URL with secrets redacted.
    url: String,
    /// Secret values to scrub out of error details.
    secrets: Arc<[String]>,
    metrics: Arc<StoreMetrics>,
    config: StoreConfig,
    /// How this backend uploads a large body, or `None` when it has no multipart upload
    /// (fs, memory, webhdfs: one write).
    multipart: Option<MultipartShape>,
    /// The directory of an `fs://` store: its deletes shrink large files first.
    fs_root: Option<PathBuf>,
    /// Recycled buffers for GETs that arrive in pieces (see `pool`).
    read_pool: Arc<ReadPool>,
}

/// How a backend's multipart upload looks on the wire.
#[derive(Clone, Copy, Debug)]
struct MultipartShape {
    /// One "create upload" request before the parts (S3, GCS; not Azure block blobs).
    initiate: bool,
    /// The smallest part the backend accepts; OpenDAL raises smaller chunks to it.
    part_bytes_min: usize,
}

/// One multipart upload, as planned before it starts.
#[derive(Debug)]
struct MultipartPlan {
    initiate: bool,
    part_bytes: usize,
    parts: u64,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// OpenDAL's facade only installs its HTTP transport and service registry by itself with its
/// `auto-register-services` feature, which the workspace turns off; without this the HTTP
/// services (S3, GCS, Azure, WebHDFS) fail every request with "default HTTP transport is not
/// installed". First call wins; later calls are no-ops.
fn install_opendal_defaults() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(opendal::install_default);
}

impl ObjectStore {
    /// fs:///abs/path or fs://relative/path (relative to the process cwd); memory://;
    /// s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1; gcs://bucket[/prefix];
    /// azblob://container[/prefix]; webhdfs://host:port/path. See the module docs for the
    /// query keys. Does no IO except creating an `fs://` root directory; call
    /// [`ObjectStore::check`] to probe the store.
    pub fn from_url(url: &str) -> Result<ObjectStore, TieringError> {
        Self::from_url_with_config(url, StoreConfig::default())
    }

    /// [`ObjectStore::from_url`] with explicit timeouts and retry policy.
    pub fn from_url_with_config(
        url: &str,
        config: StoreConfig,
    ) -> Result<ObjectStore, TieringError> {
        install_opendal_defaults();
        let (redacted, mut secrets) = redact(url);
        let bad = |reason: String| TieringError::BadUrl {
            url: redacted.clone(),
            reason,
        };
        let target = parse_url(url).map_err(bad)?;
        secrets.extend(target.env_secrets.iter().cloned());
        secrets.retain(|s| s.len() >= SECRET_SCRUB_BYTES_MIN);
        let secrets: Arc<[String]> = secrets.into();

        let timeout = Duration::from_millis(config.request_timeout_ms);
        let fs_root = match &target.backend {
            Backend::Fs(_, root) => Some(root.clone()),
            _ => None,
        };
        let base = target
            .operator()
            .map_err(|e| bad(describe(&e, &secrets)))?
            .layer(
                TimeoutLayer::new()
                    .with_timeout(timeout)
                    .with_io_timeout(timeout),
            );
        let metrics = Arc::new(StoreMetrics::default());
        let multipart = multipart_shape(&base);
        let probe_op = base.clone();
        let op = base.layer(
            RetryLayer::new()
                .with_jitter()
                .with_min_delay(Duration::from_millis(config.retry_delay_ms_min))
                .with_max_delay(Duration::from_millis(config.retry_delay_ms_max))
                .with_max_times(config.retry_attempts_max)
                .with_notify(RetryCounter {
                    metrics: metrics.clone(),
                    url: redacted.clone(),
                    secrets: secrets.clone(),
                }),
        );
        debug!(store = %redacted, "object store configured");
        Ok(ObjectStore {
            inner: Arc::new(Inner {
                op,
                probe_op,
                url: redacted,
                secrets,
                metrics,
                config,
                multipart,
                fs_root,
                read_pool: Arc::default(),
            }),
        })
    }

    /// The URL this store was built from, with secrets replaced by `REDACTED`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// Probes the store once, at start: writes a small object under [`PROBE_PREFIX`], reads it
    /// back, compares, and deletes it — so a wrong endpoint, a missing bucket and missing
    /// write, read or delete permissions all surface before the broker serves. The whole probe
    /// is bounded by `check_timeout_ms` and is not retried, so an unreachable endpoint fails
    /// fast with a one-line error.
    pub async fn check(&self) -> Result<(), TieringError> {
        let id = uuid::Uuid::new_v4();
        let key = format!("{PROBE_PREFIX}{id}");
        let body = Bytes::from(format!("strata start-up probe {id}\n"));
        let probe = async {
            let op = &self.inner.probe_op;
            self.put_on(op, &key, body.clone()).await?;
            let got = self.read_on(op, &key, None).await?;
            if got != body {
                return Err(TieringError::ProbeMismatch {
                    url: self.inner.url.clone(),
                    key: key.clone(),
                    put: body.len(),
                    got: got.len(),
                });
            }
            self.delete_on(op, &key).await
        };
        let timeout_ms = self.inner.config.check_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), probe).await {
            Ok(result) => result,
            Err(_elapsed) => Err(TieringError::Unreachable {
                url: self.inner.url.clone(),
                timeout_ms,
            }),
        }
    }

    /// Writes `body` as the object `key`, replacing any object there. On an `fs://` store the
    /// object appears atomically (written to a temporary file, fsynced, renamed).
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), TieringError> {
        self.put_on(&self.inner.op, key, body).await
    }

    /// Reads the whole object `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, TieringError> {
        self.read_on(&self.inner.op, key, None).await
    }

    /// Reads bytes `range` of the object `key`. Returns exactly `range.end - range.start`
    /// bytes or an error ([`TieringError::RangeNotSatisfied`] when the object is shorter). An
    /// empty range returns no bytes without a request.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TieringError> {
        check_key(key)?;
        if range.start > range.end {
            return Err(TieringError::RangeNotSatisfied {
                url: self.inner.url.clone(),
                key: key.to_owned(),
                start: range.start,
                end: range.end,
                detail: "the range is reversed".into(),
            });
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        self.read_on(&self.inner.op, key, Some(range)).await
    }

    /// Deletes the object `key`. Deleting an object that does not exist succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), TieringError> {
        self.delete_on(&self.inner.op, key).await
    }

    /// Lists every object whose key starts with `prefix`, recursively, sorted by key. Only for
    /// the orphan sweeper and operators: the request paths never LIST (the metadata index is
    /// the truth about what exists).
    ///
    /// - `prefix` is a plain key prefix: `""` lists the whole store, `"objects/"` one folder,
    ///   `"objects/00"` every key beginning so (matched by string, not by folder).
    /// - Keys are relative to the store root (the URL's path), the same keys [`Self::put`]
    ///   takes; folders are not returned, only objects, with their size in bytes.
    /// - Start-up probes under [`PROBE_PREFIX`] *are* returned when the prefix covers them (a
    ///   probe left by a crash during `check` is garbage too). The `fs://` backend's
    ///   temporary-write folder (`.strata-tmp/`, in-flight writes) is never returned.
    /// - The whole listing is held in memory; for a bucket of millions of objects call it per
    ///   prefix.
    /// - Counted as one [`StoreOp::List`] request per call, however many pages the backend
    ///   needed (S3 returns 1,000 keys a page; OpenDAL pages internally), plus a stat per
    ///   object on backends whose listing carries no sizes (`memory://`), which is not counted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, TieringError> {
        check_prefix(prefix)?;
        let started = Instant::now();
        let (result, retried) = counting_retries(self.list_inner(prefix)).await;
        let n = result.as_ref().map_or(0, |v| v.len() as u64);
        self.inner
            .metrics
            .record(StoreOp::List, result.is_ok(), n, started);
        result.map_err(|e| self.classify(StoreOp::List, prefix, e, retried))
    }

    async fn list_inner(&self, prefix: &str) -> opendal::Result<Vec<ListedObject>> {
        let op = &self.inner.op;
        // List the folder that holds the prefix and filter by string: backends disagree on
        // what listing a path that is not a folder means, a string match does not.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        let entries = match op.list_with(dir).recursive(true).await {
            Ok(entries) => entries,
            // A folder that does not exist holds no objects (fs:// says NotFound).
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let key = entry.path().trim_start_matches('/');
            if key.is_empty()
                || key.ends_with('/')
                || !key.starts_with(prefix)
                || key.starts_with(FS_TMP_DIR)
            {
                continue;
            }
            let meta = entry.metadata();
            let size = match meta.mode() {
                EntryMode::DIR => continue,
                EntryMode::FILE if meta.content_length() > 0 => meta.content_length(),
                // The listing did not say (memory://), or said 0, which OpenDAL cannot tell
                // from "unknown": ask. An object deleted meanwhile is simply not listed.
                _ => match op.stat(key).await {
                    Ok(m) if m.mode() == EntryMode::DIR => continue,
                    Ok(m) => m.content_length(),
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            out.push(ListedObject {
                key: key.to_owned(),
                size,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn put_on(&self, op: &Operator, key: &str, body: Bytes) -> Result<(), TieringError> {
        check_key(key)?;
        let started = Instant::now();
        let len = body.len() as u64;
        let ((result, multipart), retried) = counting_retries(async {
            if let Some(root) = &self.inner.fs_root {
                let (root, owned, bytes) = (root.clone(), key.to_owned(), body.clone());
                let paced =
                    tokio::task::spawn_blocking(move || fs_put_paced(&root, &owned, &bytes));
                match paced.await {
                    Ok(Ok(())) => return (Ok(()), None),
                    // OpenDAL's own write below fails the same way, and its error carries
                    // the retry layer's classification.
                    Ok(Err(err)) => {
                        debug!(key, %err, "paced fs write failed; writing through OpenDAL")
                    }
                    Err(err) => {
                        debug!(key, %err, "paced fs write task failed; writing through OpenDAL")
                    }
                }
            }
            match self.multipart_plan(len) {
                None => (op.write(key, body).await.map(|_| ()), None),
                Some(plan) => {
                    let (result, aborted) = self.put_multipart(op, key, body, &plan).await;
                    (result, Some((plan, aborted)))
                }
            }
        })
        .await;
        let metrics = &self.inner.metrics;
        metrics.record(StoreOp::Put, result.is_ok(), len, started);
        if let Some((plan, aborted)) = multipart {
            metrics.record_multipart(&plan, result.is_ok(), aborted);
        }
        result.map_err(|e| self.classify(StoreOp::Put, key, e, retried))
    }

    /// `Some` when a body of `len` bytes goes as a multipart upload: the backend has one,
    /// the body is above the threshold, and it spans more than one part (OpenDAL sends a
    /// body of one part as a single PUT whatever the writer's settings).
    fn multipart_plan(&self, len: u64) -> Option<MultipartPlan> {
        let shape = self.inner.multipart?;
        let config = &self.inner.config;
        let part_bytes = config.multipart_part_bytes.max(shape.part_bytes_min).max(1);
        let parts = len.div_ceil(part_bytes as u64);
        (len > config.multipart_threshold_bytes && parts > 1).then_some(MultipartPlan {
            initiate: shape.initiate,
            part_bytes,
            parts,
        })
    }

    /// Uploads `body` in parts, `multipart_concurrency_max` at once. A failed upload is
    /// aborted (best effort, once) so the store does not keep — and bill — its parts; S3
    /// buckets should still have a lifecycle rule for incomplete uploads, since a crash
    /// skips the abort. Returns the result and whether an abort was sent.
    async fn put_multipart(
        &self,
        op: &Operator,
        key: &str,
        body: Bytes,
        plan: &MultipartPlan,
    ) -> (opendal::Result<()>, bool) {
        let mut writer = match op
            .writer_with(key)
            .chunk(plan.part_bytes)
            .concurrent(self.inner.config.multipart_concurrency_max.max(1))
            .await
        {
            Ok(w) => w,
            Err(e) => return (Err(e), false),
        };
        let result = match writer.write(body).await {
            Ok(()) => writer.close().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => (Ok(()), false),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    debug!(
                        store = %self.inner.url,
                        key,
                        error = %describe(&abort, &self.inner.secrets),
                        "aborting a failed multipart upload failed too"
                    );
                }
                (Err(e), true)
            }
        }
    }

    async fn read_on(
        &self,
        op: &Operator,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, TieringError> {
        check_key(key)?;
        let started = Instant::now();
        let (result, retried) = counting_retries(async {
            match &range {
                None => op.read(key).await,
                Some(r) => op.read_with(key).range(r.clone()).await,
            }
        })
        .await;
        let result = result.map(|buffer| self.inner.read_pool.gather(buffer.len(), buffer));
        let short = match (&result, &range) {
            (Ok(bytes), Some(r)) if bytes.len() as u64 != r.end - r.start => Some(bytes.len()),
            _ => None,
        };
        let ok = result.is_ok() && short.is_none();
        let got = result.as_ref().map_or(0, |b| b.len() as u64);
        self.inner.metrics.record(StoreOp::Get, ok, got, started);
        if let (Some(got), Some(r)) = (short, &range) {
            return Err(TieringError::RangeNotSatisfied {
                url: self.inner.url.clone(),
                key: key.to_owned(),
                start: r.start,
                end: r.end,
                detail: format!("the store returned {got} bytes"),
            });
        }
        match (result, range) {
            (Ok(bytes), _) => Ok(bytes),
            (Err(e), Some(r)) if e.kind() == ErrorKind::RangeNotSatisfied => {
                Err(TieringError::RangeNotSatisfied {
                    url: self.inner.url.clone(),
                    key: key.to_owned(),
                    start: r.start,
                    end: r.end,
                    detail: describe(&e, &self.inner.secrets),
                })
            }
            (Err(e), Some(r)) if e.kind() == ErrorKind::Unexpected => {
                Err(self.explain_range_failure(key, r, e, retried).await)
            }
            (Err(e), _) => Err(self.classify(StoreOp::Get, key, e, retried)),
        }
    }

    /// A ranged GET that runs past the end of an object does not fail the same way on every
    /// backend: S3 answers `206` with the bytes it has, which OpenDAL reports as a generic
    /// "got too little data" error. Rather than match on that message, ask the store (once,
    /// without retries, only on this failure path) how long the object is.
    async fn explain_range_failure(
        &self,
        key: &str,
        range: Range<u64>,
        err: opendal::Error,
        retried: u32,
    ) -> TieringError {
        match self.inner.probe_op.stat(key).await {
            Ok(meta) if meta.content_length() < range.end => TieringError::RangeNotSatisfied {
                url: self.inner.url.clone(),
                key: key.to_owned(),
                start: range.start,
                end: range.end,
                detail: format!("the object has {} bytes", meta.content_length()),
            },
            Err(stat_err) if stat_err.kind() == ErrorKind::NotFound => TieringError::NotFound {
                url: self.inner.url.clone(),
                key: key.to_owned(),
            },
            _ => self.classify(StoreOp::Get, key, err, retried),
        }
    }

    async fn delete_on(&self, op: &Operator, key: &str) -> Result<(), TieringError> {
        check_key(key)?;
        let started = Instant::now();
        if let Some(root) = &self.inner.fs_root {
            let path = root.join(key);
            // Shrunk in steps first, so freeing its blocks does not stall the WAL's fdatasyncs
            // on the same disk (the embedded default; see `strata_wal::shrink_for_delete`).
            // Best effort: only unreferenced objects are deleted, a crash mid-way leaves a
            // short orphan the sweeper removes, and the delete below reports what matters.
            let _ = tokio::task::spawn_blocking(move || strata_wal::shrink_for_delete(&path)).await;
        }
        let (result, retried) = counting_retries(op.delete(key)).await;
        self.inner
            .metrics
            .record(StoreOp::Delete, result.is_ok(), 0, started);
        result.map_err(|e| self.classify(StoreOp::Delete, key, e, retried))
    }

    /// Maps an OpenDAL error to a condition, given how often the retry layer repeated the
    /// call (`retried`).
    ///
    /// OpenDAL's `RetryLayer` marks *every* error that leaves it as "persistent", whatever it
    /// was before, so after it the status alone cannot tell a 503 that outlived its retries
    /// from a 400. But the layer retries exactly the temporary errors (OpenDAL's S3 service
    /// marks 500/502/503/504, 499, 429, `SlowDown`, `RequestTimeout`, `InternalError`,
    /// timeouts and dropped connections temporary; 400, 403, 404 and other 4xx not), so a
    /// call it did not retry failed permanently, and one it retried failed temporarily —
    /// unless the last attempt met a permanent kind (denied, not found, bad configuration),
    /// which is classified by kind. Without a retry layer (the start-up probe) the error
    /// keeps its own status. A store configured with no retries cannot tell, and errs toward
    /// retrying the catch-all `Unexpected` kind: the WAL absorbs that as back-pressure.
    fn classify(&self, op: StoreOp, key: &str, err: opendal::Error, retried: u32) -> TieringError {
        let temporary = err.is_temporary()
            || err.kind() == ErrorKind::RateLimited
            || retried > 0
            || (self.inner.config.retry_attempts_max == 0 && !err.is_permanent());
        let url = self.inner.url.clone();
        let key = key.to_owned();
        let detail = describe(&err, &self.inner.secrets);
        match err.kind() {
            ErrorKind::NotFound if op != StoreOp::Put => TieringError::NotFound { url, key },
            ErrorKind::PermissionDenied => TieringError::PermissionDenied {
                url,
                op,
                key,
                detail,
            },
            ErrorKind::ConfigInvalid => TieringError::ConfigInvalid {
                url,
                op,
                key,
                detail,
            },
            ErrorKind::RateLimited => TieringError::Unavailable {
                url,
                op,
                key,
                detail,
            },
            ErrorKind::Unexpected | ErrorKind::Conflict if temporary => TieringError::Unavailable {
                url,
                op,
                key,
                detail,
            },
            // A PUT that finds nothing means the bucket or container itself is missing.
            _ => TieringError::Rejected {
                url,
                op,
                key,
                detail,
            },
        }
    }
}

/// The multipart shape of the operator's backend, from its scheme and capabilities.
fn multipart_shape(op: &Operator) -> Option<MultipartShape> {
    let info = op.info();
    let cap = info.capability();
    if !cap.write_can_multi {
        return None;
    }
    let initiate = match info.scheme() {
        "s3" | "gcs" => true,
        "azblob" => false,
        // fs writes chunks to one local file; webhdfs is not used with multi-writes here.
        _ => return None,
    };
    Some(MultipartShape {
        initiate,
        part_bytes_min: cap.write_multi_min_size.unwrap_or(1),
    })
}

/// One line describing an OpenDAL error and its causes, with secrets scrubbed.
fn describe(err: &opendal::Error, secrets: &[String]) -> String {
    // OpenDAL's Display prints its own fields and the first source; the deeper causes (such
    // as "Connection refused") are only in the source chain.
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err).and_then(|s| s.source());
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets {
        line = line.replace(secret.as_str(), REDACTED);
    }
    line
}

/// A listing prefix: empty, or a key prefix (it may end with `/`) with no empty, `.` or `..`
/// segment except an empty last one.
fn check_prefix(prefix: &str) -> Result<(), TieringError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

fn check_key(key: &str) -> Result<(), TieringError> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key.len() > KEY_BYTES_MAX {
        "it is longer than 1024 bytes"
    } else if key.starts_with('/') || key.ends_with('/') {
        "it starts or ends with '/'"
    } else if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        "it has an empty, '.' or '..' segment"
    } else if key.chars().any(char::is_control) {
        "it has a control character"
    } else {
        return Ok(());
    };
    Err(TieringError::BadKey {
        key: key.escape_debug().to_string(),
        reason: reason.into(),
    })
}

/// Returns the URL with secret query values and user-info replaced by `REDACTED`, and the
/// secret values (percent-decoded) so they can be scrubbed from error messages too.
fn redact(raw: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let (head, query) = match raw.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (raw, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    if let Some((_, password)) = userinfo.split_once(':') {
                        secrets.push(password.to_owned());
                    }
                    format!("{scheme}://{REDACTED}@{host}{path}")
                }
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let k = pair.split_once('=').map_or(pair, |(k, _)| k);
                if SECRET_QUERY_KEYS.contains(&k) {
                    for (_, value) in url::form_urlencoded::parse(pair.as_bytes()) {
                        secrets.push(value.into_owned());
                    }
                    format!("{k}={REDACTED}")
                } else {
                    pair.to_owned()
                }
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    (out, secrets)
}

/// A parsed URL, ready to become an operator.
struct Target {
    backend: Backend,
    /// Secret values taken from the environment, to scrub from error messages.
    env_secrets: Vec<String>,
}

enum Backend {
    /// With the root directory, for the paced puts and stepwise deletes of `fs://`.
    Fs(services::Fs, PathBuf),
    Memory(services::Memory),
    // Boxed: the S3 builder is several times larger than the others.
    S3(Box<services::S3>),
    Gcs(services::Gcs),
    Azblob(services::Azblob),
    Webhdfs(services::Webhdfs),
}

impl Target {
    fn operator(self) -> opendal::Result<Operator> {
        match self.backend {
            Backend::Fs(b, _) => Operator::new(b),
            Backend::Memory(b) => Operator::new(b),
            Backend::S3(b) => Operator::new(*b),
            Backend::Gcs(b) => Operator::new(b),
            Backend::Azblob(b) => Operator::new(b),
            Backend::Webhdfs(b) => Operator::new(b),
        }
    }
}

const S3_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "allow_anonymous",
    "virtual_host_style",
];
const GCS_KEYS: &[&str] = &[
    "credential_path",
    "credential",
    "endpoint",
    "scope",
    "service_account",
    "token",
    "allow_anonymous",
];
const AZBLOB_KEYS: &[&str] = &["endpoint", "account_name", "account_key", "sas_token"];
const WEBHDFS_KEYS: &[&str] = &[
    "user_name",
    "delegation",
    "tls",
    "disable_list_batch",
    "atomic_write_dir",
];

fn parse_url(raw: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(
            "it has no scheme; use fs:///path, memory://, s3://bucket, gcs://bucket, \
             azblob://container or webhdfs://host:port/path"
                .into(),
        );
    };
    let env_secrets = Vec::new();
    let backend = match scheme {
        // fs URLs are paths, not network locations: parse by hand so `fs://rel/path` keeps
        // `rel` as a directory rather than a host name.
        "fs" => {
            let (builder, root) = fs_builder(rest)?;
            Backend::Fs(builder, root)
        }
        "memory" => {
            if !rest.is_empty() {
                return Err("memory:// takes no path or query".into());
            }
            Backend::Memory(services::Memory::default())
        }
        "s3" | "gcs" | "azblob" | "webhdfs" => {
            let url = url::Url::parse(raw).map_err(|e| format!("it does not parse: {e}"))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(
                    "credentials in the URL's user-info are not accepted; use the query or the environment"
                        .into(),
                );
            }
            if url.fragment().is_some() {
                return Err("it has a #fragment".into());
            }
            let known = match scheme {
                "s3" => S3_KEYS,
                "gcs" => GCS_KEYS,
                "azblob" => AZBLOB_KEYS,
                _ => WEBHDFS_KEYS,
            };
            let query = query_map(scheme, &url, known)?;
            return match scheme {
                "s3" => s3_builder(&url, query),
                "gcs" => Ok(Target {
                    backend: Backend::Gcs(gcs_builder(&url, query)?),
                    env_secrets,
                }),
                "azblob" => Ok(Target {
                    backend: Backend::Azblob(azblob_builder(&url, query)?),
                    env_secrets,
                }),
                _ => Ok(Target {
                    backend: Backend::Webhdfs(webhdfs_builder(&url, query)?),
                    env_secrets,
                }),
            };
        }
        "hdfs" => {
            return Err(
                "hdfs:// needs the native HDFS client, which this build does not include; \
                 use webhdfs://namenode:9870/path"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "unknown scheme `{other}`; use fs, memory, s3, gcs, azblob or webhdfs"
            ))
        }
    };
    Ok(Target {
        backend,
        env_secrets,
    })
}

fn fs_builder(rest: &str) -> Result<(services::Fs, PathBuf), String> {
    if rest.contains('?') || rest.contains('#') {
        return Err("fs:// takes no query keys or fragment".into());
    }
    if rest.is_empty() {
        return Err("fs:// needs a directory, e.g. fs:///var/lib/strata/objects".into());
    }
    let path = std::path::Path::new(rest);
    let root = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("the working directory is unknown ({e})"))?;
        cwd.join(path)
    };
    let root_str = root
        .to_str()
        .ok_or_else(|| "the path is not valid UTF-8".to_string())?;
    // Objects are written to a temporary file in the same filesystem and renamed into
    // place, so a crash never leaves a half-written object under its real key.
    let tmp = root.join(FS_TMP_FOLDER);
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| "the path is not valid UTF-8".to_string())?;
    let builder = services::Fs::default()
        .root(root_str)
        .atomic_write_dir(tmp_str);
    Ok((builder, root))
}

/// An `fs://` object is written this many bytes at a time, each step's writeback started at
/// once and the one before it waited for ([`fs_put_paced`]).
const FS_WRITE_STEP_BYTES: usize = 1 << 20;

/// Writes `body` as the object `key` under `root` the way OpenDAL's fs backend does (a
/// temporary file in `.strata-tmp/`, fsynced, renamed into place) but paced: after each
/// [`FS_WRITE_STEP_BYTES`] the step's writeback is started (`sync_file_range`) and the
/// previous step's awaited, so the device queue never holds more than two steps of it. Written
/// whole and fsynced at the end, the 8 MB object a busy second uploads went to the disk in one
/// burst, and the WAL's fdatasyncs on the same disk (the embedded default) queued behind it:
/// a concurrent fdatasync loop's worst case 12–16 ms bulk, 3–6 ms paced on the test VM. Also
/// fsyncs the directory after the rename, which OpenDAL's fs writer does not, so an
/// acknowledged object survives a power loss. Leaves no temporary file on failure.
fn fs_put_paced(root: &Path, key: &str, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let target = root.join(key);
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("the object has no parent directory"))?;
    let tmp_dir = root.join(FS_TMP_FOLDER);
    let tmp = tmp_dir.join(format!("paced-{}", uuid::Uuid::new_v4()));
    // The folders are made on first need, not stat'ed on every put.
    let created = std::fs::File::create(&tmp).or_else(|err| {
        if err.kind() != std::io::ErrorKind::NotFound {
            return Err(err);
        }
        std::fs::create_dir_all(&tmp_dir)?;
        std::fs::File::create(&tmp)
    });
    let written = created.and_then(|mut file| {
        let mut offset = 0u64;
        for step in body.chunks(FS_WRITE_STEP_BYTES) {
            file.write_all(step)?;
            start_writeback(&file, offset, step.len() as u64)?;
            if let Some(previous) = offset.checked_sub(FS_WRITE_STEP_BYTES as u64) {
                await_writeback(&file, previous, FS_WRITE_STEP_BYTES as u64)?;
            }
            offset += step.len() as u64;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &target).or_else(|err| {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(err);
            }
            std::fs::create_dir_all(parent)?;
            std::fs::rename(&tmp, &target)
        })?;
        std::fs::File::open(parent)?.sync_all()
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(target_os = "linux")]
fn sync_file_range(file: &std::fs::File, offset: u64, len: u64, flags: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(()); // pacing is an optimisation: past i64 there is none
    };
    #[allow(unsafe_code)]
    // SAFETY: the descriptor stays open for the call (borrowed from `file`); sync_file_range
    // reads only its integer arguments.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Starts writing back `offset..offset + len` without waiting.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return sync_file_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Ok(())
    }
}

/// Waits until `offset..offset + len` is written back (not durable: the final fsync is).
fn await_writeback(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return sync_file_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Ok(())
    }
}

fn query_map(
    scheme: &str,
    url: &url::Url,
    known: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        if !known.contains(&key.as_ref()) {
            return Err(format!(
                "unknown query key `{key}` for {scheme}:// (known: {})",
                known.join(", ")
            ));
        }
        if value.is_empty() {
            return Err(format!("query key `{key}` has no value"));
        }
        if map.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(format!("query key `{key}` is given twice"));
        }
    }
    Ok(map)
}

fn flag(query: &BTreeMap<String, String>, key: &str) -> Result<bool, String> {
    match query.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "query key `{key}` must be true or false, not `{other}`"
        )),
    }
}

/// `/prefix/` from the URL path, or `/` when there is none.
fn root_of(url: &url::Url) -> String {
    let prefix = url.path().trim_matches('/');
    if prefix.is_empty() {
        "/".into()
    } else {
        format!("/{prefix}/")
    }
}

fn host_of<'a>(url: &'a url::Url, what: &str) -> Result<&'a str, String> {
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(host),
        _ => Err(format!("it names no {what}")),
    }
}

fn http_endpoint(key: &str, value: &str) -> Result<(), String> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(format!(
            "query key `{key}` must be an http:// or https:// URL, not `{value}`"
        )),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn s3_builder(url: &url::Url, query: BTreeMap<String, String>) -> Result<Target, String> {
    let bucket = host_of(url, "bucket")?;
    if url.port().is_some() {
        return Err(
            "an s3:// URL names a bucket, not a host:port; put the server in ?endpoint=".into(),
        );
    }
    let mut builder = services::S3::default().bucket(bucket).root(&root_of(url));
    let endpoint = query.get("endpoint");
    if let Some(endpoint) = endpoint {
        http_endpoint("endpoint", endpoint)?;
        builder = builder.endpoint(endpoint.trim_end_matches('/'));
    }
    let region = query
        .get("region")
        .cloned()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .or_else(|| endpoint.map(|_| "us-east-1".to_owned()))
        .ok_or_else(|| {
            "no region: add ?region=… or set AWS_REGION (an S3-compatible server with \
             ?endpoint= defaults to us-east-1)"
                .to_string()
        })?;
    builder = builder.region(&region);
    if flag(&query, "virtual_host_style")? {
        builder = builder.enable_virtual_host_style();
    }

    let mut env_secrets = Vec::new();
    let from_query = (query.get("access_key_id"), query.get("secret_access_key"));
    let (access_key, secret_key, session_token) = match from_query {
        (Some(ak), Some(sk)) => (
            Some(ak.clone()),
            Some(sk.clone()),
            query.get("session_token").cloned(),
        ),
        (None, None) => {
            let ak = env_nonempty("AWS_ACCESS_KEY_ID");
            let sk = env_nonempty("AWS_SECRET_ACCESS_KEY");
            let token = env_nonempty("AWS_SESSION_TOKEN");
            env_secrets.extend(sk.iter().chain(token.iter()).cloned());
            (ak, sk, token)
        }
        _ => return Err("give both access_key_id and secret_access_key, or neither".into()),
    };
    if flag(&query, "allow_anonymous")? {
        // Unsigned requests: for public buckets and servers without auth.
        builder = builder.skip_signature();
    } else if let (Some(ak), Some(sk)) = (&access_key, &secret_key) {
        builder = builder.access_key_id(ak).secret_access_key(sk);
        if let Some(token) = &session_token {
            builder = builder.session_token(token);
        }
    }
    // Otherwise OpenDAL's default chain looks for a profile, web identity or instance role.
    Ok(Target {
        backend: Backend::S3(Box::new(builder)),
        env_secrets,
    })
}

fn gcs_builder(url: &url::Url, query: BTreeMap<String, String>) -> Result<services::Gcs, String> {
    let bucket = host_of(url, "bucket")?;
    let mut builder = services::Gcs::default().bucket(bucket).root(&root_of(url));
    if let Some(v) = query.get("endpoint") {
        http_endpoint("endpoint", v)?;
        builder = builder.endpoint(v);
    }
    if let Some(v) = query.get("credential_path") {
        builder = builder.credential_path(v);
    }
    if let Some(v) = query.get("credential") {
        builder = builder.credential(v);
    }
    if let Some(v) = query.get("scope") {
        builder = builder.scope(v);
    }
    if let Some(v) = query.get("service_account") {
        builder = builder.service_account(v);
    }
    if let Some(v) = query.get("token") {
        builder = builder.token(v.clone());
    }
    if flag(&query, "allow_anonymous")? {
        builder = builder.skip_signature();
    }
    Ok(builder)
}

fn azblob_builder(
    url: &url::Url,
    query: BTreeMap<String, String>,
) -> Result<services::Azblob, String> {
    let container = host_of(url, "container")?;
    let mut builder = services::Azblob::default()
        .container(container)
        .root(&root_of(url));
    let endpoint = match (query.get("endpoint"), query.get("account_name")) {
        (Some(endpoint), _) => {
            http_endpoint("endpoint", endpoint)?;
            endpoint.clone()
        }
        (None, Some(account)) => format!("https://{account}.blob.core.windows.net"),
        (None, None) => return Err("azblob:// needs ?endpoint= or ?account_name=".into()),
    };
    builder = builder.endpoint(&endpoint);
    if let Some(v) = query.get("account_name") {
        builder = builder.account_name(v);
    }
    if let Some(v) = query.get("account_key") {
        builder = builder.account_key(v);
    }
    if let Some(v) = query.get("sas_token") {
        builder = builder.sas_token(v);
    }
    Ok(builder)
}

fn webhdfs_builder(
    url: &url::Url,
    query: BTreeMap<String, String>,
) -> Result<services::Webhdfs, String> {
    let host = host_of(url, "namenode host")?;
    let scheme = if flag(&query, "tls")? {
        "https"
    } else {
        "http"
    };
    let endpoint = match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    let mut builder = services::Webhdfs::default()
        .endpoint(&endpoint)
        .root(&root_of(url));
    if let Some(v) = query.get("user_name") {
        builder = builder.user_name(v);
    }
    if let Some(v) = query.get("delegation") {
        builder = builder.delegation(v);
    }
    // LISTSTATUS_BATCH (used by `ObjectStore::list`) is missing from old Hadoop releases and
    // from some gateways; plain LISTSTATUS works everywhere.
    if flag(&query, "disable_list_batch")? {
        builder = builder.disable_list_batch();
    }
    if let Some(v) = query.get("atomic_write_dir") {
        if !v.starts_with('/') {
            return Err(format!(
                "query key `atomic_write_dir` must be an absolute HDFS path, not `{v}`"
            ));
        }
        builder = builder.atomic_write_dir(v);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large object on an `fs://` store is written in paced steps and read back whole, and
    /// deleted whole (shrunk in steps first); a small one and a missing one as before.
    #[tokio::test]
    async fn fs_large_objects_are_written_whole_and_deleted_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store =
            ObjectStore::from_url(&format!("fs://{}", tmp.path().display())).expect("store");
        let big = Bytes::from(vec![
            5u8;
            (2 * strata_wal::SHRINK_STEP_BYTES + 777) as usize
        ]);
        store.put("segments/big", big.clone()).await.expect("put");
        store
            .put("segments/small", Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert_eq!(store.get("segments/big").await.expect("get"), big);
        // Written paced (several steps), renamed into place: nothing left in flight.
        let in_flight = std::fs::read_dir(tmp.path().join(FS_TMP_DIR))
            .expect("tmp dir")
            .count();
        assert_eq!(in_flight, 0);
        // Replacing an object replaces it whole.
        let other = Bytes::from(vec![9u8; FS_WRITE_STEP_BYTES * 3 + 1]);
        store
            .put("segments/big", other.clone())
            .await
            .expect("put again");
        assert_eq!(store.get("segments/big").await.expect("get"), other);
        store.delete("segments/big").await.expect("delete big");
        store.delete("segments/small").await.expect("delete small");
        store
            .delete("segments/never")
            .await
            .expect("delete missing");
        assert!(store.list("segments/").await.expect("list").is_empty());
        assert!(!tmp.path().join("segments/big").exists());
    }

    /// `Ok(url)`: builds, and `url()` is this redacted form. `Err(part)`: `BadUrl` whose
    /// message contains `part`.
    fn check(input: &str, expected: Result<&str, &str>) {
        let got = ObjectStore::from_url(input);
        match (got, expected) {
            (Ok(store), Ok(url)) => assert_eq!(store.url(), url, "{input}"),
            (Err(err @ TieringError::BadUrl { .. }), Err(part)) => {
                let text = err.to_string();
                assert!(text.contains(part), "{input}: {text:?} lacks {part:?}");
                assert!(!text.contains('\n'), "{input}: {text}");
                assert!(!err.is_retryable());
                for secret in ["supersecretvalue", "verysecretkey123", "c2VjcmV0c2VjcmV0"] {
                    assert!(!text.contains(secret), "{input}: secret in {text}");
                }
            }
            (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn urls() {
        let ep = "endpoint=http://127.0.0.1:9000";
        let table: Vec<(String, Result<String, &str>)> = vec![
            ("memory://".into(), Ok("memory://".into())),
            ("memory://x".into(), Err("takes no path")),
            ("fs://".into(), Err("needs a directory")),
            ("fs:///tmp/strata-url-test?x=1".into(), Err("no query")),
            ("/var/lib/strata".into(), Err("no scheme")),
            ("ftp://host/x".into(), Err("unknown scheme `ftp`")),
            ("hdfs://nn:8020/x".into(), Err("webhdfs://")),
            (format!("s3://bucket?{ep}&region=us-east-1"), Ok(format!("s3://bucket?{ep}&region=us-east-1"))),
            (format!("s3://bucket/pre/fix?{ep}"), Ok(format!("s3://bucket/pre/fix?{ep}"))),
            (format!("s3://bucket?{ep}&allow_anonymous=true"), Ok(format!("s3://bucket?{ep}&allow_anonymous=true"))),
            (
                format!("s3://bucket?{ep}&access_key_id=AK&secret_access_key=verysecretkey123"),
                Ok(format!("s3://bucket?{ep}&access_key_id=AK&secret_access_key=REDACTED")),
            ),
            (format!("s3://bucket?{ep}&bogus=1"), Err("unknown query key `bogus` for s3://")),
            (format!("s3://bucket?{ep}&region=a&region=b"), Err("`region` is given twice")),
            (format!("s3://bucket?{ep}&region="), Err("`region` has no value")),
            (format!("s3://bucket?{ep}&allow_anonymous=yes"), Err("true or false")),
            (format!("s3://bucket?{ep}&access_key_id=AK"), Err("both access_key_id")),
            ("s3://bucket?endpoint=127.0.0.1:9000".into(), Err("http:// or https://")),
            (format!("s3://bucket:9000?{ep}"), Err("not a host:port")),
            (format!("s3://?{ep}"), Err("names no bucket")),
            (
                format!("s3://AKIA:supersecretvalue@bucket?{ep}"),
                Err("user-info"),
            ),
            (
                format!("s3://bucket?{ep}&secret_access_key=supersecretvalue&junk=1"),
                Err("unknown query key `junk`"),
            ),
            ("gcs://bucket/prefix?allow_anonymous=true".into(), Ok("gcs://bucket/prefix?allow_anonymous=true".into())),
            ("gcs://bucket?region=x".into(), Err("unknown query key `region` for gcs://")),
            (
                "azblob://container?endpoint=http://127.0.0.1:10000/devstoreaccount1&account_name=devstoreaccount1&account_key=c2VjcmV0c2VjcmV0".into(),
                Ok("azblob://container?endpoint=http://127.0.0.1:10000/devstoreaccount1&account_name=devstoreaccount1&account_key=REDACTED".into()),
            ),
            ("azblob://container".into(), Err("needs ?endpoint= or ?account_name=")),
            ("webhdfs://127.0.0.1:9870/strata?user_name=hdfs".into(), Ok("webhdfs://127.0.0.1:9870/strata?user_name=hdfs".into())),
            ("webhdfs://127.0.0.1:9870/x?bogus=1".into(), Err("unknown query key `bogus` for webhdfs://")),
            (
                "webhdfs://nn:9870/strata?user_name=hdfs&disable_list_batch=true&atomic_write_dir=/tmp/strata-tmp".into(),
                Ok("webhdfs://nn:9870/strata?user_name=hdfs&disable_list_batch=true&atomic_write_dir=/tmp/strata-tmp".into()),
            ),
            ("webhdfs://nn:9870/x?disable_list_batch=1".into(), Err("true or false")),
            ("webhdfs://nn:9870/x?atomic_write_dir=tmp".into(), Err("absolute HDFS path")),
        ];
        for (input, expected) in &table {
            check(input, expected.as_deref().map_err(|e| *e));
        }
    }

    #[test]
    fn s3_region_falls_back_to_env_or_fails() {
        // Without an endpoint the region cannot default; it must come from the environment.
        let env_region = env_nonempty("AWS_REGION").or_else(|| env_nonempty("AWS_DEFAULT_REGION"));
        let result = ObjectStore::from_url("s3://bucket");
        match env_region {
            Some(_) => assert!(result.is_ok(), "{result:?}"),
            None => check("s3://bucket", Err("no region")),
        }
    }

    #[test]
    fn redaction() {
        let cases = [
            ("memory://", "memory://", vec![]),
            (
                "s3://b?token=abc&x=1",
                "s3://b?token=REDACTED&x=1",
                vec!["abc"],
            ),
            (
                "s3://u:p%40ss@b/p?q=1",
                "s3://REDACTED@b/p?q=1",
                vec!["p%40ss"],
            ),
            (
                "azblob://c?sas_token=sv%3D1%26sig%3Dxyz",
                "azblob://c?sas_token=REDACTED",
                vec!["sv=1&sig=xyz"],
            ),
        ];
        for (input, url, secrets) in cases {
            let (got_url, got_secrets) = redact(input);
            assert_eq!(got_url, url, "{input}");
            assert_eq!(got_secrets, secrets, "{input}");
        }
    }

    /// (body bytes, expected (parts, initiate) or None for a single PUT), by backend.
    #[test]
    fn multipart_plans() {
        let s3 = "s3://b?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_anonymous=true";
        let azure = "azblob://c?endpoint=http://127.0.0.1:10000/acct&account_name=acct";
        let dir = tempfile::tempdir().unwrap();
        // fs can write in chunks (OpenDAL says `write_can_multi`), but it is not a multipart
        // upload: one local write.
        let fs = format!("fs://{}", dir.path().display());
        let mib = 1u64 << 20;
        let small = StoreConfig {
            multipart_threshold_bytes: 16 * mib,
            multipart_part_bytes: 8 << 20,
            ..StoreConfig::default()
        };
        // (URL, config, body bytes, expected (parts, initiate))
        type Case<'a> = (&'a str, StoreConfig, u64, Option<(u64, bool)>);
        let cases: &[Case] = &[
            (s3, StoreConfig::default(), 0, None),
            (s3, StoreConfig::default(), 1024 * mib, None),
            (s3, StoreConfig::default(), 1024 * mib + 1, Some((17, true))),
            (s3, small.clone(), 16 * mib, None),
            (s3, small.clone(), 16 * mib + 1, Some((3, true))),
            (s3, small.clone(), 40 * mib, Some((5, true))),
            (s3, small.clone(), 40 * mib + 1, Some((6, true))),
            // Parts below S3's 5 MiB minimum are raised to it.
            (
                s3,
                StoreConfig {
                    multipart_threshold_bytes: 0,
                    multipart_part_bytes: 1,
                    ..StoreConfig::default()
                },
                11 * mib,
                Some((3, true)),
            ),
            // A body of one part is one PUT whatever the threshold.
            (
                s3,
                StoreConfig {
                    multipart_threshold_bytes: 0,
                    ..StoreConfig::default()
                },
                8 * mib,
                None,
            ),
            (
                s3,
                StoreConfig {
                    multipart_threshold_bytes: u64::MAX,
                    ..StoreConfig::default()
                },
                1 << 40,
                None,
            ),
            (azure, small.clone(), 40 * mib, Some((5, false))),
            ("memory://", StoreConfig::default(), 40 * mib, None),
            (&fs, StoreConfig::default(), 40 * mib, None),
        ];
        for (url, config, len, expected) in cases {
            let store = ObjectStore::from_url_with_config(url, config.clone()).unwrap();
            let got = store.multipart_plan(*len).map(|p| (p.parts, p.initiate));
            assert_eq!(got, *expected, "{url} {len}");
        }
    }

    #[test]
    fn keys() {
        let cases = [
            ("objects/0001/abc", true),
            ("a", true),
            ("_strata/probe/x", true),
            ("", false),
            ("/a", false),
            ("a/", false),
            ("a//b", false),
            ("a/./b", false),
            ("..", false),
            ("a\tb", false),
        ];
        for (key, ok) in cases {
            assert_eq!(check_key(key).is_ok(), ok, "{key:?}");
        }
        assert!(check_key(&"k".repeat(KEY_BYTES_MAX)).is_ok());
        assert!(check_key(&"k".repeat(KEY_BYTES_MAX + 1)).is_err());
    }
}
