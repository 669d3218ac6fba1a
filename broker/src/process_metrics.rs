//! The standard process series every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, …) and
//! `strata_build_info`, rendered by every node's admin listener whatever its roles.
//!
//! Read from `/proc/self` at scrape time (no `unsafe`, which the workspace denies): clock ticks
//! and the page size come from the auxiliary vector (`/proc/self/auxv`) rather than
//! `sysconf`. Elsewhere than Linux only `strata_build_info` is rendered.

use crate::metrics::header;
use std::fmt::Write as _;

/// `AT_PAGESZ` and `AT_CLKTCK` of the auxiliary vector (`<elf.h>`).
const AT_PAGESZ: u64 = 6;
const AT_CLKTCK: u64 = 17;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: f64,
    threads: u64,
}

/// Appends the process families and `strata_build_info` to `out`.
pub fn render(out: &mut String) {
    header(
        out,
        "strata_build_info",
        "gauge",
        "The StrataMQ version this process runs (always 1).",
    );
    let _ = writeln!(
        out,
        "strata_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let Some(p) = read() else {
        return;
    };
    let rows = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            Some(p.cpu_seconds.to_string()),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            Some(p.resident_bytes.to_string()),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            Some(p.virtual_bytes.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors (sockets included).",
            Some(p.open_fds.to_string()),
        ),
        (
            "process_max_fds",
            "gauge",
            "The soft limit on open file descriptors.",
            p.max_fds.map(|m| m.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            Some(p.start_time_seconds.to_string()),
        ),
        (
            "process_threads",
            "gauge",
            "Threads of the process.",
            Some(p.threads.to_string()),
        ),
    ];
    for (name, kind, help, value) in rows {
        if let Some(value) = value {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

fn read() -> Option<Process> {
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let ticks = auxv_value(&auxv, AT_CLKTCK).filter(|&t| t > 0)? as f64;
    let page = auxv_value(&auxv, AT_PAGESZ).filter(|&p| p > 0)?;
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot_time = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| open_files_soft_limit(&l));
    Some(Process {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss_pages * page,
        virtual_bytes: stat.vsize,
        // The listing's own descriptor is counted too, as in other clients.
        open_fds,
        max_fds,
        start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / ticks,
        threads: stat.threads,
    })
}

/// The value of `key` in an auxiliary vector (native-endian `u64` pairs, ended by key 0).
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16)
        .map(|pair| {
            let (k, v) = pair.split_at(8);
            (
                u64::from_ne_bytes(k.try_into().unwrap_or_default()),
                u64::from_ne_bytes(v.try_into().unwrap_or_default()),
            )
        })
        .take_while(|&(k, _)| k != 0)
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Fields of `/proc/<pid>/stat` (proc(5)); the command name, field 2, may hold spaces and
/// parentheses, so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, in seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of the "Max open files" row of a `/proc/<pid>/limits` text ("unlimited" is
/// `u64::MAX`).
pub fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let row = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = row
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 50 0 0 20 0 12 0 3456 7340032 1792 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17640 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 150,
                stime: 50,
                threads: 12,
                start_ticks: 3456,
                vsize: 7340032,
                rss_pages: 1792,
            })
        );
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn auxv_values_end_at_the_null_entry() {
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (17, 100), (0, 0), (17, 5)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_PAGESZ), Some(4096));
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(100));
        assert_eq!(auxv_value(&auxv, 99), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn open_files_limit_is_the_soft_value() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(open_files_soft_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_soft_limit(unlimited), Some(u64::MAX));
        assert_eq!(open_files_soft_limit("Max processes 10 10\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_back() {
        let p = read().expect("/proc/self is readable on Linux");
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3 && p.threads >= 1, "{p:?}");
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds), "{p:?}");
        assert!(p.start_time_seconds > 1.0e9, "{p:?}");
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
        assert!(out.contains("strata_build_info{version=\""), "{out}");
    }
}
