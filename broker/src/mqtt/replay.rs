//! A persistent session's delivery path: cursors over the MQTT partitions, read through the
//! normal read path (the tail, or object storage through the index).
//!
//! Every message MQTT routes is a stored record at (partition, offset) — mapped topics and the
//! default topic alike — so a persistent session keeps no copies: per partition it keeps the
//! next offset to read, the offsets handed to the client and not yet acknowledged, and the
//! offset up to which messages were sent once. Its committed cursor is the first
//! unacknowledged offset (or the read position when none is open); that is what the router
//! persists, in batches. A reconnect — after a takeover, a disconnect or a broker restart —
//! reads again from the committed cursors, so the client gets what it missed and then the live
//! messages by the same loop, in partition order, without gaps: a message between the
//! committed cursor and the last one sent is sent again, with DUP (QoS 1 redelivery).
//!
//! The connection task owns a [`Cursors`] and calls [`pump`] when the tailers report new data,
//! after acknowledgements open room, and after SUBSCRIBE; `pump` stops at `room` deliveries,
//! so a backlog of any size is read at the client's pace and never dropped.
//!
//! Partitions that appear while a session exists (a topic created by its first publish) are
//! read from their log start; at a new session's creation the existing ones start at their end.
//! Partitions this broker leads are read through `log::reader`; the others through their
//! leader's `Peer.Read` (`peer::client::read`, one attempt: a failure is retried at the next
//! pump), skipped without a call while the high watermark their remote tailer last reported
//! (`Peers::hw`) says there is nothing new. A new session's cursor on a remote partition whose
//! end is not known yet is [`AT_END`] until the first read asks the leader for it.

use super::router::{best_match, SubOptions};
use super::store::CursorMark;
use super::{mapping, Delivery, Origin};
use crate::log::reader::ReadError;
use crate::node::Node;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use strata_types::batch::Batches;
use strata_types::PartitionKey;

/// Bytes read from one partition per pump step.
pub const PUMP_READ_BYTES: usize = 256 * 1024;
/// A cursor that starts at the partition's end, which is not known yet (a remote partition).
pub const AT_END: i64 = i64::MAX;

#[derive(Debug, Clone)]
struct Cursor {
    /// Next offset to read.
    read: i64,
    /// Messages below it were sent once (a re-send carries DUP).
    sent: i64,
    /// Offsets handed to the session (queued or in flight), not yet acknowledged.
    open: BTreeSet<i64>,
}

impl Cursor {
    fn at(offset: i64) -> Cursor {
        Cursor {
            read: offset,
            sent: offset,
            open: BTreeSet::new(),
        }
    }

    fn mark(&self) -> CursorMark {
        CursorMark {
            next: self.open.first().copied().unwrap_or(self.read),
            sent: self.sent,
        }
    }
}

/// One connection's cursors (a value; the connection task owns it).
#[derive(Debug, Default)]
pub struct Cursors {
    map: HashMap<PartitionKey, Cursor>,
    dirty: bool,
}

/// What one [`pump`] produced.
#[derive(Debug, Default)]
pub struct Pumped {
    pub deliveries: Vec<Delivery>,
    /// Stopped with data left (at `room`, or one read per partition per call).
    pub more: bool,
    /// A read failed (object store): try again later.
    pub failed: bool,
}

impl Cursors {
    /// Cursors resumed from stored marks: reading starts at each committed cursor.
    pub fn resume(marks: &[(PartitionKey, CursorMark)]) -> Cursors {
        let map = marks
            .iter()
            .map(|(k, m)| {
                (
                    *k,
                    Cursor {
                        read: m.next,
                        sent: m.sent.max(m.next),
                        open: BTreeSet::new(),
                    },
                )
            })
            .collect();
        Cursors { map, dirty: false }
    }

    /// A new session: every partition that exists now starts at its end.
    pub fn start_at_end(&mut self, node: &Node, topics: &[String]) {
        for (log, _, local) in mqtt_partitions(node, topics) {
            let end = if local {
                log.high_watermark()
            } else {
                node.peers.hw(&log.key).unwrap_or(AT_END)
            };
            self.map.entry(log.key).or_insert_with(|| Cursor::at(end));
        }
        self.dirty = true;
    }

    /// The committed cursors (what a restart resumes from).
    pub fn marks(&self) -> Vec<(PartitionKey, CursorMark)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, c)| (*k, c.mark())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// The marks, if they changed since the last call.
    pub fn take_dirty(&mut self) -> Option<Vec<(PartitionKey, CursorMark)>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.marks())
    }

    /// A delivery with this origin went out on the wire.
    pub fn on_sent(&mut self, o: Origin) {
        if let Some(c) = self.map.get_mut(&o.key) {
            c.sent = c.sent.max(o.offset + 1);
        }
    }

    /// The client acknowledged (or we gave up on) the delivery with this origin.
    pub fn on_done(&mut self, o: Origin) {
        if let Some(c) = self.map.get_mut(&o.key) {
            if c.open.remove(&o.offset) {
                self.dirty = true;
            }
        }
    }

    /// Messages handed out and not acknowledged.
    pub fn open_len(&self) -> usize {
        self.map.values().map(|c| c.open.len()).sum()
    }
}

/// Every partition of the MQTT topics: its log, its topic's name, and whether it is led here.
fn mqtt_partitions(
    node: &Node,
    topics: &[String],
) -> Vec<(Arc<crate::log::partition::PartitionLog>, String, bool)> {
    let mut out = Vec::new();
    for name in topics {
        if let Some(t) = node.registry.topic(name) {
            for log in &t.partitions {
                out.push((log.clone(), name.clone(), node.registry.leads(&log.key)));
            }
        }
    }
    out
}

/// Whether a remote partition needs a read: its end is not known, or the last reported high
/// watermark is past the cursor.
pub fn remote_has_news(read: i64, reported_hw: Option<i64>) -> bool {
    read == AT_END || reported_hw.is_none_or(|hw| read < hw)
}

/// Reads from the cursors: at most `room` deliveries for the messages matching `subs`, at
/// most one read per partition. Cursors of partitions without matches advance too.
pub async fn pump(
    node: &Node,
    topics: &[String],
    subs: &BTreeMap<String, SubOptions>,
    client_id: &str,
    cursors: &mut Cursors,
    room: usize,
) -> Pumped {
    let mut out = Pumped::default();
    for (log, topic, local) in mqtt_partitions(node, topics) {
        let key = log.key;
        let (chunks, hw) = if local {
            let offsets = log.offsets();
            let hw = offsets.high_watermark;
            let cur = cursors.map.entry(key).or_insert_with(|| {
                // A partition that appeared while this session existed: all of it is new.
                Cursor::at(offsets.log_start_offset)
            });
            if cur.read == AT_END {
                cur.read = hw;
                cursors.dirty = true;
            }
            if cur.read >= hw {
                continue;
            }
            cursors.dirty = true;
            if subs.is_empty() {
                // Nothing can match: skip without reading.
                cur.read = hw;
                continue;
            }
            if out.deliveries.len() >= room {
                out.more = true;
                break;
            }
            match node.reader.read(&log, cur.read, PUMP_READ_BYTES).await {
                Ok(chunks) => (chunks, hw),
                Err(ReadError::OutOfRange { .. }) => {
                    let to = if cur.read < offsets.log_start_offset {
                        offsets.log_start_offset
                    } else {
                        hw
                    };
                    tracing::warn!(partition = ?key, from = cur.read, to, "mqtt session cursor out of range (retention or a new log); skipped ahead");
                    cur.read = to;
                    out.more = true;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(partition = ?key, offset = cur.read, %err, "mqtt session read failed; will retry");
                    out.failed = true;
                    continue;
                }
            }
        } else {
            // Led elsewhere: the leader's Read (see the module docs).
            let cur = cursors.map.entry(key).or_insert_with(|| Cursor::at(0));
            if !remote_has_news(cur.read, node.peers.hw(&key)) {
                continue;
            }
            if out.deliveries.len() >= room {
                out.more = true;
                break;
            }
            let from = if cur.read == AT_END || subs.is_empty() {
                -1
            } else {
                cur.read
            };
            let read = crate::peer::client::read(node, key, &topic, from, PUMP_READ_BYTES).await;
            let r = match read {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(partition = ?key, offset = cur.read, %err, "mqtt session read from the leader failed; will retry");
                    out.failed = true;
                    continue;
                }
            };
            node.peers.note_hw(key, r.high_watermark);
            if from < 0 {
                // The end asked for, or nothing can match: skip to the end without reading.
                if cur.read != r.high_watermark {
                    cur.read = r.high_watermark;
                    cursors.dirty = true;
                }
                continue;
            }
            cursors.dirty = true;
            if r.out_of_range {
                let to = if cur.read < r.log_start_offset {
                    r.log_start_offset
                } else {
                    r.high_watermark
                };
                tracing::warn!(partition = ?key, from = cur.read, to, "mqtt session cursor out of range on the leader; skipped ahead");
                cur.read = to;
                out.more = true;
                continue;
            }
            (r.chunks, r.high_watermark)
        };
        let Some(cur) = cursors.map.get_mut(&key) else {
            continue;
        };
        'chunks: for data in chunks {
            for item in Batches::new(&data) {
                let Ok((header, pos)) = item else {
                    tracing::warn!(partition = ?key, "mqtt session read: undecodable batch header");
                    break 'chunks;
                };
                let end = header.base_offset + header.offset_count();
                if end <= cur.read || header.is_control() {
                    cur.read = cur.read.max(end);
                    continue;
                }
                let records = match crate::records::decode_batch(&data[pos..pos + header.size]) {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::warn!(%err, base_offset = header.base_offset, "mqtt session read: records not decodable; skipped");
                        cur.read = end;
                        continue;
                    }
                };
                for record in records.iter() {
                    if record.offset < cur.read {
                        continue;
                    }
                    if out.deliveries.len() >= room {
                        cur.read = record.offset;
                        break 'chunks;
                    }
                    cur.read = record.offset + 1;
                    let Some(msg) = mapping::decode_record(record) else {
                        continue;
                    };
                    let Some((opts, sub_ids)) = best_match(
                        subs,
                        &msg.topic,
                        msg.publisher.as_deref() == Some(client_id),
                    ) else {
                        continue;
                    };
                    let qos = msg.qos.min(opts.qos);
                    if qos > 0 {
                        cur.open.insert(record.offset);
                    }
                    out.deliveries.push(Delivery {
                        retain: opts.retain_as_published && msg.retain,
                        dup: record.offset < cur.sent,
                        origin: Some(Origin {
                            key,
                            offset: record.offset,
                        }),
                        qos,
                        message: Arc::new(msg),
                        sub_ids,
                    });
                }
                cur.read = cur.read.max(end);
            }
        }
        if cur.read < hw {
            out.more = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::TopicId;

    fn key(p: u32) -> PartitionKey {
        PartitionKey {
            topic: TopicId(uuid::Uuid::from_u128(1)),
            partition: p,
        }
    }

    #[test]
    fn remote_partitions_are_read_only_with_news() {
        // End unknown: ask the leader.
        assert!(remote_has_news(AT_END, Some(5)));
        assert!(remote_has_news(AT_END, None));
        // No high watermark reported yet: read.
        assert!(remote_has_news(3, None));
        // Behind the reported high watermark: read; at it: skip.
        assert!(remote_has_news(3, Some(4)));
        assert!(!remote_has_news(4, Some(4)));
        assert!(!remote_has_news(9, Some(4)));
    }

    #[test]
    fn committed_cursor_is_the_first_unacknowledged_offset() {
        let mut c = Cursors::resume(&[(key(0), CursorMark { next: 10, sent: 14 })]);
        assert_eq!(c.marks(), vec![(key(0), CursorMark { next: 10, sent: 14 })]);
        assert!(c.take_dirty().is_none());
        let cur = c.map.get_mut(&key(0)).unwrap();
        // Read 10..16; 10, 12, 15 matched at QoS 1 and are open.
        cur.read = 16;
        cur.open.extend([10, 12, 15]);
        for o in [10, 12, 15] {
            c.on_sent(Origin {
                key: key(0),
                offset: o,
            });
        }
        assert_eq!(c.marks()[0].1, CursorMark { next: 10, sent: 16 });
        // Acknowledged out of order: the cursor moves only past the oldest open one.
        c.on_done(Origin {
            key: key(0),
            offset: 12,
        });
        assert_eq!(c.marks()[0].1.next, 10);
        c.on_done(Origin {
            key: key(0),
            offset: 10,
        });
        assert_eq!(c.marks()[0].1.next, 15);
        c.on_done(Origin {
            key: key(0),
            offset: 15,
        });
        assert_eq!(c.marks()[0].1.next, 16);
        assert!(c.take_dirty().is_some());
        assert!(c.take_dirty().is_none());
        assert_eq!(c.open_len(), 0);
        // Unknown origins are ignored.
        c.on_done(Origin {
            key: key(9),
            offset: 1,
        });
        c.on_sent(Origin {
            key: key(9),
            offset: 1,
        });
        assert_eq!(c.marks().len(), 1);
    }
}
