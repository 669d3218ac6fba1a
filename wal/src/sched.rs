//! Real-time scheduling for the threads on the WAL's commit path (`wal.realtime_priority`).
//!
//! A thread woken by a finished fdatasync or an arriving entry waits for a CPU behind every
//! runnable thread of normal priority. On a busy machine that wait, not the disk, sets the
//! tail: measured on 2 vCPU during a full-speed replay, the sequencer's run-queue wait went
//! from 2–30 µs to 70–190 µs a slice while the device's flushes stayed at 0.05 ms
//! (BENCHMARKS.md, session 21). With a priority set, the threads that write, fdatasync and
//! commit WAL entries (the broker's sequencer and committer, a replica's stream threads) run
//! under `SCHED_FIFO` at that priority and so preempt normal threads as soon as they wake.
//! They block between groups; a runaway one is still bounded by the kernel's real-time
//! throttle (`/proc/sys/kernel/sched_rt_runtime_us`, 95 % of a CPU by default). The class is
//! set with `SCHED_RESET_ON_FORK`, so a thread one of them starts (the WAL's unlink thread,
//! which must stay off the commit path) runs under normal scheduling.
//!
//! Raising a thread into a real-time class needs `CAP_SYS_NICE` or a high enough
//! `RLIMIT_RTPRIO`, and a cgroup with real-time bandwidth. When refused, the thread keeps its
//! normal priority and the process warns once: the option is best effort, never a reason to
//! stop.

use std::sync::atomic::{AtomicBool, Ordering};

/// The highest `SCHED_FIFO` priority Linux accepts (`sched_get_priority_max`).
pub const REALTIME_PRIORITY_MAX: u8 = 99;

/// Set once the first refusal was logged, so a node with many streams warns once.
static REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);
/// Set once the first success was logged.
static SUCCESS_LOGGED: AtomicBool = AtomicBool::new(false);

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1..=[`REALTIME_PRIORITY_MAX`]);
/// 0 leaves it as it is; the kernel refuses a priority above the maximum (EINVAL). Returns whether the thread now runs at that priority. A refusal is
/// logged (once per process) and otherwise ignored.
pub fn enter_realtime(priority: u8) -> bool {
    if priority == 0 {
        return false;
    }
    match set_fifo(priority) {
        Ok(()) => {
            if !SUCCESS_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::info!(priority, "WAL threads run under SCHED_FIFO");
            }
            true
        }
        Err(error) => {
            if !REFUSAL_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    priority,
                    %error,
                    "wal.realtime_priority: the WAL threads keep their normal priority; \
                     real-time scheduling needs CAP_SYS_NICE (or RLIMIT_RTPRIO >= the priority)"
                );
            }
            false
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_fifo(priority: u8) -> std::io::Result<()> {
    // SAFETY: `sched_param` is plain data (musl's has more fields than glibc's), so all zeroes
    // is a valid value; the priority is set below.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = libc::c_int::from(priority);
    // Threads this one starts are not real-time.
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: `pthread_self` is the calling thread, alive for the call; `param` outlives it.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

#[cfg(not(target_os = "linux"))]
fn set_fifo(_priority: u8) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from `/proc/thread-self/stat` (field 41).
    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        // `rest` starts at field 3 (state); the policy is field 41.
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    /// Runs `f` on a thread of its own (a test may leave it real-time) and returns its result.
    fn on_a_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn zero_leaves_the_thread_alone() {
        assert!(!on_a_new_thread(|| enter_realtime(0)));
    }

    #[test]
    fn out_of_range_is_refused() {
        assert!(on_a_new_thread(|| set_fifo(REALTIME_PRIORITY_MAX + 1)).is_err());
    }

    /// Where the process may raise priorities (root here), the thread's policy becomes
    /// SCHED_FIFO (1); where it may not, it stays SCHED_OTHER (0). Either way the answer
    /// matches what the kernel reports.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_answer_matches_the_kernel() {
        let (entered, policy) = on_a_new_thread(|| (enter_realtime(1), policy_of_this_thread()));
        assert_eq!(policy, if entered { 1 } else { 0 }, "entered: {entered}");
    }

    /// A thread started by a real-time one runs under normal scheduling.
    #[cfg(target_os = "linux")]
    #[test]
    fn threads_it_starts_are_normal() {
        let (entered, child) = on_a_new_thread(|| {
            let entered = enter_realtime(1);
            (entered, on_a_new_thread(policy_of_this_thread))
        });
        assert_eq!(child, 0, "entered: {entered}");
    }
}
