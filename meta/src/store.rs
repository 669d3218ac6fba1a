//! Raft storage of the metadata group in one redb file.
//!
//! [`LogStore`] implements openraft's `RaftLogStorage` (log, vote, committed id, purge
//! point) and [`StateMachineStore`] implements `RaftStateMachine` (the applied [`MetaState`]
//! and its snapshots). Both share one redb [`Database`], `meta.redb` in the node's directory.
//!
//! # On-disk layout (format version 1)
//!
//! | table        | key            | value                                                        |
//! | ------------ | -------------- | ------------------------------------------------------------ |
//! | `raft_log`   | `u64` index    | JSON of `openraft::Entry<TypeConfig>` (payload: [`Command`](crate::Command)) |
//! | `raft_meta`  | `"format"`     | JSON `u32`: [`STORE_FORMAT_VERSION`]                         |
//! | `raft_meta`  | `"node_id"`    | JSON `u64`: the node this store belongs to                    |
//! | `raft_meta`  | `"vote"`       | JSON `openraft::Vote<u64>`                                   |
//! | `raft_meta`  | `"committed"`  | JSON `Option<LogId>`: last committed log id                   |
//! | `raft_meta`  | `"last_purged"`| JSON `LogId`: last log id removed by a purge                  |
//! | `snapshot`   | `"meta"`       | JSON `openraft::SnapshotMeta<u64, BasicNode>`                  |
//! | `snapshot`   | `"data"`       | snapshot bytes, see below                                     |
//!
//! Snapshot bytes (also what a leader ships to a follower) are the JSON object
//! `{"format": 1, "state": <MetaState>}`.
//!
//! # Durability
//!
//! Appends, truncations, votes and snapshots are committed with redb's default
//! `Durability::Immediate` (fsync) before they are reported done; the `LogFlushed` callback of
//! an append fires only after its commit returned. The committed log id and purges are
//! committed with `Durability::None`: they become durable with the next immediate commit, and
//! losing them in a crash is safe (the committed id only lets a restart re-apply entries before
//! an election; purged entries that come back are below the snapshot and ignored).
//!
//! The state machine itself lives in memory. On open it is loaded from the snapshot, and
//! openraft re-applies the committed entries after it. Blocking redb writes run on tokio's
//! blocking pool, one at a time per caller, so the order of log IO is kept.

use crate::error::MetaError;
use crate::raft::{Entry, LogId, NodeId, Response, StorageError, TypeConfig};
use crate::state::{CommandResult, MetaState};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use parking_lot::RwLock;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Name of the redb file inside the meta directory.
pub const DB_FILE_NAME: &str = "meta.redb";
/// Entries the applied-entry feed ([`StateMachineStore::applied_feed`]) buffers for a slow
/// subscriber; one that falls further behind is told it lagged.
pub const APPLIED_FEED_ENTRIES_MAX: usize = 16_384;
/// Version of the layout described in the module docs.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// redb page cache. The applied state lives in memory anyway; the cache only speeds up log
/// reads for followers and re-apply, so it is kept small (redb's default is 1 GiB).
pub const STORE_CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_FORMAT: &str = "format";
const KEY_NODE_ID: &str = "node_id";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";

type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// Opens (creating if needed) the store at `path` and returns its two raft halves.
///
/// Fails with [`MetaError::StoreLocked`] while another `Database` holds the file — another
/// process, or a node of this process that has not finished shutting down.
pub fn open_store(path: &Path) -> Result<(LogStore, StateMachineStore), MetaError> {
    let db = match Database::builder()
        .set_cache_size(STORE_CACHE_BYTES_MAX)
        .create(path)
    {
        Ok(db) => Arc::new(db),
        Err(DatabaseError::DatabaseAlreadyOpen) => {
            return Err(MetaError::StoreLocked {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(MetaError::Store(e.into())),
    };
    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        let mut meta = txn.open_table(RAFT_META)?;
        let format = meta
            .get(KEY_FORMAT)?
            .map(|v| decode::<u32>(v.value(), "format"));
        match format {
            None => {
                meta.insert(KEY_FORMAT, encode(&STORE_FORMAT_VERSION).as_slice())?;
            }
            Some(Ok(STORE_FORMAT_VERSION)) => {}
            Some(Ok(found)) => {
                return Err(MetaError::UnsupportedFormat {
                    found,
                    supported: STORE_FORMAT_VERSION,
                })
            }
            Some(Err(e)) => return Err(e),
        }
    }
    txn.commit()?;
    let log = LogStore { db: db.clone() };
    let sm = StateMachineStore::load(db)?;
    Ok((log, sm))
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Our stored types are plain data (maps with string keys); serializing them cannot fail.
    serde_json::to_vec(value).expect("meta store values serialize to JSON")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &'static str) -> Result<Option<T>, MetaError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RAFT_META)?;
    let value = table.get(key)?;
    value.map(|v| decode(v.value(), key)).transpose()
}

fn put_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), MetaError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .map_err(|e| MetaError::Store(e.into()))?;
    txn.open_table(RAFT_META)?
        .insert(key, encode(value).as_slice())?;
    txn.commit()?;
    Ok(())
}

/// Runs blocking store work on tokio's blocking pool and waits for it.
async fn blocking<T, F>(f: F) -> Result<T, MetaError>
where
    F: FnOnce() -> Result<T, MetaError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Raft {
            reason: format!("meta store task failed: {e}"),
        })?
}

fn io_error(make: impl FnOnce(AnyError) -> StorageIOError<NodeId>, e: MetaError) -> StorageError {
    make(AnyError::new(&e)).into()
}

/// The raft log, vote and log pointers. Cheap to clone (it is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Records `node_id` as the owner of a fresh store, or checks it against the recorded one:
    /// a store reopened under another id would never find itself in its membership.
    pub fn bind_node_id(&self, node_id: NodeId) -> Result<(), MetaError> {
        match get_meta::<NodeId>(&self.db, KEY_NODE_ID)? {
            Some(stored) if stored == node_id => Ok(()),
            Some(stored) => Err(MetaError::NodeIdMismatch {
                stored,
                given: node_id,
            }),
            None => put_meta(&self.db, KEY_NODE_ID, &node_id, Durability::Immediate),
        }
    }

    /// A reader of the log that does not keep the file open (for Follow streams, which must
    /// not delay a shutdown's release of the store).
    pub(crate) fn weak_reader(&self) -> WeakLogReader {
        WeakLogReader(Arc::downgrade(&self.db))
    }

    /// A weak handle on the database, to learn when every user of the file has let it go.
    pub(crate) fn database(&self) -> std::sync::Weak<Database> {
        Arc::downgrade(&self.db)
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, MetaError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range::<u64>(range)? {
            let (index, value) = item?;
            let entry: Entry = decode(value.value(), "log entry")?;
            if entry.log_id.index != index.value() {
                return Err(MetaError::Corrupt {
                    what: "log entry",
                    reason: format!(
                        "entry {} is stored at index {}",
                        entry.log_id,
                        index.value()
                    ),
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, MetaError> {
        let last_purged_log_id = get_meta::<LogId>(&self.db, KEY_LAST_PURGED)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let last = match table.last()? {
            Some((_, value)) => Some(decode::<Entry>(value.value(), "log entry")?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }
}

/// See [`LogStore::weak_reader`].
#[derive(Clone)]
pub(crate) struct WeakLogReader(std::sync::Weak<Database>);

impl WeakLogReader {
    /// The entries in `range` that are in the log (purged ones are absent); fails with
    /// [`MetaError::ShutDown`] once the store is closed.
    pub(crate) fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry>, MetaError> {
        let db = self.0.upgrade().ok_or(MetaError::ShutDown)?;
        LogStore { db }.read_entries(range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range)
            .map_err(|e| io_error(StorageIOError::read_logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state()
            .map_err(|e| io_error(StorageIOError::read_logs, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_meta(&db, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| io_error(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get_meta(&self.db, KEY_VOTE).map_err(|e| io_error(StorageIOError::read_vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || put_meta(&db, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| io_error(StorageIOError::write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        get_meta::<Option<LogId>>(&self.db, KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| io_error(StorageIOError::read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, encode(&entry)))
            .collect();
        let db = self.db.clone();
        let res = blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            // Durability::Immediate (the default): the entries are on disk when this returns.
            txn.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(StorageIOError::write_logs, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in::<u64, _>(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io_error(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| MetaError::Store(e.into()))?;
            txn.open_table(RAFT_META)?
                .insert(KEY_LAST_PURGED, encode(&log_id).as_slice())?;
            txn.open_table(LOG)?
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| io_error(StorageIOError::write_logs, e))
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    state: &'a MetaState,
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    state: MetaState,
}

fn encode_snapshot(state: &MetaState) -> Vec<u8> {
    encode(&SnapshotOut {
        format: STORE_FORMAT_VERSION,
        state,
    })
}

fn decode_snapshot(bytes: &[u8]) -> Result<MetaState, MetaError> {
    let snapshot: SnapshotIn = decode(bytes, "snapshot")?;
    if snapshot.format != STORE_FORMAT_VERSION {
        return Err(MetaError::UnsupportedFormat {
            found: snapshot.format,
            supported: STORE_FORMAT_VERSION,
        });
    }
    Ok(snapshot.state)
}

/// Stores `meta` + `data` as the current snapshot, unless a newer one is already stored (a
/// snapshot built in the background may finish after a newer one was installed).
fn persist_snapshot(db: &Database, meta: &Meta, data: &[u8]) -> Result<(), MetaError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        let stored = match table.get(KEY_SNAPSHOT_META)? {
            Some(v) => Some(decode::<Meta>(v.value(), "snapshot meta")?),
            None => None,
        };
        if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        table.insert(KEY_SNAPSHOT_META, encode(meta).as_slice())?;
        table.insert(KEY_SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(())
}

fn read_snapshot(db: &Database) -> Result<Option<(Meta, Vec<u8>)>, MetaError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = table.get(KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta: Meta = decode(meta.value(), "snapshot meta")?;
    let Some(data) = table.get(KEY_SNAPSHOT_DATA)? else {
        return Err(MetaError::Corrupt {
            what: "snapshot",
            reason: "snapshot meta without data".into(),
        });
    };
    Ok(Some((meta, data.value().to_vec())))
}

/// The applied state and its snapshots.
///
/// The state is shared, behind a lock, with the [`MetaNode`](crate::MetaNode) readers; only
/// this store (driven by openraft's state-machine task) writes it.
pub struct StateMachineStore {
    db: Arc<Database>,
    state: Arc<RwLock<MetaState>>,
    applied: Option<LogId>,
    membership: Membership,
    applied_tx: watch::Sender<u64>,
    /// Every applied entry, for the metadata backup (see [`AppliedEntry`]).
    feed: broadcast::Sender<AppliedEntry>,
}

/// One applied log entry as the applied-entry feed carries it: its index and its command
/// (`None` for blank and membership entries, which change no [`MetaState`]).
#[derive(Clone, Debug)]
pub struct AppliedEntry {
    pub index: u64,
    pub command: Option<Arc<crate::state::Command>>,
}

impl StateMachineStore {
    fn load(db: Arc<Database>) -> Result<Self, MetaError> {
        let (state, applied, membership) = match read_snapshot(&db)? {
            Some((meta, data)) => {
                let mut state = decode_snapshot(&data)?;
                state.set_last_applied(meta.last_log_id.map_or(0, |id| id.index));
                (state, meta.last_log_id, meta.last_membership)
            }
            None => (MetaState::default(), None, Membership::default()),
        };
        let (applied_tx, _) = watch::channel(state.last_applied());
        let (feed, _) = broadcast::channel(APPLIED_FEED_ENTRIES_MAX);
        Ok(Self {
            db,
            state: Arc::new(RwLock::new(state)),
            applied,
            membership,
            applied_tx,
            feed,
        })
    }

    /// The shared applied state.
    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        self.state.clone()
    }

    /// Watches the index of the last applied log entry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// The feed of applied entries, in log order, sent while the state lock is held: a
    /// subscriber that reads [`MetaState::last_applied`] after subscribing receives exactly the
    /// entries after it (unless it lags). A snapshot install is not an entry: it shows as a
    /// jump in the indexes. Nothing is cloned while nobody subscribes.
    pub fn applied_feed(&self) -> broadcast::Sender<AppliedEntry> {
        self.feed.clone()
    }

    fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> Vec<Response> {
        let mut replies = Vec::new();
        let mut state = self.state.write();
        for entry in entries {
            let feeding = self.feed.receiver_count() > 0;
            let result = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => {
                    let result = state.apply(cmd);
                    if feeding {
                        let _ = self.feed.send(AppliedEntry {
                            index: entry.log_id.index,
                            command: Some(Arc::new(cmd.clone())),
                        });
                    }
                    if let CommandResult::Rejected(why) = &result {
                        tracing::debug!(log_id = %entry.log_id, %why, "meta command rejected");
                    }
                    Some(result)
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    None
                }
            };
            if feeding && !matches!(entry.payload, EntryPayload::Normal(_)) {
                let _ = self.feed.send(AppliedEntry {
                    index: entry.log_id.index,
                    command: None,
                });
            }
            state.set_last_applied(entry.log_id.index);
            self.applied = Some(entry.log_id);
            replies.push(Response { result });
        }
        let last_applied = state.last_applied();
        drop(state);
        self.applied_tx.send_replace(last_applied);
        replies
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_entries(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between applies, so state, applied id and membership agree. The clone is the
        // only work done while appliers wait; encoding happens in the builder.
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.read().clone(),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let data = snapshot.into_inner();
        let stored_meta = meta.clone();
        let mut state = blocking(move || {
            let state = decode_snapshot(&data)?;
            persist_snapshot(&db, &stored_meta, &data)?;
            Ok(state)
        })
        .await
        .map_err(|e| {
            io_error(
                |src| StorageIOError::read_snapshot(Some(meta.signature()), src),
                e,
            )
        })?;
        state.set_last_applied(meta.last_log_id.map_or(0, |id| id.index));
        let last_applied = state.last_applied();
        *self.state.write() = state;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applied_tx.send_replace(last_applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshot = read_snapshot(&self.db)
            .map_err(|e| io_error(|src| StorageIOError::read_snapshot(None, src), e))?;
        Ok(snapshot.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken between two applies.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: MetaState,
    applied: Option<LogId>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot_id = format!(
            "{}-{}",
            self.applied.map_or(0, |id| id.index),
            uuid::Uuid::new_v4().simple()
        );
        let meta = Meta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let db = self.db.clone();
        let state = std::mem::take(&mut self.state);
        let stored_meta = meta.clone();
        let data = blocking(move || {
            let data = encode_snapshot(&state);
            persist_snapshot(&db, &stored_meta, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| {
            io_error(
                |src| StorageIOError::write_snapshot(Some(meta.signature()), src),
                e,
            )
        })?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "meta snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Writes a fresh store at `path` that holds only a snapshot of `state` at log index `index`,
/// whose membership is `node_id` alone as a voter (disaster recovery: `crate::backup`). The
/// vote is committed for `node_id` at term 1 and the log is empty with everything up to
/// `index` purged, so opening the store looks like the restart of a single-voter group.
///
/// Fails with [`MetaError::StoreExists`] when `path` exists: this never overwrites a store.
pub(crate) fn create_restored(
    path: &Path,
    node_id: NodeId,
    state: &MetaState,
    index: u64,
) -> Result<(), MetaError> {
    if path.exists() {
        return Err(MetaError::StoreExists {
            path: path.to_owned(),
        });
    }
    let (log, _sm) = open_store(path)?;
    log.bind_node_id(node_id)?;
    let log_id = LogId::new(openraft::CommittedLeaderId::new(1, node_id), index);
    let members = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([node_id])],
        std::collections::BTreeMap::from([(node_id, BasicNode::default())]),
    );
    let meta = Meta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), members),
        snapshot_id: format!("{index}-restored-{}", uuid::Uuid::new_v4().simple()),
    };
    persist_snapshot(&log.db, &meta, &encode_snapshot(state))?;
    put_meta(
        &log.db,
        KEY_VOTE,
        &Vote::new_committed(1, node_id),
        Durability::Immediate,
    )?;
    put_meta(&log.db, KEY_LAST_PURGED, &log_id, Durability::Immediate)?;
    put_meta(&log.db, KEY_COMMITTED, &Some(log_id), Durability::Immediate)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_bytes_are_versioned() {
        let state = MetaState::default();
        let bytes = encode_snapshot(&state);
        assert!(bytes.starts_with(br#"{"format":1,"state":"#));
        decode_snapshot(&bytes).unwrap();
        let future = br#"{"format":2,"state":{"names":{},"topics":{},"objects":{},"garbage_keys":[],"last_applied":0}}"#;
        assert!(matches!(
            decode_snapshot(future),
            Err(MetaError::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ));
        assert!(matches!(
            decode_snapshot(b"{"),
            Err(MetaError::Corrupt { .. })
        ));
    }

    #[test]
    fn store_refuses_other_formats_and_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        {
            let (log, _sm) = open_store(&path).unwrap();
            log.bind_node_id(1).unwrap();
            log.bind_node_id(1).unwrap();
            assert!(matches!(
                log.bind_node_id(2),
                Err(MetaError::NodeIdMismatch {
                    stored: 1,
                    given: 2
                })
            ));
            assert!(matches!(
                open_store(&path),
                Err(MetaError::StoreLocked { .. })
            ));
            put_meta(&log.db, KEY_FORMAT, &7u32, Durability::Immediate).unwrap();
        }
        assert!(matches!(
            open_store(&path),
            Err(MetaError::UnsupportedFormat {
                found: 7,
                supported: 1
            })
        ));
    }
}
