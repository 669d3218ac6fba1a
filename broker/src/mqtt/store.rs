//! Persistent MQTT sessions on local disk: what survives a broker kill -9 and restart.
//!
//! A persistent session is small: its client id, expiry, subscriptions and, per partition it
//! reads, a *cursor* — the next offset to deliver (everything below it was acknowledged) and
//! the offset up to which messages were sent once (re-sent ones below it carry DUP). The
//! messages themselves are never copied: they are stored records, read again from the log.
//!
//! File: `<data_dir>/mqtt/sessions.log`, an append-only log of frames, layout v1:
//!
//! ```text
//! frame   = len: u32 LE | crc: u32 LE (CRC32C of payload) | payload (len bytes)
//! payload = JSON {"v": 1, "put": SessionRecord} | {"v": 1, "del": "<client id>"}
//! ```
//!
//! The last frame for a client id wins. Loading stops at the first short frame or CRC
//! mismatch (a torn write at a crash) and truncates the file there. When the log holds more
//! than `2 × live + COMPACT_SLACK` frames it is rewritten (temp file, fsync, rename, fsync of
//! the directory), so it stays proportional to the live sessions.
//!
//! One writer thread ([`spawn_writer`]) takes batches of operations from a bounded queue,
//! writes them and makes them durable with one fdatasync per batch: cursors advance in
//! batches, never one fsync per acknowledgement. The router decides what to write and when.
//!
//! *Boundary:* the file is local to the node. What another broker learns of these sessions
//! it learns from this broker (the Peer service's `TakeSession`) or from this broker's
//! snapshot in the object store (`cluster_sessions`), never from this file.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use strata_types::PartitionKey;
use tokio::sync::mpsc;

const FORMAT_VERSION: u32 = 1;
const FILE_NAME: &str = "sessions.log";
/// Frames tolerated beyond twice the live sessions before a rewrite.
const COMPACT_SLACK: u64 = 1024;
/// A frame larger than this is corrupt (a session with 100k subscriptions is still smaller).
const FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Batches of operations queued for the writer thread.
pub const STORE_QUEUE_MAX: usize = 64;

/// One subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSub {
    pub filter: String,
    pub qos: u8,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_local: bool,
}

/// One partition's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorMark {
    /// Next offset to deliver: every message below it was acknowledged (or not for us).
    pub next: i64,
    /// Messages below this offset were sent at least once: sent again, they carry DUP.
    pub sent: i64,
}

/// A persistent session's QoS 2 exchanges that outlive its connection (MQTT 5 §4.1: session
/// state): a reconnect — here, after a restart, or on another broker — goes on with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos2Ids {
    /// Inbound: packet ids of QoS 2 publishes stored and answered with PUBREC, not yet
    /// released (PUBREL) by the client. A re-sent PUBLISH with one of them is not stored again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub received: Vec<u16>,
    /// Outbound: packet ids of QoS 2 deliveries the client has received (PUBREC) and not yet
    /// completed (PUBCOMP). A reconnect sends their PUBREL again, never the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<u16>,
}

impl Qos2Ids {
    pub fn is_empty(&self) -> bool {
        self.received.is_empty() && self.released.is_empty()
    }
}

/// Where a persistent session's delivery stands, as its connection reports it: the committed
/// cursors and the open QoS 2 exchanges, reported together so they agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    pub cursors: Vec<(PartitionKey, CursorMark)>,
    pub qos2: Qos2Ids,
}

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_secs: u32,
    pub subs: Vec<StoredSub>,
    pub cursors: Vec<(PartitionKey, CursorMark)>,
    /// When its last connection ended (wall clock, ms); `None` while connected.
    pub disconnected_ms: Option<i64>,
    /// Takeover generation: every connect that creates or takes over the session picks one
    /// above every generation it saw for the client id, cluster-wide; the highest wins
    /// (`mqtt::cluster_sessions`). 0 in logs written before it was recorded.
    #[serde(default)]
    pub generation: u64,
    /// Open QoS 2 exchanges (absent: none, as in logs written before they were recorded).
    #[serde(default, skip_serializing_if = "Qos2Ids::is_empty")]
    pub qos2: Qos2Ids,
}

/// A change to the stored sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put(SessionRecord),
    Delete(String),
}

#[derive(Serialize, Deserialize)]
struct Frame {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    put: Option<SessionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    del: Option<String>,
}

fn encode_frame(op: &StoreOp, out: &mut Vec<u8>) -> std::io::Result<()> {
    let frame = match op {
        StoreOp::Put(r) => Frame {
            v: FORMAT_VERSION,
            put: Some(r.clone()),
            del: None,
        },
        StoreOp::Delete(id) => Frame {
            v: FORMAT_VERSION,
            put: None,
            del: Some(id.clone()),
        },
    };
    let payload = serde_json::to_vec(&frame)?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Decodes frames from `data`; returns the live sessions, the frames read and the length of
/// the valid prefix.
fn decode_frames(data: &[u8]) -> (HashMap<String, SessionRecord>, u64, usize) {
    let mut live = HashMap::new();
    let mut pos = 0usize;
    let mut frames = 0u64;
    while data.len() - pos >= 8 {
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > FRAME_BYTES_MAX || data.len() - pos - 8 < len as usize {
            break;
        }
        let payload = &data[pos + 8..pos + 8 + len as usize];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(frame) = serde_json::from_slice::<Frame>(payload) else {
            break;
        };
        if frame.v != FORMAT_VERSION {
            break;
        }
        if let Some(r) = frame.put {
            live.insert(r.client_id.clone(), r);
        } else if let Some(id) = frame.del {
            live.remove(&id);
        }
        frames += 1;
        pos += 8 + len as usize;
    }
    (live, frames, pos)
}

/// The open session log.
pub struct SessionStore {
    dir: PathBuf,
    file: File,
    /// Mirror of the stored sessions (what a rewrite writes).
    live: HashMap<String, SessionRecord>,
    frames: u64,
}

impl SessionStore {
    /// Opens (creating) the log in `dir` and returns the stored sessions. A torn or corrupt
    /// tail is cut off (logged).
    pub fn open(dir: &Path) -> std::io::Result<(SessionStore, Vec<SessionRecord>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (live, frames, valid) = decode_frames(&data);
        if valid < data.len() {
            tracing::warn!(
                path = %path.display(),
                valid,
                len = data.len(),
                "mqtt session log: torn or corrupt tail cut off"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let records = live.values().cloned().collect();
        Ok((
            SessionStore {
                dir: dir.to_path_buf(),
                file,
                live,
                frames,
            },
            records,
        ))
    }

    /// Writes `ops` and makes them durable (one fdatasync), rewriting the log when it has
    /// grown well past the live sessions.
    pub fn write(&mut self, ops: &[StoreOp]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for op in ops {
            encode_frame(op, &mut buf)?;
            match op {
                StoreOp::Put(r) => {
                    self.live.insert(r.client_id.clone(), r.clone());
                }
                StoreOp::Delete(id) => {
                    self.live.remove(id);
                }
            }
        }
        self.file.write_all(&buf)?;
        self.frames += ops.len() as u64;
        if self.frames > 2 * self.live.len() as u64 + COMPACT_SLACK {
            self.rewrite()
        } else {
            self.file.sync_data()
        }
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut buf = Vec::new();
        for r in self.live.values() {
            encode_frame(&StoreOp::Put(r.clone()), &mut buf)?;
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        let path = self.dir.join(FILE_NAME);
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).read(true).open(&path)?;
        self.frames = self.live.len() as u64;
        Ok(())
    }
}

/// Starts the writer thread. Each batch received (plus whatever else is already queued) is
/// written with one fdatasync. A failed write is logged; sessions then live in memory only
/// until a later write succeeds.
/// The thread ends once every sender is gone and the queue is written (join it to know).
pub fn spawn_writer(
    mut store: SessionStore,
) -> (
    mpsc::Sender<Vec<StoreOp>>,
    Option<std::thread::JoinHandle<()>>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<StoreOp>>(STORE_QUEUE_MAX);
    let spawned = std::thread::Builder::new()
        .name("mqtt-sessions".into())
        .spawn(move || {
            let mut failing = false;
            while let Some(mut ops) = rx.blocking_recv() {
                while let Ok(more) = rx.try_recv() {
                    ops.extend(more);
                }
                match store.write(&ops) {
                    Ok(()) => {
                        if failing {
                            tracing::info!("mqtt session log writable again");
                        }
                        failing = false;
                    }
                    Err(err) => {
                        if !failing {
                            tracing::error!(%err, "mqtt session log write failed; sessions are in memory only");
                        }
                        failing = true;
                    }
                }
            }
        });
    match spawned {
        Ok(h) => (tx, Some(h)),
        Err(err) => {
            tracing::error!(%err, "mqtt session writer thread not started; sessions are in memory only");
            (tx, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::TopicId;

    fn rec(id: &str, next: i64) -> SessionRecord {
        SessionRecord {
            client_id: id.into(),
            expiry_secs: u32::MAX,
            subs: vec![StoredSub {
                filter: "a/#".into(),
                qos: 1,
                retain_as_published: false,
                retain_handling: 0,
                sub_id: Some(9),
                no_local: false,
            }],
            cursors: vec![(
                PartitionKey {
                    topic: TopicId(uuid::Uuid::from_u128(7)),
                    partition: 3,
                },
                CursorMark {
                    next,
                    sent: next + 5,
                },
            )],
            disconnected_ms: Some(1_700_000_000_000),
            generation: 4,
            qos2: Qos2Ids {
                received: vec![3],
                released: vec![7, 9],
            },
        }
    }

    #[test]
    fn records_without_qos2_state_read_as_none_open() {
        // A frame as written before the QoS 2 exchanges were recorded.
        let old = r#"{"client_id":"c","expiry_secs":60,"subs":[],"cursors":[],"disconnected_ms":null,"generation":2}"#;
        let r: SessionRecord = serde_json::from_str(old).unwrap();
        assert!(r.qos2.is_empty());
        let written = serde_json::to_string(&r).unwrap();
        assert!(!written.contains("qos2"), "none open: nothing written");
    }

    fn sorted(mut v: Vec<SessionRecord>) -> Vec<SessionRecord> {
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    #[test]
    fn last_write_wins_and_deletes_stick_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, loaded) = SessionStore::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        s.write(&[StoreOp::Put(rec("a", 1)), StoreOp::Put(rec("b", 2))])
            .unwrap();
        s.write(&[StoreOp::Put(rec("a", 10)), StoreOp::Delete("b".into())])
            .unwrap();
        drop(s);
        let (_, loaded) = SessionStore::open(dir.path()).unwrap();
        assert_eq!(loaded, vec![rec("a", 10)]);
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SessionStore::open(dir.path()).unwrap();
        s.write(&[StoreOp::Put(rec("a", 1))]).unwrap();
        drop(s);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        // A torn frame (half written), then a frame with a bad CRC.
        let mut frame = Vec::new();
        encode_frame(&StoreOp::Put(rec("b", 2)), &mut frame).unwrap();
        let cases: Vec<Vec<u8>> = vec![frame[..frame.len() / 2].to_vec(), {
            let mut f = frame.clone();
            let last = f.len() - 1;
            f[last] ^= 0xff;
            f
        }];
        for tail in cases {
            let mut data = good.clone();
            data.extend_from_slice(&tail);
            std::fs::write(&path, &data).unwrap();
            let (mut s, loaded) = SessionStore::open(dir.path()).unwrap();
            assert_eq!(loaded, vec![rec("a", 1)]);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                good,
                "cut back to the valid prefix"
            );
            // Appends continue after the valid prefix.
            s.write(&[StoreOp::Put(rec("c", 3))]).unwrap();
            drop(s);
            let (_, loaded) = SessionStore::open(dir.path()).unwrap();
            assert_eq!(sorted(loaded), vec![rec("a", 1), rec("c", 3)]);
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn rewrite_keeps_only_live_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SessionStore::open(dir.path()).unwrap();
        for i in 0..(COMPACT_SLACK as i64 + 10) {
            s.write(&[StoreOp::Put(rec("a", i)), StoreOp::Put(rec("b", i))])
                .unwrap();
        }
        assert!(s.frames <= COMPACT_SLACK + 4, "rewritten: {}", s.frames);
        drop(s);
        let (_, loaded) = SessionStore::open(dir.path()).unwrap();
        let last = COMPACT_SLACK as i64 + 9;
        assert_eq!(sorted(loaded), vec![rec("a", last), rec("b", last)]);
    }
}
