//! Progress of long command-line work (`strata bench …`, `strata cluster drain --wait`) on
//! stderr, so stdout stays the report.
//!
//! A [`Progress`] owns a counter that the work bumps (from any thread or task, one atomic add
//! per batch) and a small reporting thread. On a terminal the thread redraws one line with a
//! bar; otherwise (a log, a pipe) it writes at most one line per [`INTERVAL`], and only when
//! the counter moved, so a stalled run does not fill a log with identical lines; the final
//! state is always written when the work finishes. The thread
//! is not a tokio task: synchronous probes (`bench disk`) report the same way.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// At most one line (or redraw) per this interval.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Width of the bar drawn on a terminal.
const BAR_WIDTH: usize = 24;

/// What the counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Things, named in the plural ("messages", "partitions").
    Count(&'static str),
    /// Bytes, shown as B/KiB/MiB/GiB.
    Bytes,
}

struct Shared {
    /// What is counted now and since when (a phase changes it).
    what: Mutex<(String, Unit, Instant)>,
    /// 0: unknown.
    total: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

/// A running progress report; [`Progress::finish`] (or drop) ends it.
pub struct Progress {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap handle that bumps the counter (for tasks and threads doing the work).
#[derive(Clone)]
pub struct Counter(Arc<Shared>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Progress {
    /// Starts reporting `label` on stderr; `total` of `None` (or 0) shows no percentage.
    pub fn start(label: impl Into<String>, unit: Unit, total: Option<u64>) -> Progress {
        Progress::start_on(label, unit, total, std::io::stderr().is_terminal())
    }

    fn start_on(
        label: impl Into<String>,
        unit: Unit,
        total: Option<u64>,
        terminal: bool,
    ) -> Progress {
        let shared = Arc::new(Shared {
            what: Mutex::new((label.into(), unit, Instant::now())),
            total: AtomicU64::new(total.unwrap_or(0)),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || report(&shared, terminal))
                .ok()
        };
        Progress { shared, thread }
    }

    pub fn counter(&self) -> Counter {
        Counter(self.shared.clone())
    }

    pub fn add(&self, n: u64) {
        self.shared.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, done: u64) {
        self.shared.done.store(done, Ordering::Relaxed);
    }

    pub fn set_total(&self, total: u64) {
        self.shared.total.store(total, Ordering::Relaxed);
    }

    /// A new phase of the work: a new label and unit, the counter back at 0.
    pub fn phase(&self, label: impl Into<String>, unit: Unit, total: Option<u64>) {
        if let Ok(mut w) = self.shared.what.lock() {
            *w = (label.into(), unit, Instant::now());
        }
        self.shared
            .total
            .store(total.unwrap_or(0), Ordering::Relaxed);
        self.shared.done.store(0, Ordering::Relaxed);
    }

    /// Stops the report (a terminal line is ended with a newline).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn report(shared: &Shared, terminal: bool) {
    let mut last_done = 0u64;
    let mut last_label = String::new();
    let mut drawn = false;
    let mut err = std::io::stderr();
    loop {
        std::thread::park_timeout(INTERVAL);
        let stopping = shared.stop.load(Ordering::Relaxed);
        let done = shared.done.load(Ordering::Relaxed);
        let (label, unit, started) = match shared.what.lock() {
            Ok(w) => w.clone(),
            Err(_) => return,
        };
        let moved = done != last_done || label != last_label;
        // The last state is always written once, so a short run still says what it did.
        if moved || (stopping && !drawn) {
            let total = shared.total.load(Ordering::Relaxed);
            let text = line(&label, unit, done, total, started.elapsed());
            if terminal {
                let bar = bar(done, total);
                let _ = write!(err, "\r\x1b[2K{bar}{text}");
            } else {
                let _ = writeln!(err, "{text}");
            }
            let _ = err.flush();
            drawn = true;
            last_done = done;
            last_label = label;
        }
        if stopping {
            if terminal && drawn {
                let _ = writeln!(err);
            }
            return;
        }
    }
}

/// `label: done/total unit (pct %), rate/s, elapsed` — the total, percentage and rate only
/// where they mean something.
pub fn line(label: &str, unit: Unit, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let amount = |n: u64| match unit {
        Unit::Count(_) => n.to_string(),
        Unit::Bytes => human_bytes(n),
    };
    let mut s = format!("{label}: {}", amount(done));
    if total > 0 {
        s.push_str(&format!("/{}", amount(total)));
    }
    if let Unit::Count(name) = unit {
        s.push(' ');
        s.push_str(name);
    }
    if total > 0 {
        let pct = (done as f64 / total as f64 * 100.0).min(100.0);
        s.push_str(&format!(" ({pct:.0} %)"));
    }
    if secs >= 1.0 && done > 0 {
        let rate = done as f64 / secs;
        match unit {
            Unit::Count(_) => s.push_str(&format!(", {}/s", human_count(rate))),
            Unit::Bytes => s.push_str(&format!(", {}/s", human_bytes(rate as u64))),
        }
    }
    s.push_str(&format!(", {secs:.0} s"));
    s
}

fn bar(done: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    let filled = ((done.min(total) as f64 / total as f64) * BAR_WIDTH as f64) as usize;
    format!(
        "[{}{}] ",
        "#".repeat(filled),
        " ".repeat(BAR_WIDTH - filled)
    )
}

fn human_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

pub fn human_bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = b as f64;
    if f < KIB {
        format!("{b} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else if f < KIB * KIB * KIB {
        format!("{:.1} MiB", f / KIB / KIB)
    } else {
        format!("{:.2} GiB", f / KIB / KIB / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_total_percentage_and_rate() {
        let l = line(
            "bench mqtt qos1",
            Unit::Count("messages"),
            45_000,
            100_000,
            Duration::from_secs(3),
        );
        assert_eq!(
            l,
            "bench mqtt qos1: 45000/100000 messages (45 %), 15.0k/s, 3 s"
        );
    }

    #[test]
    fn a_line_without_total_or_time_shows_neither() {
        let l = line(
            "drain",
            Unit::Count("partitions"),
            2,
            0,
            Duration::from_millis(300),
        );
        assert_eq!(l, "drain: 2 partitions, 0 s");
    }

    #[test]
    fn bytes_are_human() {
        let l = line(
            "store-read",
            Unit::Bytes,
            3 << 20,
            12 << 20,
            Duration::from_secs(2),
        );
        assert_eq!(l, "store-read: 3.0 MiB/12.0 MiB (25 %), 1.5 MiB/s, 2 s");
        assert_eq!(human_bytes(5 << 30), "5.00 GiB");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn the_bar_is_clamped() {
        assert_eq!(bar(10, 5), format!("[{}] ", "#".repeat(BAR_WIDTH)));
        assert_eq!(bar(0, 5), format!("[{}] ", " ".repeat(BAR_WIDTH)));
        assert_eq!(bar(3, 0), "");
    }

    #[test]
    fn finish_stops_the_thread() {
        let p = Progress::start_on("t", Unit::Count("things"), Some(3), false);
        p.counter().add(2);
        p.add(1);
        assert_eq!(p.shared.done.load(Ordering::Relaxed), 3);
        p.phase("u", Unit::Bytes, None);
        assert_eq!(p.shared.done.load(Ordering::Relaxed), 0);
        p.finish(); // returns: the thread was woken and joined
    }
}
