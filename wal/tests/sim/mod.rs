//! Deterministic simulation of one replicated WAL stream (STYLE.md §17).
//!
//! Everything runs on one thread from one seeded `StdRng`, in virtual time: a priority queue of
//! events ordered by `(virtual ms, sequence number)`. The world:
//!
//! - **Replicas**: a [`Replica`] core each, driven like the real IO driver would: store commands
//!   go to a simulated disk, `Sync` completes after a random delay (in order), replies go on the
//!   network. The disk is the durable state plus a list of issued, not yet synced operations. A
//!   crash keeps a random prefix of those operations (anything not synced may or may not have
//!   reached the platter) and loses the rest; the replica restarts from what is on disk. A
//!   *faulty disk* fails one fdatasync: the replica stops for good (at most `min(R-W, W-1)` per
//!   run, so quorums stay reachable).
//! - **Network**: every message is delayed (so reordered), dropped, or duplicated at random;
//!   a replica can be isolated for a while, or just the link between one owner and one replica
//!   cut (so a zombie reaches replicas the new owner does not); neither is detected.
//! - **Owners**: the lease holder runs [`Recovery`] then its [`Writer`], appends bursts of
//!   unique payloads, uploads committed entries to a simulated object store (a metadata commit
//!   fenced by epoch) and trims. Failover bumps the epoch in metadata and starts a new owner; the
//!   old one is either crashed or left running as a *zombie* that keeps appending until it learns
//!   it is fenced. A failure detector tells owners about replica crashes and restarts (late, and
//!   sometimes falsely).
//!
//! Faults come in storms separated by calm spells (so recoveries finish and commits pile up
//! between them), and each seed draws its own mix of fault kinds, some left out entirely
//! (swarm testing). Some faults are aimed at the moments that matter: a replica crashes right
//! after it promised something (an ack, a seal) before its next sync lands; an owner dies in the
//! middle of its recovery; some seeds send one entry per message so a recovery can die between
//! the re-replicated tail and its barrier. Mutations of the cores' rules (commit after one ack,
//! no barrier rule, a smaller seal quorum, ...) are caught by these runs; `lying_disk` keeps one
//! such check in the suite.
//!
//! The **oracle** ([`Oracle`]): every `Committed` entry is recorded; an LSN committed twice must
//! be the same entry (no two owners commit different entries at one LSN). Every recovery (and
//! every commit reported after a newer recovery finished) must find every entry committed by an
//! older epoch: in object storage below `from_lsn`, in the recovered tail at its LSN with its
//! epoch and payload above it. No payload appears twice in storage plus tail. At the end the
//! network heals, crashed replicas restart, one more owner recovers and writes, and every live
//! replica must hold exactly the writer's log, durably; not getting there within a virtual-time
//! budget is a liveness failure.
//!
//! **Replacement** (`spares > 0`): there are spare nodes outside the stream's replica set, and
//! some replicas die for good (killed, or a faulty disk). An owner whose writer reports
//! `ReplaceReplica` picks a live spare (the joiner), feeds `ReplaceStart`, and once the writer
//! reports `ReplacementCaughtUp` records the new set in metadata (refused for a stale epoch),
//! sometimes dies right after recording, and otherwise feeds `ReplaceDone`. Every new owner
//! recovers from the set metadata holds. Messages travel between nodes; each owner maps its
//! replica slots to nodes, so replies from a node that left its set are dropped. Permanent
//! losses are bounded so that the recorded set never has more than `min(R - W, W - 1)` dead
//! members (replacing one frees the budget), which keeps quorums reachable.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_wal::replication::{
    AppendRefusal, DurableState, Entry, EntryKind, Epoch, FromReplica, Lsn, OwnerCommand,
    OwnerEvent, Payload, Recovery, Replica, ReplicaCommand, ReplicaEvent, ReplicaId,
    ReplicationConfig, ToReplica, Writer,
};

/// What to simulate. Everything else is drawn from the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: u16,
    pub write_quorum: u16,
    /// Events processed in the faulty phase, before healing.
    pub steps: usize,
    /// Mutation for checking the oracle: a disk that sometimes reports an fdatasync done without
    /// persisting anything.
    pub lying_disk: bool,
    /// Spare nodes outside the replica set; with any, replicas die for good and are replaced.
    pub spares: u16,
}

/// What a run did, for the test to print and sanity-check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub events: u64,
    pub virtual_ms: u64,
    pub appended: u64,
    pub committed_entries: u64,
    /// Entries in object storage at the end (LSN 1 up to the uploaded end).
    pub uploaded_entries: u64,
    pub recoveries: u64,
    pub owners: u64,
    pub fenced_owners: u64,
    pub replica_crashes: u64,
    pub faulty_disks: u64,
    pub messages: u64,
    pub dropped: u64,
    pub retransmits: u64,
    pub refused_full: u64,
    pub truncations: u64,
    /// Replicas killed for good.
    pub replicas_killed: u64,
    /// Replacements recorded in metadata, and the ones refused (a stale epoch).
    pub replacements: u64,
    pub replacements_refused: u64,
}

/// Randomized per seed.
#[derive(Debug, Clone)]
struct Params {
    drop_p: f64,
    dup_p: f64,
    delay_max_ms: u64,
    sync_delay_max_ms: u64,
    tick_ms: u64,
    fault_interval_max_ms: u64,
    restart_delay_max_ms: u64,
    workload_interval_max_ms: u64,
    upload_p: f64,
    /// Longest isolation of a replica (a lagging replica makes commits rest on exactly W).
    isolate_max_ms: u64,
    /// Chance that a replica crashes right after sending an ack or a seal answer (a promise
    /// about its disk; whatever it has not synced yet is lost).
    crash_after_reply_p: f64,
    /// Chance, per message sent while recovering, that the owner dies right there.
    crash_in_recovery_p: f64,
    /// Relative weights of the fault kinds (swarm testing: each seed stresses a different mix,
    /// some leave a kind out entirely), in the order of [`FAULTS`].
    fault_weights: [u32; FAULTS.len()],
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    CrashReplica,
    IsolateReplica,
    /// Cut the link between one owner and one replica, both ways, for a while: the zombie
    /// reaches replicas the new owner does not.
    CutLink,
    /// The lease holder dies; a new owner takes over.
    CrashOwner,
    /// The lease moves; the old holder keeps running as a zombie.
    ZombieOwner,
    /// The next owner dies shortly after it starts (often in the middle of its recovery).
    ShortLivedOwner,
    DetectorFalseAlarm,
    FaultyDisk,
}

const FAULTS: [Fault; 8] = [
    Fault::CrashReplica,
    Fault::IsolateReplica,
    Fault::CutLink,
    Fault::CrashOwner,
    Fault::ZombieOwner,
    Fault::ShortLivedOwner,
    Fault::DetectorFalseAlarm,
    Fault::FaultyDisk,
];

#[derive(Debug, Clone)]
enum Ev {
    ToReplica {
        replica: ReplicaId,
        msg: ToReplica,
    },
    ToOwner {
        epoch: Epoch,
        replica: ReplicaId,
        msg: FromReplica,
    },
    SyncDone {
        replica: ReplicaId,
        incarnation: u64,
    },
    OwnerTick {
        epoch: Epoch,
    },
    Workload,
    Fault,
    ReplicaRestart {
        replica: ReplicaId,
    },
    StartOwner {
        epoch: Epoch,
    },
    CrashReplica {
        replica: ReplicaId,
    },
    /// The owner of `epoch` dies (if it still runs); if it holds the lease, the lease expires.
    CrashOwner {
        epoch: Epoch,
    },
    /// Tell `epoch`'s owner whether `replica` is reachable: `Some(false)` is a false alarm,
    /// `None` the truth at delivery time (so the last word is always the truth).
    Detector {
        epoch: Epoch,
        replica: ReplicaId,
        forced: Option<bool>,
    },
    /// The owner of `epoch` found the spare `node` for its replica `slot`.
    ReplaceStart {
        epoch: Epoch,
        slot: ReplicaId,
        node: usize,
    },
    /// The owner of `epoch` records its new set (`node` in `slot`) in metadata.
    RecordReplicas {
        epoch: Epoch,
        slot: ReplicaId,
        node: usize,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, we pop the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Seal(Epoch),
    Truncate(Lsn),
    Trim(Lsn),
    Write(Vec<Entry>),
}

fn apply(state: &mut DurableState, op: &Op) {
    match op {
        Op::Seal(e) => {
            assert!(*e >= state.sealed_epoch, "disk: seal went down");
            state.sealed_epoch = *e;
        }
        Op::Truncate(after) => {
            assert!(*after >= state.base_lsn, "disk: truncate below base");
            state
                .entries
                .truncate((after.0 - state.base_lsn.0) as usize);
        }
        Op::Trim(upto) => {
            if *upto > state.base_lsn {
                let n = ((upto.0 - state.base_lsn.0) as usize).min(state.entries.len());
                state.entries.drain(..n);
                state.base_lsn = *upto;
            }
        }
        Op::Write(es) => {
            let next = state.base_lsn.0 + state.entries.len() as u64 + 1;
            assert_eq!(es[0].lsn.0, next, "disk: write not at the end");
            state.entries.extend(es.iter().cloned());
        }
    }
}

/// A disk: what is durable, and the operations issued since.
#[derive(Debug, Clone, Default)]
struct Disk {
    durable: DurableState,
    /// `durable` with every pending op applied: what the core must believe.
    volatile: DurableState,
    pending: VecDeque<Op>,
    /// Ops issued / made durable so far, counting from the start of this incarnation.
    ops_issued: u64,
    ops_durable: u64,
    /// Outstanding syncs: (ops_issued when issued, upto_lsn the command carried).
    syncs: VecDeque<(u64, Lsn)>,
}

impl Disk {
    fn issue(&mut self, op: Op) {
        apply(&mut self.volatile, &op);
        self.pending.push_back(op);
        self.ops_issued += 1;
    }

    fn persist_upto(&mut self, target: u64) {
        while self.ops_durable < target {
            let op = self.pending.pop_front().expect("pending op");
            apply(&mut self.durable, &op);
            self.ops_durable += 1;
        }
    }

    /// A crash: a prefix of the pending ops made it, the rest is lost.
    fn crash(&mut self, keep: usize) {
        let target = self.ops_durable + keep as u64;
        self.persist_upto(target);
        self.pending.clear();
        self.syncs.clear();
        self.ops_issued = 0;
        self.ops_durable = 0;
        self.volatile = self.durable.clone();
    }
}

struct ReplicaNode {
    core: Replica,
    disk: Disk,
    alive: bool,
    /// Its disk failed an fdatasync: gone for good.
    stopped: bool,
    incarnation: u64,
    /// Syncs complete in order: the next one completes no earlier than this.
    sync_free_at: u64,
    fail_next_sync: bool,
    isolated_until: u64,
}

enum OwnerCore {
    Recovering(Recovery),
    Writing(Writer),
    /// Only while a recovery is moved into its writer.
    Moving,
}

impl OwnerCore {
    fn handle(&mut self, ev: OwnerEvent, out: &mut Vec<OwnerCommand>) {
        match self {
            OwnerCore::Recovering(r) => r.handle(ev, out),
            OwnerCore::Writing(w) => w.handle(ev, out),
            OwnerCore::Moving => unreachable!("transient"),
        }
    }

    fn writer(&self) -> Option<&Writer> {
        match self {
            OwnerCore::Recovering(r) => r.writer(),
            OwnerCore::Writing(w) => Some(w),
            OwnerCore::Moving => None,
        }
    }
}

struct OwnerNode {
    /// The node of each replica slot, then the joiner's (`NO_NODE` while none).
    slots: Vec<usize>,
    core: OwnerCore,
    alive: bool,
    fenced: bool,
    recovered: bool,
    committed: Lsn,
    next_payload: u64,
}

const NO_NODE: usize = usize::MAX;

/// A recovery as the oracle remembers it.
struct RecoveredView {
    epoch: Epoch,
    from: Lsn,
    upto: Lsn,
    tail: Vec<Entry>,
}

#[derive(Default)]
struct Oracle {
    /// Every committed entry, and the epoch of the owner that first reported it.
    committed: BTreeMap<Lsn, (Entry, Epoch)>,
    recoveries: Vec<RecoveredView>,
}

/// The simulated object store and metadata.
#[derive(Default)]
struct Meta {
    /// The epoch of the current lease.
    epoch: Epoch,
    /// Everything up to here is in `store` and committed to the index.
    uploaded: Lsn,
    store: BTreeMap<Lsn, Entry>,
    store_payloads: HashSet<Payload>,
    /// The stream's replica set: a node per slot.
    set: Vec<usize>,
}

struct Sim {
    cfg: SimConfig,
    rcfg: ReplicationConfig,
    p: Params,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    replicas: Vec<ReplicaNode>,
    owners: BTreeMap<Epoch, OwnerNode>,
    meta: Meta,
    oracle: Oracle,
    report: Report,
    faulty_budget: u64,
    /// Faults come in storms: until this time, then a calm spell.
    storm_until: u64,
    /// Links between an owner and a replica that are cut until the given time.
    cut_links: BTreeMap<(Epoch, ReplicaId), u64>,
    healing: bool,
    ocmds: Vec<OwnerCommand>,
    rcmds: Vec<ReplicaCommand>,
}

type SimResult<T = ()> = Result<T, String>;

/// Runs one simulation; `Err` is an oracle violation (with context). Core assertion failures
/// panic.
pub fn run(cfg: &SimConfig) -> Result<Report, String> {
    let mut sim = Sim::new(cfg.clone());
    sim.run().map_err(|e| format!("t={}ms: {e}", sim.now))?;
    Ok(sim.report)
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let rcfg = ReplicationConfig {
            replicas: cfg.replicas,
            write_quorum: cfg.write_quorum,
            inflight_bytes_max: rng.gen_range(300..4096),
            // Sometimes one entry per message: recovery's re-replication then spreads over many
            // messages, and an owner can die between the tail and the barrier.
            message_bytes_max: if rng.gen_bool(0.3) {
                1
            } else {
                rng.gen_range(100..1024)
            },
            retained_bytes_max: rng.gen_range(8 << 10..64 << 10),
            entry_bytes_max: 200,
            fetch_bytes_max: rng.gen_range(100..2048),
            retransmit_timeout_ms: rng.gen_range(30..150),
            replace_after_ms: if cfg.spares > 0 {
                rng.gen_range(100..2000)
            } else {
                0
            },
        };
        rcfg.validate().expect("sim config");
        let p = Params {
            drop_p: [0.0, 0.01, 0.05, 0.2][rng.gen_range(0..4)],
            dup_p: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            delay_max_ms: rng.gen_range(1..30),
            sync_delay_max_ms: rng.gen_range(1..10),
            tick_ms: rng.gen_range(5..20),
            fault_interval_max_ms: rng.gen_range(20..300),
            restart_delay_max_ms: rng.gen_range(10..3000),
            isolate_max_ms: rng.gen_range(20..3000),
            crash_after_reply_p: [0.0, 0.001, 0.01, 0.05][rng.gen_range(0..4)],
            crash_in_recovery_p: [0.0, 0.005, 0.03][rng.gen_range(0..3)],
            workload_interval_max_ms: rng.gen_range(1..10),
            upload_p: rng.gen_range(0.02..0.3),
            fault_weights: std::array::from_fn(|_| {
                if rng.gen_bool(0.25) {
                    0
                } else {
                    rng.gen_range(1..10)
                }
            }),
        };
        let replicas = (0..cfg.replicas + cfg.spares)
            .map(|_| ReplicaNode {
                core: Replica::new(),
                disk: Disk::default(),
                alive: true,
                stopped: false,
                incarnation: 0,
                sync_free_at: 0,
                fail_next_sync: false,
                isolated_until: 0,
            })
            .collect();
        let set_size = cfg.replicas;
        let faulty_budget = u64::from((cfg.replicas - cfg.write_quorum).min(cfg.write_quorum - 1));
        Sim {
            cfg,
            rcfg,
            p,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            replicas,
            owners: BTreeMap::new(),
            meta: Meta {
                set: (0..usize::from(set_size)).collect(),
                ..Meta::default()
            },
            oracle: Oracle::default(),
            report: Report::default(),
            faulty_budget,
            storm_until: 0,
            cut_links: BTreeMap::new(),
            healing: false,
            ocmds: Vec::new(),
            rcmds: Vec::new(),
        }
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            ev,
        });
    }

    fn run(&mut self) -> SimResult {
        self.failover(false);
        self.schedule(1, Ev::Workload);
        self.schedule(1, Ev::Fault);
        while (self.report.events as usize) < self.cfg.steps {
            self.step()?;
        }
        self.heal()
    }

    fn step(&mut self) -> SimResult {
        let s = self
            .queue
            .pop()
            .expect("the queue never empties: ticks reschedule");
        assert!(s.at >= self.now);
        self.now = s.at;
        self.report.events += 1;
        self.report.virtual_ms = self.now;
        match s.ev {
            Ev::ToReplica { replica, msg } => {
                if self.link_up(msg.epoch(), replica) {
                    self.deliver_to_replica(replica, msg);
                }
            }
            Ev::ToOwner {
                epoch,
                replica,
                msg,
            } => {
                if !self.link_up(epoch, replica) {
                    return Ok(());
                }
                // From a node that is no longer one of the owner's: dropped.
                let Some(slot) = self.slot_of(epoch, replica.index()) else {
                    return Ok(());
                };
                self.owner_event(epoch, OwnerEvent::from_reply(slot, msg))?;
            }
            Ev::SyncDone {
                replica,
                incarnation,
            } => self.sync_done(replica, incarnation),
            Ev::OwnerTick { epoch } => {
                let alive = self
                    .owners
                    .get(&epoch)
                    .is_some_and(|o| o.alive && !o.fenced);
                if alive {
                    self.owner_event(epoch, OwnerEvent::Tick { now_ms: self.now })?;
                    let tick = self.p.tick_ms;
                    self.schedule(tick, Ev::OwnerTick { epoch });
                }
            }
            Ev::Workload => {
                self.workload()?;
                if !self.healing {
                    let d = self.rng.gen_range(1..=self.p.workload_interval_max_ms);
                    self.schedule(d, Ev::Workload);
                }
            }
            Ev::Fault => {
                if !self.healing {
                    if self.now >= self.storm_until {
                        // A calm spell (recoveries finish, writes commit), then the next storm.
                        let calm = self.rng.gen_range(0..3000);
                        self.storm_until = self.now + calm + self.rng.gen_range(50..2000);
                        self.schedule(calm, Ev::Fault);
                    } else {
                        self.fault();
                        let d = self.rng.gen_range(1..=self.p.fault_interval_max_ms);
                        self.schedule(d, Ev::Fault);
                    }
                }
            }
            Ev::ReplicaRestart { replica } => self.restart_replica(replica),
            Ev::StartOwner { epoch } => self.start_owner(epoch)?,
            Ev::CrashReplica { replica } => {
                if !self.healing {
                    self.crash_replica(replica);
                }
            }
            Ev::CrashOwner { epoch } => {
                if !self.healing {
                    if let Some(o) = self.owners.get_mut(&epoch) {
                        o.alive = false;
                    }
                    if epoch == self.meta.epoch {
                        self.failover(false); // its lease expires
                    }
                }
            }
            Ev::Detector {
                epoch,
                replica,
                forced,
            } => {
                let node = &self.replicas[replica.index()];
                let up = forced.unwrap_or(node.alive && !node.stopped);
                let Some(replica) = self.slot_of(epoch, replica.index()) else {
                    return Ok(());
                };
                let ev = if up {
                    OwnerEvent::ReplicaUp { replica }
                } else {
                    OwnerEvent::ReplicaDown { replica }
                };
                if self.owners.get(&epoch).is_some_and(|o| o.alive) {
                    self.owner_event(epoch, ev)?;
                }
            }
            Ev::ReplaceStart { epoch, slot, node } => self.replace_start(epoch, slot, node)?,
            Ev::RecordReplicas { epoch, slot, node } => self.record_replicas(epoch, slot, node)?,
        }
        Ok(())
    }

    /// The slot of `node` in the owner of `epoch`'s set (or its joiner's).
    fn slot_of(&self, epoch: Epoch, node: usize) -> Option<ReplicaId> {
        let o = self.owners.get(&epoch)?;
        o.slots
            .iter()
            .position(|&n| n == node)
            .map(|i| ReplicaId(i as u16))
    }

    // ----- replacement -----

    /// Dead members of the recorded set, plus the faulty disks still to come: what the
    /// budget of permanent losses is checked against.
    fn permanent_losses_allowed(&self) -> bool {
        let limit = (self.cfg.replicas - self.cfg.write_quorum).min(self.cfg.write_quorum - 1);
        let doomed = self
            .meta
            .set
            .iter()
            .filter(|&&n| self.replicas[n].stopped || self.replicas[n].fail_next_sync)
            .count() as u64;
        doomed < u64::from(limit)
    }

    fn on_replace_request(&mut self, epoch: Epoch, slot: ReplicaId) {
        let Some(o) = self.owners.get(&epoch) else {
            return;
        };
        if o.slots[usize::from(self.cfg.replicas)] != NO_NODE {
            return; // one at a time
        }
        // Live spares outside the owner's set, as metadata's heartbeats would say.
        let spares: Vec<usize> = (0..self.replicas.len())
            .filter(|n| !o.slots.contains(n))
            .filter(|&n| {
                let node = &self.replicas[n];
                node.alive && !node.stopped && !node.fail_next_sync
            })
            .collect();
        if spares.is_empty() {
            return;
        }
        let node = spares[self.rng.gen_range(0..spares.len())];
        let d = self.rng.gen_range(0..20);
        self.schedule(d, Ev::ReplaceStart { epoch, slot, node });
    }

    fn replace_start(&mut self, epoch: Epoch, slot: ReplicaId, node: usize) -> SimResult {
        let joiner = usize::from(self.cfg.replicas);
        let Some(o) = self.owners.get_mut(&epoch) else {
            return Ok(());
        };
        if !o.alive || o.fenced || o.slots[joiner] != NO_NODE || o.slots.contains(&node) {
            return Ok(());
        }
        o.slots[joiner] = node;
        self.owner_event(epoch, OwnerEvent::ReplaceStart { replica: slot })?;
        let started = self.owners[&epoch]
            .core
            .writer()
            .and_then(|w| w.replacing())
            == Some(slot);
        if !started {
            self.owners.get_mut(&epoch).expect("owner").slots[joiner] = NO_NODE;
            return Ok(());
        }
        // The driver connects to the joiner.
        self.schedule(
            1,
            Ev::Detector {
                epoch,
                replica: ReplicaId(node as u16),
                forced: None,
            },
        );
        Ok(())
    }

    fn record_replicas(&mut self, epoch: Epoch, slot: ReplicaId, node: usize) -> SimResult {
        let joiner = usize::from(self.cfg.replicas);
        let Some(o) = self.owners.get(&epoch) else {
            return Ok(());
        };
        if !o.alive || o.fenced || o.slots[joiner] != node {
            return Ok(());
        }
        if epoch != self.meta.epoch {
            // Metadata refuses a stale epoch: the owner gives the replacement up.
            self.report.replacements_refused += 1;
            self.owners.get_mut(&epoch).expect("owner").slots[joiner] = NO_NODE;
            return self.owner_event(epoch, OwnerEvent::ReplaceAborted);
        }
        let mut set = o.slots[..joiner].to_vec();
        set[slot.index()] = node;
        self.meta.set = set;
        self.report.replacements += 1;
        if !self.healing && self.rng.gen_bool(0.2) {
            // Dies between recording the set and switching to it.
            self.failover(false);
            return Ok(());
        }
        let o = self.owners.get_mut(&epoch).expect("owner");
        o.slots[slot.index()] = node;
        o.slots[joiner] = NO_NODE;
        self.owner_event(epoch, OwnerEvent::ReplaceDone { replica: slot })?;
        // The driver connects the slot to its new node.
        self.schedule(
            1,
            Ev::Detector {
                epoch,
                replica: ReplicaId(node as u16),
                forced: None,
            },
        );
        Ok(())
    }

    fn kill_replica_for_good(&mut self) {
        let set = self.meta.set.clone();
        let n = set[self.rng.gen_range(0..set.len())];
        if !self.permanent_losses_allowed() || self.replicas[n].stopped {
            return;
        }
        self.crash_replica(ReplicaId(n as u16));
        self.replicas[n].stopped = true;
        self.report.replicas_killed += 1;
    }

    // ----- network -----

    fn net_delay(&mut self) -> u64 {
        self.rng.gen_range(1..=self.p.delay_max_ms)
    }

    /// Whether messages between the owner of `epoch` and `replica` get through right now.
    fn link_up(&self, epoch: Epoch, replica: ReplicaId) -> bool {
        self.replicas[replica.index()].isolated_until <= self.now
            && self
                .cut_links
                .get(&(epoch, replica))
                .is_none_or(|&t| t <= self.now)
    }

    fn send(&mut self, epoch: Epoch, ev: Ev, replica: ReplicaId) {
        self.report.messages += 1;
        if !self.link_up(epoch, replica) || self.rng.gen_bool(self.p.drop_p) {
            self.report.dropped += 1;
            return;
        }
        if self.rng.gen_bool(self.p.dup_p) {
            let d = self.net_delay();
            self.schedule(d, ev.clone());
        }
        let d = self.net_delay();
        self.schedule(d, ev);
    }

    // ----- replicas -----

    fn deliver_to_replica(&mut self, r: ReplicaId, msg: ToReplica) {
        let node = &mut self.replicas[r.index()];
        if !node.alive || node.stopped {
            return;
        }
        if let ToReplica::Append(m) = &msg {
            // What the IO driver does with every decoded frame.
            m.check().expect("owners send well-formed appends");
        }
        let mut out = std::mem::take(&mut self.rcmds);
        node.core.handle(ReplicaEvent::from(msg), &mut out);
        self.exec_replica(r, &mut out);
        self.rcmds = out;
    }

    fn exec_replica(&mut self, r: ReplicaId, out: &mut Vec<ReplicaCommand>) {
        for cmd in out.drain(..) {
            let node = &mut self.replicas[r.index()];
            match cmd {
                ReplicaCommand::PersistSeal { epoch } => node.disk.issue(Op::Seal(epoch)),
                ReplicaCommand::Truncate { after_lsn } => {
                    self.report.truncations += 1;
                    node.disk.issue(Op::Truncate(after_lsn))
                }
                ReplicaCommand::Trim { upto_lsn } => node.disk.issue(Op::Trim(upto_lsn)),
                ReplicaCommand::Write { entries } => node.disk.issue(Op::Write(entries)),
                ReplicaCommand::Sync { upto_lsn } => {
                    node.disk.syncs.push_back((node.disk.ops_issued, upto_lsn));
                    let delay = self.rng.gen_range(1..=self.p.sync_delay_max_ms);
                    let node = &mut self.replicas[r.index()];
                    let at = node.sync_free_at.max(self.now) + delay;
                    node.sync_free_at = at;
                    let incarnation = node.incarnation;
                    self.schedule(
                        at - self.now,
                        Ev::SyncDone {
                            replica: r,
                            incarnation,
                        },
                    );
                }
                ReplicaCommand::Reply { msg } => {
                    let epoch = msg.epoch();
                    let promise =
                        matches!(msg, FromReplica::Ack { .. } | FromReplica::Sealed { .. });
                    if promise && !self.healing && self.rng.gen_bool(self.p.crash_after_reply_p) {
                        let d = self.rng.gen_range(0..=self.p.sync_delay_max_ms);
                        self.schedule(d, Ev::CrashReplica { replica: r });
                    }
                    self.send(
                        epoch,
                        Ev::ToOwner {
                            epoch,
                            replica: r,
                            msg,
                        },
                        r,
                    );
                }
            }
        }
        self.check_replica_view(r);
    }

    /// The core's view of its log must be what the store will hold once every issued op lands.
    fn check_replica_view(&self, r: ReplicaId) {
        let node = &self.replicas[r.index()];
        if node.stopped {
            return;
        }
        let v = &node.disk.volatile;
        let core = &node.core;
        assert_eq!(
            core.sealed_epoch(),
            v.sealed_epoch,
            "{r}: sealed epoch vs disk"
        );
        assert_eq!(core.base_lsn(), v.base_lsn, "{r}: base vs disk");
        assert_eq!(
            core.last_lsn().0,
            v.base_lsn.0 + v.entries.len() as u64,
            "{r}: last lsn vs disk"
        );
        if let Some(last) = v.entries.last() {
            assert_eq!(core.entry(last.lsn), Some(last), "{r}: last entry vs disk");
        }
    }

    fn sync_done(&mut self, r: ReplicaId, incarnation: u64) {
        let lying = self.cfg.lying_disk && self.rng.gen_bool(0.5);
        let node = &mut self.replicas[r.index()];
        if node.incarnation != incarnation || !node.alive || node.stopped {
            return;
        }
        let mut out = std::mem::take(&mut self.rcmds);
        if node.fail_next_sync {
            node.stopped = true;
            node.core.handle(ReplicaEvent::SyncFailed, &mut out);
            assert!(out.is_empty() && node.core.is_stopped());
            self.report.faulty_disks += 1;
            self.rcmds = out;
            self.tell_detectors(r);
            return;
        }
        let (target, upto_lsn) = node.disk.syncs.pop_front().expect("a sync was issued");
        if !lying {
            node.disk.persist_upto(target);
        }
        node.core
            .handle(ReplicaEvent::Synced { upto_lsn }, &mut out);
        self.exec_replica(r, &mut out);
        self.rcmds = out;
    }

    fn crash_replica(&mut self, r: ReplicaId) {
        let keep = {
            let pending = self.replicas[r.index()].disk.pending.len();
            self.rng.gen_range(0..=pending)
        };
        let node = &mut self.replicas[r.index()];
        if !node.alive || node.stopped {
            return;
        }
        node.alive = false;
        node.incarnation += 1;
        node.disk.crash(keep);
        self.report.replica_crashes += 1;
        self.tell_detectors(r);
        if !self.healing {
            let d = self.rng.gen_range(1..=self.p.restart_delay_max_ms);
            self.schedule(d, Ev::ReplicaRestart { replica: r });
        }
    }

    fn restart_replica(&mut self, r: ReplicaId) {
        let node = &mut self.replicas[r.index()];
        if node.alive || node.stopped {
            return;
        }
        node.alive = true;
        node.sync_free_at = self.now;
        node.core = Replica::restore(node.disk.durable.clone());
        self.check_replica_view(r);
        self.tell_detectors(r);
    }

    fn tell_detectors(&mut self, r: ReplicaId) {
        let epochs: Vec<Epoch> = self.owners.keys().copied().collect();
        for epoch in epochs {
            let d = self.rng.gen_range(1..=20);
            self.schedule(
                d,
                Ev::Detector {
                    epoch,
                    replica: r,
                    forced: None,
                },
            );
        }
    }

    // ----- owners -----

    /// The lease moves to a new epoch. The old holder crashes, or (`zombie`) keeps running.
    fn failover(&mut self, zombie: bool) {
        let old = self.meta.epoch;
        if let Some(o) = self.owners.get_mut(&old) {
            if !zombie {
                o.alive = false;
            }
        }
        self.meta.epoch = Epoch(old.0 + 1);
        let epoch = self.meta.epoch;
        // Bound the zombies: the oldest one still running crashes.
        let running: Vec<Epoch> = self
            .owners
            .iter()
            .filter(|(_, o)| o.alive && !o.fenced)
            .map(|(e, _)| *e)
            .collect();
        if running.len() > 3 {
            self.owners.get_mut(&running[0]).expect("listed").alive = false;
        }
        let d = if self.healing {
            0
        } else {
            self.rng.gen_range(0..100)
        };
        self.schedule(d, Ev::StartOwner { epoch });
    }

    fn start_owner(&mut self, epoch: Epoch) -> SimResult {
        if epoch != self.meta.epoch {
            return Ok(()); // superseded before it started
        }
        // Read after the lease was granted: the old holder can no longer commit uploads.
        let from = self.meta.uploaded.next();
        let mut out = std::mem::take(&mut self.ocmds);
        let rec = Recovery::start(self.rcfg.clone(), epoch, from, self.now, &mut out);
        let mut slots = self.meta.set.clone();
        slots.push(NO_NODE);
        self.owners.insert(
            epoch,
            OwnerNode {
                slots,
                core: OwnerCore::Recovering(rec),
                alive: true,
                fenced: false,
                recovered: false,
                committed: from.prev(),
                next_payload: 0,
            },
        );
        self.report.owners += 1;
        self.exec_owner(epoch, &mut out)?;
        self.ocmds = out;
        let tick = self.p.tick_ms;
        self.schedule(tick, Ev::OwnerTick { epoch });
        // Replicas that are down right now: the detector says so shortly.
        for r in self
            .meta
            .set
            .clone()
            .into_iter()
            .map(|n| ReplicaId(n as u16))
        {
            let node = &self.replicas[r.index()];
            if !node.alive || node.stopped {
                self.schedule(
                    1,
                    Ev::Detector {
                        epoch,
                        replica: r,
                        forced: None,
                    },
                );
            }
        }
        Ok(())
    }

    fn owner_event(&mut self, epoch: Epoch, ev: OwnerEvent) -> SimResult {
        let Some(o) = self.owners.get_mut(&epoch) else {
            return Ok(());
        };
        if !o.alive || o.fenced {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.ocmds);
        o.core.handle(ev, &mut out);
        let r = self.exec_owner(epoch, &mut out);
        self.ocmds = out;
        r
    }

    fn exec_owner(&mut self, epoch: Epoch, out: &mut Vec<OwnerCommand>) -> SimResult {
        let mut recovered = false;
        for cmd in out.drain(..) {
            match cmd {
                OwnerCommand::Send { replica, msg } => {
                    let recovering = matches!(
                        self.owners.get(&epoch).map(|o| &o.core),
                        Some(OwnerCore::Recovering(_))
                    );
                    if recovering && !self.healing && self.rng.gen_bool(self.p.crash_in_recovery_p)
                    {
                        self.schedule(0, Ev::CrashOwner { epoch });
                    }
                    let node = self.owners[&epoch].slots[replica.index()];
                    if node != NO_NODE {
                        let to = ReplicaId(node as u16);
                        self.send(epoch, Ev::ToReplica { replica: to, msg }, to)
                    }
                }
                OwnerCommand::Retransmit { .. } => self.report.retransmits += 1,
                OwnerCommand::ReplaceReplica { replica, .. } => {
                    self.on_replace_request(epoch, replica)
                }
                OwnerCommand::ReplacementCaughtUp { replica, .. } => {
                    let node = self.owners[&epoch].slots[usize::from(self.cfg.replicas)];
                    let d = self.rng.gen_range(1..50);
                    self.schedule(
                        d,
                        Ev::RecordReplicas {
                            epoch,
                            slot: replica,
                            node,
                        },
                    );
                }
                OwnerCommand::Appended { .. } => self.report.appended += 1,
                OwnerCommand::AppendRefused { reason } => {
                    if let AppendRefusal::Full { .. } = reason {
                        self.report.refused_full += 1;
                    }
                }
                OwnerCommand::Committed { upto_lsn } => self.on_committed(epoch, upto_lsn)?,
                OwnerCommand::Fenced { .. } => {
                    self.report.fenced_owners += 1;
                    self.owners.get_mut(&epoch).expect("owner").fenced = true;
                }
                OwnerCommand::Recovered {
                    from_lsn,
                    upto_lsn,
                    barrier_lsn,
                    entries,
                } => {
                    if barrier_lsn != upto_lsn.next() {
                        return Err(format!("{epoch}: barrier {barrier_lsn} after {upto_lsn}"));
                    }
                    self.on_recovered(epoch, from_lsn, upto_lsn, entries)?;
                    recovered = true;
                }
            }
        }
        if recovered {
            let o = self.owners.get_mut(&epoch).expect("owner");
            let OwnerCore::Recovering(rec) = std::mem::replace(&mut o.core, OwnerCore::Moving)
            else {
                unreachable!("Recovered comes from a recovery")
            };
            o.core = OwnerCore::Writing(rec.into_writer());
            o.recovered = true;
        }
        Ok(())
    }

    fn workload(&mut self) -> SimResult {
        let epochs: Vec<Epoch> = self
            .owners
            .iter()
            .filter(|(_, o)| o.alive && !o.fenced && o.recovered)
            .map(|(e, _)| *e)
            .collect();
        for epoch in epochs {
            if self.rng.gen_bool(0.3) {
                continue;
            }
            let n = self.rng.gen_range(1..=6);
            for _ in 0..n {
                let payload = self.payload(epoch);
                self.owner_event(epoch, OwnerEvent::Append { payload })?;
            }
            self.owner_event(epoch, OwnerEvent::Flush)?;
            if self.rng.gen_bool(self.p.upload_p) {
                self.upload(epoch)?;
            }
        }
        Ok(())
    }

    fn payload(&mut self, epoch: Epoch) -> Payload {
        let o = self.owners.get_mut(&epoch).expect("owner");
        o.next_payload += 1;
        let mut bytes = format!("e{}#{}:", epoch.0, o.next_payload).into_bytes();
        let pad = self.rng.gen_range(0..64);
        bytes.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
        Arc::from(bytes)
    }

    /// Upload committed entries to the object store and commit them to the index (fenced by
    /// the lease epoch), then trim.
    fn upload(&mut self, epoch: Epoch) -> SimResult {
        let o = &self.owners[&epoch];
        let Some(w) = o.core.writer() else {
            return Ok(());
        };
        if epoch != self.meta.epoch || w.committed_lsn() <= self.meta.uploaded {
            return Ok(()); // the index commit of a stale epoch is rejected
        }
        let upto = Lsn(self
            .rng
            .gen_range(self.meta.uploaded.0 + 1..=w.committed_lsn().0));
        let mut lsn = self.meta.uploaded.next();
        while lsn <= upto {
            let e = w
                .entry(lsn)
                .ok_or(format!("{epoch}: uploading untracked {lsn}"))?;
            match self.oracle.committed.get(&lsn) {
                Some((c, _)) if c == e => {}
                other => return Err(format!("uploading {e:?}, committed {other:?}")),
            }
            if e.kind == EntryKind::Data && !self.meta.store_payloads.insert(e.payload.clone()) {
                return Err(format!("payload of {e:?} uploaded twice"));
            }
            self.meta.store.insert(lsn, e.clone());
            lsn = lsn.next();
        }
        self.meta.uploaded = upto;
        self.report.uploaded_entries = upto.0;
        self.owner_event(epoch, OwnerEvent::Trim { upto_lsn: upto })
    }

    // ----- faults -----

    fn fault(&mut self) {
        let total: u32 = self.p.fault_weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng.gen_range(0..total);
        let mut fault = FAULTS[0];
        for (f, w) in FAULTS.iter().zip(self.p.fault_weights) {
            if pick < w {
                fault = *f;
                break;
            }
            pick -= w;
        }
        if self.cfg.spares > 0 && self.rng.gen_bool(0.05) {
            return self.kill_replica_for_good();
        }
        let r = ReplicaId(self.rng.gen_range(0..self.replicas.len() as u16));
        match fault {
            Fault::CrashReplica => self.crash_replica(r),
            Fault::IsolateReplica => {
                let d = self.rng.gen_range(20..=self.p.isolate_max_ms);
                self.replicas[r.index()].isolated_until = self.now + d;
            }
            Fault::CutLink => {
                let epochs: Vec<Epoch> = self.owners.keys().copied().collect();
                if epochs.is_empty() {
                    return;
                }
                let epoch = epochs[self.rng.gen_range(0..epochs.len())];
                let d = self.rng.gen_range(20..=self.p.isolate_max_ms);
                self.cut_links.insert((epoch, r), self.now + d);
            }
            Fault::CrashOwner => self.failover(false),
            Fault::ZombieOwner => self.failover(true),
            Fault::ShortLivedOwner => {
                let zombie = self.rng.gen_bool(0.5);
                self.failover(zombie);
                let epoch = self.meta.epoch;
                let d = self.rng.gen_range(1..200);
                self.schedule(d, Ev::CrashOwner { epoch });
            }
            Fault::DetectorFalseAlarm => {
                // A false alarm from the failure detector, then the truth.
                let epoch = self.meta.epoch;
                let d = self.rng.gen_range(1..50);
                self.schedule(
                    1,
                    Ev::Detector {
                        epoch,
                        replica: r,
                        forced: Some(false),
                    },
                );
                self.schedule(
                    1 + d,
                    Ev::Detector {
                        epoch,
                        replica: r,
                        forced: None,
                    },
                );
            }
            Fault::FaultyDisk => {
                let allowed = self.cfg.spares == 0 || self.permanent_losses_allowed();
                if allowed && self.faulty_budget > 0 && !self.replicas[r.index()].stopped {
                    self.faulty_budget -= 1;
                    self.replicas[r.index()].fail_next_sync = true;
                }
            }
        }
    }

    // ----- the oracle -----

    fn on_committed(&mut self, epoch: Epoch, upto: Lsn) -> SimResult {
        let o = self.owners.get_mut(&epoch).expect("owner");
        let from = o.committed.next();
        if upto < from {
            return Err(format!("{epoch}: Committed went back to {upto}"));
        }
        o.committed = upto;
        let w = o.core.writer().ok_or("Committed before replicating")?;
        let mut lsn = from.max(w.settled_lsn().next());
        while lsn <= upto {
            let e = w
                .entry(lsn)
                .ok_or(format!("{epoch}: committed {lsn} not retained"))?;
            match self.oracle.committed.get(&lsn) {
                Some((c, by)) if c != e => {
                    return Err(format!(
                        "{lsn} committed as {c:?} by {by} and as {e:?} by {epoch}"
                    ))
                }
                Some(_) => {}
                None => {
                    self.oracle.committed.insert(lsn, (e.clone(), epoch));
                    self.report.committed_entries += 1;
                }
            }
            // A newer owner that already recovered must have this entry.
            for rec in self.oracle.recoveries.iter().filter(|r| r.epoch > epoch) {
                check_recovered(rec, &self.meta, lsn, e)
                    .map_err(|m| format!("{epoch} committed late: {m}"))?;
            }
            lsn = lsn.next();
        }
        Ok(())
    }

    fn on_recovered(&mut self, epoch: Epoch, from: Lsn, upto: Lsn, tail: Vec<Entry>) -> SimResult {
        self.report.recoveries += 1;
        if tail.len() as u64 != upto.0 + 1 - from.0 {
            return Err(format!(
                "{epoch}: tail of {} entries for {from}..={upto}",
                tail.len()
            ));
        }
        let mut payloads = HashSet::new();
        for (i, e) in tail.iter().enumerate() {
            if e.lsn != from.plus(i as u64) {
                return Err(format!("{epoch}: recovered tail not dense at {e:?}"));
            }
            if e.kind == EntryKind::Data
                && (self.meta.store_payloads.contains(&e.payload) || !payloads.insert(&e.payload))
            {
                return Err(format!("{epoch}: recovered {e:?} twice"));
            }
        }
        let rec = RecoveredView {
            epoch,
            from,
            upto,
            tail,
        };
        for (lsn, (e, by)) in &self.oracle.committed {
            if *by < epoch {
                check_recovered(&rec, &self.meta, *lsn, e)?;
            }
        }
        self.oracle.recoveries.push(rec);
        Ok(())
    }

    // ----- the end -----

    /// Heal everything, fail over once more, write, and check that every live replica ends up
    /// with exactly the writer's log.
    fn heal(&mut self) -> SimResult {
        self.healing = true;
        self.p.drop_p = 0.0;
        self.p.dup_p = 0.0;
        self.cut_links.clear();
        for r in (0..self.replicas.len() as u16).map(ReplicaId) {
            let node = &mut self.replicas[r.index()];
            node.isolated_until = 0;
            node.fail_next_sync = false;
            self.restart_replica(r);
        }
        let zombie = self.rng.gen_bool(0.5);
        self.failover(zombie);
        let epoch = self.meta.epoch;
        let deadline = self.now + 120_000;
        let mut wrote = false;
        loop {
            if self.now > deadline {
                let state = match self.owners.get(&epoch).map(|o| &o.core) {
                    None => "not started".to_string(),
                    Some(OwnerCore::Recovering(r)) => format!("recovering: {r:?}"),
                    Some(OwnerCore::Writing(w)) => format!("writing: {w:?}"),
                    Some(OwnerCore::Moving) => unreachable!("transient"),
                };
                return Err(format!(
                    "liveness: the final owner {epoch} is stuck; {state}"
                ));
            }
            let Some(o) = self.owners.get(&epoch) else {
                self.step()?;
                continue;
            };
            if o.fenced {
                return Err(format!("the final owner {epoch} was fenced"));
            }
            if let OwnerCore::Writing(w) = &o.core {
                if !wrote {
                    wrote = true;
                    for _ in 0..5 {
                        let payload = self.payload(epoch);
                        self.owner_event(epoch, OwnerEvent::Append { payload })?;
                    }
                    self.owner_event(epoch, OwnerEvent::Flush)?;
                    continue;
                }
                let last = w.last_lsn();
                let slots = &o.slots;
                let all_acked = (0..self.cfg.replicas)
                    .map(ReplicaId)
                    .filter(|r| !self.replicas[slots[r.index()]].stopped)
                    .all(|r| w.acked_lsn(r) == last);
                if w.committed_lsn() == last && all_acked {
                    return self.check_final(epoch);
                }
            }
            self.step()?;
        }
    }

    fn check_final(&self, epoch: Epoch) -> SimResult {
        let OwnerCore::Writing(w) = &self.owners[&epoch].core else {
            unreachable!("checked by the caller")
        };
        let members = &self.owners[&epoch].slots[..usize::from(self.cfg.replicas)];
        for &r in members {
            let node = &self.replicas[r];
            if node.stopped {
                continue;
            }
            let core = &node.core;
            if core.last_lsn() != w.last_lsn() || core.durable_lsn() != w.last_lsn() {
                return Err(format!(
                    "replica {r}: last {} durable {}, writer last {}",
                    core.last_lsn(),
                    core.durable_lsn(),
                    w.last_lsn()
                ));
            }
            let mut lsn = core.base_lsn().max(w.settled_lsn()).next();
            while lsn <= w.last_lsn() {
                if core.entry(lsn) != w.entry(lsn) {
                    return Err(format!(
                        "replica {r} at {lsn}: {:?}, writer {:?}",
                        core.entry(lsn),
                        w.entry(lsn)
                    ));
                }
                lsn = lsn.next();
            }
            if self.cfg.lying_disk {
                continue; // the disk lies by construction; the protocol oracle must catch it
            }
            // What the core holds is what the disk holds, durably.
            let d = &node.disk.durable;
            let disk_last = d.base_lsn.0 + d.entries.len() as u64;
            if disk_last != w.last_lsn().0 || d.entries.last() != w.entry(w.last_lsn()) {
                return Err(format!("replica {r}: durable disk ends at {disk_last}"));
            }
        }
        Ok(())
    }
}

/// Whether the recovery `rec` holds committed entry `e` at `lsn`.
fn check_recovered(rec: &RecoveredView, meta: &Meta, lsn: Lsn, e: &Entry) -> SimResult {
    if lsn < rec.from {
        return match meta.store.get(&lsn) {
            Some(s) if s == e => Ok(()),
            other => Err(format!(
                "committed {e:?} is below {}'s from {} but storage has {other:?}",
                rec.epoch, rec.from
            )),
        };
    }
    if lsn > rec.upto {
        return Err(format!(
            "committed {e:?} lost: {} recovered only {}..={}",
            rec.epoch, rec.from, rec.upto
        ));
    }
    let got = &rec.tail[(lsn.0 - rec.from.0) as usize];
    if got != e {
        return Err(format!(
            "committed {e:?}, but {} recovered {got:?} at its lsn",
            rec.epoch
        ));
    }
    Ok(())
}
