//! The writer core: the stream owner's replication state machine, one per stream owner.
//!
//! It holds the retained log (every entry not yet trimmed), assigns LSNs to appends, streams
//! entries to every replica, counts durable acks, and reports [`OwnerCommand::Committed`]. A
//! writer is only ever created by [`crate::replication::Recovery`] (through
//! [`crate::replication::Recovery::into_writer`]): its log starts with the recovered tail and the
//! barrier of its epoch, so it never writes before the stream is sealed for it.
//!
//! # Per-replica progress
//!
//! Each replica is in one of three states (the shape of etcd-raft's `Progress`):
//!
//! - `Probe`: at most one append outstanding, from `next_lsn`. Used at start, after a
//!   reconnect, after a timeout and after a `Mismatch`, because the writer does not know what the
//!   replica holds. A `Mismatch` moves `next_lsn` back to the replica's hint (one round trip per
//!   epoch run, not per entry); an ack at or past the probe's `prev` proves the logs agree and
//!   switches to `Pipeline`. A probe without an answer for `retransmit_timeout_ms` is sent again.
//!   With nothing to send, the next append is the probe.
//! - `Pipeline`: appends are streamed back to back (never one round trip per entry) while the
//!   bytes in `acked_lsn+1 .. next_lsn` stay under `inflight_bytes_max`. No ack progress for
//!   `retransmit_timeout_ms` → `Retransmit` and back to `Probe` from `acked_lsn + 1` (the replica
//!   may have restarted and lost what it had not synced).
//! - `Down`: the driver reported the connection lost; nothing is sent until `ReplicaUp`.
//!
//! A replica that was down catches up from its `acked_lsn` (repair), or from the trim point if
//! it is further behind: entries up to the trim point are settled and never resent.
//!
//! # Commit rule
//!
//! `committed` = the W-th highest `acked_lsn` over all replicas, but only once the entry there
//! has this writer's epoch (Raft's "commit only entries of your own term"; the barrier is the
//! first such entry). Entries of earlier epochs in the recovered tail become committed together
//! with the barrier. Down replicas still count with what they acknowledged: it is on their disk.
//!
//! # Replacing a replica (a membership change within the epoch)
//!
//! A replica that is not *healthy* (connected and acknowledged up to the log's end, or making
//! ack progress) for `replace_after_ms` is reported once per period with
//! [`OwnerCommand::ReplaceReplica`]. The driver picks a spare node outside the replica set and
//! feeds [`OwnerEvent::ReplaceStart`]; the spare is then driven as the *joiner*, addressed as
//! `ReplicaId(R)` (one past the set), like any replica (probe from the trim point, pipeline),
//! but its acks do not count toward W. The order is what keeps every recovery complete:
//!
//! 1. `ReplaceStart` caps what the leaving replica X counts at `committed`: every entry
//!    committed from now on is on W replicas of the set without X. The *target* is
//!    `committed`, or the end of the recovered tail if that is higher: tail entries were
//!    committed by earlier owners, perhaps on exactly W replicas including X, before this
//!    writer's barrier commits them again (the simulation found the crash that loses them
//!    when the target stops at `committed`).
//! 2. Once the joiner acknowledged (durably) up to the target, or the trim point passed it and
//!    the joiner answered at least once (a spare that never answers is not taken, even with
//!    nothing left to copy), [`OwnerCommand::ReplacementCaughtUp`]: every committed entry is now on W replicas of the
//!    new set (the joiner stands in for X in the quorums that counted X).
//! 3. The driver records the new set in metadata, then feeds [`OwnerEvent::ReplaceDone`]: the
//!    joiner takes X's slot (and counts), and X gets nothing more.
//!
//! Until step 3 the old set stays valid too (X's capped acks are real acks), so a crash
//! between any two steps recovers from whichever set metadata holds. A failed metadata write
//! feeds [`OwnerEvent::ReplaceAborted`]: the joiner is dropped and X counts again.

use super::config::{ReplicationConfig, REPLICAS_MAX};
use super::log::EntryLog;
use super::msg::{
    AppendMsg, Entry, EntryId, Epoch, Lsn, NackReason, Payload, ReplicaId, ToReplica,
};
use super::owner::{AppendRefusal, OwnerCommand, OwnerEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    /// `Some(prev)`: a probe with that `prev.lsn` is outstanding since `Progress::timer_ms`.
    Probe(Option<Lsn>),
    Pipeline,
}

#[derive(Debug, Clone)]
struct Progress {
    state: State,
    /// The next entry to send.
    next_lsn: Lsn,
    /// The replica's log agrees with ours up to here and it is on its disk. Only grows.
    acked_lsn: Lsn,
    /// When the outstanding probe was sent, or when the pipeline last made progress.
    timer_ms: u64,
    /// The last time the replica was connected and caught up, or made ack progress.
    healthy_ms: u64,
    /// Acks count toward W only up to here (lowered while the replica is being replaced).
    count_upto: Lsn,
}

impl Progress {
    fn new(up: bool, next_lsn: Lsn, acked_lsn: Lsn, now_ms: u64) -> Progress {
        Progress {
            state: if up { State::Probe(None) } else { State::Down },
            next_lsn,
            acked_lsn,
            timer_ms: now_ms,
            healthy_ms: now_ms,
            count_upto: Lsn(u64::MAX),
        }
    }

    /// What this replica contributes to the commit count.
    fn counted(&self) -> Lsn {
        self.acked_lsn.min(self.count_upto)
    }
}

/// A replacement under way (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Join {
    /// The replica being replaced.
    replaces: ReplicaId,
    /// The joiner must hold every entry up to here before it may take the slot.
    target: Lsn,
    /// `ReplacementCaughtUp` was emitted.
    reported: bool,
    /// The joiner answered (an ack or a nack) at least once: a spare that never answered is
    /// not caught up, even when nothing is left to copy to it.
    answered: bool,
}

/// The writer core. See the module docs.
#[derive(Debug, Clone)]
pub struct Writer {
    cfg: ReplicationConfig,
    epoch: Epoch,
    /// Entries `base+1..=last`; `base` is the trim point (settled).
    log: EntryLog,
    /// The LSN of this epoch's barrier: the first entry with this writer's epoch.
    barrier_lsn: Lsn,
    committed: Lsn,
    now_ms: u64,
    /// One per replica, then the joiner's (at index R; `Down` while no replacement is under way).
    progress: Vec<Progress>,
    join: Option<Join>,
    /// When `ReplaceReplica` was last reported, per replica.
    replace_reported_ms: Vec<Option<u64>>,
    fenced: Option<Epoch>,
}

impl Writer {
    /// A writer whose log is `settled_lsn` (everything up to it is in object storage), then
    /// `tail` (entries of earlier epochs, not yet committed in this epoch), then a barrier in
    /// `epoch`. `up[r]` says whether the driver is connected to replica `r`. Sends the first
    /// probes.
    pub(crate) fn new(
        cfg: ReplicationConfig,
        epoch: Epoch,
        settled_lsn: Lsn,
        tail: Vec<Entry>,
        up: &[bool],
        now_ms: u64,
        out: &mut Vec<OwnerCommand>,
    ) -> Writer {
        cfg.validate().expect("a validated replication config");
        assert!(epoch > Epoch::ZERO);
        assert_eq!(up.len(), usize::from(cfg.replicas));
        let mut log = EntryLog::new(settled_lsn);
        for e in tail {
            assert!(e.epoch < epoch, "the recovered tail is from earlier epochs");
            log.push(e);
        }
        let barrier_lsn = log.last_lsn().next();
        log.push(Entry::barrier(barrier_lsn, epoch));
        // Optimistic: most replicas hold the recovered tail already.
        let mut progress: Vec<Progress> = up
            .iter()
            .map(|&up| Progress::new(up, barrier_lsn, settled_lsn, now_ms))
            .collect();
        // The joiner's slot.
        progress.push(Progress::new(false, barrier_lsn, settled_lsn, now_ms));
        let mut w = Writer {
            cfg,
            epoch,
            log,
            barrier_lsn,
            committed: settled_lsn,
            now_ms,
            progress,
            join: None,
            replace_reported_ms: vec![None; up.len()],
            fenced: None,
        };
        w.send_all(out);
        w.check_invariants();
        w
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Every entry up to here is committed (and was reported so).
    pub fn committed_lsn(&self) -> Lsn {
        self.committed
    }

    pub fn last_lsn(&self) -> Lsn {
        self.log.last_lsn()
    }

    /// The trim point: entries up to here are settled and no longer held.
    pub fn settled_lsn(&self) -> Lsn {
        self.log.base()
    }

    pub fn barrier_lsn(&self) -> Lsn {
        self.barrier_lsn
    }

    /// A retained entry.
    pub fn entry(&self, lsn: Lsn) -> Option<&Entry> {
        self.log.get(lsn)
    }

    /// Bytes of the retained entries (what `retained_bytes_max` limits).
    pub fn retained_bytes(&self) -> u64 {
        self.log.bytes()
    }

    /// What `replica` has acknowledged as durable (`ReplicaId(R)`: the joiner).
    pub fn acked_lsn(&self, replica: ReplicaId) -> Lsn {
        self.progress[replica.index()].acked_lsn
    }

    /// The replica being replaced, while a replacement is under way.
    pub fn replacing(&self) -> Option<ReplicaId> {
        self.join.map(|j| j.replaces)
    }

    /// Whether the joiner of the replacement under way caught up (`ReplacementCaughtUp` was
    /// reported), so `ReplaceDone` may be fed.
    pub fn replacement_caught_up(&self) -> bool {
        self.join.is_some_and(|j| j.reported)
    }

    /// The id the joiner is addressed by: one past the replica set.
    pub fn joiner_id(&self) -> ReplicaId {
        ReplicaId(self.cfg.replicas)
    }

    /// Whether an event from `replica` concerns this writer: a replica of the set, or the
    /// joiner while a replacement is under way.
    fn knows(&self, replica: ReplicaId) -> bool {
        replica.0 < self.cfg.replicas || (replica == self.joiner_id() && self.join.is_some())
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.is_some()
    }

    pub fn handle(&mut self, event: OwnerEvent, out: &mut Vec<OwnerCommand>) {
        if self.fenced.is_some() {
            if let OwnerEvent::Append { .. } = event {
                out.push(OwnerCommand::AppendRefused {
                    reason: AppendRefusal::Fenced,
                });
            }
            return;
        }
        match event {
            OwnerEvent::Append { payload } => self.on_append(payload, out),
            OwnerEvent::Flush => self.send_all(out),
            OwnerEvent::Ack {
                replica,
                epoch,
                durable_lsn,
            } => {
                if epoch == self.epoch && self.knows(replica) {
                    self.on_ack(replica, durable_lsn, out);
                }
            }
            OwnerEvent::Nack {
                replica,
                epoch,
                reason,
            } => {
                if epoch == self.epoch && self.knows(replica) {
                    self.on_nack(replica, reason, out);
                }
            }
            // Late or duplicated replies to this epoch's recovery.
            OwnerEvent::Sealed { .. } | OwnerEvent::Fetched { .. } => {}
            OwnerEvent::Tick { now_ms } => self.on_tick(now_ms, out),
            OwnerEvent::ReplicaUp { replica } if self.knows(replica) => {
                let p = &mut self.progress[replica.index()];
                if p.state == State::Down {
                    p.state = State::Probe(None);
                    p.next_lsn = p.acked_lsn.max(self.log.base()).next();
                    self.send(replica, out);
                }
            }
            OwnerEvent::ReplicaDown { replica } if self.knows(replica) => {
                self.progress[replica.index()].state = State::Down;
            }
            OwnerEvent::ReplicaUp { .. } | OwnerEvent::ReplicaDown { .. } => {}
            OwnerEvent::Trim { upto_lsn } => {
                self.on_trim(upto_lsn);
                self.check_joined(out);
            }
            OwnerEvent::ReplaceStart { replica } => self.on_replace_start(replica),
            OwnerEvent::ReplaceDone { replica } => self.on_replace_done(replica),
            OwnerEvent::ReplaceAborted => self.on_replace_aborted(),
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        let last = self.log.last_lsn();
        assert!(self.log.base() <= self.committed && self.committed <= last);
        assert!(self.barrier_lsn > self.log.base() || self.committed >= self.barrier_lsn);
        for p in &self.progress {
            assert!(p.acked_lsn <= last, "acked past the log end");
            assert!(p.next_lsn <= last.next(), "next past the log end");
            assert!(p.next_lsn > self.log.base(), "next at a trimmed entry");
        }
    }

    /// The replicas of the set, then the joiner while a replacement is under way.
    fn replicas(&self) -> impl Iterator<Item = ReplicaId> {
        let joiner = u16::from(self.join.is_some());
        (0..self.cfg.replicas + joiner).map(ReplicaId)
    }

    fn on_append(&mut self, payload: Payload, out: &mut Vec<OwnerCommand>) {
        if payload.len() > self.cfg.entry_bytes_max as usize {
            return out.push(OwnerCommand::AppendRefused {
                reason: AppendRefusal::TooLarge {
                    len: payload.len(),
                    entry_bytes_max: self.cfg.entry_bytes_max,
                },
            });
        }
        let entry = Entry::data(self.log.last_lsn().next(), self.epoch, payload);
        let retained = self.log.bytes();
        if retained + entry.bytes() > self.cfg.retained_bytes_max {
            return out.push(OwnerCommand::AppendRefused {
                reason: AppendRefusal::Full {
                    retained_bytes: retained,
                    retained_bytes_max: self.cfg.retained_bytes_max,
                },
            });
        }
        let lsn = entry.lsn;
        self.log.push(entry);
        out.push(OwnerCommand::Appended { lsn });
    }

    fn send_all(&mut self, out: &mut Vec<OwnerCommand>) {
        for r in self.replicas() {
            self.send(r, out);
        }
    }

    /// Sends what the replica's state allows.
    fn send(&mut self, r: ReplicaId, out: &mut Vec<OwnerCommand>) {
        let last = self.log.last_lsn();
        let now = self.now_ms;
        let p = &mut self.progress[r.index()];
        match p.state {
            State::Down | State::Probe(Some(_)) => {}
            State::Probe(None) => {
                if p.next_lsn > last {
                    // Nothing to probe with; the next append will be the probe. Except for a
                    // joiner that has not answered yet: an idle stream would never hear from
                    // it, and it may not take a slot unheard (`check_joined`).
                    if self.join.is_some_and(|j| !j.answered) && r == self.joiner_id() {
                        let msg = self.empty_probe(r);
                        out.push(msg);
                    }
                    return;
                }
                let prev = p.next_lsn.prev();
                p.state = State::Probe(Some(prev));
                p.timer_ms = now;
                let msg = self.append_msg(r, self.cfg.message_bytes_max);
                out.push(msg);
            }
            State::Pipeline => loop {
                let p = &self.progress[r.index()];
                if p.next_lsn > last {
                    return;
                }
                let from = p.acked_lsn.next();
                let inflight = self.log.bytes_between(from, p.next_lsn.prev());
                if inflight >= self.cfg.inflight_bytes_max {
                    return;
                }
                if p.next_lsn == from.max(self.log.base().next()) {
                    // Nothing was outstanding: the timeout clock starts now.
                    self.progress[r.index()].timer_ms = now;
                }
                let room = self.cfg.inflight_bytes_max - inflight;
                let msg = self.append_msg(r, room.min(self.cfg.message_bytes_max));
                out.push(msg);
            },
        }
    }

    /// The id of the entry before `next_lsn`, as an append's `prev` names it (epoch 0 at or
    /// below the trim point: settled).
    fn prev_of(&self, next_lsn: Lsn) -> EntryId {
        let lsn = next_lsn.prev();
        let epoch = if lsn <= self.log.base() {
            Epoch::ZERO
        } else {
            self.log.epoch_at(lsn).expect("prev is retained")
        };
        EntryId { lsn, epoch }
    }

    /// An append with no entries, whose `prev` is the last entry `r` was sent (`next_lsn` is
    /// past the log's end): answered like any probe, so it tells whether `r` is there.
    fn empty_probe(&mut self, r: ReplicaId) -> OwnerCommand {
        let prev = self.prev_of(self.progress[r.index()].next_lsn);
        let p = &mut self.progress[r.index()];
        p.state = State::Probe(Some(prev.lsn));
        p.timer_ms = self.now_ms;
        OwnerCommand::Send {
            replica: r,
            msg: ToReplica::Append(AppendMsg {
                epoch: self.epoch,
                prev,
                settled_lsn: self.log.base(),
                entries: Vec::new(),
            }),
        }
    }

    /// An append to `r` from its `next_lsn`, at most `bytes_max` (at least one entry); advances
    /// `next_lsn` past it.
    fn append_msg(&mut self, r: ReplicaId, bytes_max: u64) -> OwnerCommand {
        let base = self.log.base();
        let prev = self.prev_of(self.progress[r.index()].next_lsn);
        let p = &mut self.progress[r.index()];
        let entries = self.log.range(p.next_lsn, Lsn(u64::MAX), bytes_max);
        assert!(!entries.is_empty(), "append_msg with nothing to send");
        p.next_lsn = p.next_lsn.plus(entries.len() as u64);
        OwnerCommand::Send {
            replica: r,
            msg: ToReplica::Append(AppendMsg {
                epoch: self.epoch,
                prev,
                settled_lsn: base,
                entries,
            }),
        }
    }

    fn on_ack(&mut self, r: ReplicaId, durable_lsn: Lsn, out: &mut Vec<OwnerCommand>) {
        assert!(
            durable_lsn <= self.log.last_lsn(),
            "{r} acked {durable_lsn}, past the last entry {}",
            self.log.last_lsn()
        );
        self.note_joiner_answered(r);
        let base = self.log.base();
        let now = self.now_ms;
        let p = &mut self.progress[r.index()];
        if durable_lsn > p.acked_lsn {
            p.acked_lsn = durable_lsn;
            p.timer_ms = now;
            p.healthy_ms = now;
        }
        let resume = p.acked_lsn.max(base).next();
        match p.state {
            State::Probe(Some(prev)) if durable_lsn >= prev => {
                p.state = State::Pipeline;
                p.next_lsn = p.next_lsn.max(resume);
            }
            State::Pipeline => p.next_lsn = p.next_lsn.max(resume),
            _ => {}
        }
        self.maybe_commit(out);
        self.check_joined(out);
        self.send(r, out);
    }

    fn on_nack(&mut self, r: ReplicaId, reason: NackReason, out: &mut Vec<OwnerCommand>) {
        self.note_joiner_answered(r);
        match reason {
            NackReason::Fenced { sealed_epoch } => {
                assert!(sealed_epoch > self.epoch, "fenced by {sealed_epoch}");
                tracing::warn!(
                    epoch = self.epoch.0,
                    sealed = sealed_epoch.0,
                    "WAL writer fenced"
                );
                self.fenced = Some(sealed_epoch);
                out.push(OwnerCommand::Fenced { sealed_epoch });
            }
            NackReason::Mismatch {
                prev_lsn,
                retry_after_lsn,
            } => {
                assert!(retry_after_lsn < prev_lsn);
                let base = self.log.base();
                let p = &mut self.progress[r.index()];
                let relevant = match p.state {
                    State::Probe(Some(prev)) => prev == prev_lsn,
                    // The replica lost what it had not synced (a restart): probe again.
                    State::Pipeline => prev_lsn > p.acked_lsn,
                    State::Probe(None) | State::Down => false,
                };
                if relevant {
                    p.state = State::Probe(None);
                    p.next_lsn = retry_after_lsn.max(p.acked_lsn).max(base).next();
                    self.send(r, out);
                }
            }
        }
    }

    fn maybe_commit(&mut self, out: &mut Vec<OwnerCommand>) {
        // On the stack: this runs on every ack.
        let mut acked = [Lsn::ZERO; REPLICAS_MAX as usize];
        // The joiner (the last progress) never counts.
        let members = usize::from(self.cfg.replicas);
        let acked = &mut acked[..members];
        for (a, p) in acked.iter_mut().zip(&self.progress[..members]) {
            *a = p.counted();
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_lsn = acked[usize::from(self.cfg.write_quorum) - 1];
        if quorum_lsn > self.committed && self.log.epoch_at(quorum_lsn) == Some(self.epoch) {
            assert!(quorum_lsn >= self.barrier_lsn);
            self.committed = quorum_lsn;
            out.push(OwnerCommand::Committed {
                upto_lsn: quorum_lsn,
            });
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<OwnerCommand>) {
        assert!(now_ms >= self.now_ms, "time went backwards");
        self.now_ms = now_ms;
        let timeout = self.cfg.retransmit_timeout_ms;
        let base = self.log.base();
        for r in self.replicas() {
            let p = &mut self.progress[r.index()];
            let expired = now_ms.saturating_sub(p.timer_ms) >= timeout;
            let agreed_next = p.acked_lsn.max(base).next();
            let resend_from = match p.state {
                // The probe or its answer was lost: send the same probe again.
                State::Probe(Some(prev)) if expired => Some(prev.next().max(base.next())),
                // No ack progress: the replica may have lost what it had not synced.
                State::Pipeline if expired && p.next_lsn > agreed_next => Some(agreed_next),
                _ => None,
            };
            if let Some(from_lsn) = resend_from {
                p.state = State::Probe(None);
                p.next_lsn = from_lsn;
                out.push(OwnerCommand::Retransmit {
                    replica: r,
                    from_lsn,
                });
            }
            self.send(r, out);
        }
        self.check_health(now_ms, out);
        if self.progress[self.joiner_id().index()].state != State::Down {
            self.check_joined(out);
        }
    }

    /// Marks caught-up replicas healthy and reports the ones that have not been for
    /// `replace_after_ms` (once per period, one replacement at a time).
    fn check_health(&mut self, now_ms: u64, out: &mut Vec<OwnerCommand>) {
        let last = self.log.last_lsn();
        let after = self.cfg.replace_after_ms;
        for i in 0..usize::from(self.cfg.replicas) {
            let p = &mut self.progress[i];
            if p.state != State::Down && p.acked_lsn.max(self.log.base()) >= last {
                p.healthy_ms = now_ms;
            }
            if after == 0 || self.join.is_some() {
                continue;
            }
            let since = p.healthy_ms;
            let reported_recently =
                self.replace_reported_ms[i].is_some_and(|t| now_ms.saturating_sub(t) < after);
            if now_ms.saturating_sub(since) >= after && !reported_recently {
                self.replace_reported_ms[i] = Some(now_ms);
                out.push(OwnerCommand::ReplaceReplica {
                    replica: ReplicaId(i as u16),
                    unhealthy_since_ms: since,
                });
            }
        }
    }

    fn on_replace_start(&mut self, replica: ReplicaId) {
        if self.join.is_some() || replica.0 >= self.cfg.replicas {
            return;
        }
        // Everything that may be committed: what this writer committed, and the recovered
        // tail below its barrier (committed by earlier owners, perhaps on exactly W replicas
        // including the one leaving), even while the barrier itself is not committed yet.
        let target = self.committed.max(self.barrier_lsn.prev());
        // The leaving replica counts only for what is committed already.
        self.progress[replica.index()].count_upto = self.committed;
        let base = self.log.base();
        let joiner = self.joiner_id().index();
        // Down until the driver connects it; then probed from the trim point.
        self.progress[joiner] = Progress::new(false, base.next(), base, self.now_ms);
        self.join = Some(Join {
            replaces: replica,
            target,
            reported: false,
            answered: false,
        });
        tracing::info!(
            epoch = self.epoch.0,
            %replica,
            target = target.0,
            "WAL writer: replacing a replica"
        );
    }

    /// Reports `ReplacementCaughtUp` once the joiner holds everything up to the target (or
    /// the trim point passed it: what is settled is in object storage).
    fn check_joined(&mut self, out: &mut Vec<OwnerCommand>) {
        let base = self.log.base();
        let joiner = &self.progress[self.joiner_id().index()];
        let Some(join) = &mut self.join else {
            return;
        };
        let durable = joiner.acked_lsn.max(base);
        if !join.reported && join.answered && durable >= join.target {
            join.reported = true;
            out.push(OwnerCommand::ReplacementCaughtUp {
                replica: join.replaces,
                durable_lsn: durable,
            });
        }
    }

    fn note_joiner_answered(&mut self, r: ReplicaId) {
        if r == self.joiner_id() {
            if let Some(join) = &mut self.join {
                join.answered = true;
            }
        }
    }

    fn on_replace_done(&mut self, replica: ReplicaId) {
        let Some(join) = self.join else {
            return;
        };
        assert!(
            join.replaces == replica && join.reported,
            "ReplaceDone for {replica} before its joiner caught up"
        );
        let joiner = self.joiner_id().index();
        let mut p = self.progress[joiner].clone();
        // The driver reconnects the slot to the new node.
        p.state = State::Down;
        p.next_lsn = p.acked_lsn.max(self.log.base()).next();
        p.healthy_ms = self.now_ms;
        self.progress[replica.index()] = p;
        self.progress[joiner].state = State::Down;
        self.replace_reported_ms[replica.index()] = None;
        self.join = None;
    }

    fn on_replace_aborted(&mut self) {
        if let Some(join) = self.join.take() {
            self.progress[join.replaces.index()].count_upto = Lsn(u64::MAX);
            let joiner = self.joiner_id().index();
            self.progress[joiner].state = State::Down;
        }
    }

    fn on_trim(&mut self, upto_lsn: Lsn) {
        assert!(
            upto_lsn <= self.committed,
            "trim to {upto_lsn} past the committed {}",
            self.committed
        );
        if upto_lsn <= self.log.base() {
            return;
        }
        self.log.trim_upto(upto_lsn);
        for p in &mut self.progress {
            p.next_lsn = p.next_lsn.max(upto_lsn.next());
        }
    }
}
