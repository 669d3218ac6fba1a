//! The recovery core: what a new stream owner runs (with the epoch it got from metadata) before
//! it writes. Also the first owner of a fresh stream runs it: sealing is how an owner takes a
//! stream, whatever was there before.
//!
//! Phases:
//!
//! 1. **Seal.** Send `Seal { epoch, from_lsn }` to every replica; wait for `Sealed` from
//!    `R - W + 1` of them (resending on timeouts). A `Fenced` nack means a newer owner exists:
//!    stop.
//! 2. **Choose.** Among the answers, the last durable entry with the highest `(epoch, lsn)` names
//!    the agreed tail: `from_lsn ..= that entry's LSN`, as held by the replica that reported it
//!    (ties: the lowest replica id; equal ids mean equal logs). If no answer holds an entry at or
//!    after `from_lsn`, the agreed tail is empty.
//! 3. **Fetch** the tail from that replica in pages of `fetch_bytes_max`. If that replica goes
//!    down, start again at 1 (the seals already taken stay valid).
//! 4. **Re-replicate.** Hand the tail to a [`Writer`] of this epoch, which appends a barrier
//!    entry after it and replicates both like any entries (repairing replicas that diverge). When
//!    the barrier is committed (on W replicas), emit [`OwnerCommand::Recovered`]; from then on
//!    the recovery is just its writer: [`Recovery::into_writer`].
//!
//! `from_lsn` is the first LSN not yet in object storage (from the metadata index). Recovery
//! never looks below it.

use super::config::ReplicationConfig;
use super::msg::{Entry, EntryId, Epoch, Lsn, NackReason, ReplicaId, ToReplica};
use super::owner::{AppendRefusal, OwnerCommand, OwnerEvent};
use super::writer::Writer;

#[derive(Debug, Clone)]
enum Phase {
    Sealing {
        /// `Some(last)` once the replica's seal is durable.
        answers: Vec<Option<Option<EntryId>>>,
        sent_ms: u64,
    },
    Fetching {
        source: ReplicaId,
        last: EntryId,
        tail: Vec<Entry>,
        sent_ms: u64,
    },
    Replicating {
        writer: Box<Writer>,
        /// The agreed tail, until it is reported with `Recovered`.
        tail: Option<Vec<Entry>>,
    },
    Fenced,
}

/// The recovery core. See the module docs.
#[derive(Debug, Clone)]
pub struct Recovery {
    cfg: ReplicationConfig,
    epoch: Epoch,
    from_lsn: Lsn,
    now_ms: u64,
    up: Vec<bool>,
    phase: Phase,
}

impl Recovery {
    /// Starts recovering the stream for the owner of `epoch`; `from_lsn` is the first LSN that
    /// is not in object storage. Sends the seals.
    pub fn start(
        cfg: ReplicationConfig,
        epoch: Epoch,
        from_lsn: Lsn,
        now_ms: u64,
        out: &mut Vec<OwnerCommand>,
    ) -> Recovery {
        cfg.validate().expect("a validated replication config");
        assert!(epoch > Epoch::ZERO, "epoch 0 is never handed out");
        assert!(from_lsn > Lsn::ZERO, "LSNs start at 1");
        let replicas = usize::from(cfg.replicas);
        let mut r = Recovery {
            cfg,
            epoch,
            from_lsn,
            now_ms,
            up: vec![true; replicas],
            phase: Phase::Fenced,
        };
        r.start_sealing(out);
        r
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn from_lsn(&self) -> Lsn {
        self.from_lsn
    }

    /// `Recovered` was emitted; [`Recovery::into_writer`] may be called.
    pub fn is_recovered(&self) -> bool {
        matches!(&self.phase, Phase::Replicating { tail: None, .. })
    }

    pub fn is_fenced(&self) -> bool {
        match &self.phase {
            Phase::Fenced => true,
            Phase::Replicating { writer, .. } => writer.is_fenced(),
            _ => false,
        }
    }

    /// The writer, once re-replication has started.
    pub fn writer(&self) -> Option<&Writer> {
        match &self.phase {
            Phase::Replicating { writer, .. } => Some(writer),
            _ => None,
        }
    }

    /// Still sealing or fetching: `Sealed` answers of this epoch are still read (and their
    /// shape asserted).
    pub fn is_choosing(&self) -> bool {
        matches!(self.phase, Phase::Sealing { .. } | Phase::Fetching { .. })
    }

    /// While fetching the agreed tail: the replica asked, the next LSN expected, the epoch of
    /// the last entry fetched so far ([`Epoch::ZERO`] if none), and the tail's last entry. The
    /// driver checks a `Fetched` answer against this before feeding it (the core asserts it).
    pub fn fetching(&self) -> Option<(ReplicaId, Lsn, Epoch, EntryId)> {
        match &self.phase {
            Phase::Fetching {
                source, last, tail, ..
            } => Some((
                *source,
                self.from_lsn.plus(tail.len() as u64),
                tail.last().map_or(Epoch::ZERO, |e| e.epoch),
                *last,
            )),
            _ => None,
        }
    }

    /// The writer that continues the stream. Precondition: [`Recovery::is_recovered`].
    pub fn into_writer(self) -> Writer {
        match self.phase {
            Phase::Replicating { writer, tail: None } => *writer,
            _ => panic!("into_writer before Recovered"),
        }
    }

    pub fn handle(&mut self, event: OwnerEvent, out: &mut Vec<OwnerCommand>) {
        if let Phase::Replicating { writer, tail } = &mut self.phase {
            if tail.is_some() {
                // The broker appends only after it has replayed the recovered tail.
                match event {
                    OwnerEvent::Append { .. } if !writer.is_fenced() => {
                        return out.push(OwnerCommand::AppendRefused {
                            reason: AppendRefusal::Recovering,
                        });
                    }
                    OwnerEvent::Trim { upto_lsn } => {
                        panic!("trim to {upto_lsn} before the stream is recovered")
                    }
                    _ => {}
                }
            }
            let first_new = out.len();
            writer.handle(event, out);
            if tail.is_some() && writer.committed_lsn() >= writer.barrier_lsn() {
                // The barrier is committed, so is the tail before it: report it before the
                // writer's first `Committed`.
                let entries = tail.take().expect("checked");
                let at = out[first_new..]
                    .iter()
                    .position(|c| matches!(c, OwnerCommand::Committed { .. }))
                    .map_or(out.len(), |i| first_new + i);
                let recovered = OwnerCommand::Recovered {
                    from_lsn: self.from_lsn,
                    upto_lsn: writer.barrier_lsn().prev(),
                    barrier_lsn: writer.barrier_lsn(),
                    entries,
                };
                tracing::info!(
                    epoch = self.epoch.0,
                    from = self.from_lsn.0,
                    upto = writer.barrier_lsn().0 - 1,
                    "WAL stream recovered"
                );
                out.insert(at, recovered);
            }
            return;
        }
        match event {
            OwnerEvent::Append { .. } => out.push(OwnerCommand::AppendRefused {
                reason: if matches!(self.phase, Phase::Fenced) {
                    AppendRefusal::Fenced
                } else {
                    AppendRefusal::Recovering
                },
            }),
            OwnerEvent::Trim { upto_lsn } => {
                panic!("trim to {upto_lsn} before the stream is recovered")
            }
            _ if matches!(self.phase, Phase::Fenced) => {}
            OwnerEvent::Flush
            | OwnerEvent::Ack { .. }
            | OwnerEvent::ReplaceStart { .. }
            | OwnerEvent::ReplaceDone { .. }
            | OwnerEvent::ReplaceAborted => {}
            OwnerEvent::Tick { now_ms } => {
                assert!(now_ms >= self.now_ms, "time went backwards");
                self.now_ms = now_ms;
                self.on_tick(out);
            }
            OwnerEvent::ReplicaUp { replica } => {
                self.up[replica.index()] = true;
                if let Phase::Sealing { answers, .. } = &self.phase {
                    if answers[replica.index()].is_none() {
                        self.send_seal(replica, out);
                    }
                }
            }
            OwnerEvent::ReplicaDown { replica } => {
                self.up[replica.index()] = false;
                if let Phase::Fetching { source, .. } = &self.phase {
                    if *source == replica {
                        self.start_sealing(out);
                    }
                }
            }
            OwnerEvent::Nack { epoch, reason, .. } => {
                if epoch == self.epoch {
                    if let NackReason::Fenced { sealed_epoch } = reason {
                        assert!(sealed_epoch > self.epoch);
                        tracing::warn!(
                            epoch = self.epoch.0,
                            sealed = sealed_epoch.0,
                            "WAL recovery fenced"
                        );
                        self.phase = Phase::Fenced;
                        out.push(OwnerCommand::Fenced { sealed_epoch });
                    }
                }
            }
            OwnerEvent::Sealed {
                replica,
                epoch,
                base_lsn,
                last,
            } => {
                if epoch == self.epoch {
                    self.on_sealed(replica, base_lsn, last, out);
                }
            }
            OwnerEvent::Fetched {
                replica,
                epoch,
                entries,
            } => {
                if epoch == self.epoch {
                    self.on_fetched(replica, entries, out);
                }
            }
        }
    }

    fn start_sealing(&mut self, out: &mut Vec<OwnerCommand>) {
        self.phase = Phase::Sealing {
            answers: vec![None; usize::from(self.cfg.replicas)],
            sent_ms: self.now_ms,
        };
        for r in (0..self.cfg.replicas).map(ReplicaId) {
            if self.up[r.index()] {
                self.send_seal(r, out);
            }
        }
    }

    fn send_seal(&self, replica: ReplicaId, out: &mut Vec<OwnerCommand>) {
        out.push(OwnerCommand::Send {
            replica,
            msg: ToReplica::Seal {
                epoch: self.epoch,
                from_lsn: self.from_lsn,
            },
        });
    }

    fn on_tick(&mut self, out: &mut Vec<OwnerCommand>) {
        let now = self.now_ms;
        let timeout = self.cfg.retransmit_timeout_ms;
        match &mut self.phase {
            Phase::Sealing { answers, sent_ms } if now - *sent_ms >= timeout => {
                *sent_ms = now;
                let missing: Vec<ReplicaId> = (0..self.cfg.replicas)
                    .map(ReplicaId)
                    .filter(|r| answers[r.index()].is_none() && self.up[r.index()])
                    .collect();
                for r in missing {
                    out.push(OwnerCommand::Retransmit {
                        replica: r,
                        from_lsn: self.from_lsn,
                    });
                    self.send_seal(r, out);
                }
            }
            Phase::Fetching {
                source, sent_ms, ..
            } if now - *sent_ms >= timeout => {
                let source = *source;
                out.push(OwnerCommand::Retransmit {
                    replica: source,
                    from_lsn: self.next_fetch_lsn(),
                });
                self.send_fetch(out);
            }
            _ => {}
        }
    }

    fn on_sealed(
        &mut self,
        replica: ReplicaId,
        base_lsn: Lsn,
        last: Option<EntryId>,
        out: &mut Vec<OwnerCommand>,
    ) {
        // Replicas trim only what the metadata index holds, and `from_lsn` comes from there.
        assert!(
            base_lsn < self.from_lsn,
            "{replica} trimmed up to {base_lsn}, past the uploaded end {}: stale metadata or a \
             broken trim invariant",
            self.from_lsn.prev()
        );
        if let Some(last) = last {
            assert!(last.lsn >= self.from_lsn && last.epoch < self.epoch);
        }
        let Phase::Sealing { answers, .. } = &mut self.phase else {
            return;
        };
        if answers[replica.index()].is_some() {
            return;
        }
        answers[replica.index()] = Some(last);
        let answered = answers.iter().flatten().count();
        if answered < usize::from(self.cfg.seal_quorum()) {
            return;
        }
        // The highest `(epoch, lsn)`; on ties the lowest replica id (any would do).
        let mut best: Option<(ReplicaId, EntryId)> = None;
        for (i, answer) in answers.iter().enumerate() {
            if let Some(Some(last)) = answer {
                let better = match best {
                    None => true,
                    Some((_, b)) => (last.epoch, last.lsn) > (b.epoch, b.lsn),
                };
                if better {
                    best = Some((ReplicaId(i as u16), *last));
                }
            }
        }
        match best {
            None => self.start_replicating(Vec::new(), out),
            Some((source, last)) => {
                self.phase = Phase::Fetching {
                    source,
                    last,
                    tail: Vec::new(),
                    sent_ms: self.now_ms,
                };
                self.send_fetch(out);
            }
        }
    }

    fn next_fetch_lsn(&self) -> Lsn {
        match &self.phase {
            Phase::Fetching { tail, .. } => self.from_lsn.plus(tail.len() as u64),
            _ => unreachable!("only while fetching"),
        }
    }

    fn send_fetch(&mut self, out: &mut Vec<OwnerCommand>) {
        let from_lsn = self.next_fetch_lsn();
        let now = self.now_ms;
        let Phase::Fetching {
            source,
            last,
            sent_ms,
            ..
        } = &mut self.phase
        else {
            unreachable!("only while fetching")
        };
        *sent_ms = now;
        out.push(OwnerCommand::Send {
            replica: *source,
            msg: ToReplica::Fetch {
                epoch: self.epoch,
                from_lsn,
                upto_lsn: last.lsn,
                bytes_max: self.cfg.fetch_bytes_max,
            },
        });
    }

    fn on_fetched(&mut self, replica: ReplicaId, entries: Vec<Entry>, out: &mut Vec<OwnerCommand>) {
        let expected = self.next_fetch_lsn_if_fetching();
        let Phase::Fetching {
            source, last, tail, ..
        } = &mut self.phase
        else {
            return;
        };
        if replica != *source {
            return;
        }
        let Some(expected) = expected else { return };
        let Some(first) = entries.first() else {
            // The replica reported these entries durable and cannot have lost them unless its
            // disk was replaced: choose again.
            tracing::warn!(%replica, "WAL recovery source returned nothing; sealing again");
            return self.start_sealing(out);
        };
        if first.lsn != expected {
            return; // a duplicate or an answer to an earlier request
        }
        let mut lsn = expected;
        let mut epoch = tail.last().map_or(Epoch::ZERO, |e| e.epoch);
        for e in &entries {
            let fits = e.lsn == lsn && e.epoch >= epoch && e.epoch <= last.epoch;
            assert!(
                fits && e.lsn <= last.lsn,
                "malformed fetch answer from {replica}"
            );
            lsn = lsn.next();
            epoch = e.epoch;
        }
        tail.extend(entries);
        let done = tail.last().is_some_and(|e| e.lsn == last.lsn);
        if done {
            let end = tail.last().expect("done").id();
            assert_eq!(end, *last, "the source's log changed under a seal");
            let tail = std::mem::take(tail);
            self.start_replicating(tail, out);
        } else {
            self.send_fetch(out);
        }
    }

    fn next_fetch_lsn_if_fetching(&self) -> Option<Lsn> {
        matches!(self.phase, Phase::Fetching { .. }).then(|| self.next_fetch_lsn())
    }

    fn start_replicating(&mut self, tail: Vec<Entry>, out: &mut Vec<OwnerCommand>) {
        let writer = Writer::new(
            self.cfg.clone(),
            self.epoch,
            self.from_lsn.prev(),
            tail.clone(),
            &self.up,
            self.now_ms,
            out,
        );
        self.phase = Phase::Replicating {
            writer: Box::new(writer),
            tail: Some(tail),
        };
    }
}
