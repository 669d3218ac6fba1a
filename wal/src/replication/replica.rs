//! The replica core: one per stream per WAL replica node.
//!
//! It decides what to do with each request and emits store commands ([`ReplicaCommand::Write`],
//! `Truncate`, `Trim`, `PersistSeal`, `Sync`) and replies. It never replies to an append or a
//! seal before the [`ReplicaEvent::Synced`] that covers it: an [`FromReplica::Ack`] promises the
//! acknowledged prefix is on disk, a [`FromReplica::Sealed`] promises the seal survives a crash.
//!
//! # Contract with the IO driver
//!
//! - Execute the store commands in the order they are emitted. `Sync { upto_lsn }` makes every
//!   command emitted before it durable; report each completion with `Synced { upto_lsn }` (the
//!   same value), in the order the syncs were emitted. Several syncs may share one fdatasync.
//! - On a failed fdatasync, report [`ReplicaEvent::SyncFailed`] and never use this stream's
//!   store again (the page cache may have dropped the failed pages: PostgreSQL's "fsyncgate").
//!   The core stops answering; the replica is lost until an operator replaces it.
//! - After a restart, build the core with [`Replica::restore`] from what the store holds (every
//!   restored entry is durable: the store fsyncs what it read, as `Wal::open` does).
//! - Send each `Reply` to the owner of `msg.epoch()` (the connection the request came on).
//!
//! # Rules (the module docs of `replication` say why they are safe)
//!
//! - `sealed_epoch` only grows, and is made durable before any reply that depends on it.
//! - A request with `epoch < sealed_epoch` gets `Nack Fenced`. An append or seal with a higher
//!   epoch raises `sealed_epoch` first.
//! - An append is accepted only if the replica holds `prev` (same LSN and epoch), or `prev` is
//!   settled (`prev.lsn <= max(settled_lsn, base)`). Otherwise `Nack Mismatch`.
//! - Divergence: for each entry of an accepted append, an entry the replica already holds with
//!   the same `(lsn, epoch)` is kept (it is the same entry); the first one that differs in epoch
//!   truncates the replica's log just before it, and it and the rest are written. Nothing that
//!   agrees with the sender is ever truncated.
//! - `matched`: how far the log is known to agree with the owner of `sealed_epoch`
//!   (`prev.lsn + entries.len()` of accepted appends, reset when the epoch rises). Acks carry
//!   `min(matched, durable_lsn)`.

use std::collections::VecDeque;

use super::config::FETCH_BYTES_MAX_CEILING;
use super::log::EntryLog;
use super::msg::{AppendMsg, Entry, EntryId, Epoch, FromReplica, Lsn, NackReason, ToReplica};

/// Inputs of a [`Replica`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    Append(AppendMsg),
    Seal {
        epoch: Epoch,
        from_lsn: Lsn,
    },
    Fetch {
        epoch: Epoch,
        from_lsn: Lsn,
        upto_lsn: Lsn,
        bytes_max: u64,
    },
    /// The oldest outstanding [`ReplicaCommand::Sync`] (which carried `upto_lsn`) completed.
    Synced {
        upto_lsn: Lsn,
    },
    /// An fdatasync failed: the store's contents are unknown. The replica stops for good.
    SyncFailed,
}

impl From<ToReplica> for ReplicaEvent {
    fn from(msg: ToReplica) -> ReplicaEvent {
        match msg {
            ToReplica::Append(m) => ReplicaEvent::Append(m),
            ToReplica::Seal { epoch, from_lsn } => ReplicaEvent::Seal { epoch, from_lsn },
            ToReplica::Fetch {
                epoch,
                from_lsn,
                upto_lsn,
                bytes_max,
            } => ReplicaEvent::Fetch {
                epoch,
                from_lsn,
                upto_lsn,
                bytes_max,
            },
        }
    }
}

/// Outputs of a [`Replica`]: store commands (in order) and replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaCommand {
    /// Record the sealed epoch (one small record; the newest wins).
    PersistSeal { epoch: Epoch },
    /// Drop every entry after `after_lsn` (a divergent tail).
    Truncate { after_lsn: Lsn },
    /// Drop every entry up to `upto_lsn` (settled). Past the last entry, the store becomes empty
    /// and its next entry is `upto_lsn + 1`.
    Trim { upto_lsn: Lsn },
    /// Append entries after the store's last entry (dense).
    Write { entries: Vec<Entry> },
    /// Make every command before this one durable, then report `Synced { upto_lsn }`.
    Sync { upto_lsn: Lsn },
    /// Send to the owner of `msg.epoch()`.
    Reply { msg: FromReplica },
}

/// What a replica's store holds after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableState {
    pub sealed_epoch: Epoch,
    pub base_lsn: Lsn,
    /// Entries `base_lsn + 1 ..`, dense, epochs non-decreasing and at most `sealed_epoch`.
    pub entries: Vec<Entry>,
}

/// Replies waiting for a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingSync {
    /// The value the `Sync` command carried (echoed back by `Synced`).
    issued_upto: Lsn,
    /// The prefix of the current log this sync makes durable: `issued_upto`, lowered by
    /// truncations issued after it.
    covers: Lsn,
    /// Send an ack to the owner of the sealed epoch when it completes.
    ack: bool,
    /// Seal requests `(epoch, from_lsn)` to answer when it completes.
    seals: Vec<(Epoch, Lsn)>,
}

/// The replica core of one stream. See the module docs.
#[derive(Debug, Clone)]
pub struct Replica {
    sealed_epoch: Epoch,
    /// The log as the store holds it once every issued command has landed.
    log: EntryLog,
    /// `log[..=durable_lsn]` is on disk. `log.base() <= durable_lsn <= log.last_lsn()`.
    durable_lsn: Lsn,
    /// `log[..=matched]` agrees with the log of the owner of `sealed_epoch`; `None` until an
    /// append of that epoch is accepted (after a restart, too).
    matched: Option<Lsn>,
    pending: VecDeque<PendingSync>,
    /// Store commands were issued since the last `Sync`.
    dirty: bool,
    stopped: bool,
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new()
    }
}

impl Replica {
    /// A replica of a stream it has never seen.
    pub fn new() -> Replica {
        Replica::restore(DurableState::default())
    }

    /// A replica restarted from what its store holds.
    pub fn restore(state: DurableState) -> Replica {
        let mut log = EntryLog::new(state.base_lsn);
        for e in state.entries {
            assert!(
                e.epoch <= state.sealed_epoch && e.epoch > Epoch::ZERO,
                "restored {:?} is above the sealed {}",
                e.id(),
                state.sealed_epoch
            );
            log.push(e);
        }
        Replica {
            sealed_epoch: state.sealed_epoch,
            durable_lsn: log.last_lsn(),
            log,
            matched: None,
            pending: VecDeque::new(),
            dirty: false,
            stopped: false,
        }
    }

    pub fn sealed_epoch(&self) -> Epoch {
        self.sealed_epoch
    }

    pub fn base_lsn(&self) -> Lsn {
        self.log.base()
    }

    pub fn last_lsn(&self) -> Lsn {
        self.log.last_lsn()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    pub fn entry(&self, lsn: Lsn) -> Option<&Entry> {
        self.log.get(lsn)
    }

    /// Every entry held (issued to the store), in order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.log.iter()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn handle(&mut self, event: ReplicaEvent, out: &mut Vec<ReplicaCommand>) {
        if self.stopped {
            return;
        }
        match event {
            ReplicaEvent::Append(m) => self.on_append(m, out),
            ReplicaEvent::Seal { epoch, from_lsn } => self.on_seal(epoch, from_lsn, out),
            ReplicaEvent::Fetch {
                epoch,
                from_lsn,
                upto_lsn,
                bytes_max,
            } => self.on_fetch(epoch, from_lsn, upto_lsn, bytes_max, out),
            ReplicaEvent::Synced { upto_lsn } => self.on_synced(upto_lsn, out),
            ReplicaEvent::SyncFailed => {
                tracing::error!("WAL replica stops: an fdatasync failed");
                self.stopped = true;
                self.pending.clear();
            }
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        if self.stopped {
            return; // nothing is known about the store any more
        }
        assert!(self.log.base() <= self.durable_lsn && self.durable_lsn <= self.log.last_lsn());
        if let Some(m) = self.matched {
            assert!(m <= self.log.last_lsn(), "matched {m} past the log end");
        }
        if let Some(last) = self.log.last() {
            assert!(
                last.epoch <= self.sealed_epoch,
                "entry above the sealed epoch"
            );
        }
        if self.pending.is_empty() && !self.dirty {
            assert_eq!(self.durable_lsn, self.log.last_lsn(), "all synced");
        }
        debug_assert!({
            self.log.check();
            true
        });
    }

    fn reply(out: &mut Vec<ReplicaCommand>, msg: FromReplica) {
        out.push(ReplicaCommand::Reply { msg });
    }

    fn fenced(&self, epoch: Epoch, out: &mut Vec<ReplicaCommand>) {
        Self::reply(
            out,
            FromReplica::Nack {
                epoch,
                reason: NackReason::Fenced {
                    sealed_epoch: self.sealed_epoch,
                },
            },
        );
    }

    fn raise_seal(&mut self, epoch: Epoch, out: &mut Vec<ReplicaCommand>) {
        assert!(epoch > self.sealed_epoch, "sealed epoch only grows");
        self.sealed_epoch = epoch;
        self.matched = None;
        self.dirty = true;
        out.push(ReplicaCommand::PersistSeal { epoch });
    }

    /// The sync that will make everything issued so far durable: the last pending one, or a new
    /// one if commands were issued after it. `None` when everything is durable already.
    fn covering_sync(&mut self, out: &mut Vec<ReplicaCommand>) -> Option<&mut PendingSync> {
        if self.dirty {
            let upto = self.log.last_lsn();
            out.push(ReplicaCommand::Sync { upto_lsn: upto });
            self.pending.push_back(PendingSync {
                issued_upto: upto,
                covers: upto,
                ack: false,
                seals: Vec::new(),
            });
            self.dirty = false;
        }
        self.pending.back_mut()
    }

    fn on_append(&mut self, m: AppendMsg, out: &mut Vec<ReplicaCommand>) {
        if let Err(why) = m.check() {
            panic!("malformed append reached the replica core ({why}): {m:?}");
        }
        if m.epoch < self.sealed_epoch {
            return self.fenced(m.epoch, out);
        }
        if m.epoch > self.sealed_epoch {
            self.raise_seal(m.epoch, out);
        }
        let prev = m.prev;
        let settled = m.settled_lsn.max(self.log.base());
        let holds_prev = prev.lsn <= settled || self.log.epoch_at(prev.lsn) == Some(prev.epoch);
        if !holds_prev {
            let retry_after_lsn = if prev.lsn > self.log.last_lsn() {
                self.log.last_lsn()
            } else {
                self.log.epoch_run_start(prev.lsn).prev()
            };
            assert!(retry_after_lsn < prev.lsn);
            return Self::reply(
                out,
                FromReplica::Nack {
                    epoch: m.epoch,
                    reason: NackReason::Mismatch {
                        prev_lsn: prev.lsn,
                        retry_after_lsn,
                    },
                },
            );
        }

        if m.settled_lsn > self.log.base() {
            self.log.trim_upto(m.settled_lsn);
            // Entries up to the base are gone, so "durable up to base" holds vacuously.
            self.durable_lsn = self.durable_lsn.max(self.log.base());
            self.dirty = true;
            out.push(ReplicaCommand::Trim {
                upto_lsn: m.settled_lsn,
            });
        }

        let end = prev.lsn.plus(m.entries.len() as u64);
        let mut written = Vec::new();
        for entry in m.entries {
            if entry.lsn <= self.log.base() {
                continue;
            }
            match self.log.get(entry.lsn) {
                Some(held) if held.epoch == entry.epoch => {
                    debug_assert!(*held == entry, "same (lsn, epoch) means the same entry");
                    continue;
                }
                Some(held) => {
                    let after = entry.lsn.prev();
                    assert!(
                        self.matched.is_none_or(|m| m <= after),
                        "truncating {:?}, which agrees with the sender (matched {:?})",
                        held.id(),
                        self.matched
                    );
                    assert!(written.is_empty(), "at most one truncation per append");
                    self.truncate_after(after, out);
                }
                None => {}
            }
            self.log.push(entry.clone());
            written.push(entry);
        }
        if !written.is_empty() {
            self.dirty = true;
            out.push(ReplicaCommand::Write { entries: written });
        }
        let matched = self
            .matched
            .unwrap_or(Lsn::ZERO)
            .max(end)
            .max(self.log.base());
        assert!(matched <= self.log.last_lsn());
        self.matched = Some(matched);

        match self.covering_sync(out) {
            Some(sync) => sync.ack = true,
            None => self.send_ack(out),
        }
    }

    fn truncate_after(&mut self, after: Lsn, out: &mut Vec<ReplicaCommand>) {
        self.log.truncate_after(after);
        self.durable_lsn = self.durable_lsn.min(after);
        for p in &mut self.pending {
            p.covers = p.covers.min(after);
        }
        self.dirty = true;
        out.push(ReplicaCommand::Truncate { after_lsn: after });
    }

    fn send_ack(&self, out: &mut Vec<ReplicaCommand>) {
        if let Some(matched) = self.matched {
            Self::reply(
                out,
                FromReplica::Ack {
                    epoch: self.sealed_epoch,
                    durable_lsn: matched.min(self.durable_lsn),
                },
            );
        }
    }

    fn on_seal(&mut self, epoch: Epoch, from_lsn: Lsn, out: &mut Vec<ReplicaCommand>) {
        assert!(epoch > Epoch::ZERO, "seal with epoch 0");
        if epoch < self.sealed_epoch {
            return self.fenced(epoch, out);
        }
        if epoch > self.sealed_epoch {
            self.raise_seal(epoch, out);
        }
        match self.covering_sync(out) {
            Some(sync) => sync.seals.push((epoch, from_lsn)),
            None => self.send_sealed(epoch, from_lsn, out),
        }
    }

    fn send_sealed(&self, epoch: Epoch, from_lsn: Lsn, out: &mut Vec<ReplicaCommand>) {
        if epoch < self.sealed_epoch {
            // A newer seal arrived while this one waited for its sync.
            return self.fenced(epoch, out);
        }
        let last =
            (self.durable_lsn > self.log.base() && self.durable_lsn >= from_lsn).then(|| EntryId {
                lsn: self.durable_lsn,
                epoch: self
                    .log
                    .epoch_at(self.durable_lsn)
                    .expect("durable_lsn above base is held"),
            });
        Self::reply(
            out,
            FromReplica::Sealed {
                epoch,
                base_lsn: self.log.base(),
                last,
            },
        );
    }

    fn on_fetch(
        &mut self,
        epoch: Epoch,
        from_lsn: Lsn,
        upto_lsn: Lsn,
        bytes_max: u64,
        out: &mut Vec<ReplicaCommand>,
    ) {
        if epoch < self.sealed_epoch {
            return self.fenced(epoch, out);
        }
        // Only durable entries: recovery decides on what survives a crash of this replica.
        let bytes_max = bytes_max.min(FETCH_BYTES_MAX_CEILING);
        let entries = self
            .log
            .range(from_lsn, upto_lsn.min(self.durable_lsn), bytes_max);
        Self::reply(out, FromReplica::Fetched { epoch, entries });
    }

    fn on_synced(&mut self, upto_lsn: Lsn, out: &mut Vec<ReplicaCommand>) {
        let sync = self
            .pending
            .pop_front()
            .expect("Synced without an outstanding Sync: driver bug");
        assert_eq!(
            sync.issued_upto, upto_lsn,
            "Synced out of order: driver bug"
        );
        self.durable_lsn = self.durable_lsn.max(sync.covers);
        if sync.ack {
            self.send_ack(out);
        }
        for (epoch, from_lsn) in sync.seals {
            self.send_sealed(epoch, from_lsn, out);
        }
    }
}
