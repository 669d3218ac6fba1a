//! `strata bench disk`: this machine's fdatasync latency and fsynced sequential bandwidth.
//!
//! The performance targets are ratios against the hardware: produce p99 against the disk's own
//! fdatasync p99, produce throughput against the disk's fsynced sequential bandwidth. This probe
//! measures both, in the directory the WAL would use, so a benchmark run can report ratios
//! measured in the same run.
//!
//! `mqtt`: the MQTT load generator of `strata bench mqtt`.

pub mod mqtt;

use crate::progress::{Progress, Unit};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, serde::Serialize)]
pub struct DiskReport {
    pub fsync_4k_p50_us: f64,
    pub fsync_4k_p99_us: f64,
    pub fsync_4k_samples: usize,
    pub seq_fsync_1mib_mb_per_s: f64,
    pub seq_bytes: u64,
}

/// Runs both probes for about `seconds` each in `dir` and removes its scratch file.
pub fn disk(dir: &Path, seconds: u64) -> std::io::Result<DiskReport> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".strata-bench-disk");
    let budget = Duration::from_secs(seconds.max(1));
    let progress = Progress::start(
        "bench disk: fdatasync of 4 KiB writes",
        Unit::Count("fsyncs"),
        None,
    );

    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget && samples.len() < 1_000_000 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        progress.add(1);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let (p50, p99) = (pct(0.50), pct(0.99));

    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    progress.phase(
        "bench disk: fsynced sequential 1 MiB writes",
        Unit::Bytes,
        None,
    );
    let chunk = vec![0xa5u8; 1024 * 1024];
    let mut written = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        file.write_all(&chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
        progress.add(chunk.len() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    progress.finish();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(DiskReport {
        fsync_4k_p50_us: p50,
        fsync_4k_p99_us: p99,
        fsync_4k_samples: samples.len(),
        seq_fsync_1mib_mb_per_s: written as f64 / secs / 1e6,
        seq_bytes: written,
    })
}

/// What `strata bench store-read` measured.
#[derive(Debug, serde::Serialize)]
pub struct StoreReadReport {
    pub objects: usize,
    pub bytes: u64,
    pub gets: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub concurrency: usize,
    pub range_bytes: u64,
}

/// Reads every object under `prefix` with ranged GETs of `range_bytes`, `concurrency` at a
/// time — the raw bandwidth a replay through the broker is compared with (same store, same
/// concurrency as the broker's read-ahead, same read unit as its segment chunks).
pub async fn store_read(
    store: &strata_tiering::ObjectStore,
    prefix: &str,
    concurrency: usize,
    range_bytes: u64,
) -> Result<StoreReadReport, strata_tiering::TieringError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let objects = store.list(prefix).await?;
    let ranges: Vec<(String, std::ops::Range<u64>)> = objects
        .iter()
        .flat_map(|o| {
            let step = range_bytes.max(1);
            (0..o.size.div_ceil(step))
                .map(move |i| (o.key.clone(), i * step..((i + 1) * step).min(o.size)))
        })
        .collect();
    let gets = ranges.len() as u64;
    let progress = Progress::start(
        match prefix {
            "" => "bench store-read".to_string(),
            p => format!("bench store-read {p}"),
        },
        Unit::Bytes,
        Some(objects.iter().map(|o| o.size).sum()),
    );
    let counter = progress.counter();
    let start = Instant::now();
    let bytes: u64 = stream::iter(ranges)
        .map(|(key, range)| {
            let counter = counter.clone();
            async move {
                let n = store.get_range(&key, range).await?.len() as u64;
                counter.add(n);
                Ok::<u64, strata_tiering::TieringError>(n)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    Ok(StoreReadReport {
        objects: objects.len(),
        bytes,
        gets,
        seconds,
        mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        concurrency,
        range_bytes,
    })
}
