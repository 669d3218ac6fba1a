//! `EntryLog`: the in-memory view of a stream's entries, used by the writer (its retained log)
//! and the replica (its log as the store will hold it once every issued write has landed).
//!
//! Entries `base+1..=last` are held; everything up to `base` is gone (trimmed as settled, or
//! never held). The log keeps the two shape invariants of every log in the protocol: LSNs are
//! dense, and epochs never decrease along the log. Byte sums over any LSN range are O(1) from a
//! running total, which the writer needs for its in-flight window.

use std::collections::VecDeque;

use super::msg::{Entry, Epoch, Lsn};

#[derive(Debug, Clone, Default)]
pub(crate) struct EntryLog {
    base: Lsn,
    entries: VecDeque<Entry>,
    /// `bytes_before[i]`: bytes of every entry ever pushed before `entries[i]` (minus those
    /// truncated away). Differences give range sums.
    bytes_before: VecDeque<u64>,
    /// `bytes_before` of the next entry to be pushed.
    bytes_end: u64,
}

impl EntryLog {
    pub fn new(base: Lsn) -> EntryLog {
        EntryLog {
            base,
            ..EntryLog::default()
        }
    }

    pub fn base(&self) -> Lsn {
        self.base
    }

    pub fn last_lsn(&self) -> Lsn {
        self.base.plus(self.entries.len() as u64)
    }

    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    fn index(&self, lsn: Lsn) -> Option<usize> {
        if lsn <= self.base {
            return None;
        }
        let i = usize::try_from(lsn.0 - self.base.0 - 1).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    pub fn get(&self, lsn: Lsn) -> Option<&Entry> {
        self.index(lsn).map(|i| &self.entries[i])
    }

    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.get(lsn).map(|e| e.epoch)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Appends `entry`. Preconditions: it is the next LSN and its epoch is not below the last
    /// entry's.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.lsn, self.last_lsn().next(), "log entries are dense");
        if let Some(last) = self.entries.back() {
            assert!(
                entry.epoch >= last.epoch,
                "epochs never decrease along a log: {:?} after {:?}",
                entry.id(),
                last.id()
            );
        }
        self.bytes_before.push_back(self.bytes_end);
        self.bytes_end += entry.bytes();
        self.entries.push_back(entry);
    }

    /// Drops every entry after `lsn`. Precondition: `base <= lsn`.
    pub fn truncate_after(&mut self, lsn: Lsn) {
        assert!(lsn >= self.base, "truncate below the log base");
        if let Some(i) = self.index(lsn.next()) {
            self.bytes_end = self.bytes_before[i];
            self.entries.truncate(i);
            self.bytes_before.truncate(i);
        }
    }

    /// Drops every entry up to `lsn`. If `lsn` is past the last entry the log becomes empty and
    /// continues at `lsn + 1`.
    pub fn trim_upto(&mut self, lsn: Lsn) {
        if lsn <= self.base {
            return;
        }
        let drop = (lsn.0 - self.base.0).min(self.entries.len() as u64) as usize;
        self.entries.drain(..drop);
        self.bytes_before.drain(..drop);
        self.base = lsn;
    }

    /// Bytes of the entries in `from..=to` that the log holds.
    pub fn bytes_between(&self, from: Lsn, to: Lsn) -> u64 {
        let from = from.max(self.base.next());
        let to = to.min(self.last_lsn());
        if from > to {
            return 0;
        }
        let (Some(i), Some(j)) = (self.index(from), self.index(to)) else {
            return 0;
        };
        let end = self
            .bytes_before
            .get(j + 1)
            .copied()
            .unwrap_or(self.bytes_end);
        end - self.bytes_before[i]
    }

    /// Bytes of every entry held.
    pub fn bytes(&self) -> u64 {
        self.bytes_before
            .front()
            .map_or(0, |first| self.bytes_end - first)
    }

    /// Clones of the entries from `from` up to `upto`, stopping once `bytes_max` is reached but
    /// always including at least one entry when `from..=upto` is not empty.
    pub fn range(&self, from: Lsn, upto: Lsn, bytes_max: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let Some(start) = self.index(from) else {
            return out;
        };
        let mut bytes = 0;
        for e in self.entries.range(start..) {
            if e.lsn > upto || (!out.is_empty() && bytes + e.bytes() > bytes_max) {
                break;
            }
            bytes += e.bytes();
            out.push(e.clone());
        }
        out
    }

    /// The first LSN of the run of entries that have the same epoch as the entry at `lsn`.
    /// Precondition: the log holds `lsn`.
    pub fn epoch_run_start(&self, lsn: Lsn) -> Lsn {
        let i = self
            .index(lsn)
            .expect("epoch_run_start of an entry the log holds");
        let epoch = self.entries[i].epoch;
        // Epochs never decrease, so the run starts right after the last entry of another epoch.
        let start = self.entries.range(..i).rposition(|e| e.epoch != epoch);
        match start {
            Some(j) => self.entries[j + 1].lsn,
            None => self.base.next(),
        }
    }

    /// Checks the shape invariants; O(n), for tests and debug assertions at rare points.
    pub fn check(&self) {
        let mut lsn = self.base;
        let mut epoch = Epoch::ZERO;
        for e in &self.entries {
            lsn = lsn.next();
            assert_eq!(e.lsn, lsn, "dense");
            assert!(e.epoch >= epoch, "epochs non-decreasing");
            epoch = e.epoch;
        }
        assert_eq!(self.bytes_before.len(), self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn e(lsn: u64, epoch: u64, len: usize) -> Entry {
        Entry::data(Lsn(lsn), Epoch(epoch), Arc::from(vec![b'x'; len]))
    }

    fn log_of(base: u64, entries: &[(u64, usize)]) -> EntryLog {
        let mut log = EntryLog::new(Lsn(base));
        for (i, &(epoch, len)) in entries.iter().enumerate() {
            log.push(e(base + 1 + i as u64, epoch, len));
        }
        log
    }

    #[test]
    fn byte_sums_survive_truncate_and_trim() {
        let o = super::super::msg::ENTRY_OVERHEAD_BYTES;
        let mut log = log_of(10, &[(1, 1), (1, 2), (2, 3), (2, 4)]);
        assert_eq!(log.bytes(), 10 + 4 * o);
        assert_eq!(log.bytes_between(Lsn(12), Lsn(13)), 5 + 2 * o);
        assert_eq!(log.bytes_between(Lsn(0), Lsn(99)), log.bytes());
        log.truncate_after(Lsn(12));
        assert_eq!(log.last_lsn(), Lsn(12));
        log.push(e(13, 3, 7));
        assert_eq!(log.bytes_between(Lsn(13), Lsn(13)), 7 + o);
        log.trim_upto(Lsn(12));
        assert_eq!((log.base(), log.bytes()), (Lsn(12), 7 + o));
        log.trim_upto(Lsn(20));
        assert_eq!(
            (log.base(), log.last_lsn(), log.bytes()),
            (Lsn(20), Lsn(20), 0)
        );
        log.push(e(21, 3, 0));
        log.check();
    }

    #[test]
    fn epoch_runs_and_ranges() {
        let log = log_of(4, &[(1, 0), (1, 0), (3, 0), (3, 0), (3, 0), (5, 0)]);
        let cases = [(5, 5), (6, 5), (7, 7), (9, 7), (10, 10)];
        for (lsn, start) in cases {
            assert_eq!(log.epoch_run_start(Lsn(lsn)), Lsn(start), "lsn {lsn}");
        }
        let o = super::super::msg::ENTRY_OVERHEAD_BYTES;
        let lsns = |v: Vec<Entry>| v.iter().map(|e| e.lsn.0).collect::<Vec<_>>();
        assert_eq!(lsns(log.range(Lsn(6), Lsn(9), 2 * o)), vec![6, 7]);
        assert_eq!(lsns(log.range(Lsn(6), Lsn(6), 99 * o)), vec![6]);
        assert_eq!(lsns(log.range(Lsn(9), Lsn(20), 0)), vec![9], "at least one");
        assert_eq!(lsns(log.range(Lsn(11), Lsn(20), 99)), Vec::<u64>::new());
        assert_eq!(lsns(log.range(Lsn(3), Lsn(20), 99)), Vec::<u64>::new());
    }
}
