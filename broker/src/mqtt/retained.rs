//! Retained messages on local disk: they survive a restart.
//!
//! File: `<data_dir>/mqtt/retained.log`, an append-only log of frames, layout v1:
//!
//! ```text
//! frame   = len: u32 LE | crc: u32 LE (CRC32C of body) | body (len bytes)
//! body    = header_len: u32 LE | header (JSON) | payload (the rest: the message payload)
//! header  = {"v": 1, "topic": "...", "qos": 1, "expiry_secs": .., "expires_at_ms": ..,
//!            "props": [[k, v], ..], "response_topic": .., "correlation": [..]}
//!           | {"v": 1, "topic": "...", "del": true}
//! ```
//!
//! The last frame for a topic wins; an empty payload (MQTT's "clear") is written as a `del`
//! frame. Loading stops at the first short frame or CRC mismatch (a torn write at a crash)
//! and cuts the file there. When it holds more than `2 × live + COMPACT_SLACK` frames it is
//! rewritten (temp file, fsync, rename, fsync of the directory).
//!
//! The router puts every change here in the order it applies them; one writer thread writes
//! what is queued with one fdatasync and then answers each change, so the connection that
//! published a retained message sends PUBACK / PUBREC only once it is durable here too.

use super::Message;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const FORMAT_VERSION: u32 = 1;
const FILE_NAME: &str = "retained.log";
const COMPACT_SLACK: u64 = 1024;
/// A frame larger than this is corrupt (above MQTT's largest packet).
const FRAME_BYTES_MAX: u32 = super::PACKET_BYTES_LIMIT + 64 * 1024;

#[derive(Serialize, Deserialize, Default)]
struct Header {
    v: u32,
    topic: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    del: bool,
    #[serde(default)]
    qos: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiry_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    props: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_utf8: Option<bool>,
}

fn encode_frame(msg: &Message, out: &mut Vec<u8>) -> std::io::Result<()> {
    let del = msg.payload.is_empty();
    let header = Header {
        v: FORMAT_VERSION,
        topic: msg.topic.clone(),
        del,
        qos: msg.qos,
        expiry_secs: msg.expiry_secs,
        expires_at_ms: msg.expires_at_ms,
        props: msg.user_properties.clone(),
        response_topic: msg.response_topic.clone(),
        correlation: msg.correlation_data.as_ref().map(|b| b.to_vec()),
        content_type: msg.content_type.clone(),
        payload_utf8: msg.payload_utf8,
    };
    let header = serde_json::to_vec(&header)?;
    let payload: &[u8] = if del { &[] } else { &msg.payload };
    let body_len = 4 + header.len() + payload.len();
    let mut body = Vec::with_capacity(body_len);
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(payload);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

fn decode_body(body: &[u8]) -> Option<(String, Option<Message>)> {
    let hlen = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let header = body.get(4..4 + hlen)?;
    let h: Header = serde_json::from_slice(header).ok()?;
    if h.v != FORMAT_VERSION {
        return None;
    }
    if h.del {
        return Some((h.topic, None));
    }
    let payload = Bytes::copy_from_slice(&body[4 + hlen..]);
    let msg = Message {
        topic: h.topic.clone(),
        payload,
        qos: h.qos,
        retain: true,
        user_properties: h.props,
        expiry_secs: h.expiry_secs,
        expires_at_ms: h.expires_at_ms,
        response_topic: h.response_topic,
        correlation_data: h.correlation.map(Bytes::from),
        content_type: h.content_type,
        payload_utf8: h.payload_utf8,
        publisher: None,
    };
    Some((h.topic, Some(msg)))
}

/// Decodes frames; returns the live messages, the frames read and the valid prefix length.
fn decode_frames(data: &[u8]) -> (HashMap<String, Message>, u64, usize) {
    let mut live = HashMap::new();
    let mut pos = 0usize;
    let mut frames = 0u64;
    while data.len() - pos >= 8 {
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > FRAME_BYTES_MAX || data.len() - pos - 8 < len as usize {
            break;
        }
        let body = &data[pos + 8..pos + 8 + len as usize];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Some((topic, msg)) = decode_body(body) else {
            break;
        };
        match msg {
            Some(m) => {
                live.insert(topic, m);
            }
            None => {
                live.remove(&topic);
            }
        }
        frames += 1;
        pos += 8 + len as usize;
    }
    (live, frames, pos)
}

/// The open retained log.
pub struct RetainedStore {
    dir: PathBuf,
    file: File,
    live: HashMap<String, Message>,
    frames: u64,
}

impl RetainedStore {
    /// Opens (creating) the log in `dir`; returns the retained messages in it. A torn or
    /// corrupt tail is cut off (logged).
    pub fn open(dir: &Path) -> std::io::Result<(RetainedStore, Vec<Message>)> {
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
            tracing::warn!(path = %path.display(), valid, len = data.len(), "mqtt retained log: torn or corrupt tail cut off");
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let msgs = live.values().cloned().collect();
        Ok((
            RetainedStore {
                dir: dir.to_path_buf(),
                file,
                live,
                frames,
            },
            msgs,
        ))
    }

    /// Writes the changes and makes them durable (one fdatasync).
    pub fn write(&mut self, msgs: &[Arc<Message>]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for m in msgs {
            encode_frame(m, &mut buf)?;
            if m.payload.is_empty() {
                self.live.remove(&m.topic);
            } else {
                self.live.insert(m.topic.clone(), (**m).clone());
            }
        }
        self.file.write_all(&buf)?;
        self.frames += msgs.len() as u64;
        if self.frames > 2 * self.live.len() as u64 + COMPACT_SLACK {
            self.rewrite()
        } else {
            self.file.sync_data()
        }
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut buf = Vec::new();
        for m in self.live.values() {
            encode_frame(m, &mut buf)?;
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

/// A change for the writer: the message (empty payload: clear) and who waits for it to be
/// durable (`true`: written).
pub type RetainOp = (Arc<Message>, Option<oneshot::Sender<bool>>);

/// Starts the writer thread; each batch queued is written with one fdatasync, then answered.
/// The thread ends once every sender is gone and the queue is written (join it to know).
pub fn spawn_writer(
    mut store: RetainedStore,
) -> (
    mpsc::UnboundedSender<RetainOp>,
    Option<std::thread::JoinHandle<()>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<RetainOp>();
    let spawned = std::thread::Builder::new()
        .name("mqtt-retained".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut ops = vec![first];
                while let Ok(more) = rx.try_recv() {
                    ops.push(more);
                }
                let msgs: Vec<Arc<Message>> = ops.iter().map(|(m, _)| m.clone()).collect();
                let ok = match store.write(&msgs) {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::error!(%err, "mqtt retained log write failed");
                        false
                    }
                };
                for (_, done) in ops {
                    if let Some(done) = done {
                        let _ = done.send(ok);
                    }
                }
            }
        });
    match spawned {
        Ok(h) => (tx, Some(h)),
        Err(err) => {
            tracing::error!(%err, "mqtt retained writer thread not started; retained messages are in memory only");
            (tx, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: 1,
            retain: true,
            user_properties: vec![("k".into(), "v".into())],
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            ..Default::default()
        })
    }

    #[test]
    fn survives_reopen_clear_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, loaded) = RetainedStore::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        st.write(&[msg("a/1", b"one"), msg("a/2", b"two"), msg("a/1", b"uno")])
            .unwrap();
        st.write(&[msg("a/2", b"")]).unwrap();
        drop(st);
        // A torn frame at the end is cut off.
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (_st, loaded) = RetainedStore::open(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        let m = &loaded[0];
        assert_eq!(m.topic, "a/1");
        assert_eq!(&m.payload[..], b"uno");
        assert_eq!(m.user_properties, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(m.response_topic.as_deref(), Some("r/t"));
        assert_eq!(m.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
        assert!(m.retain);
    }

    #[test]
    fn rewrite_keeps_live_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, _) = RetainedStore::open(dir.path()).unwrap();
        for i in 0..(COMPACT_SLACK + 10) {
            st.write(&[msg("x", if i % 2 == 0 { b"p" } else { b"q" })])
                .unwrap();
        }
        assert!(st.frames <= COMPACT_SLACK);
        drop(st);
        let (_, loaded) = RetainedStore::open(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
    }
}
