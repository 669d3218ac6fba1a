//! The metadata state machine as a pure value.
//!
//! [`MetaState`] holds every topic and, per partition, the object index: the ordered list of
//! [`BlockLocation`]s that says which object holds which offsets. It changes only through
//! [`MetaState::apply`], which takes one [`Command`] and returns a [`CommandResult`]. `apply` does
//! no IO, reads no clock and draws no random numbers (the caller puts ids and times into the
//! command), so every replica that applies the same log reaches the same state. A bad command
//! is never a panic: it is answered with [`CommandResult::Rejected`] and leaves the state as it
//! was.
//!
//! # Rules
//!
//! - `CreateTopic`: the name and the id must both be unused; `1..=PARTITIONS_PER_TOPIC_MAX`
//!   partitions.
//! - `DeleteTopic`: removes the topic and its index. Objects that no longer hold any indexed
//!   block become *garbage*: their keys move to [`MetaState::garbage_keys`] for the sweeper.
//! - `CommitObject`: all or nothing. Every block must name the object's key, a live topic id and
//!   one of its partitions, lie inside the object, and start exactly at the partition's current
//!   [`MetaState::indexed_end`] (after the blocks of the same partition earlier in the same
//!   object). No gap, no overlap: this equality is the fencing hook that lease epochs will
//!   extend. Committing a key that is already committed (live or garbage) with the same size is
//!   a no-op that answers `ObjectCommitted`, so an uploader may retry after a lost reply.
//! - `TrimPartition`: retention. Drops every leading block of one partition whose `end_offset <=
//!   before_offset` — whole blocks only, never part of one — so the partition's log start
//!   ([`MetaState::indexed_start`]) becomes the first remaining block's base offset, or the
//!   index's end when none remain. Objects left without indexed blocks become garbage, stamped
//!   with the command's `now_ms`. Dropping nothing is a no-op; the answer is the log start.
//! - `CompactPartition`: compaction. The blocks (one partition's, contiguous, all in the new
//!   object) replace the run of index blocks that starts at the first one's base offset and
//!   ends at the last one's end offset — which must both be block boundaries of the current
//!   index, else the command is stale (retention or another compaction moved them) and is
//!   refused. One step: a reader sees either the old blocks or the new ones, never both. Old
//!   objects left without indexed blocks become garbage, stamped with `now_ms`. A retry of a
//!   committed key is a no-op.
//! - `DeleteRecords`: Kafka's DeleteRecords. Moves the partition's log start to exactly
//!   `before_offset` (never backwards; a smaller offset is a no-op), which may lie inside a
//!   block or past the index's end (the records are still in the broker's tail): offsets below
//!   it are never served again. Blocks ending at or before it are dropped as `TrimPartition`
//!   drops them, and blocks committed later that end at or before it are dropped at commit. The
//!   broker checks the offset against the high watermark (metadata does not know it); a
//!   negative offset is refused. The answer is the log start.
//! - `AlterTopicConfigs`: sets (`Some`) and removes (`None`) keys of a topic's configs, after
//!   clearing all of them when `replace` (Kafka's AlterConfigs; IncrementalAlterConfigs does
//!   not replace). Which keys and values are valid is the broker's vocabulary; metadata only
//!   bounds their number and size. All or nothing.
//! - `CreatePartitions`: grows a topic to `partitions` (more than it has, at most
//!   `PARTITIONS_PER_TOPIC_MAX`). New partitions start empty at offset 0 and get leases like a
//!   new topic's.
//! - `ForgetGarbage`: the sweeper deleted these garbage objects; metadata forgets them. Keys that
//!   are not garbage (live or unknown) are ignored, so a retry is harmless.
//! - `AllocateProducerIds`: reserves the next `count` (`1..=PRODUCER_ID_BLOCK_MAX`) Kafka producer
//!   ids and answers the first. The next free id is part of the state, so an id is handed out at
//!   most once in the life of the cluster (restarts included). Brokers take ids in blocks so that
//!   a raft write is needed once per block, not once per producer; ids of a block that a broker
//!   never used (it crashed) are simply never seen.
//!
//! # Serialized form
//!
//! `MetaState` is serialized (serde) into snapshots; see `store` for the versioned envelope.
//! Derived lookup data (the running maximum of block timestamps) is not serialized; it is rebuilt
//! on load.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use strata_types::{BlockLocation, TopicId, TopicName};

use crate::cluster::{
    ClusterCommand, ClusterRejection, ClusterResult, ClusterState, StreamProgress,
};

#[path = "direct.rs"]
mod direct;
pub use direct::{
    DirectBlock, DirectProducerBatch, DirectProducers, DirectSkip, DIRECT_PRODUCER_EXPIRATION_MS,
    STORAGE_MODE_KEY,
};

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Most blocks one object may carry in one `CommitObject`.
pub const OBJECT_BLOCKS_MAX: usize = 100_000;
/// Most producer ids one `AllocateProducerIds` may reserve.
pub const PRODUCER_ID_BLOCK_MAX: u32 = 1_000_000;
/// Most config keys one topic may carry.
pub const TOPIC_CONFIGS_MAX: usize = 256;
/// Longest config key or value (bytes).
pub const TOPIC_CONFIG_BYTES_MAX: usize = 4_096;

/// Most SCRAM users metadata holds (each has at most one credential per mechanism).
pub const SCRAM_USERS_MAX: usize = 10_000;
/// Longest SCRAM user name (bytes).
pub const SCRAM_USER_BYTES_MAX: usize = 256;
/// Fewest PBKDF2 iterations a stored SCRAM credential may have (Kafka's floor, RFC 7677).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations (a cap on the CPU one login may cost).
pub const SCRAM_ITERATIONS_MAX: u32 = 16_384;

/// A SCRAM mechanism (RFC 7677 / RFC 5802 with SHA-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism a SASL / MQTT Authentication Method name (`SCRAM-SHA-512`) names.
    pub fn from_name(name: &str) -> Option<Self> {
        [ScramMechanism::Sha256, ScramMechanism::Sha512]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// Length of the hash output: StoredKey and ServerKey have exactly this many bytes.
    pub fn key_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// What the server stores for one (user, mechanism): never the password (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Keys are verifier material: never printed, not even into a log of commands.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// What the metadata knows about one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: TopicName,
    pub id: TopicId,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
    /// Creation time in ms since the epoch, as the proposer saw it.
    pub created_ms: i64,
}

/// A change to the metadata. Commands are the payload of the raft log; they must stay
/// deterministic to apply, so everything random or time-dependent is carried inside them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: TopicName,
        id: TopicId,
        partitions: u32,
        configs: BTreeMap<String, String>,
        created_ms: i64,
    },
    DeleteTopic {
        name: TopicName,
    },
    /// One uploaded object: every block extends its partition's index contiguously. With
    /// `stream`, the commit is fenced by that WAL stream's epoch and moves its settled LSN.
    CommitObject {
        key: String,
        size: u64,
        blocks: Vec<BlockLocation>,
        #[serde(default)]
        stream: Option<StreamProgress>,
    },
    /// Brokers, partition leases and WAL streams (see [`crate::cluster`]).
    Cluster(ClusterCommand),
    /// One object of the `direct` storage mode: metadata assigns each block's offsets at the
    /// partition's index end (see `direct.rs`).
    CommitDirect {
        key: String,
        size: u64,
        blocks: Vec<DirectBlock>,
        /// When the writer proposed it: the clock idempotent producers expire on (`direct.rs`).
        now_ms: i64,
    },
    /// Reserves `count` Kafka producer ids (idempotent producers) for one broker to hand out.
    AllocateProducerIds {
        count: u32,
    },
    /// Retention: drop the partition's leading blocks that end at or before `before_offset`.
    TrimPartition {
        topic: TopicId,
        partition: u32,
        before_offset: i64,
        /// When the proposer decided it; stamps the objects that become garbage.
        now_ms: i64,
    },
    /// Compaction: `blocks` (one partition's, contiguous, all in object `key`) replace the
    /// index blocks that cover exactly the same offsets, in one step.
    CompactPartition {
        key: String,
        size: u64,
        blocks: Vec<BlockLocation>,
        /// When the proposer decided it; stamps the objects that become garbage.
        now_ms: i64,
    },
    /// Kafka's DeleteRecords: the log starts at `before_offset` from now on.
    DeleteRecords {
        topic: TopicId,
        partition: u32,
        before_offset: i64,
        /// When the proposer decided it; stamps the objects that become garbage.
        now_ms: i64,
    },
    /// Changes a topic's configs: `Some` sets a key, `None` removes it; with `replace`, every
    /// key not listed is removed first.
    AlterTopicConfigs {
        name: TopicName,
        configs: BTreeMap<String, Option<String>>,
        replace: bool,
    },
    /// Grows a topic to `partitions` partitions.
    CreatePartitions {
        name: TopicName,
        partitions: u32,
    },
    /// The sweeper deleted these garbage objects from object storage.
    ForgetGarbage {
        keys: Vec<String>,
    },
    /// Consumer-group offsets from one OffsetCommit request, all or nothing.
    CommitOffsets {
        group: String,
        offsets: Vec<OffsetCommit>,
        /// When the coordinator accepted the commit (kept with each offset).
        now_ms: i64,
    },
    /// Forget a group's committed offsets: the listed partitions, or all of them (`None`,
    /// DeleteGroups).
    DeleteGroupOffsets {
        group: String,
        partitions: Option<Vec<strata_types::PartitionKey>>,
    },
    /// Creates or replaces the SCRAM credential of (user, mechanism). The proposer derived it
    /// from the password; the password never reaches metadata.
    UpsertScramCredential {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    /// Removes the SCRAM credential of (user, mechanism); a user without any is gone.
    DeleteScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
    /// Kafka's CreateAcls: adds each valid binding (see [`crate::acl`]).
    CreateAcls {
        acls: Vec<crate::acl::AclBinding>,
    },
    /// Kafka's DeleteAcls: removes what each filter matches.
    DeleteAcls {
        filters: Vec<crate::acl::AclBindingFilter>,
    },
}

/// The answer to one applied [`Command`]. Rejections are data, not errors: the command was
/// committed to the log and deterministically refused by every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    TopicCreated(TopicMeta),
    TopicDeleted(TopicMeta),
    /// The topic after `AlterTopicConfigs` or `CreatePartitions`.
    TopicAltered(TopicMeta),
    ObjectCommitted,
    /// `CommitDirect`: the base offset assigned to each block, in command order (for a
    /// duplicate block the original one, for a refused block -1), and the blocks of
    /// idempotent batches that were not indexed, by position in the command, with why.
    DirectCommitted {
        base_offsets: Vec<i64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<(usize, DirectSkip)>,
    },
    /// Producer ids `first..first + count` are now reserved for the proposer.
    ProducerIdsAllocated {
        first: i64,
    },
    /// The partition's log start after the trim.
    PartitionTrimmed {
        log_start_offset: i64,
    },
    GarbageForgotten,
    /// A compaction swapped `replaced` index blocks for the new ones.
    PartitionCompacted {
        replaced: usize,
    },
    Cluster(ClusterResult),
    Rejected(Rejection),
    OffsetsCommitted,
    /// How many committed offsets were removed.
    GroupOffsetsDeleted {
        count: usize,
    },
    ScramCredentialUpserted,
    ScramCredentialDeleted,
    /// Per binding of `CreateAcls`, in order: `None` when it holds now, else why it was refused.
    AclsCreated(Vec<Option<String>>),
    /// Per filter of `DeleteAcls`, in order: the bindings removed, or why the filter was refused.
    AclsDeleted(Vec<Result<Vec<crate::acl::AclBinding>, String>>),
}

/// Why a command was refused. Each variant carries what the proposer needs to act on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Cluster(#[from] ClusterRejection),
    #[error("topic `{name}` already exists")]
    TopicExists { name: TopicName },
    #[error("topic id {id} is already used by topic `{name}`")]
    TopicIdExists { id: TopicId, name: TopicName },
    #[error("topic `{name}` does not exist")]
    UnknownTopic { name: TopicName },
    #[error("topic `{name}`: {partitions} partitions requested, allowed are 1..={max}")]
    InvalidPartitions {
        name: TopicName,
        partitions: u32,
        max: u32,
    },
    #[error("topic `{name}` has {current} partitions; it can only grow, not to {partitions}")]
    PartitionsNotIncreased {
        name: TopicName,
        current: u32,
        partitions: u32,
    },
    #[error("topic {topic} partition {partition}: cannot delete records before offset {offset}")]
    InvalidOffset {
        topic: TopicId,
        partition: u32,
        offset: i64,
    },
    #[error("topic `{name}`: {count} configs; the maximum is {max}")]
    TooManyConfigs {
        name: TopicName,
        count: usize,
        max: usize,
    },
    #[error("topic `{name}`: config `{key}` has a key or value over {max} bytes")]
    ConfigTooLong {
        name: TopicName,
        key: String,
        max: usize,
    },
    #[error("topic id {topic} does not exist")]
    UnknownTopicId { topic: TopicId },
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: TopicId,
        partition: u32,
        partitions: u32,
    },
    #[error(
        "topic {topic} partition {partition}: block starts at offset {got}, expected {expected}"
    )]
    OffsetGap {
        topic: TopicId,
        partition: u32,
        expected: i64,
        got: i64,
    },
    #[error("topic `{name}` is not in `direct` storage mode; its offsets are its leader's")]
    NotDirect { name: TopicName },
    #[error("direct object `{key}` is committed, but its blocks left the index (retention)")]
    DirectCommitForgotten { key: String },
    #[error("object `{key}` has no blocks")]
    EmptyObject { key: String },
    #[error("object `{key}` has {blocks} blocks; the maximum is {max}")]
    TooManyBlocks {
        key: String,
        blocks: usize,
        max: usize,
    },
    #[error("a block committed with object `{key}` names object `{block_key}`")]
    BlockKeyMismatch { key: String, block_key: String },
    #[error(
        "object `{key}`: block at byte {position} with length {len} lies outside its {size} bytes"
    )]
    BlockOutOfBounds {
        key: String,
        position: u64,
        len: u64,
        size: u64,
    },
    #[error("topic {topic} partition {partition}: block offsets {base_offset}..{end_offset} are empty or inverted")]
    EmptyBlock {
        topic: TopicId,
        partition: u32,
        base_offset: i64,
        end_offset: i64,
    },
    #[error("object `{key}` is already committed with {committed_size} bytes, not {size}")]
    ObjectKeyConflict {
        key: String,
        size: u64,
        committed_size: u64,
    },
    #[error("object `{key}`: a compacted object holds one partition's blocks; it names {topic}/{partition} after {first_topic}/{first_partition}")]
    CompactionMixesPartitions {
        key: String,
        first_topic: TopicId,
        first_partition: u32,
        topic: TopicId,
        partition: u32,
    },
    #[error("topic {topic} partition {partition}: the index has no run of blocks covering exactly offsets {base_offset}..{end_offset} any more (trimmed or compacted meanwhile)")]
    CompactionStale {
        topic: TopicId,
        partition: u32,
        base_offset: i64,
        end_offset: i64,
    },
    #[error("{count} producer ids requested, allowed are 1..={max}")]
    InvalidProducerIdCount { count: u32, max: u32 },
    #[error("producer ids are exhausted: the next is {next}, {count} requested")]
    ProducerIdsExhausted { next: i64, count: u32 },
    #[error("a group id of {bytes} bytes; the maximum is {max}")]
    GroupIdTooLong { bytes: usize, max: usize },
    #[error("{count} offsets in one commit; the maximum is {max}")]
    TooManyOffsets { count: usize, max: usize },
    #[error("offset metadata of {bytes} bytes; the maximum is {max}")]
    OffsetMetadataTooLarge { bytes: usize, max: usize },
    #[error("invalid SCRAM credential for `{user}`: {reason}")]
    InvalidScramCredential { user: String, reason: String },
    #[error("no {mechanism:?} credential for user `{user}`")]
    UnknownScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
}

/// The index of one partition: blocks ordered by offset, without overlap.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "PartitionIndexRepr")]
struct PartitionIndex {
    blocks: Vec<BlockLocation>,
    /// Exclusive end of the index. Kept apart from `blocks` so that it survives trimming.
    end_offset: i64,
    /// The log start set by `DeleteRecords` (0 when never set): it may lie inside the first
    /// block or past `end_offset`. The log starts at the larger of it and the first block.
    /// Absent from snapshots written before DeleteRecords existed, hence the default.
    log_start: i64,
    /// `max_timestamp_prefix[i]` = max of `blocks[..=i].max_timestamp`; monotonic, so a binary
    /// search finds the first block whose own `max_timestamp` reaches a time.
    #[serde(skip)]
    max_timestamp_prefix: Vec<i64>,
}

#[derive(Deserialize)]
struct PartitionIndexRepr {
    blocks: Vec<BlockLocation>,
    end_offset: i64,
    #[serde(default)]
    log_start: i64,
}

impl From<PartitionIndexRepr> for PartitionIndex {
    fn from(repr: PartitionIndexRepr) -> Self {
        let mut index = PartitionIndex {
            blocks: Vec::with_capacity(repr.blocks.len()),
            end_offset: repr.end_offset,
            log_start: repr.log_start,
            max_timestamp_prefix: Vec::with_capacity(repr.blocks.len()),
        };
        for block in repr.blocks {
            index.push(block);
        }
        index.end_offset = repr.end_offset;
        index
    }
}

impl PartitionIndex {
    fn push(&mut self, block: BlockLocation) {
        let running = self
            .max_timestamp_prefix
            .last()
            .copied()
            .unwrap_or(i64::MIN)
            .max(block.max_timestamp);
        self.end_offset = block.end_offset;
        self.max_timestamp_prefix.push(running);
        self.blocks.push(block);
    }

    fn start_offset(&self) -> i64 {
        self.blocks
            .first()
            .map_or(self.end_offset, |b| b.base_offset)
            .max(self.log_start)
    }

    /// Removes the leading blocks that end at or before `offset` (whole blocks only) and
    /// returns them; the end of the index stays.
    fn drop_before(&mut self, offset: i64) -> Vec<BlockLocation> {
        let drop = self.blocks.partition_point(|b| b.end_offset <= offset);
        if drop == 0 {
            return Vec::new();
        }
        let end_offset = self.end_offset;
        let dropped: Vec<BlockLocation> = self.blocks.drain(..drop).collect();
        let kept = std::mem::take(&mut self.blocks);
        self.max_timestamp_prefix.clear();
        for block in kept {
            self.push(block);
        }
        self.end_offset = end_offset;
        dropped
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TopicEntry {
    meta: TopicMeta,
    /// One index per partition, `partitions.len() == meta.partitions`.
    partitions: Vec<PartitionIndex>,
}

/// A committed object that still holds indexed blocks.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ObjectEntry {
    size: u64,
    /// Number of blocks of this object in the index; at 0 the object becomes garbage.
    live_blocks: u64,
}

/// The applied metadata. See the module docs for the rules.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetaState {
    /// Topic ids by name (`String` keys, so lookups by `&str` need no validation).
    names: BTreeMap<String, TopicId>,
    topics: BTreeMap<TopicId, TopicEntry>,
    /// Objects referenced by the index, by key.
    objects: BTreeMap<String, ObjectEntry>,
    /// Committed objects that the index no longer references: data for the garbage sweeper.
    garbage_keys: BTreeSet<String>,
    /// When each garbage key became garbage (ms since the epoch, from the command that made it
    /// so). Keys made garbage by `DeleteTopic` (which carries no time) have no entry.
    #[serde(default)]
    garbage_since: BTreeMap<String, i64>,
    /// The next Kafka producer id to reserve; every id below it has been handed to a broker.
    /// Absent from snapshots written before producer ids existed, hence the default (0).
    #[serde(default)]
    next_producer_id: i64,
    /// Brokers, leases and WAL streams. Absent from snapshots written before clustering.
    #[serde(default)]
    cluster: ClusterState,
    /// Raft log index of the last applied entry; set by the driver, not by `apply`.
    last_applied: u64,
    /// Committed consumer-group offsets: group → topic → partition. Absent from snapshots
    /// written before consumer groups existed, hence the default.
    #[serde(default)]
    group_offsets: BTreeMap<String, BTreeMap<TopicId, BTreeMap<u32, GroupOffset>>>,
    /// SASL/SCRAM users: user → mechanism → credential. Absent from snapshots written before
    /// Kafka authentication existed, hence the default.
    #[serde(default)]
    scram_users: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// Kafka ACLs. Absent from snapshots written before ACLs existed, hence the default.
    #[serde(default)]
    acls: crate::acl::AclSet,
    /// Idempotent producers of the `direct` partitions (`direct.rs`). Absent from snapshots
    /// written before direct idempotence existed, hence the default.
    #[serde(default)]
    direct_producers: DirectProducers,
}

impl MetaState {
    /// Applies one command. Deterministic; never panics on a bad command but rejects it and
    /// leaves the state unchanged.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        let result = match cmd {
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
                created_ms,
            } => self.create_topic(name, *id, *partitions, configs, *created_ms),
            Command::DeleteTopic { name } => self.delete_topic(name),
            Command::CommitObject {
                key,
                size,
                blocks,
                stream,
            } => self.commit_object(key, *size, blocks, stream.as_ref()),
            Command::CommitDirect {
                key,
                size,
                blocks,
                now_ms,
            } => self.commit_direct(key, *size, blocks, *now_ms),
            Command::Cluster(cmd) => {
                if matches!(cmd, ClusterCommand::RegisterBroker { .. }) {
                    self.adopt_unleased_topics();
                }
                let indexed_end = cmd.moved_partition().map(|(t, p)| self.indexed_end(t, p));
                self.cluster
                    .apply_with_index(cmd, indexed_end)
                    .map(CommandResult::Cluster)
                    .map_err(Rejection::from)
            }
            Command::AllocateProducerIds { count } => self.allocate_producer_ids(*count),
            Command::TrimPartition {
                topic,
                partition,
                before_offset,
                now_ms,
            } => self.trim_partition(*topic, *partition, *before_offset, *now_ms),
            Command::CompactPartition {
                key,
                size,
                blocks,
                now_ms,
            } => self.compact_partition(key, *size, blocks, *now_ms),
            Command::DeleteRecords {
                topic,
                partition,
                before_offset,
                now_ms,
            } => self.delete_records(*topic, *partition, *before_offset, *now_ms),
            Command::AlterTopicConfigs {
                name,
                configs,
                replace,
            } => self.alter_topic_configs(name, configs, *replace),
            Command::CreatePartitions { name, partitions } => {
                self.create_partitions(name, *partitions)
            }
            Command::ForgetGarbage { keys } => {
                for key in keys {
                    if self.garbage_keys.remove(key) {
                        self.garbage_since.remove(key);
                    }
                }
                Ok(CommandResult::GarbageForgotten)
            }
            Command::CommitOffsets {
                group,
                offsets,
                now_ms,
            } => self.commit_offsets(group, offsets, *now_ms),
            Command::DeleteGroupOffsets { group, partitions } => {
                Ok(self.delete_group_offsets(group, partitions.as_deref()))
            }
            Command::UpsertScramCredential {
                user,
                mechanism,
                credential,
            } => self.upsert_scram_credential(user, *mechanism, credential),
            Command::DeleteScramCredential { user, mechanism } => {
                self.delete_scram_credential(user, *mechanism)
            }
            Command::CreateAcls { acls } => Ok(CommandResult::AclsCreated(self.acls.create(acls))),
            Command::DeleteAcls { filters } => {
                Ok(CommandResult::AclsDeleted(self.acls.delete(filters)))
            }
        };
        match result {
            Ok(ok) => ok,
            Err(rejection) => CommandResult::Rejected(rejection),
        }
    }

    fn create_topic(
        &mut self,
        name: &TopicName,
        id: TopicId,
        partitions: u32,
        configs: &BTreeMap<String, String>,
        created_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        if self.names.contains_key(name.as_str()) {
            return Err(Rejection::TopicExists { name: name.clone() });
        }
        if let Some(existing) = self.topics.get(&id) {
            return Err(Rejection::TopicIdExists {
                id,
                name: existing.meta.name.clone(),
            });
        }
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
            return Err(Rejection::InvalidPartitions {
                name: name.clone(),
                partitions,
                max: PARTITIONS_PER_TOPIC_MAX,
            });
        }
        let meta = TopicMeta {
            name: name.clone(),
            id,
            partitions,
            configs: configs.clone(),
            created_ms,
        };
        let entry = TopicEntry {
            meta: meta.clone(),
            partitions: vec![PartitionIndex::default(); partitions as usize],
        };
        self.names.insert(name.as_str().to_owned(), id);
        self.topics.insert(id, entry);
        self.cluster.topic_created(id, partitions);
        Ok(CommandResult::TopicCreated(meta))
    }

    fn delete_topic(&mut self, name: &TopicName) -> Result<CommandResult, Rejection> {
        let Some(id) = self.names.remove(name.as_str()) else {
            return Err(Rejection::UnknownTopic { name: name.clone() });
        };
        let entry = self
            .topics
            .remove(&id)
            .expect("invariant: every named topic has an entry");
        self.cluster.topic_deleted(id);
        self.direct_producers.forget_topic(id);
        for block in entry.partitions.iter().flat_map(|p| p.blocks.iter()) {
            self.release_block(&block.key, None);
        }
        self.drop_topic_offsets(id);
        Ok(CommandResult::TopicDeleted(entry.meta))
    }

    fn commit_object(
        &mut self,
        key: &str,
        size: u64,
        blocks: &[BlockLocation],
        stream: Option<&StreamProgress>,
    ) -> Result<CommandResult, Rejection> {
        // Fencing first: a writer that lost its stream may not commit anything, not even a
        // retry of an object it committed before.
        if let Some(progress) = stream {
            self.cluster.check_progress(progress)?;
        }
        // A retry of a committed object is answered as before and changes nothing; a different
        // object under a used key is a bug in the uploader (keys must be unique).
        if self.is_committed(key, size)? {
            if let Some(progress) = stream {
                self.cluster.progress(progress);
            }
            return Ok(CommandResult::ObjectCommitted);
        }
        if blocks.is_empty() {
            return Err(Rejection::EmptyObject {
                key: key.to_owned(),
            });
        }
        if blocks.len() > OBJECT_BLOCKS_MAX {
            return Err(Rejection::TooManyBlocks {
                key: key.to_owned(),
                blocks: blocks.len(),
                max: OBJECT_BLOCKS_MAX,
            });
        }

        // Validate everything before changing anything: the command is all or nothing.
        let mut next_expected: BTreeMap<(TopicId, u32), i64> = BTreeMap::new();
        for block in blocks {
            if block.key != key {
                return Err(Rejection::BlockKeyMismatch {
                    key: key.to_owned(),
                    block_key: block.key.clone(),
                });
            }
            let inside = block
                .position
                .checked_add(block.len)
                .is_some_and(|end| end <= size);
            if !inside {
                return Err(Rejection::BlockOutOfBounds {
                    key: key.to_owned(),
                    position: block.position,
                    len: block.len,
                    size,
                });
            }
            let Some(topic) = self.topics.get(&block.topic) else {
                return Err(Rejection::UnknownTopicId { topic: block.topic });
            };
            let Some(index) = topic.partitions.get(block.partition as usize) else {
                return Err(Rejection::UnknownPartition {
                    topic: block.topic,
                    partition: block.partition,
                    partitions: topic.meta.partitions,
                });
            };
            if block.end_offset <= block.base_offset {
                return Err(Rejection::EmptyBlock {
                    topic: block.topic,
                    partition: block.partition,
                    base_offset: block.base_offset,
                    end_offset: block.end_offset,
                });
            }
            let expected = next_expected
                .entry((block.topic, block.partition))
                .or_insert(index.end_offset);
            if block.base_offset != *expected {
                return Err(Rejection::OffsetGap {
                    topic: block.topic,
                    partition: block.partition,
                    expected: *expected,
                    got: block.base_offset,
                });
            }
            *expected = block.end_offset;
        }

        for block in blocks {
            let topic = self.topics.get_mut(&block.topic).expect("validated above");
            topic.partitions[block.partition as usize].push(block.clone());
        }
        for (&(topic, partition), &end) in &next_expected {
            debug_assert_eq!(self.indexed_end(topic, partition), end);
        }
        self.objects.insert(
            key.to_owned(),
            ObjectEntry {
                size,
                live_blocks: blocks.len() as u64,
            },
        );
        // Records uploaded after a DeleteRecords passed them are not kept: their blocks leave
        // the index at once (garbage without a time, like a deleted topic's).
        for &(topic, partition) in next_expected.keys() {
            let index = &mut self
                .topics
                .get_mut(&topic)
                .expect("validated above")
                .partitions[partition as usize];
            for block in index.drop_before(index.log_start) {
                self.release_block(&block.key, None);
            }
        }
        if let Some(progress) = stream {
            self.cluster.progress(progress);
        }
        Ok(CommandResult::ObjectCommitted)
    }

    fn trim_partition(
        &mut self,
        topic: TopicId,
        partition: u32,
        before_offset: i64,
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        let Some(entry) = self.topics.get_mut(&topic) else {
            return Err(Rejection::UnknownTopicId { topic });
        };
        let partitions = entry.meta.partitions;
        let Some(index) = entry.partitions.get_mut(partition as usize) else {
            return Err(Rejection::UnknownPartition {
                topic,
                partition,
                partitions,
            });
        };
        for block in index.drop_before(before_offset) {
            self.release_block(&block.key, Some(now_ms));
        }
        Ok(CommandResult::PartitionTrimmed {
            log_start_offset: self.indexed_start(topic, partition),
        })
    }

    fn delete_records(
        &mut self,
        topic: TopicId,
        partition: u32,
        before_offset: i64,
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        if before_offset < 0 {
            return Err(Rejection::InvalidOffset {
                topic,
                partition,
                offset: before_offset,
            });
        }
        let Some(entry) = self.topics.get_mut(&topic) else {
            return Err(Rejection::UnknownTopicId { topic });
        };
        let partitions = entry.meta.partitions;
        let Some(index) = entry.partitions.get_mut(partition as usize) else {
            return Err(Rejection::UnknownPartition {
                topic,
                partition,
                partitions,
            });
        };
        index.log_start = index.log_start.max(before_offset);
        for block in index.drop_before(index.log_start) {
            self.release_block(&block.key, Some(now_ms));
        }
        Ok(CommandResult::PartitionTrimmed {
            log_start_offset: self.indexed_start(topic, partition),
        })
    }

    fn alter_topic_configs(
        &mut self,
        name: &TopicName,
        changes: &BTreeMap<String, Option<String>>,
        replace: bool,
    ) -> Result<CommandResult, Rejection> {
        let Some(id) = self.names.get(name.as_str()).copied() else {
            return Err(Rejection::UnknownTopic { name: name.clone() });
        };
        let entry = self
            .topics
            .get_mut(&id)
            .expect("invariant: every named topic has an entry");
        let mut configs = if replace {
            BTreeMap::new()
        } else {
            entry.meta.configs.clone()
        };
        for (key, value) in changes {
            let too_long = key.len() > TOPIC_CONFIG_BYTES_MAX
                || value
                    .as_ref()
                    .is_some_and(|v| v.len() > TOPIC_CONFIG_BYTES_MAX);
            if too_long {
                return Err(Rejection::ConfigTooLong {
                    name: name.clone(),
                    key: key.chars().take(64).collect(),
                    max: TOPIC_CONFIG_BYTES_MAX,
                });
            }
            match value {
                Some(v) => configs.insert(key.clone(), v.clone()),
                None => configs.remove(key),
            };
        }
        if configs.len() > TOPIC_CONFIGS_MAX {
            return Err(Rejection::TooManyConfigs {
                name: name.clone(),
                count: configs.len(),
                max: TOPIC_CONFIGS_MAX,
            });
        }
        entry.meta.configs = configs;
        Ok(CommandResult::TopicAltered(entry.meta.clone()))
    }

    fn create_partitions(
        &mut self,
        name: &TopicName,
        partitions: u32,
    ) -> Result<CommandResult, Rejection> {
        let Some(id) = self.names.get(name.as_str()).copied() else {
            return Err(Rejection::UnknownTopic { name: name.clone() });
        };
        let entry = self
            .topics
            .get_mut(&id)
            .expect("invariant: every named topic has an entry");
        if partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(Rejection::InvalidPartitions {
                name: name.clone(),
                partitions,
                max: PARTITIONS_PER_TOPIC_MAX,
            });
        }
        let current = entry.meta.partitions;
        if partitions <= current {
            return Err(Rejection::PartitionsNotIncreased {
                name: name.clone(),
                current,
                partitions,
            });
        }
        entry
            .partitions
            .resize_with(partitions as usize, PartitionIndex::default);
        entry.meta.partitions = partitions;
        let meta = entry.meta.clone();
        self.cluster.topic_grown(id, partitions);
        Ok(CommandResult::TopicAltered(meta))
    }

    /// Whether `key` was committed before (live or garbage): a retry, answered as before. A
    /// different size under a used key is a bug in the writer (keys must be unique).
    fn is_committed(&self, key: &str, size: u64) -> Result<bool, Rejection> {
        let committed_size = match self.objects.get(key) {
            Some(object) => object.size,
            None if self.garbage_keys.contains(key) => size,
            None => return Ok(false),
        };
        if committed_size != size {
            return Err(Rejection::ObjectKeyConflict {
                key: key.to_owned(),
                size,
                committed_size,
            });
        }
        Ok(true)
    }

    /// One indexed block of object `key` left the index; the object becomes garbage (stamped
    /// with `since` when the command carries a time) once none is left.
    fn release_block(&mut self, key: &str, since: Option<i64>) {
        let object = self
            .objects
            .get_mut(key)
            .expect("invariant: every indexed block's object is live");
        object.live_blocks -= 1;
        if object.live_blocks == 0 {
            self.objects.remove(key);
            if let Some(since) = since {
                self.garbage_since.insert(key.to_owned(), since);
            }
            self.garbage_keys.insert(key.to_owned());
        }
    }

    fn compact_partition(
        &mut self,
        key: &str,
        size: u64,
        blocks: &[BlockLocation],
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        // A retry after a lost reply: the object is already swapped in (or even replaced since).
        if self.is_committed(key, size)? {
            return Ok(CommandResult::PartitionCompacted { replaced: 0 });
        }
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return Err(Rejection::EmptyObject {
                key: key.to_owned(),
            });
        };
        if blocks.len() > OBJECT_BLOCKS_MAX {
            return Err(Rejection::TooManyBlocks {
                key: key.to_owned(),
                blocks: blocks.len(),
                max: OBJECT_BLOCKS_MAX,
            });
        }
        let (topic, partition) = (first.topic, first.partition);
        let mut expected = first.base_offset;
        for block in blocks {
            if block.key != key {
                return Err(Rejection::BlockKeyMismatch {
                    key: key.to_owned(),
                    block_key: block.key.clone(),
                });
            }
            if block.topic != topic || block.partition != partition {
                return Err(Rejection::CompactionMixesPartitions {
                    key: key.to_owned(),
                    first_topic: topic,
                    first_partition: partition,
                    topic: block.topic,
                    partition: block.partition,
                });
            }
            let inside = block
                .position
                .checked_add(block.len)
                .and_then(|end| end.checked_add(block.index_len))
                .is_some_and(|end| end <= size);
            if !inside {
                return Err(Rejection::BlockOutOfBounds {
                    key: key.to_owned(),
                    position: block.position,
                    len: block.len,
                    size,
                });
            }
            if block.end_offset <= block.base_offset {
                return Err(Rejection::EmptyBlock {
                    topic,
                    partition,
                    base_offset: block.base_offset,
                    end_offset: block.end_offset,
                });
            }
            if block.base_offset != expected {
                return Err(Rejection::OffsetGap {
                    topic,
                    partition,
                    expected,
                    got: block.base_offset,
                });
            }
            expected = block.end_offset;
        }
        let Some(entry) = self.topics.get_mut(&topic) else {
            return Err(Rejection::UnknownTopicId { topic });
        };
        let partitions = entry.meta.partitions;
        let Some(index) = entry.partitions.get_mut(partition as usize) else {
            return Err(Rejection::UnknownPartition {
                topic,
                partition,
                partitions,
            });
        };
        let stale = || Rejection::CompactionStale {
            topic,
            partition,
            base_offset: first.base_offset,
            end_offset: last.end_offset,
        };
        // The run to replace: from the block starting at the new base to the one ending at the
        // new end. Blocks are contiguous, so both boundaries existing means the run is exact.
        let from = index
            .blocks
            .binary_search_by_key(&first.base_offset, |b| b.base_offset)
            .map_err(|_| stale())?;
        let to = index
            .blocks
            .binary_search_by_key(&last.end_offset, |b| b.end_offset)
            .map_err(|_| stale())?;
        if to < from {
            return Err(stale());
        }
        let end_offset = index.end_offset;
        let old = std::mem::take(&mut index.blocks);
        index.max_timestamp_prefix.clear();
        let mut replaced = Vec::with_capacity(to + 1 - from);
        for (i, block) in old.into_iter().enumerate() {
            if i == from {
                for new in blocks {
                    index.push(new.clone());
                }
            }
            if (from..=to).contains(&i) {
                replaced.push(block);
            } else {
                index.push(block);
            }
        }
        index.end_offset = end_offset;
        let count = replaced.len();
        for block in replaced {
            self.release_block(&block.key, Some(now_ms));
        }
        self.objects.insert(
            key.to_owned(),
            ObjectEntry {
                size,
                live_blocks: blocks.len() as u64,
            },
        );
        Ok(CommandResult::PartitionCompacted { replaced: count })
    }

    fn allocate_producer_ids(&mut self, count: u32) -> Result<CommandResult, Rejection> {
        if !(1..=PRODUCER_ID_BLOCK_MAX).contains(&count) {
            return Err(Rejection::InvalidProducerIdCount {
                count,
                max: PRODUCER_ID_BLOCK_MAX,
            });
        }
        let first = self.next_producer_id;
        let Some(next) = first.checked_add(i64::from(count)) else {
            return Err(Rejection::ProducerIdsExhausted { next: first, count });
        };
        self.next_producer_id = next;
        Ok(CommandResult::ProducerIdsAllocated { first })
    }

    /// Topics created before leases existed (an older snapshot) get unassigned leases, so the
    /// next registration assigns them. Deterministic: it depends only on the state.
    fn adopt_unleased_topics(&mut self) {
        for (id, topic) in &self.topics {
            self.cluster.ensure_topic(*id, topic.meta.partitions);
        }
    }

    /// Brokers, partition leases and WAL streams.
    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    /// The next producer id metadata would reserve: every id below it is allocated.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        let id = self.names.get(name)?;
        self.topic_by_id(*id)
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicMeta> {
        self.topics.get(&id).map(|t| &t.meta)
    }

    /// All topics, ordered by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> {
        self.names
            .values()
            .filter_map(|id| self.topics.get(id).map(|t| &t.meta))
    }

    fn partition(&self, topic: TopicId, partition: u32) -> Option<&PartitionIndex> {
        self.topics.get(&topic)?.partitions.get(partition as usize)
    }

    /// Index of one partition: ordered by base_offset. Empty for an unknown partition.
    pub fn blocks(&self, topic: TopicId, partition: u32) -> impl Iterator<Item = &BlockLocation> {
        self.partition(topic, partition)
            .into_iter()
            .flat_map(|p| p.blocks.iter())
    }

    /// The block containing `offset`, or else the first block starting after it (so a fetch at a
    /// trimmed/compacted gap moves forward); None past the end.
    pub fn find_block(
        &self,
        topic: TopicId,
        partition: u32,
        offset: i64,
    ) -> Option<&BlockLocation> {
        let index = self.partition(topic, partition)?;
        // Blocks are ordered and disjoint, so end offsets increase: the first block ending after
        // `offset` either holds it or is the first one after it.
        let at = index.blocks.partition_point(|b| b.end_offset <= offset);
        index.blocks.get(at)
    }

    /// First block whose max_timestamp >= ts (for ListOffsets by time).
    pub fn find_block_by_time(
        &self,
        topic: TopicId,
        partition: u32,
        ts: i64,
    ) -> Option<&BlockLocation> {
        let index = self.partition(topic, partition)?;
        let at = index.max_timestamp_prefix.partition_point(|&max| max < ts);
        index.blocks.get(at)
    }

    /// End offset of the index (exclusive) for the partition; 0 if nothing uploaded.
    pub fn indexed_end(&self, topic: TopicId, partition: u32) -> i64 {
        self.partition(topic, partition).map_or(0, |p| p.end_offset)
    }

    /// First offset held in object storage (log start), 0 if empty.
    pub fn indexed_start(&self, topic: TopicId, partition: u32) -> i64 {
        self.partition(topic, partition)
            .map_or(0, PartitionIndex::start_offset)
    }

    /// Whether an object with this key was committed and is still referenced by the index.
    pub fn is_live_object(&self, key: &str) -> bool {
        self.objects.contains_key(key)
    }

    /// Keys of committed objects that the index no longer references, in key order: the
    /// sweeper may delete them from object storage.
    pub fn garbage_keys(&self) -> impl Iterator<Item = &str> {
        self.garbage_keys.iter().map(String::as_str)
    }

    /// When `key` became garbage (ms since the epoch), if it is garbage and the command that made
    /// it so carried a time.
    pub fn garbage_since(&self, key: &str) -> Option<i64> {
        self.garbage_since.get(key).copied()
    }

    /// Raft log index of the last entry applied to this state (0 before the first).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    pub(crate) fn set_last_applied(&mut self, index: u64) {
        debug_assert!(index >= self.last_applied, "the applied index only grows");
        self.last_applied = index;
    }

    /// Checks the structural invariants; the error names the first one broken. It walks the
    /// whole state, so `apply` does not call it: tests and tools do.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.next_producer_id < 0 {
            return Err(format!("next producer id {} < 0", self.next_producer_id));
        }
        if self.names.len() != self.topics.len() {
            return Err(format!(
                "{} names for {} topics",
                self.names.len(),
                self.topics.len()
            ));
        }
        let mut live: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, id) in &self.names {
            let Some(entry) = self.topics.get(id) else {
                return Err(format!("topic `{name}` names missing id {id}"));
            };
            if entry.meta.name.as_str() != name || entry.meta.id != *id {
                return Err(format!("topic `{name}` ({id}) has meta {:?}", entry.meta));
            }
            if entry.partitions.len() != entry.meta.partitions as usize {
                return Err(format!("topic `{name}` has a wrong number of indexes"));
            }
            for (p, index) in entry.partitions.iter().enumerate() {
                if index.max_timestamp_prefix.len() != index.blocks.len() {
                    return Err(format!("topic `{name}` partition {p}: stale time index"));
                }
                if index
                    .blocks
                    .first()
                    .is_some_and(|b| b.end_offset <= index.log_start)
                {
                    return Err(format!(
                        "topic `{name}` partition {p}: a block ends before the log start {}",
                        index.log_start
                    ));
                }
                let mut expected = index
                    .blocks
                    .first()
                    .map_or(index.end_offset, |b| b.base_offset);
                for block in &index.blocks {
                    if block.base_offset != expected || block.end_offset <= block.base_offset {
                        return Err(format!(
                            "topic `{name}` partition {p}: block {}..{} after {expected}",
                            block.base_offset, block.end_offset
                        ));
                    }
                    expected = block.end_offset;
                    *live.entry(block.key.as_str()).or_default() += 1;
                }
                if expected != index.end_offset {
                    return Err(format!(
                        "topic `{name}` partition {p}: end {expected} != {}",
                        index.end_offset
                    ));
                }
            }
        }
        if live.len() != self.objects.len() {
            return Err(format!(
                "{} objects referenced, {} recorded live",
                live.len(),
                self.objects.len()
            ));
        }
        for (key, count) in live {
            match self.objects.get(key) {
                Some(object) if object.live_blocks == count => {}
                other => {
                    return Err(format!(
                        "object `{key}`: {count} blocks indexed, recorded {other:?}"
                    ))
                }
            }
            if self.garbage_keys.contains(key) {
                return Err(format!("object `{key}` is both live and garbage"));
            }
        }
        if let Some(key) = self
            .garbage_since
            .keys()
            .find(|k| !self.garbage_keys.contains(*k))
        {
            return Err(format!(
                "object `{key}` has a garbage time but is not garbage"
            ));
        }
        self.check_group_offsets()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer-group offsets
//
// - `CommitOffsets`: all or nothing. A group id of at most GROUP_ID_BYTES_MAX bytes (the empty
//   id is a group too, as in Kafka), at most OFFSETS_PER_COMMIT_MAX offsets, each naming a live
//   topic id and one of its partitions, with at most OFFSET_METADATA_BYTES_MAX bytes of metadata. A later commit of a partition
//   replaces the earlier one (offsets may move backwards: that is a consumer's seek).
// - `DeleteGroupOffsets`: forgets the listed partitions' offsets, or all of the group's;
//   unknown ones are ignored, so a retry is harmless. The answer counts what was removed.
// - `DeleteTopic` drops every group's offsets of the topic; a group left without offsets is
//   forgotten.

/// Longest consumer-group id (bytes).
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Most offsets one `CommitOffsets` may carry.
pub const OFFSETS_PER_COMMIT_MAX: usize = 100_000;
/// Most bytes of client metadata per committed offset (Kafka's `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4_096;

/// One partition's offset in a `CommitOffsets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub topic: TopicId,
    pub partition: u32,
    pub offset: i64,
    /// The leader epoch the consumer saw (-1 when unknown).
    pub leader_epoch: i32,
    pub metadata: String,
}

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// When it was committed (ms since the epoch, from the command).
    pub commit_ms: i64,
}

impl MetaState {
    fn commit_offsets(
        &mut self,
        group: &str,
        offsets: &[OffsetCommit],
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        if group.len() > GROUP_ID_BYTES_MAX {
            return Err(Rejection::GroupIdTooLong {
                bytes: group.len(),
                max: GROUP_ID_BYTES_MAX,
            });
        }
        if offsets.len() > OFFSETS_PER_COMMIT_MAX {
            return Err(Rejection::TooManyOffsets {
                count: offsets.len(),
                max: OFFSETS_PER_COMMIT_MAX,
            });
        }
        // Validate everything before changing anything.
        for o in offsets {
            let Some(topic) = self.topics.get(&o.topic) else {
                return Err(Rejection::UnknownTopicId { topic: o.topic });
            };
            if o.partition >= topic.meta.partitions {
                return Err(Rejection::UnknownPartition {
                    topic: o.topic,
                    partition: o.partition,
                    partitions: topic.meta.partitions,
                });
            }
            if o.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                return Err(Rejection::OffsetMetadataTooLarge {
                    bytes: o.metadata.len(),
                    max: OFFSET_METADATA_BYTES_MAX,
                });
            }
        }
        if offsets.is_empty() {
            return Ok(CommandResult::OffsetsCommitted);
        }
        let topics = self.group_offsets.entry(group.to_owned()).or_default();
        for o in offsets {
            topics.entry(o.topic).or_default().insert(
                o.partition,
                GroupOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.clone(),
                    commit_ms: now_ms,
                },
            );
        }
        Ok(CommandResult::OffsetsCommitted)
    }

    fn upsert_scram_credential(
        &mut self,
        user: &str,
        mechanism: ScramMechanism,
        credential: &ScramCredential,
    ) -> Result<CommandResult, Rejection> {
        let invalid = |reason: String| Rejection::InvalidScramCredential {
            user: user.to_string(),
            reason,
        };
        if user.is_empty() || user.len() > SCRAM_USER_BYTES_MAX {
            return Err(invalid(format!(
                "a user name of {} bytes; 1..={SCRAM_USER_BYTES_MAX} allowed",
                user.len()
            )));
        }
        if user.chars().any(char::is_control) {
            return Err(invalid("control characters in the user name".into()));
        }
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&credential.iterations) {
            return Err(invalid(format!(
                "{} iterations; {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX} allowed",
                credential.iterations
            )));
        }
        if credential.salt.is_empty() || credential.salt.len() > 256 {
            return Err(invalid("salt must be 1..=256 bytes".into()));
        }
        let n = mechanism.key_bytes();
        if credential.stored_key.len() != n || credential.server_key.len() != n {
            return Err(invalid(format!("keys must be {n} bytes for {mechanism:?}")));
        }
        if !self.scram_users.contains_key(user) && self.scram_users.len() >= SCRAM_USERS_MAX {
            return Err(invalid(format!("already {SCRAM_USERS_MAX} users")));
        }
        self.scram_users
            .entry(user.to_string())
            .or_default()
            .insert(mechanism, credential.clone());
        Ok(CommandResult::ScramCredentialUpserted)
    }

    fn delete_scram_credential(
        &mut self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<CommandResult, Rejection> {
        let unknown = || Rejection::UnknownScramCredential {
            user: user.to_string(),
            mechanism,
        };
        let creds = self.scram_users.get_mut(user).ok_or_else(unknown)?;
        creds.remove(&mechanism).ok_or_else(unknown)?;
        if creds.is_empty() {
            self.scram_users.remove(user);
        }
        Ok(CommandResult::ScramCredentialDeleted)
    }

    /// The cluster's Kafka ACLs.
    pub fn acls(&self) -> &crate::acl::AclSet {
        &self.acls
    }

    /// The SCRAM credential of (user, mechanism), if any.
    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<&ScramCredential> {
        self.scram_users.get(user)?.get(&mechanism)
    }

    /// The names of the SCRAM users, in order.
    pub fn scram_user_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.scram_users.keys().map(String::as_str)
    }

    /// Whether `user` has a SCRAM credential of any mechanism.
    pub fn is_scram_user(&self, user: &str) -> bool {
        self.scram_users.contains_key(user)
    }

    /// Every SCRAM user with its mechanisms and iteration counts (no key material).
    pub fn scram_users(&self) -> impl Iterator<Item = (&str, Vec<(ScramMechanism, u32)>)> {
        self.scram_users.iter().map(|(user, creds)| {
            (
                user.as_str(),
                creds.iter().map(|(m, c)| (*m, c.iterations)).collect(),
            )
        })
    }

    fn delete_group_offsets(
        &mut self,
        group: &str,
        partitions: Option<&[strata_types::PartitionKey]>,
    ) -> CommandResult {
        let Some(topics) = self.group_offsets.get_mut(group) else {
            return CommandResult::GroupOffsetsDeleted { count: 0 };
        };
        let count = match partitions {
            None => topics.values().map(BTreeMap::len).sum(),
            Some(keys) => {
                let mut count = 0;
                for key in keys {
                    if let Some(parts) = topics.get_mut(&key.topic) {
                        count += usize::from(parts.remove(&key.partition).is_some());
                        if parts.is_empty() {
                            topics.remove(&key.topic);
                        }
                    }
                }
                count
            }
        };
        if partitions.is_none() || topics.is_empty() {
            self.group_offsets.remove(group);
        }
        CommandResult::GroupOffsetsDeleted { count }
    }

    fn drop_topic_offsets(&mut self, topic: TopicId) {
        self.group_offsets.retain(|_, topics| {
            topics.remove(&topic);
            !topics.is_empty()
        });
    }

    /// The offset `group` committed for one partition.
    pub fn group_offset(
        &self,
        group: &str,
        topic: TopicId,
        partition: u32,
    ) -> Option<&GroupOffset> {
        self.group_offsets.get(group)?.get(&topic)?.get(&partition)
    }

    /// Every offset `group` committed, ordered by topic id and partition.
    pub fn group_offsets(&self, group: &str) -> impl Iterator<Item = (TopicId, u32, &GroupOffset)> {
        self.group_offsets
            .get(group)
            .into_iter()
            .flat_map(|topics| topics.iter())
            .flat_map(|(topic, parts)| parts.iter().map(move |(p, o)| (*topic, *p, o)))
    }

    /// The groups that have committed offsets, in name order.
    pub fn offset_groups(&self) -> impl Iterator<Item = &str> {
        self.group_offsets.keys().map(String::as_str)
    }

    fn check_group_offsets(&self) -> Result<(), String> {
        for (group, topics) in &self.group_offsets {
            if topics.is_empty() {
                return Err(format!("group `{group}` is kept without offsets"));
            }
            for (topic, parts) in topics {
                let Some(entry) = self.topics.get(topic) else {
                    return Err(format!(
                        "group `{group}` has offsets of missing topic {topic}"
                    ));
                };
                if parts.is_empty() {
                    return Err(format!("group `{group}` topic {topic}: no partitions"));
                }
                if let Some(p) = parts.keys().find(|p| **p >= entry.meta.partitions) {
                    return Err(format!("group `{group}` topic {topic}: no partition {p}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(n: u8) -> TopicId {
        TopicId::from_bytes([n; 16])
    }

    fn name(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn create(n: &str, id: u8, partitions: u32) -> Command {
        Command::CreateTopic {
            name: name(n),
            id: tid(id),
            partitions,
            configs: BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
            created_ms: 42,
        }
    }

    fn delete(n: &str) -> Command {
        Command::DeleteTopic { name: name(n) }
    }

    fn pids(count: u32) -> Command {
        Command::AllocateProducerIds { count }
    }

    fn trim(t: u8, partition: u32, before_offset: i64, now_ms: i64) -> Command {
        Command::TrimPartition {
            topic: tid(t),
            partition,
            before_offset,
            now_ms,
        }
    }

    fn forget(keys: &[&str]) -> Command {
        Command::ForgetGarbage {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// A block `(topic id, partition, base, end, max_timestamp)`; positions are laid out in the
    /// order given, 100 bytes each.
    type B = (u8, u32, i64, i64, i64);

    fn object(key: &str, blocks: &[B]) -> Command {
        let blocks: Vec<BlockLocation> = blocks
            .iter()
            .enumerate()
            .map(
                |(i, &(t, partition, base_offset, end_offset, max_timestamp))| BlockLocation {
                    key: key.to_owned(),
                    topic: tid(t),
                    partition,
                    base_offset,
                    end_offset,
                    position: i as u64 * 100,
                    len: 100,
                    max_timestamp,
                    crc32c: 0,
                    index_len: 0,
                    relative: false,
                },
            )
            .collect();
        Command::CommitObject {
            key: key.to_owned(),
            size: blocks.len() as u64 * 100,
            blocks,
            stream: None,
        }
    }

    #[derive(Debug)]
    enum Want {
        Created,
        Deleted,
        Committed,
        /// Producer ids allocated, starting at this one.
        ProducerIds(i64),
        /// Trimmed; the log start afterwards.
        Trimmed(i64),
        Forgotten,
        /// Compacted; how many blocks were replaced.
        Compacted(usize),
        /// Altered; the topic's partition count and configs afterwards.
        Altered(u32, &'static [(&'static str, &'static str)]),
        Rejected(Rejection),
    }

    /// One step of a case: apply a command and check its result, or check a query.
    enum Step {
        Apply(Command, Want),
        /// `(topic id, partition, [(base, end)], start, end)`
        Index(u8, u32, &'static [(i64, i64)], i64, i64),
        /// `(topic id, partition, offset, expected block base)`
        Find(u8, u32, i64, Option<i64>),
        /// `(topic id, partition, timestamp, expected block base)`
        FindTime(u8, u32, i64, Option<i64>),
        /// `(name, expected id)`
        Topic(&'static str, Option<u8>),
        Garbage(&'static [&'static str]),
        /// `(key, expected garbage time)`
        GarbageSince(&'static str, Option<i64>),
        NextProducerId(i64),
    }
    use Step::*;

    /// A compacted object `key` for one partition: segments `(base, end, max_timestamp)`, each
    /// 100 data bytes plus a 10-byte index.
    fn compact(key: &str, t: u8, partition: u32, segs: &[(i64, i64, i64)], now_ms: i64) -> Command {
        let blocks: Vec<BlockLocation> = segs
            .iter()
            .enumerate()
            .map(
                |(i, &(base_offset, end_offset, max_timestamp))| BlockLocation {
                    key: key.to_owned(),
                    topic: tid(t),
                    partition,
                    base_offset,
                    end_offset,
                    position: i as u64 * 110,
                    len: 100,
                    max_timestamp,
                    crc32c: 0,
                    index_len: 10,
                    relative: false,
                },
            )
            .collect();
        Command::CompactPartition {
            key: key.to_owned(),
            size: blocks.len() as u64 * 110,
            blocks,
            now_ms,
        }
    }

    fn stale(t: u8, partition: u32, base_offset: i64, end_offset: i64) -> Want {
        Want::Rejected(Rejection::CompactionStale {
            topic: tid(t),
            partition,
            base_offset,
            end_offset,
        })
    }

    fn delete_records(t: u8, partition: u32, before_offset: i64, now_ms: i64) -> Command {
        Command::DeleteRecords {
            topic: tid(t),
            partition,
            before_offset,
            now_ms,
        }
    }

    fn alter(n: &str, changes: &[(&str, Option<&str>)], replace: bool) -> Command {
        Command::AlterTopicConfigs {
            name: name(n),
            configs: changes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
            replace,
        }
    }

    fn grow(n: &str, partitions: u32) -> Command {
        Command::CreatePartitions {
            name: name(n),
            partitions,
        }
    }

    #[test]
    fn delete_records_moves_the_log_start_exactly_and_forward_only() {
        check(
            "delete records",
            vec![
                Apply(create("a", 1, 2), Want::Created),
                Apply(
                    object("o1", &[(1, 0, 0, 10, 100), (1, 1, 0, 5, 100)]),
                    Want::Committed,
                ),
                Apply(object("o2", &[(1, 0, 10, 20, 200)]), Want::Committed),
                // Inside the first block: the block stays (it holds offsets 7..10), the log
                // starts at 7 exactly.
                Apply(delete_records(1, 0, 7, 5), Want::Trimmed(7)),
                Index(1, 0, &[(0, 10), (10, 20)], 7, 20),
                Garbage(&[]),
                Find(1, 0, 7, Some(0)),
                // Backwards is a no-op.
                Apply(delete_records(1, 0, 3, 6), Want::Trimmed(7)),
                // Past the first block: it is dropped; o1 still holds partition 1's block.
                Apply(delete_records(1, 0, 12, 7), Want::Trimmed(12)),
                Index(1, 0, &[(10, 20)], 12, 20),
                Garbage(&[]),
                // Partition 1 to its end: o1 becomes garbage, stamped with the time.
                Apply(delete_records(1, 1, 5, 8), Want::Trimmed(5)),
                Index(1, 1, &[], 5, 5),
                Garbage(&["o1"]),
                GarbageSince("o1", Some(8)),
                // Past the index's end (the records are still in the broker's tail).
                Apply(delete_records(1, 0, 25, 9), Want::Trimmed(25)),
                Index(1, 0, &[], 25, 20),
                Garbage(&["o1", "o2"]),
                // The tail is uploaded later: blocks wholly below the log start leave the index
                // at once, a block across it stays.
                Apply(object("o3", &[(1, 0, 20, 24, 300)]), Want::Committed),
                Index(1, 0, &[], 25, 24),
                Garbage(&["o1", "o2", "o3"]),
                GarbageSince("o3", None),
                Apply(object("o4", &[(1, 0, 24, 30, 300)]), Want::Committed),
                Index(1, 0, &[(24, 30)], 25, 30),
                // Retention never moves the start backwards.
                Apply(trim(1, 0, 24, 10), Want::Trimmed(25)),
                // Refused: negative offset, unknown topic or partition.
                Apply(
                    delete_records(1, 0, -1, 11),
                    Want::Rejected(Rejection::InvalidOffset {
                        topic: tid(1),
                        partition: 0,
                        offset: -1,
                    }),
                ),
                Apply(
                    delete_records(9, 0, 1, 11),
                    Want::Rejected(Rejection::UnknownTopicId { topic: tid(9) }),
                ),
                Apply(
                    delete_records(1, 2, 1, 11),
                    Want::Rejected(Rejection::UnknownPartition {
                        topic: tid(1),
                        partition: 2,
                        partitions: 2,
                    }),
                ),
            ],
        );
    }

    #[test]
    fn topic_configs_and_partitions_change_through_commands() {
        check(
            "alter topics",
            vec![
                Apply(create("a", 1, 2), Want::Created),
                // Incremental: set one key, keep the others.
                Apply(
                    alter("a", &[("retention.bytes", Some("100"))], false),
                    Want::Altered(2, &[("retention.bytes", "100"), ("retention.ms", "1000")]),
                ),
                // Remove one.
                Apply(
                    alter("a", &[("retention.ms", None), ("absent", None)], false),
                    Want::Altered(2, &[("retention.bytes", "100")]),
                ),
                // Replace: keys not listed go.
                Apply(
                    alter("a", &[("retention.ms", Some("5"))], true),
                    Want::Altered(2, &[("retention.ms", "5")]),
                ),
                Apply(
                    alter("b", &[], true),
                    Want::Rejected(Rejection::UnknownTopic { name: name("b") }),
                ),
                Apply(
                    Command::AlterTopicConfigs {
                        name: name("a"),
                        configs: BTreeMap::from([("k".to_owned(), Some("v".repeat(4097)))]),
                        replace: false,
                    },
                    Want::Rejected(Rejection::ConfigTooLong {
                        name: name("a"),
                        key: "k".into(),
                        max: TOPIC_CONFIG_BYTES_MAX,
                    }),
                ),
                Apply(
                    Command::AlterTopicConfigs {
                        name: name("a"),
                        configs: (0..=TOPIC_CONFIGS_MAX)
                            .map(|i| (format!("k{i}"), Some(String::new())))
                            .collect(),
                        replace: true,
                    },
                    Want::Rejected(Rejection::TooManyConfigs {
                        name: name("a"),
                        count: TOPIC_CONFIGS_MAX + 1,
                        max: TOPIC_CONFIGS_MAX,
                    }),
                ),
                // Partitions only grow.
                Apply(object("o1", &[(1, 1, 0, 5, 100)]), Want::Committed),
                Apply(
                    grow("a", 2),
                    Want::Rejected(Rejection::PartitionsNotIncreased {
                        name: name("a"),
                        current: 2,
                        partitions: 2,
                    }),
                ),
                Apply(
                    grow("a", 1),
                    Want::Rejected(Rejection::PartitionsNotIncreased {
                        name: name("a"),
                        current: 2,
                        partitions: 1,
                    }),
                ),
                Apply(
                    grow("a", PARTITIONS_PER_TOPIC_MAX + 1),
                    Want::Rejected(Rejection::InvalidPartitions {
                        name: name("a"),
                        partitions: PARTITIONS_PER_TOPIC_MAX + 1,
                        max: PARTITIONS_PER_TOPIC_MAX,
                    }),
                ),
                Apply(
                    grow("b", 3),
                    Want::Rejected(Rejection::UnknownTopic { name: name("b") }),
                ),
                Apply(grow("a", 4), Want::Altered(4, &[("retention.ms", "5")])),
                // Old partitions keep their index; new ones start empty and take commits.
                Index(1, 1, &[(0, 5)], 0, 5),
                Index(1, 3, &[], 0, 0),
                Apply(object("o2", &[(1, 3, 0, 7, 100)]), Want::Committed),
                Index(1, 3, &[(0, 7)], 0, 7),
                Apply(delete("a"), Want::Deleted),
                Garbage(&["o1", "o2"]),
            ],
        );
    }

    #[test]
    fn grown_partitions_are_leased_through_apply() {
        let mut m = MetaState::default();
        m.apply(&Command::Cluster(ClusterCommand::RegisterBroker {
            node_id: 1,
            kafka_addr: "127.0.0.1:9092".into(),
            rack: None,
            lease_ms: 1000,
            now_ms: 0,
            cluster_id: None,
            auth_secret: None,
            peer_addr: None,
        }));
        m.apply(&create("a", 1, 1));
        m.apply(&grow("a", 3));
        for p in 0..3 {
            let lease = m.cluster().lease(tid(1), p).expect("leased");
            assert_eq!((lease.leader, lease.epoch), (Some(1), 1), "partition {p}");
        }
    }

    #[test]
    fn snapshots_from_before_delete_records_load() {
        let mut m = MetaState::default();
        m.apply(&create("a", 1, 1));
        m.apply(&object("o1", &[(1, 0, 0, 10, 100)]));
        let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
        let index = &mut json["topics"][tid(1).to_string()]["partitions"][0];
        assert!(index.as_object_mut().unwrap().remove("log_start").is_some());
        let back: MetaState = serde_json::from_value(json).unwrap();
        assert_eq!(back.indexed_start(tid(1), 0), 0);
        assert_eq!(back.indexed_end(tid(1), 0), 10);
        back.check_invariants().unwrap();
    }

    #[test]
    fn compaction_swaps_exact_runs_and_makes_replaced_objects_garbage() {
        check(
            "compaction",
            vec![
                Apply(create("a", 1, 2), Want::Created),
                // o1 holds both partitions; o2, o3 only partition 0.
                Apply(
                    object("o1", &[(1, 0, 0, 10, 100), (1, 1, 0, 5, 100)]),
                    Want::Committed,
                ),
                Apply(object("o2", &[(1, 0, 10, 20, 200)]), Want::Committed),
                Apply(object("o3", &[(1, 0, 20, 30, 150)]), Want::Committed),
                // Not a block boundary: stale, nothing changes.
                Apply(compact("s0", 1, 0, &[(0, 15, 200)], 7), stale(1, 0, 0, 15)),
                Apply(compact("s0", 1, 0, &[(5, 20, 200)], 7), stale(1, 0, 5, 20)),
                // A gap inside the new blocks.
                Apply(
                    compact("s0", 1, 0, &[(0, 10, 1), (11, 20, 2)], 7),
                    gap(1, 0, 10, 11),
                ),
                // Mixed partitions.
                Apply(
                    Command::CompactPartition {
                        key: "s0".into(),
                        size: 220,
                        blocks: vec![block_of("s0", 1, 0, 0, 10), block_of("s0", 1, 1, 10, 20)],
                        now_ms: 7,
                    },
                    Want::Rejected(Rejection::CompactionMixesPartitions {
                        key: "s0".into(),
                        first_topic: tid(1),
                        first_partition: 0,
                        topic: tid(1),
                        partition: 1,
                    }),
                ),
                // Swap 0..20 (o1's block of partition 0 and o2) for one segment.
                Apply(compact("s1", 1, 0, &[(0, 20, 200)], 7), Want::Compacted(2)),
                Index(1, 0, &[(0, 20), (20, 30)], 0, 30),
                // o1 still holds partition 1's block; o2 is garbage since 7.
                Garbage(&["o2"]),
                GarbageSince("o2", Some(7)),
                Find(1, 0, 12, Some(0)),
                FindTime(1, 0, 160, Some(0)),
                FindTime(1, 0, 201, None),
                // A retry of the same compaction is a no-op.
                Apply(compact("s1", 1, 0, &[(0, 20, 200)], 8), Want::Compacted(0)),
                // Compacting segments again (merge) into two segments.
                Apply(
                    compact("s2", 1, 0, &[(0, 25, 200), (25, 30, 150)], 9),
                    Want::Compacted(2),
                ),
                Index(1, 0, &[(0, 25), (25, 30)], 0, 30),
                Garbage(&["o2", "o3", "s1"]),
                // Retention then trims the first segment; a compaction planned before is stale.
                Apply(trim(1, 0, 25, 10), Want::Trimmed(25)),
                Apply(compact("s3", 1, 0, &[(0, 30, 200)], 11), stale(1, 0, 0, 30)),
                Garbage(&["o2", "o3", "s1"]),
                Apply(object("o4", &[(1, 0, 30, 40, 300)]), Want::Committed),
                Apply(
                    compact("s3", 1, 0, &[(25, 40, 300)], 12),
                    Want::Compacted(2),
                ),
                Index(1, 0, &[(25, 40)], 25, 40),
                Garbage(&["o2", "o3", "o4", "s1", "s2"]),
            ],
        );
    }

    fn block_of(
        key: &str,
        t: u8,
        partition: u32,
        base_offset: i64,
        end_offset: i64,
    ) -> BlockLocation {
        BlockLocation {
            key: key.to_owned(),
            topic: tid(t),
            partition,
            base_offset,
            end_offset,
            position: base_offset as u64 * 10,
            len: 100,
            max_timestamp: 1,
            crc32c: 0,
            index_len: 0,
            relative: false,
        }
    }

    fn gap(t: u8, partition: u32, expected: i64, got: i64) -> Want {
        Want::Rejected(Rejection::OffsetGap {
            topic: tid(t),
            partition,
            expected,
            got,
        })
    }

    fn check(case: &str, steps: Vec<Step>) {
        let mut state = MetaState::default();
        for (i, step) in steps.into_iter().enumerate() {
            let at = format!("case `{case}` step {i}");
            match step {
                Apply(cmd, want) => {
                    let before = serde_json::to_string(&state).unwrap();
                    let got = state.apply(&cmd);
                    match (&want, &got) {
                        (Want::Created, CommandResult::TopicCreated(meta)) => {
                            assert_eq!(state.topic(meta.name.as_str()), Some(meta), "{at}");
                        }
                        (Want::Deleted, CommandResult::TopicDeleted(meta)) => {
                            assert_eq!(state.topic(meta.name.as_str()), None, "{at}");
                            assert_eq!(state.topic_by_id(meta.id), None, "{at}");
                        }
                        (Want::Committed, CommandResult::ObjectCommitted) => {}
                        (
                            Want::ProducerIds(want),
                            CommandResult::ProducerIdsAllocated { first },
                        ) => {
                            assert_eq!(want, first, "{at}");
                        }
                        (
                            Want::Trimmed(want),
                            CommandResult::PartitionTrimmed { log_start_offset },
                        ) => {
                            assert_eq!(want, log_start_offset, "{at}");
                        }
                        (Want::Forgotten, CommandResult::GarbageForgotten) => {}
                        (Want::Altered(partitions, configs), CommandResult::TopicAltered(meta)) => {
                            assert_eq!(*partitions, meta.partitions, "{at}");
                            let want: BTreeMap<String, String> = configs
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                                .collect();
                            assert_eq!(want, meta.configs, "{at}");
                            assert_eq!(state.topic(meta.name.as_str()), Some(meta), "{at}");
                        }
                        (Want::Compacted(want), CommandResult::PartitionCompacted { replaced }) => {
                            assert_eq!(want, replaced, "{at}");
                        }
                        (Want::Rejected(want), CommandResult::Rejected(got)) => {
                            assert_eq!(want, got, "{at}");
                            let after = serde_json::to_string(&state).unwrap();
                            assert_eq!(before, after, "{at}: a rejection changed the state");
                        }
                        _ => panic!("{at}: wanted {want:?}, got {got:?}"),
                    }
                    state
                        .check_invariants()
                        .unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                Index(t, p, ranges, start, end) => {
                    let got: Vec<(i64, i64)> = state
                        .blocks(tid(t), p)
                        .map(|b| (b.base_offset, b.end_offset))
                        .collect();
                    assert_eq!(got, ranges, "{at}: blocks");
                    assert_eq!(state.indexed_start(tid(t), p), start, "{at}: start");
                    assert_eq!(state.indexed_end(tid(t), p), end, "{at}: end");
                }
                Find(t, p, offset, want) => {
                    let got = state.find_block(tid(t), p, offset).map(|b| b.base_offset);
                    assert_eq!(got, want, "{at}: find_block({offset})");
                }
                FindTime(t, p, ts, want) => {
                    let got = state
                        .find_block_by_time(tid(t), p, ts)
                        .map(|b| b.base_offset);
                    assert_eq!(got, want, "{at}: find_block_by_time({ts})");
                }
                Topic(n, want) => {
                    assert_eq!(
                        state.topic(n).map(|m| m.id),
                        want.map(tid),
                        "{at}: topic {n}"
                    );
                }
                Garbage(want) => {
                    let got: Vec<&str> = state.garbage_keys().collect();
                    assert_eq!(got, want, "{at}: garbage");
                }
                GarbageSince(key, want) => {
                    assert_eq!(state.garbage_since(key), want, "{at}: garbage since");
                }
                NextProducerId(want) => {
                    assert_eq!(state.next_producer_id(), want, "{at}: next producer id");
                }
            }
        }
        // The serialized form round-trips, derived lookup data included.
        let json = serde_json::to_string(&state).unwrap();
        let back: MetaState = serde_json::from_str(&json).unwrap();
        back.check_invariants().unwrap();
        assert_eq!(
            json,
            serde_json::to_string(&back).unwrap(),
            "case `{case}`: round trip"
        );
    }

    #[test]
    fn apply_cases() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "create topics",
                vec![
                    Apply(create("a", 1, 3), Want::Created),
                    Apply(
                        create("a", 2, 3),
                        Want::Rejected(Rejection::TopicExists { name: name("a") }),
                    ),
                    Apply(
                        create("b", 1, 3),
                        Want::Rejected(Rejection::TopicIdExists {
                            id: tid(1),
                            name: name("a"),
                        }),
                    ),
                    Apply(
                        create("b", 2, 0),
                        Want::Rejected(Rejection::InvalidPartitions {
                            name: name("b"),
                            partitions: 0,
                            max: PARTITIONS_PER_TOPIC_MAX,
                        }),
                    ),
                    Apply(
                        create("b", 2, 10_001),
                        Want::Rejected(Rejection::InvalidPartitions {
                            name: name("b"),
                            partitions: 10_001,
                            max: PARTITIONS_PER_TOPIC_MAX,
                        }),
                    ),
                    Apply(create("b", 2, 10_000), Want::Created),
                    Topic("a", Some(1)),
                    Topic("b", Some(2)),
                    Topic("c", None),
                    Index(1, 0, &[], 0, 0),
                    Index(2, 9_999, &[], 0, 0),
                ],
            ),
            (
                "contiguous commits",
                vec![
                    Apply(create("a", 1, 2), Want::Created),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 5), (1, 1, 0, 3, 5)]),
                        Want::Committed,
                    ),
                    Apply(object("o2", &[(1, 0, 10, 25, 9)]), Want::Committed),
                    Index(1, 0, &[(0, 10), (10, 25)], 0, 25),
                    Index(1, 1, &[(0, 3)], 0, 3),
                ],
            ),
            (
                "gap and overlap are rejected",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(object("o0", &[(1, 0, 5, 10, 0)]), gap(1, 0, 0, 5)),
                    Apply(object("o1", &[(1, 0, 0, 25, 0)]), Want::Committed),
                    Apply(object("o2", &[(1, 0, 30, 40, 0)]), gap(1, 0, 25, 30)),
                    Apply(object("o3", &[(1, 0, 5, 40, 0)]), gap(1, 0, 25, 5)),
                    Apply(object("o4", &[(1, 0, 24, 40, 0)]), gap(1, 0, 25, 24)),
                    Apply(object("o5", &[(1, 0, 25, 40, 0)]), Want::Committed),
                    Index(1, 0, &[(0, 25), (25, 40)], 0, 40),
                ],
            ),
            (
                "idempotent retry",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Index(1, 0, &[(0, 10)], 0, 10),
                    Apply(object("o2", &[(1, 0, 10, 20, 0)]), Want::Committed),
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Index(1, 0, &[(0, 10), (10, 20)], 0, 20),
                    Apply(
                        object("o2", &[(1, 0, 10, 20, 0), (1, 0, 20, 30, 0)]),
                        Want::Rejected(Rejection::ObjectKeyConflict {
                            key: "o2".into(),
                            size: 200,
                            committed_size: 100,
                        }),
                    ),
                ],
            ),
            (
                "unknown topic or partition",
                vec![
                    Apply(create("a", 1, 2), Want::Created),
                    Apply(
                        object("o1", &[(9, 0, 0, 10, 0)]),
                        Want::Rejected(Rejection::UnknownTopicId { topic: tid(9) }),
                    ),
                    Apply(
                        object("o1", &[(1, 2, 0, 10, 0)]),
                        Want::Rejected(Rejection::UnknownPartition {
                            topic: tid(1),
                            partition: 2,
                            partitions: 2,
                        }),
                    ),
                    Apply(
                        delete("zz"),
                        Want::Rejected(Rejection::UnknownTopic { name: name("zz") }),
                    ),
                    Index(9, 0, &[], 0, 0),
                ],
            ),
            (
                "all or nothing",
                vec![
                    Apply(create("a", 1, 2), Want::Created),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 0), (1, 1, 7, 9, 0)]),
                        gap(1, 1, 0, 7),
                    ),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 0), (2, 0, 0, 9, 0)]),
                        Want::Rejected(Rejection::UnknownTopicId { topic: tid(2) }),
                    ),
                    Index(1, 0, &[], 0, 0),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 0), (1, 1, 0, 9, 0)]),
                        Want::Committed,
                    ),
                    Index(1, 0, &[(0, 10)], 0, 10),
                    Index(1, 1, &[(0, 9)], 0, 9),
                ],
            ),
            (
                "one partition twice in one object",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(
                        object("o1", &[(1, 0, 5, 10, 0), (1, 0, 0, 5, 0)]),
                        gap(1, 0, 0, 5),
                    ),
                    Apply(
                        object("o1", &[(1, 0, 0, 5, 0), (1, 0, 6, 10, 0)]),
                        gap(1, 0, 5, 6),
                    ),
                    Apply(
                        object("o1", &[(1, 0, 0, 5, 0), (1, 0, 4, 10, 0)]),
                        gap(1, 0, 5, 4),
                    ),
                    Apply(
                        object("o1", &[(1, 0, 0, 5, 0), (1, 0, 5, 10, 0)]),
                        Want::Committed,
                    ),
                    Index(1, 0, &[(0, 5), (5, 10)], 0, 10),
                ],
            ),
            (
                "malformed objects",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(
                        object("o1", &[]),
                        Want::Rejected(Rejection::EmptyObject { key: "o1".into() }),
                    ),
                    Apply(
                        object("o1", &[(1, 0, 0, 0, 0)]),
                        Want::Rejected(Rejection::EmptyBlock {
                            topic: tid(1),
                            partition: 0,
                            base_offset: 0,
                            end_offset: 0,
                        }),
                    ),
                    Apply(
                        Command::CommitObject {
                            stream: None,
                            key: "o1".into(),
                            size: 100,
                            blocks: match object("other", &[(1, 0, 0, 1, 0)]) {
                                Command::CommitObject { blocks, .. } => blocks,
                                _ => unreachable!(),
                            },
                        },
                        Want::Rejected(Rejection::BlockKeyMismatch {
                            key: "o1".into(),
                            block_key: "other".into(),
                        }),
                    ),
                    Apply(
                        Command::CommitObject {
                            stream: None,
                            key: "o1".into(),
                            size: 99,
                            blocks: match object("o1", &[(1, 0, 0, 1, 0)]) {
                                Command::CommitObject { blocks, .. } => blocks,
                                _ => unreachable!(),
                            },
                        },
                        Want::Rejected(Rejection::BlockOutOfBounds {
                            key: "o1".into(),
                            position: 0,
                            len: 100,
                            size: 99,
                        }),
                    ),
                    Index(1, 0, &[], 0, 0),
                ],
            ),
            (
                "delete then recreate",
                vec![
                    Apply(create("a", 1, 2), Want::Created),
                    Apply(create("b", 2, 1), Want::Created),
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Apply(
                        object("o2", &[(1, 1, 0, 10, 0), (2, 0, 0, 4, 0)]),
                        Want::Committed,
                    ),
                    Apply(delete("a"), Want::Deleted),
                    Topic("a", None),
                    Index(1, 0, &[], 0, 0),
                    // o2 still holds topic b's block.
                    Garbage(&["o1"]),
                    Apply(
                        object("o3", &[(1, 0, 10, 20, 0)]),
                        Want::Rejected(Rejection::UnknownTopicId { topic: tid(1) }),
                    ),
                    // A late retry of an object whose topic is gone changes nothing.
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Garbage(&["o1"]),
                    Apply(create("a", 3, 1), Want::Created),
                    Topic("a", Some(3)),
                    Index(3, 0, &[], 0, 0),
                    Apply(object("o4", &[(3, 0, 0, 7, 0)]), Want::Committed),
                    Index(3, 0, &[(0, 7)], 0, 7),
                    Apply(delete("b"), Want::Deleted),
                    Garbage(&["o1", "o2"]),
                ],
            ),
            (
                "find by offset",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Find(1, 0, 0, None),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 0), (1, 0, 10, 20, 0)]),
                        Want::Committed,
                    ),
                    Apply(object("o2", &[(1, 0, 20, 30, 0)]), Want::Committed),
                    Find(1, 0, -5, Some(0)),
                    Find(1, 0, 0, Some(0)),
                    Find(1, 0, 9, Some(0)),
                    Find(1, 0, 10, Some(10)),
                    Find(1, 0, 29, Some(20)),
                    Find(1, 0, 30, None),
                    Find(1, 0, i64::MAX, None),
                    Find(1, 1, 0, None),
                    Find(7, 0, 0, None),
                ],
            ),
            (
                "find by time",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    FindTime(1, 0, 0, None),
                    Apply(
                        object(
                            "o1",
                            &[
                                (1, 0, 0, 10, 100),
                                (1, 0, 10, 20, 50),
                                (1, 0, 20, 30, -1),
                                (1, 0, 30, 40, 300),
                            ],
                        ),
                        Want::Committed,
                    ),
                    FindTime(1, 0, i64::MIN, Some(0)),
                    FindTime(1, 0, 0, Some(0)),
                    FindTime(1, 0, 100, Some(0)),
                    FindTime(1, 0, 101, Some(30)),
                    FindTime(1, 0, 300, Some(30)),
                    FindTime(1, 0, 301, None),
                    FindTime(2, 0, 0, None),
                ],
            ),
            (
                "trim whole blocks only",
                vec![
                    Apply(create("a", 1, 2), Want::Created),
                    // Nothing indexed: a no-op at 0.
                    Apply(trim(1, 0, 100, 7), Want::Trimmed(0)),
                    Apply(
                        object("o1", &[(1, 0, 0, 10, 5), (1, 1, 0, 4, 5)]),
                        Want::Committed,
                    ),
                    Apply(object("o2", &[(1, 0, 10, 20, 50)]), Want::Committed),
                    Apply(object("o3", &[(1, 0, 20, 30, 300)]), Want::Committed),
                    // Inside the first block: nothing drops.
                    Apply(trim(1, 0, 9, 7), Want::Trimmed(0)),
                    Index(1, 0, &[(0, 10), (10, 20), (20, 30)], 0, 30),
                    // Up to block ends; o1 still holds partition 1's block, so it stays live.
                    Apply(trim(1, 0, 15, 1_000), Want::Trimmed(10)),
                    Index(1, 0, &[(10, 20), (20, 30)], 10, 30),
                    Garbage(&[]),
                    Find(1, 0, 3, Some(10)),
                    FindTime(1, 0, 0, Some(10)),
                    FindTime(1, 0, 51, Some(20)),
                    // Idempotent: trimming again or below the start changes nothing.
                    Apply(trim(1, 0, 10, 2_000), Want::Trimmed(10)),
                    Apply(trim(1, 0, 5, 2_000), Want::Trimmed(10)),
                    Apply(trim(1, 0, 20, 3_000), Want::Trimmed(20)),
                    Garbage(&["o2"]),
                    GarbageSince("o2", Some(3_000)),
                    // Past the end: every block goes, the start is the index's end.
                    Apply(trim(1, 0, 1_000, 4_000), Want::Trimmed(30)),
                    Index(1, 0, &[], 30, 30),
                    Garbage(&["o2", "o3"]),
                    Apply(trim(1, 1, 4, 5_000), Want::Trimmed(4)),
                    Garbage(&["o1", "o2", "o3"]),
                    GarbageSince("o1", Some(5_000)),
                    // Commits continue at the end.
                    Apply(object("o4", &[(1, 0, 30, 35, 400)]), Want::Committed),
                    Index(1, 0, &[(30, 35)], 30, 35),
                    Apply(object("o5", &[(1, 0, 29, 40, 400)]), gap(1, 0, 35, 29)),
                    Apply(
                        trim(9, 0, 10, 0),
                        Want::Rejected(Rejection::UnknownTopicId { topic: tid(9) }),
                    ),
                    Apply(
                        trim(1, 2, 10, 0),
                        Want::Rejected(Rejection::UnknownPartition {
                            topic: tid(1),
                            partition: 2,
                            partitions: 2,
                        }),
                    ),
                ],
            ),
            (
                "forget garbage",
                vec![
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(create("b", 2, 1), Want::Created),
                    Apply(object("o1", &[(1, 0, 0, 10, 5)]), Want::Committed),
                    Apply(object("o2", &[(1, 0, 10, 20, 5)]), Want::Committed),
                    Apply(object("o3", &[(2, 0, 0, 20, 5)]), Want::Committed),
                    Apply(trim(1, 0, 10, 77), Want::Trimmed(10)),
                    Apply(delete("b"), Want::Deleted),
                    Garbage(&["o1", "o3"]),
                    GarbageSince("o1", Some(77)),
                    GarbageSince("o3", None),
                    // Live and unknown keys are ignored.
                    Apply(forget(&["o1", "o2", "zz"]), Want::Forgotten),
                    Garbage(&["o3"]),
                    GarbageSince("o1", None),
                    Index(1, 0, &[(10, 20)], 10, 20),
                    Apply(forget(&["o1"]), Want::Forgotten),
                    Apply(forget(&["o3"]), Want::Forgotten),
                    Garbage(&[]),
                    // A late retry of a forgotten object cannot bring it back: it no longer fits.
                    Apply(object("o1", &[(1, 0, 0, 10, 5)]), gap(1, 0, 20, 0)),
                ],
            ),
            (
                "producer id blocks",
                vec![
                    NextProducerId(0),
                    Apply(pids(1000), Want::ProducerIds(0)),
                    Apply(pids(1), Want::ProducerIds(1000)),
                    NextProducerId(1001),
                    Apply(
                        pids(0),
                        Want::Rejected(Rejection::InvalidProducerIdCount {
                            count: 0,
                            max: PRODUCER_ID_BLOCK_MAX,
                        }),
                    ),
                    Apply(
                        pids(PRODUCER_ID_BLOCK_MAX + 1),
                        Want::Rejected(Rejection::InvalidProducerIdCount {
                            count: PRODUCER_ID_BLOCK_MAX + 1,
                            max: PRODUCER_ID_BLOCK_MAX,
                        }),
                    ),
                    Apply(pids(PRODUCER_ID_BLOCK_MAX), Want::ProducerIds(1001)),
                    NextProducerId(1001 + i64::from(PRODUCER_ID_BLOCK_MAX)),
                    // Topics and the index do not touch the producer id counter.
                    Apply(create("a", 1, 1), Want::Created),
                    Apply(object("o1", &[(1, 0, 0, 10, 0)]), Want::Committed),
                    Apply(delete("a"), Want::Deleted),
                    Apply(pids(5), Want::ProducerIds(1_001_001)),
                    NextProducerId(1_001_006),
                ],
            ),
        ];
        for (case, steps) in cases {
            check(case, steps);
        }
    }

    #[test]
    fn producer_ids_run_out_without_wrapping() {
        let cases: &[(i64, u32, Result<i64, Rejection>)] = &[
            (i64::MAX - 10, 10, Ok(i64::MAX - 10)),
            (
                i64::MAX - 10,
                11,
                Err(Rejection::ProducerIdsExhausted {
                    next: i64::MAX - 10,
                    count: 11,
                }),
            ),
            (
                i64::MAX,
                1,
                Err(Rejection::ProducerIdsExhausted {
                    next: i64::MAX,
                    count: 1,
                }),
            ),
        ];
        for (i, (next, count, want)) in cases.iter().enumerate() {
            let mut state = MetaState {
                next_producer_id: *next,
                ..MetaState::default()
            };
            let got = match state.apply(&pids(*count)) {
                CommandResult::ProducerIdsAllocated { first } => Ok(first),
                CommandResult::Rejected(r) => Err(r),
                other => panic!("case {i}: {other:?}"),
            };
            assert_eq!(&got, want, "case {i}");
            let after = if want.is_ok() {
                next + i64::from(*count)
            } else {
                *next
            };
            assert_eq!(state.next_producer_id(), after, "case {i}");
            state.check_invariants().unwrap();
        }
    }

    #[test]
    fn snapshots_from_before_producer_ids_load() {
        // A state serialized before `next_producer_id` existed starts handing out ids at 0.
        let mut state = MetaState::default();
        state.apply(&create("a", 1, 1));
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("next_producer_id");
        let mut old: MetaState = serde_json::from_value(json).unwrap();
        old.check_invariants().unwrap();
        assert_eq!(old.next_producer_id(), 0);
        assert_eq!(
            old.apply(&pids(3)),
            CommandResult::ProducerIdsAllocated { first: 0 }
        );
    }

    #[test]
    fn scram_credentials() {
        let cred = |iterations: u32, n: usize| ScramCredential {
            salt: vec![7; 16],
            iterations,
            stored_key: vec![1; n],
            server_key: vec![2; n],
        };
        let upsert =
            |user: &str, m: ScramMechanism, c: ScramCredential| Command::UpsertScramCredential {
                user: user.into(),
                mechanism: m,
                credential: c,
            };
        let del = |user: &str, m: ScramMechanism| Command::DeleteScramCredential {
            user: user.into(),
            mechanism: m,
        };
        let (s256, s512) = (ScramMechanism::Sha256, ScramMechanism::Sha512);
        let mut state = MetaState::default();
        let cases: Vec<(Command, Result<CommandResult, &str>)> = vec![
            (
                upsert("alice", s512, cred(4096, 64)),
                Ok(CommandResult::ScramCredentialUpserted),
            ),
            (
                upsert("alice", s256, cred(8192, 32)),
                Ok(CommandResult::ScramCredentialUpserted),
            ),
            (upsert("bob", s512, cred(4095, 64)), Err("4095 iterations")),
            (
                upsert("bob", s512, cred(4096, 32)),
                Err("keys must be 64 bytes"),
            ),
            (
                upsert("", s512, cred(4096, 64)),
                Err("user name of 0 bytes"),
            ),
            (del("bob", s512), Err("no Sha512 credential for user `bob`")),
            (
                del("alice", s256),
                Ok(CommandResult::ScramCredentialDeleted),
            ),
            (del("alice", s256), Err("no Sha256 credential")),
        ];
        for (cmd, want) in cases {
            let got = state.apply(&cmd);
            match (want, got) {
                (Ok(want), got) => assert_eq!(got, want, "{cmd:?}"),
                (Err(text), CommandResult::Rejected(r)) => {
                    assert!(r.to_string().contains(text), "{cmd:?}: {r}")
                }
                (Err(text), got) => panic!("{cmd:?}: want `{text}`, got {got:?}"),
            }
        }
        assert!(state.scram_credential("alice", s512).is_some());
        assert!(state.scram_credential("alice", s256).is_none());
        let users: Vec<_> = state.scram_users().collect();
        assert_eq!(users, vec![("alice", vec![(s512, 4096)])]);
        // Credentials survive a snapshot; the Debug form never shows key material.
        let back: MetaState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(back.scram_credential("alice", s512), Some(&cred(4096, 64)));
        assert!(!format!("{:?}", upsert("x", s512, cred(4096, 64))).contains("stored_key"));
        // Snapshots from before users existed load with none.
        let mut json = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("scram_users");
        let old: MetaState = serde_json::from_value(json).unwrap();
        assert_eq!(old.scram_users().count(), 0);
    }

    #[test]
    fn apply_is_deterministic() {
        let commands = [
            pids(1000),
            create("a", 1, 4),
            create("b", 2, 1),
            object("o1", &[(1, 0, 0, 10, 1), (1, 3, 0, 2, 1), (2, 0, 0, 1, 1)]),
            object("o2", &[(1, 0, 10, 20, 1)]),
            delete("b"),
            object("o3", &[(1, 0, 5, 20, 1)]),
            trim(1, 0, 10, 99),
            forget(&["o1"]),
            pids(7),
        ];
        let run = || {
            let mut state = MetaState::default();
            let results: Vec<CommandResult> = commands.iter().map(|c| state.apply(c)).collect();
            (results, serde_json::to_string(&state).unwrap())
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn commands_round_trip_through_json() {
        for cmd in [
            create("a", 1, 4),
            delete("a"),
            object("o1", &[(1, 0, 0, 10, 1)]),
            pids(1000),
            trim(1, 0, 10, 5),
            forget(&["o1"]),
            delete_records(1, 0, 7, 5),
            alter(
                "a",
                &[("retention.ms", Some("1")), ("retention.bytes", None)],
                true,
            ),
            grow("a", 8),
        ] {
            let json = serde_json::to_string(&cmd).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        }
        // Names are validated on the way in, so a log entry cannot smuggle a bad name.
        let bad = r#"{"DeleteTopic":{"name":"bad name"}}"#;
        assert!(serde_json::from_str::<Command>(bad).is_err());
    }

    // -----------------------------------------------------------------------------------------
    // Consumer-group offsets

    fn commit(group: &str, offsets: &[(u8, u32, i64)], now_ms: i64) -> Command {
        Command::CommitOffsets {
            group: group.to_owned(),
            offsets: offsets
                .iter()
                .map(|&(t, partition, offset)| OffsetCommit {
                    topic: tid(t),
                    partition,
                    offset,
                    leader_epoch: 0,
                    metadata: format!("m{offset}"),
                })
                .collect(),
            now_ms,
        }
    }

    fn forget_offsets(group: &str, partitions: Option<&[(u8, u32)]>) -> Command {
        Command::DeleteGroupOffsets {
            group: group.to_owned(),
            partitions: partitions.map(|ps| {
                ps.iter()
                    .map(|&(t, partition)| strata_types::PartitionKey {
                        topic: tid(t),
                        partition,
                    })
                    .collect()
            }),
        }
    }

    /// One step of an offsets case.
    enum OffsetStep {
        Apply(Command, CommandResult),
        /// `(group, [(topic id, partition, offset)])`: everything the group has committed.
        Offsets(&'static str, &'static [(u8, u32, i64)]),
        /// The groups with offsets.
        Groups(&'static [&'static str]),
    }

    fn check_offsets(case: &str, steps: Vec<OffsetStep>) {
        let mut state = MetaState::default();
        for (i, step) in steps.into_iter().enumerate() {
            let at = format!("case `{case}` step {i}");
            match step {
                OffsetStep::Apply(cmd, want) => {
                    let before = serde_json::to_string(&state).unwrap();
                    let got = state.apply(&cmd);
                    assert_eq!(got, want, "{at}");
                    if matches!(got, CommandResult::Rejected(_)) {
                        let after = serde_json::to_string(&state).unwrap();
                        assert_eq!(before, after, "{at}: a rejection changed the state");
                    }
                    state
                        .check_invariants()
                        .unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                OffsetStep::Offsets(group, want) => {
                    let got: Vec<(TopicId, u32, i64)> = state
                        .group_offsets(group)
                        .map(|(t, p, o)| (t, p, o.offset))
                        .collect();
                    let want: Vec<(TopicId, u32, i64)> =
                        want.iter().map(|&(t, p, o)| (tid(t), p, o)).collect();
                    assert_eq!(got, want, "{at}: offsets of {group}");
                    for (t, p, o) in want {
                        let stored = state.group_offset(group, t, p).unwrap();
                        assert_eq!(stored.offset, o, "{at}");
                        assert_eq!(stored.metadata, format!("m{o}"), "{at}");
                    }
                }
                OffsetStep::Groups(want) => {
                    let got: Vec<&str> = state.offset_groups().collect();
                    assert_eq!(got, want, "{at}: groups");
                }
            }
        }
        let json = serde_json::to_string(&state).unwrap();
        let back: MetaState = serde_json::from_str(&json).unwrap();
        back.check_invariants().unwrap();
        assert_eq!(
            json,
            serde_json::to_string(&back).unwrap(),
            "{case}: round trip"
        );
    }

    #[test]
    fn group_offset_cases() {
        use OffsetStep::{Apply, Groups, Offsets};
        let ok = || CommandResult::OffsetsCommitted;
        let deleted = |count| CommandResult::GroupOffsetsDeleted { count };
        let rejected = CommandResult::Rejected;
        let long_group = "g".repeat(GROUP_ID_BYTES_MAX + 1);
        let cases: Vec<(&str, Vec<OffsetStep>)> = vec![
            (
                "commit, replace, move back",
                vec![
                    Apply(
                        create("a", 1, 3),
                        CommandResult::TopicCreated(topic_meta("a", 1, 3)),
                    ),
                    Offsets("g", &[]),
                    Apply(commit("g", &[(1, 0, 10), (1, 2, 7)], 5), ok()),
                    Apply(commit("h", &[(1, 1, 3)], 5), ok()),
                    Offsets("g", &[(1, 0, 10), (1, 2, 7)]),
                    Apply(commit("g", &[(1, 0, 12)], 6), ok()),
                    Apply(commit("g", &[(1, 2, 2)], 7), ok()),
                    Offsets("g", &[(1, 0, 12), (1, 2, 2)]),
                    Offsets("h", &[(1, 1, 3)]),
                    Groups(&["g", "h"]),
                    // An empty commit is accepted and creates nothing.
                    Apply(commit("e", &[], 8), ok()),
                    Groups(&["g", "h"]),
                    // The empty group id is a group like any other.
                    Apply(commit("", &[(1, 1, 4)], 9), ok()),
                    Offsets("", &[(1, 1, 4)]),
                    Groups(&["", "g", "h"]),
                ],
            ),
            (
                "rejections are all or nothing",
                vec![
                    Apply(
                        create("a", 1, 2),
                        CommandResult::TopicCreated(topic_meta("a", 1, 2)),
                    ),
                    Apply(
                        commit("g", &[(1, 0, 1), (9, 0, 1)], 1),
                        rejected(Rejection::UnknownTopicId { topic: tid(9) }),
                    ),
                    Apply(
                        commit("g", &[(1, 0, 1), (1, 2, 1)], 1),
                        rejected(Rejection::UnknownPartition {
                            topic: tid(1),
                            partition: 2,
                            partitions: 2,
                        }),
                    ),
                    Apply(
                        Command::CommitOffsets {
                            group: long_group,
                            offsets: Vec::new(),
                            now_ms: 0,
                        },
                        rejected(Rejection::GroupIdTooLong {
                            bytes: GROUP_ID_BYTES_MAX + 1,
                            max: GROUP_ID_BYTES_MAX,
                        }),
                    ),
                    Apply(
                        Command::CommitOffsets {
                            group: "g".into(),
                            offsets: vec![OffsetCommit {
                                topic: tid(1),
                                partition: 0,
                                offset: 1,
                                leader_epoch: -1,
                                metadata: "x".repeat(OFFSET_METADATA_BYTES_MAX + 1),
                            }],
                            now_ms: 0,
                        },
                        rejected(Rejection::OffsetMetadataTooLarge {
                            bytes: OFFSET_METADATA_BYTES_MAX + 1,
                            max: OFFSET_METADATA_BYTES_MAX,
                        }),
                    ),
                    Apply(
                        commit("g", &vec![(1, 0, 1); OFFSETS_PER_COMMIT_MAX + 1], 1),
                        rejected(Rejection::TooManyOffsets {
                            count: OFFSETS_PER_COMMIT_MAX + 1,
                            max: OFFSETS_PER_COMMIT_MAX,
                        }),
                    ),
                    Groups(&[]),
                ],
            ),
            (
                "delete some, then all",
                vec![
                    Apply(
                        create("a", 1, 2),
                        CommandResult::TopicCreated(topic_meta("a", 1, 2)),
                    ),
                    Apply(
                        create("b", 2, 1),
                        CommandResult::TopicCreated(topic_meta("b", 2, 1)),
                    ),
                    Apply(commit("g", &[(1, 0, 1), (1, 1, 2), (2, 0, 3)], 1), ok()),
                    Apply(commit("h", &[(2, 0, 4)], 1), ok()),
                    // Unknown partitions, topics and groups are ignored.
                    Apply(
                        forget_offsets("g", Some(&[(1, 1), (1, 1), (9, 0)])),
                        deleted(1),
                    ),
                    Offsets("g", &[(1, 0, 1), (2, 0, 3)]),
                    Apply(forget_offsets("zz", None), deleted(0)),
                    Apply(forget_offsets("g", Some(&[(1, 0), (2, 0)])), deleted(2)),
                    // A group whose last offset goes is forgotten.
                    Groups(&["h"]),
                    Apply(commit("g", &[(1, 0, 5), (2, 0, 6)], 2), ok()),
                    Apply(forget_offsets("g", None), deleted(2)),
                    Offsets("g", &[]),
                    Offsets("h", &[(2, 0, 4)]),
                    Groups(&["h"]),
                ],
            ),
            (
                "deleting a topic drops its offsets",
                vec![
                    Apply(
                        create("a", 1, 2),
                        CommandResult::TopicCreated(topic_meta("a", 1, 2)),
                    ),
                    Apply(
                        create("b", 2, 1),
                        CommandResult::TopicCreated(topic_meta("b", 2, 1)),
                    ),
                    Apply(commit("g", &[(1, 0, 1), (2, 0, 3)], 1), ok()),
                    Apply(commit("h", &[(1, 1, 2)], 1), ok()),
                    Apply(
                        delete("a"),
                        CommandResult::TopicDeleted(topic_meta("a", 1, 2)),
                    ),
                    Offsets("g", &[(2, 0, 3)]),
                    Groups(&["g"]),
                    // The same name again is a new topic id without offsets.
                    Apply(
                        create("a", 3, 2),
                        CommandResult::TopicCreated(topic_meta("a", 3, 2)),
                    ),
                    Offsets("g", &[(2, 0, 3)]),
                    Apply(
                        commit("g", &[(1, 0, 1)], 2),
                        rejected(Rejection::UnknownTopicId { topic: tid(1) }),
                    ),
                ],
            ),
        ];
        for (case, steps) in cases {
            check_offsets(case, steps);
        }
    }

    fn topic_meta(n: &str, id: u8, partitions: u32) -> TopicMeta {
        match create(n, id, partitions) {
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
                created_ms,
            } => TopicMeta {
                name,
                id,
                partitions,
                configs,
                created_ms,
            },
            _ => unreachable!(),
        }
    }

    #[test]
    fn snapshots_from_before_group_offsets_load() {
        let mut state = MetaState::default();
        state.apply(&create("a", 1, 1));
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("group_offsets");
        let mut old: MetaState = serde_json::from_value(json).unwrap();
        old.check_invariants().unwrap();
        assert_eq!(old.offset_groups().count(), 0);
        assert_eq!(
            old.apply(&commit("g", &[(1, 0, 3)], 1)),
            CommandResult::OffsetsCommitted
        );
        assert_eq!(
            old.group_offset("g", tid(1), 0).map(|o| o.commit_ms),
            Some(1)
        );
    }

    #[test]
    fn group_offset_commands_round_trip_through_json() {
        for cmd in [
            commit("g", &[(1, 0, 10), (1, 3, -1)], 5),
            forget_offsets("g", None),
            forget_offsets("g", Some(&[(1, 0)])),
        ] {
            let json = serde_json::to_string(&cmd).unwrap();
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        }
    }
}
