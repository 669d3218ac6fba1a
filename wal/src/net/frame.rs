//! The wire format of the replication protocol (port 1778), frame version 1.
//!
//! Pure: no IO. This module is the only place that knows the byte layout; the wire types are
//! the protocol's domain types ([`ToReplica`], [`FromReplica`]) plus [`Message::Hello`], and a
//! decoded frame is checked here so that nothing malformed reaches a core (the cores assert
//! their inputs). All integers are little-endian.
//!
//! ```text
//! frame = len u32 | crc u32 | version u8 | kind u8 | body
//!   len      bytes after the crc field (version + kind + body): 2 ..= frame_bytes_max
//!   crc      crc32c of version, kind and body
//!   version  1
//!
//! kind  message        body                                                 direction
//!    1  Hello          stream u64                                           owner → replica, first
//!    2  Append         epoch u64 | prev_lsn u64 | prev_epoch u64 |          owner → replica
//!                      settled_lsn u64 | entries
//!    3  Seal           epoch u64 | from_lsn u64                             owner → replica
//!    4  Fetch          epoch u64 | from_lsn u64 | upto_lsn u64 |            owner → replica
//!                      bytes_max u64
//!   16  Ack            epoch u64 | durable_lsn u64                          replica → owner
//!   17  Nack           epoch u64 | reason u8, then                          replica → owner
//!                        reason 0 (fenced):   sealed_epoch u64
//!                        reason 1 (mismatch): prev_lsn u64 | retry_after_lsn u64
//!   18  Sealed         epoch u64 | base_lsn u64 | has_last u8 (0 or 1) |     replica → owner
//!                      [last_lsn u64 | last_epoch u64 when has_last = 1]
//!   19  Fetched        epoch u64 | entries                                  replica → owner
//!
//! entries = count u32 | entry*
//! entry   = lsn u64 | epoch u64 | kind u8 (0 data, 1 barrier) | len u32 | payload
//! ```
//!
//! An entry costs [`ENTRY_WIRE_BYTES`] (21) bytes besides its payload, less than the
//! [`ENTRY_OVERHEAD_BYTES`] (32) every limit of the cores counts it for, so a message of
//! entries the cores bounded by `message_bytes_max` / `fetch_bytes_max` fits in that many bytes
//! plus a small header ([`super::FRAME_SLACK_BYTES`]).
//!
//! A decoder refuses — and the driver closes the connection — on a length above the limit, a
//! CRC mismatch, an unknown version or kind, a body that is short, long, or holds a bad field,
//! a payload above `entry_bytes_max`, and messages that break what the cores assume: an append
//! that fails [`AppendMsg::check`], epoch 0 in a request, fetched entries that are not dense
//! with non-decreasing epochs, a fenced nack not above the request's epoch, a mismatch hint not
//! below the probe. Decoding never panics on any input.

use std::fmt;
use std::sync::Arc;

use crate::replication::{
    AppendMsg, Entry, EntryId, EntryKind, Epoch, FromReplica, Lsn, NackReason, ToReplica,
};

#[cfg(doc)]
use crate::replication::ENTRY_OVERHEAD_BYTES;

/// The frame version this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// `len` and `crc`: the bytes before what `len` counts.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// Wire bytes of one entry besides its payload (lsn, epoch, kind, len).
pub const ENTRY_WIRE_BYTES: usize = 21;

const KIND_HELLO: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_SEAL: u8 = 3;
const KIND_FETCH: u8 = 4;
const KIND_ACK: u8 = 16;
const KIND_NACK: u8 = 17;
const KIND_SEALED: u8 = 18;
const KIND_FETCHED: u8 = 19;

const NACK_FENCED: u8 = 0;
const NACK_MISMATCH: u8 = 1;

const ENTRY_DATA: u8 = 0;
const ENTRY_BARRIER: u8 = 1;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The first frame on a connection: which stream the owner writes.
    Hello {
        stream: u64,
    },
    ToReplica(ToReplica),
    FromReplica(FromReplica),
}

impl Message {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::ToReplica(ToReplica::Append(_)) => "Append",
            Message::ToReplica(ToReplica::Seal { .. }) => "Seal",
            Message::ToReplica(ToReplica::Fetch { .. }) => "Fetch",
            Message::FromReplica(FromReplica::Ack { .. }) => "Ack",
            Message::FromReplica(FromReplica::Nack { .. }) => "Nack",
            Message::FromReplica(FromReplica::Sealed { .. }) => "Sealed",
            Message::FromReplica(FromReplica::Fetched { .. }) => "Fetched",
        }
    }
}

/// Why bytes from the network are not a frame this build accepts. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// `len` is above the receiver's `frame_bytes_max`.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// `len` is below 2 (version and kind).
    TooShort {
        len: u32,
    },
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    UnknownVersion(u8),
    UnknownKind(u8),
    /// The body does not decode: too short, too long, or a field out of range.
    Malformed(&'static str),
    /// An entry's payload is above the receiver's `entry_bytes_max`.
    EntryTooLarge {
        len: u32,
        max: u32,
    },
    /// The message decodes but breaks a rule the cores assume.
    Invalid(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            FrameError::TooShort { len } => write!(f, "frame length {len} is below 2"),
            FrameError::CrcMismatch { stored, computed } => write!(
                f,
                "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            FrameError::UnknownVersion(v) => write!(f, "unknown frame version {v}"),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Malformed(why) => write!(f, "malformed frame body: {why}"),
            FrameError::EntryTooLarge { len, max } => {
                write!(f, "entry of {len} bytes exceeds entry_bytes_max {max}")
            }
            FrameError::Invalid(why) => write!(f, "invalid message: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// What a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `len`.
    pub frame_bytes_max: u32,
    /// Largest entry payload.
    pub entry_bytes_max: u32,
}

/// Appends one encoded frame holding `msg` to `out`.
///
/// The caller keeps messages within the receiver's limits (the cores bound them); a message
/// whose frame would not fit `u32` is a caller bug.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_PREFIX_BYTES]);
    out.push(FRAME_VERSION);
    match msg {
        Message::Hello { stream } => {
            out.push(KIND_HELLO);
            put_u64(out, *stream);
        }
        Message::ToReplica(ToReplica::Append(m)) => {
            out.push(KIND_APPEND);
            put_u64(out, m.epoch.0);
            put_u64(out, m.prev.lsn.0);
            put_u64(out, m.prev.epoch.0);
            put_u64(out, m.settled_lsn.0);
            put_entries(out, &m.entries);
        }
        Message::ToReplica(ToReplica::Seal { epoch, from_lsn }) => {
            out.push(KIND_SEAL);
            put_u64(out, epoch.0);
            put_u64(out, from_lsn.0);
        }
        Message::ToReplica(ToReplica::Fetch {
            epoch,
            from_lsn,
            upto_lsn,
            bytes_max,
        }) => {
            out.push(KIND_FETCH);
            put_u64(out, epoch.0);
            put_u64(out, from_lsn.0);
            put_u64(out, upto_lsn.0);
            put_u64(out, *bytes_max);
        }
        Message::FromReplica(FromReplica::Ack { epoch, durable_lsn }) => {
            out.push(KIND_ACK);
            put_u64(out, epoch.0);
            put_u64(out, durable_lsn.0);
        }
        Message::FromReplica(FromReplica::Nack { epoch, reason }) => {
            out.push(KIND_NACK);
            put_u64(out, epoch.0);
            match reason {
                NackReason::Fenced { sealed_epoch } => {
                    out.push(NACK_FENCED);
                    put_u64(out, sealed_epoch.0);
                }
                NackReason::Mismatch {
                    prev_lsn,
                    retry_after_lsn,
                } => {
                    out.push(NACK_MISMATCH);
                    put_u64(out, prev_lsn.0);
                    put_u64(out, retry_after_lsn.0);
                }
            }
        }
        Message::FromReplica(FromReplica::Sealed {
            epoch,
            base_lsn,
            last,
        }) => {
            out.push(KIND_SEALED);
            put_u64(out, epoch.0);
            put_u64(out, base_lsn.0);
            match last {
                None => out.push(0),
                Some(id) => {
                    out.push(1);
                    put_u64(out, id.lsn.0);
                    put_u64(out, id.epoch.0);
                }
            }
        }
        Message::FromReplica(FromReplica::Fetched { epoch, entries }) => {
            out.push(KIND_FETCHED);
            put_u64(out, epoch.0);
            put_entries(out, entries);
        }
    }
    let body = &out[start + FRAME_PREFIX_BYTES..];
    let len = u32::try_from(body.len()).expect("frames are bounded far below 4 GiB");
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    let count = u32::try_from(entries.len()).expect("entry count fits u32");
    out.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        put_u64(out, e.lsn.0);
        put_u64(out, e.epoch.0);
        out.push(match e.kind {
            EntryKind::Data => ENTRY_DATA,
            EntryKind::Barrier => ENTRY_BARRIER,
        });
        let len = u32::try_from(e.payload.len()).expect("payloads are below entry_bytes_max");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// message and the bytes it took. A `len` above the limit is refused as soon as the first four
/// bytes are there, before its body is waited for.
pub fn decode(buf: &[u8], limits: Limits) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(len) = buf.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
        return Ok(None);
    };
    if len > limits.frame_bytes_max {
        return Err(FrameError::TooLarge {
            len,
            max: limits.frame_bytes_max,
        });
    }
    if len < 2 {
        return Err(FrameError::TooShort { len });
    }
    let total = FRAME_PREFIX_BYTES + len as usize;
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let stored = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let rest = &frame[FRAME_PREFIX_BYTES..];
    let computed = crc32c::crc32c(rest);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    let (version, kind, body) = (rest[0], rest[1], &rest[2..]);
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let mut r = Reader { bytes: body };
    let msg = decode_body(kind, &mut r, limits)?;
    if !r.bytes.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after the message"));
    }
    Ok(Some((msg, total)))
}

fn decode_body(kind: u8, r: &mut Reader<'_>, limits: Limits) -> Result<Message, FrameError> {
    let msg = match kind {
        KIND_HELLO => Message::Hello { stream: r.u64()? },
        KIND_APPEND => {
            let epoch = Epoch(r.u64()?);
            let prev = EntryId {
                lsn: Lsn(r.u64()?),
                epoch: Epoch(r.u64()?),
            };
            let settled_lsn = Lsn(r.u64()?);
            let entries = r.entries(limits.entry_bytes_max)?;
            let m = AppendMsg {
                epoch,
                prev,
                settled_lsn,
                entries,
            };
            m.check().map_err(FrameError::Invalid)?;
            Message::ToReplica(ToReplica::Append(m))
        }
        KIND_SEAL => {
            let epoch = nonzero_epoch(r.u64()?)?;
            Message::ToReplica(ToReplica::Seal {
                epoch,
                from_lsn: Lsn(r.u64()?),
            })
        }
        KIND_FETCH => {
            let epoch = nonzero_epoch(r.u64()?)?;
            Message::ToReplica(ToReplica::Fetch {
                epoch,
                from_lsn: Lsn(r.u64()?),
                upto_lsn: Lsn(r.u64()?),
                bytes_max: r.u64()?,
            })
        }
        KIND_ACK => Message::FromReplica(FromReplica::Ack {
            epoch: Epoch(r.u64()?),
            durable_lsn: Lsn(r.u64()?),
        }),
        KIND_NACK => {
            let epoch = Epoch(r.u64()?);
            let reason = match r.u8()? {
                NACK_FENCED => {
                    let sealed_epoch = Epoch(r.u64()?);
                    if sealed_epoch <= epoch {
                        return Err(FrameError::Invalid(
                            "a fenced nack names a sealed epoch not above the request's",
                        ));
                    }
                    NackReason::Fenced { sealed_epoch }
                }
                NACK_MISMATCH => {
                    let prev_lsn = Lsn(r.u64()?);
                    let retry_after_lsn = Lsn(r.u64()?);
                    if retry_after_lsn >= prev_lsn {
                        return Err(FrameError::Invalid(
                            "a mismatch nack must point below the probe",
                        ));
                    }
                    NackReason::Mismatch {
                        prev_lsn,
                        retry_after_lsn,
                    }
                }
                _ => return Err(FrameError::Malformed("unknown nack reason")),
            };
            Message::FromReplica(FromReplica::Nack { epoch, reason })
        }
        KIND_SEALED => {
            let epoch = Epoch(r.u64()?);
            let base_lsn = Lsn(r.u64()?);
            let last = match r.u8()? {
                0 => None,
                1 => Some(EntryId {
                    lsn: Lsn(r.u64()?),
                    epoch: Epoch(r.u64()?),
                }),
                _ => return Err(FrameError::Malformed("has_last is neither 0 nor 1")),
            };
            if let Some(last) = last {
                if last.lsn <= base_lsn || last.epoch == Epoch::ZERO {
                    return Err(FrameError::Invalid(
                        "a sealed answer's last entry must be above its base, epoch above 0",
                    ));
                }
            }
            Message::FromReplica(FromReplica::Sealed {
                epoch,
                base_lsn,
                last,
            })
        }
        KIND_FETCHED => {
            let epoch = Epoch(r.u64()?);
            let entries = r.entries(limits.entry_bytes_max)?;
            check_fetched(epoch, &entries).map_err(FrameError::Invalid)?;
            Message::FromReplica(FromReplica::Fetched { epoch, entries })
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok(msg)
}

fn nonzero_epoch(epoch: u64) -> Result<Epoch, FrameError> {
    if epoch == 0 {
        return Err(FrameError::Invalid("a request from epoch 0"));
    }
    Ok(Epoch(epoch))
}

/// The shape every fetch answer has: dense, epochs non-decreasing, above 0 and at most the
/// request's, barriers empty.
fn check_fetched(epoch: Epoch, entries: &[Entry]) -> Result<(), &'static str> {
    let mut prev: Option<&Entry> = None;
    for e in entries {
        if e.epoch == Epoch::ZERO || e.epoch > epoch {
            return Err("a fetched entry's epoch is 0 or above the request's");
        }
        if e.kind == EntryKind::Barrier && !e.payload.is_empty() {
            return Err("a barrier carries no payload");
        }
        if let Some(p) = prev {
            if Some(e.lsn.0) != p.lsn.0.checked_add(1) || e.epoch < p.epoch {
                return Err("fetched entries are not dense with non-decreasing epochs");
            }
        }
        prev = Some(e);
    }
    Ok(())
}

/// A cursor over a frame body; every read checks the length.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(FrameError::Malformed("body ends inside a field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn entries(&mut self, entry_bytes_max: u32) -> Result<Vec<Entry>, FrameError> {
        let count = self.u32()? as usize;
        if count > self.bytes.len() / ENTRY_WIRE_BYTES {
            return Err(FrameError::Malformed("entry count exceeds the body"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let lsn = Lsn(self.u64()?);
            let epoch = Epoch(self.u64()?);
            let kind = match self.u8()? {
                ENTRY_DATA => EntryKind::Data,
                ENTRY_BARRIER => EntryKind::Barrier,
                _ => return Err(FrameError::Malformed("unknown entry kind")),
            };
            let len = self.u32()?;
            if len > entry_bytes_max {
                return Err(FrameError::EntryTooLarge {
                    len,
                    max: entry_bytes_max,
                });
            }
            let payload: Arc<[u8]> = Arc::from(self.take(len as usize)?);
            entries.push(Entry {
                lsn,
                epoch,
                kind,
                payload,
            });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const LIMITS: Limits = Limits {
        frame_bytes_max: 1 << 20,
        entry_bytes_max: 4096,
    };

    fn entry(lsn: u64, epoch: u64, payload: &[u8]) -> Entry {
        Entry::data(Lsn(lsn), Epoch(epoch), Arc::from(payload))
    }

    fn frame(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out);
        out
    }

    fn append(epoch: u64, prev: (u64, u64), settled: u64, entries: Vec<Entry>) -> Message {
        Message::ToReplica(ToReplica::Append(AppendMsg {
            epoch: Epoch(epoch),
            prev: EntryId {
                lsn: Lsn(prev.0),
                epoch: Epoch(prev.1),
            },
            settled_lsn: Lsn(settled),
            entries,
        }))
    }

    /// A frame built by hand: `kind` and `body` under a correct length and CRC.
    fn raw(version: u8, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut rest = vec![version, kind];
        rest.extend_from_slice(body);
        let mut out = (rest.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(&rest).to_le_bytes());
        out.extend_from_slice(&rest);
        out
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn layout_is_the_documented_layout() {
        let bytes = frame(&Message::FromReplica(FromReplica::Ack {
            epoch: Epoch(3),
            durable_lsn: Lsn(0x0102),
        }));
        let expected = raw(1, 16, &u64s(&[3, 0x0102]));
        assert_eq!(bytes, expected);
        assert_eq!(
            &bytes[0..4],
            &18u32.to_le_bytes(),
            "len counts version, kind, body"
        );

        let bytes = frame(&Message::FromReplica(FromReplica::Fetched {
            epoch: Epoch(2),
            entries: vec![entry(7, 2, b"ab")],
        }));
        let mut body = u64s(&[2]);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&u64s(&[7, 2]));
        body.push(0);
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"ab");
        assert_eq!(bytes, raw(1, 19, &body));
        assert_eq!(body.len() - 8 - 4 - 2, ENTRY_WIRE_BYTES);
    }

    fn random_entries(rng: &mut StdRng, first_lsn: u64, epoch_max: u64) -> Vec<Entry> {
        let n = rng.gen_range(0..6);
        let mut epoch = rng.gen_range(1..=epoch_max);
        (0..n)
            .map(|i| {
                epoch = rng.gen_range(epoch..=epoch_max);
                if rng.gen_bool(0.1) {
                    Entry::barrier(Lsn(first_lsn + i), Epoch(epoch))
                } else {
                    let len = rng.gen_range(0..300);
                    let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    entry(first_lsn + i, epoch, &payload)
                }
            })
            .collect()
    }

    fn random_message(rng: &mut StdRng) -> Message {
        let epoch = rng.gen_range(1..1000u64);
        let lsn = rng.gen_range(1..1_000_000u64);
        match rng.gen_range(0..8) {
            0 => Message::Hello { stream: rng.gen() },
            1 => {
                let settled = rng.gen_range(0..lsn);
                let prev_epoch = if lsn - 1 <= settled {
                    0
                } else {
                    rng.gen_range(1..=epoch)
                };
                let mut entries = random_entries(rng, lsn, epoch);
                for e in &mut entries {
                    e.epoch = e.epoch.max(Epoch(prev_epoch));
                }
                append(epoch, (lsn - 1, prev_epoch), settled, entries)
            }
            2 => Message::ToReplica(ToReplica::Seal {
                epoch: Epoch(epoch),
                from_lsn: Lsn(lsn),
            }),
            3 => Message::ToReplica(ToReplica::Fetch {
                epoch: Epoch(epoch),
                from_lsn: Lsn(lsn),
                upto_lsn: Lsn(lsn + rng.gen_range(0..100)),
                bytes_max: rng.gen(),
            }),
            4 => Message::FromReplica(FromReplica::Ack {
                epoch: Epoch(epoch),
                durable_lsn: Lsn(lsn),
            }),
            5 => Message::FromReplica(FromReplica::Nack {
                epoch: Epoch(epoch),
                reason: if rng.gen() {
                    NackReason::Fenced {
                        sealed_epoch: Epoch(epoch + rng.gen_range(1..10)),
                    }
                } else {
                    NackReason::Mismatch {
                        prev_lsn: Lsn(lsn),
                        retry_after_lsn: Lsn(rng.gen_range(0..lsn)),
                    }
                },
            }),
            6 => Message::FromReplica(FromReplica::Sealed {
                epoch: Epoch(epoch),
                base_lsn: Lsn(lsn - 1),
                last: rng.gen::<bool>().then(|| EntryId {
                    lsn: Lsn(lsn + rng.gen_range(0..50)),
                    epoch: Epoch(rng.gen_range(1..=epoch)),
                }),
            }),
            _ => Message::FromReplica(FromReplica::Fetched {
                epoch: Epoch(epoch),
                entries: random_entries(rng, lsn, epoch),
            }),
        }
    }

    /// Random messages round-trip one by one and back to back, every strict prefix asks for
    /// more bytes, and every single-byte corruption is refused without a panic.
    #[test]
    fn random_messages_round_trip() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..2000 {
            let msg = random_message(&mut rng);
            let bytes = frame(&msg);
            assert_eq!(decode(&bytes, LIMITS), Ok(Some((msg.clone(), bytes.len()))));
            let cut = rng.gen_range(0..bytes.len());
            assert_eq!(decode(&bytes[..cut], LIMITS), Ok(None), "{}", msg.name());
            let mut damaged = bytes.clone();
            let at = rng.gen_range(0..damaged.len());
            damaged[at] ^= 1 << rng.gen_range(0..8);
            match decode(&damaged, LIMITS) {
                Ok(None) => assert!(at < 4, "only a changed len can ask for more"),
                Ok(Some(_)) => panic!("a corrupted {} frame decoded", msg.name()),
                Err(_) => {}
            }
            stream.extend_from_slice(&bytes);
            sent.push(msg);
        }
        let mut at = 0;
        for msg in sent {
            let (got, used) = decode(&stream[at..], LIMITS)
                .expect("decodes")
                .expect("complete");
            assert_eq!(got, msg);
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    /// Random bytes never panic the decoder.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && bytes.len() >= 10 {
                // A plausible prefix so the body decoders run on garbage.
                let body_len = (bytes.len() - 8) as u32;
                bytes[0..4].copy_from_slice(&body_len.to_le_bytes());
                bytes[8] = 1;
                let crc = crc32c::crc32c(&bytes[8..]);
                bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&bytes, LIMITS);
        }
    }

    fn check(name: &str, bytes: Vec<u8>, expected: FrameError) {
        assert_eq!(decode(&bytes, LIMITS), Err(expected), "case {name}");
    }

    #[test]
    fn bad_frames_are_refused() {
        let ack = frame(&Message::FromReplica(FromReplica::Ack {
            epoch: Epoch(1),
            durable_lsn: Lsn(1),
        }));
        let mut bad_crc = ack.clone();
        bad_crc[12] ^= 1;
        let crc_of = |b: &[u8]| crc32c::crc32c(&b[8..]);
        let entry_body = |kind: u8, len: u32| {
            let mut b = u64s(&[1, 0, 0, 0]); // epoch 1, prev (0, 0), settled 0
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&u64s(&[1, 1]));
            b.push(kind);
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&vec![0u8; len.min(5000) as usize]);
            b
        };
        let mut too_many = u64s(&[1]);
        too_many.extend_from_slice(&1000u32.to_le_bytes());
        too_many.extend_from_slice(&[0; 40]);

        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            ("len above the limit", (LIMITS.frame_bytes_max + 1).to_le_bytes().to_vec(),
                FrameError::TooLarge { len: LIMITS.frame_bytes_max + 1, max: LIMITS.frame_bytes_max }),
            ("len u32::MAX", vec![0xff; 4], FrameError::TooLarge { len: u32::MAX, max: LIMITS.frame_bytes_max }),
            ("len 1", { let mut b = raw(1, 16, &[]); b[0] = 1; b.truncate(9); b }, FrameError::TooShort { len: 1 }),
            ("bad crc", bad_crc.clone(), FrameError::CrcMismatch { stored: u32::from_le_bytes([bad_crc[4], bad_crc[5], bad_crc[6], bad_crc[7]]), computed: crc_of(&bad_crc) }),
            ("version 2", raw(2, 16, &u64s(&[1, 1])), FrameError::UnknownVersion(2)),
            ("version 0", raw(0, 16, &u64s(&[1, 1])), FrameError::UnknownVersion(0)),
            ("kind 0", raw(1, 0, &[]), FrameError::UnknownKind(0)),
            ("kind 99", raw(1, 99, &u64s(&[1])), FrameError::UnknownKind(99)),
            ("short body", raw(1, 16, &u64s(&[1])), FrameError::Malformed("body ends inside a field")),
            ("trailing bytes", raw(1, 16, &u64s(&[1, 1, 1])), FrameError::Malformed("trailing bytes after the message")),
            ("hello short", raw(1, 1, &[1, 2, 3]), FrameError::Malformed("body ends inside a field")),
            ("seal from epoch 0", raw(1, 3, &u64s(&[0, 1])), FrameError::Invalid("a request from epoch 0")),
            ("fetch from epoch 0", raw(1, 4, &u64s(&[0, 1, 2, 3])), FrameError::Invalid("a request from epoch 0")),
            ("append from epoch 0", raw(1, 2, &{ let mut b = u64s(&[0, 0, 0, 0]); b.extend_from_slice(&0u32.to_le_bytes()); b }),
                FrameError::Invalid("append from epoch 0")),
            ("append not dense", raw(1, 2, &{ let mut b = entry_body(0, 1); b[36..44].copy_from_slice(&5u64.to_le_bytes()); b }),
                FrameError::Invalid("entries are not dense after prev")),
            ("unknown entry kind", raw(1, 2, &entry_body(7, 1)), FrameError::Malformed("unknown entry kind")),
            ("barrier with payload", raw(1, 2, &entry_body(1, 3)), FrameError::Invalid("a barrier carries no payload")),
            ("payload too large", raw(1, 2, &entry_body(0, 4097)), FrameError::EntryTooLarge { len: 4097, max: 4096 }),
            ("payload len past body", raw(1, 2, &{ let mut b = entry_body(0, 4); b.truncate(b.len() - 1); b }),
                FrameError::Malformed("body ends inside a field")),
            ("entry count past body", raw(1, 19, &too_many), FrameError::Malformed("entry count exceeds the body")),
            ("nack reason 9", raw(1, 17, &{ let mut b = u64s(&[1]); b.push(9); b }), FrameError::Malformed("unknown nack reason")),
            ("fenced not above", raw(1, 17, &{ let mut b = u64s(&[4]); b.push(0); b.extend(u64s(&[4])); b }),
                FrameError::Invalid("a fenced nack names a sealed epoch not above the request's")),
            ("mismatch not below", raw(1, 17, &{ let mut b = u64s(&[4]); b.push(1); b.extend(u64s(&[5, 5])); b }),
                FrameError::Invalid("a mismatch nack must point below the probe")),
            ("sealed has_last 2", raw(1, 18, &{ let mut b = u64s(&[1, 0]); b.push(2); b }), FrameError::Malformed("has_last is neither 0 nor 1")),
            ("sealed last at base", raw(1, 18, &{ let mut b = u64s(&[3, 5]); b.push(1); b.extend(u64s(&[5, 1])); b }),
                FrameError::Invalid("a sealed answer's last entry must be above its base, epoch above 0")),
            ("fetched above epoch", raw(1, 19, &{ let mut b = u64s(&[1]); b.extend_from_slice(&1u32.to_le_bytes()); b.extend(u64s(&[1, 2])); b.push(0); b.extend_from_slice(&0u32.to_le_bytes()); b }),
                FrameError::Invalid("a fetched entry's epoch is 0 or above the request's")),
        ];
        for (name, bytes, expected) in cases {
            check(name, bytes, expected);
        }
    }

    #[test]
    fn fetched_entries_must_be_dense() {
        let msg = Message::FromReplica(FromReplica::Fetched {
            epoch: Epoch(5),
            entries: vec![entry(3, 2, b"a"), entry(5, 2, b"b")],
        });
        assert_eq!(
            decode(&frame(&msg), LIMITS),
            Err(FrameError::Invalid(
                "fetched entries are not dense with non-decreasing epochs"
            ))
        );
        let msg = Message::FromReplica(FromReplica::Fetched {
            epoch: Epoch(5),
            entries: vec![entry(3, 3, b"a"), entry(4, 2, b"b")],
        });
        assert!(decode(&frame(&msg), LIMITS).is_err());
    }
}
