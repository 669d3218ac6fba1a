//! The MQTT wire boundary: `rmqtt-codec`'s 3.1.1 and 5.0 packets ↔ this module's
//! version-neutral [`Inbound`] / [`Outbound`], and the one table from internal conditions to
//! reason codes.
//!
//! Nothing outside this file names an `rmqtt_codec` type. The protocol version is chosen by
//! peeking at the first packet (which must be CONNECT); every later packet uses that version's
//! codec, which enforces `mqtt.packet_bytes_max` on the remaining length before buffering a
//! packet.
//!
//! *Shared frames:* a PUBLISH whose bytes depend on nothing but the delivery ([`shareable`]:
//! QoS 0, no DUP, no Subscription Identifiers, no Message Expiry Interval) is the same on every
//! connection of one protocol version that uses no outbound topic aliases. The router encodes
//! it once per message for such connections ([`shared_frame`]), one after the other in one
//! buffer per batch, and hands each connection its runs of consecutive frames; the connection
//! copies a run whole ([`Codec::put_frames`], after checking each frame against its own Maximum
//! Packet Size) — a fan-out to N subscribers encodes once, not N times, and costs each of them
//! one copy per batch, not one per message.

use super::ingest::IngestError;
use super::router::SubOptions;
use super::session::OutPublish;
use super::{Delivery, Message};
use crate::log::sequencer::AppendError;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use std::num::{NonZeroU16, NonZeroU32};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    V311,
    V5,
}

/// CONNECT, version-neutral.
#[derive(Debug, Clone)]
pub struct ConnectIn {
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub client_id: String,
    pub will: Option<Message>,
    /// MQTT 5 Session Expiry Interval (0: the session ends with the connection). MQTT 3.1.1:
    /// 0 with clean session, "never" otherwise.
    pub session_expiry_secs: u32,
    /// The client's Receive Maximum (how many QoS 1/2 it takes unacknowledged).
    pub receive_max: u16,
    /// The client's Maximum Packet Size.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: how many topic aliases the client accepts from us (0: none).
    pub topic_alias_max: u16,
    /// MQTT 5 Will Delay Interval (seconds; 0: at once).
    pub will_delay_secs: u32,
    /// User Name (`mqtt::auth`).
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<super::auth::Password>,
    /// MQTT 5 enhanced authentication: the Authentication Method and its first data.
    pub auth_method: Option<String>,
    pub auth_data: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub enum Inbound {
    Connect(Box<ConnectIn>),
    Publish {
        message: Message,
        packet_id: Option<u16>,
        /// MQTT 5 Topic Alias (the topic may then be empty: resolve it).
        topic_alias: Option<u16>,
    },
    PubAck(u16),
    /// `refused`: an MQTT 5 reason code of 0x80 or more — the receiver turned the message
    /// down and the exchange ends there (no PUBREL, MQTT 5 §4.3.3).
    PubRec {
        id: u16,
        refused: bool,
    },
    PubRel(u16),
    PubComp(u16),
    /// MQTT 5 AUTH: reason (0x18 continue, 0x19 re-authenticate), method and data.
    Auth {
        reason: u8,
        method: Option<String>,
        data: Option<Bytes>,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, SubOptions)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5 reason 0x04: disconnect, but publish the will.
        publish_will: bool,
        /// MQTT 5: a new Session Expiry Interval.
        session_expiry_secs: Option<u32>,
    },
    /// A packet a client must not send (CONNACK, SUBACK, a second CONNECT, AUTH ...).
    Unexpected(&'static str),
}

/// CONNACK results we give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnCode {
    Accepted,
    ClientIdRejected,
    ServerBusy,
    /// Unknown user or wrong password (MQTT 5 0x86, 3.1.1 0x04).
    BadCredentials,
    /// No credentials where they are required, or a will topic the ACL denies (0x87 / 0x05).
    NotAuthorized,
}

/// Subscription results per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubResult {
    Granted(u8),
    FilterInvalid,
    /// `$share/...` (not in this version).
    SharedNotSupported,
    /// Denied by an ACL (MQTT 5 0x87, 3.1.1 0x80).
    NotAuthorized,
}

/// Reasons we close a connection with (MQTT 5 DISCONNECT; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Malformed,
    ProtocolError,
    PacketTooLarge,
    KeepAliveTimeout,
    SessionTakenOver,
    ReceiveMaximumExceeded,
    TopicNameInvalid,
    /// MQTT 5: a Topic Alias above the maximum we announced.
    TopicAliasInvalid,
    ServerShuttingDown,
    ImplementationSpecific,
    /// CONNECT only: an empty client id without a clean session (3.1.1), or an invalid one.
    ClientIdInvalid,
    /// MQTT 5: an Authentication Method we do not speak, or an AUTH that does not follow it.
    BadAuthMethod,
    /// After CONNACK: the client's user is no longer admitted (removed by a reload).
    NotAuthorized,
}

#[derive(Debug, Clone)]
pub enum Outbound {
    ConnAck {
        session_present: bool,
        code: ConnCode,
        assigned_client_id: Option<String>,
        receive_max: u16,
        max_packet_size: u32,
        /// MQTT 5: the Session Expiry Interval we use, when it differs from the client's.
        session_expiry_secs: Option<u32>,
        /// MQTT 5 Server Keep Alive: the keep alive we use, when it differs from the client's.
        server_keep_alive: Option<u16>,
        /// MQTT 5 enhanced authentication: the method and the server's last data.
        auth: Option<(String, Bytes)>,
    },
    /// MQTT 5 AUTH: Continue Authentication (0x18) with the server's data, or (`done`)
    /// Success (0x00) ending a re-authentication with the server's last data.
    Auth {
        done: bool,
        method: String,
        data: Bytes,
    },
    Publish(OutPublish),
    PubAck {
        packet_id: u16,
        error: Option<u8>,
    },
    PubRec {
        packet_id: u16,
        error: Option<u8>,
    },
    PubRel(u16),
    PubComp {
        packet_id: u16,
        found: bool,
    },
    SubAck {
        packet_id: u16,
        results: Vec<SubResult>,
    },
    UnsubAck {
        packet_id: u16,
        found: Vec<bool>,
    },
    PingResp,
    Disconnect(CloseCode),
    /// MQTT 5: a CONNACK refusing the connection because its CONNECT failed.
    ConnAckFailure(CloseCode),
}

/// Why a packet could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WireError {
    #[error("packet of {size} bytes exceeds mqtt.packet_bytes_max ({max})")]
    TooLarge { size: u32, max: u32 },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unsupported protocol: {0}")]
    Protocol(String),
    #[error("client id rejected")]
    ClientId,
}

impl WireError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::TooLarge { .. } => CloseCode::PacketTooLarge,
            WireError::Malformed(_) => CloseCode::Malformed,
            WireError::Protocol(_) => CloseCode::ProtocolError,
            WireError::ClientId => CloseCode::ClientIdInvalid,
        }
    }
}

/// Whether `d`'s PUBLISH packet is byte for byte the same on every connection of one protocol
/// version without outbound topic aliases: QoS 0 (no packet id), not a redelivery (no DUP),
/// no Subscription Identifiers (they are the receiver's) and no Message Expiry Interval (the
/// lifetime left is counted when it is sent). The RETAIN flag is part of the delivery.
pub fn shareable(d: &Delivery) -> bool {
    d.qos == 0 && !d.dup && d.sub_ids.is_empty() && d.message.expires_at_ms.is_none()
}

/// Appends `d`'s PUBLISH packet for every connection of `proto` taking shared frames to `dst`:
/// exactly the bytes [`Codec::encode`] would write there. `false` (and `dst` unchanged) when
/// `d` is not [`shareable`] or cannot be encoded (then each connection encodes it and fails
/// the same way).
pub fn shared_frame(d: &Delivery, proto: Proto, dst: &mut BytesMut) -> bool {
    if !shareable(d) {
        return false;
    }
    let out = Outbound::Publish(OutPublish {
        delivery: d.clone(),
        packet_id: None,
    });
    let start = dst.len();
    let done = match proto {
        Proto::V311 => to_v3(out).is_some_and(|p| v3::Codec::new(0).encode(p, dst).is_ok()),
        Proto::V5 => v5::Codec::new(0, 0).encode(to_v5(out, None), dst).is_ok(),
    };
    if !done {
        dst.truncate(start);
    }
    done
}

/// The length of the first `n` packets of `run` (whole packets, one after the other), or of
/// all of it when it holds fewer.
pub fn packets_prefix(run: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        match packet_len(&run[at..]) {
            Some(len) if at + len <= run.len() => at += len,
            _ => return run.len(),
        }
    }
    at
}

/// The whole length (fixed header included) of the packet `packet` starts with.
fn packet_len(packet: &[u8]) -> Option<usize> {
    fixed_header(packet).map(|(header, rest)| header + rest as usize)
}

/// A packet's fixed header: its length in bytes and the remaining length it gives.
fn fixed_header(packet: &[u8]) -> Option<(usize, u32)> {
    let mut n = 0u32;
    for (i, b) in packet.iter().skip(1).take(4).enumerate() {
        n |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((i + 2, n));
        }
    }
    None
}

fn wire_error(e: DecodeError) -> WireError {
    match e {
        DecodeError::MaxSizeExceeded { size, max } => WireError::TooLarge { size, max },
        DecodeError::InvalidClientId => WireError::ClientId,
        DecodeError::InvalidProtocol | DecodeError::UnsupportedProtocolLevel => {
            WireError::Protocol(e.to_string())
        }
        other => WireError::Malformed(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Reason codes: the frozen table.

/// MQTT 5 DISCONNECT reason code for a close.
fn close_reason(c: CloseCode) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match c {
        CloseCode::Malformed => D::MalformedPacket,     // 0x81
        CloseCode::ProtocolError => D::ProtocolError,   // 0x82
        CloseCode::PacketTooLarge => D::PacketTooLarge, // 0x95
        CloseCode::KeepAliveTimeout => D::KeepAliveTimeout, // 0x8D
        CloseCode::SessionTakenOver => D::SessionTakenOver, // 0x8E
        CloseCode::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded, // 0x93
        CloseCode::TopicNameInvalid => D::TopicNameInvalid, // 0x90
        CloseCode::TopicAliasInvalid => D::TopicAliasInvalid, // 0x94
        CloseCode::ServerShuttingDown => D::ServerShuttingDown, // 0x8B
        CloseCode::ImplementationSpecific => D::ImplementationSpecificError, // 0x83
        CloseCode::ClientIdInvalid => D::ProtocolError,
        CloseCode::BadAuthMethod => D::BadAuthenticationMethod, // 0x8C
        CloseCode::NotAuthorized => D::NotAuthorized,           // 0x87
    }
}

/// MQTT 5 CONNACK reason code for a failure before the session exists.
fn connack_failure_reason(c: CloseCode) -> v5::ConnectAckReason {
    use v5::ConnectAckReason as R;
    match c {
        CloseCode::PacketTooLarge => R::PacketTooLarge,
        CloseCode::Malformed => R::MalformedPacket,
        CloseCode::TopicNameInvalid => R::TopicNameInvalid,
        CloseCode::ServerShuttingDown => R::ServerUnavailable,
        CloseCode::ClientIdInvalid => R::ClientIdentifierNotValid,
        CloseCode::BadAuthMethod => R::BadAuthenticationMethod,
        CloseCode::NotAuthorized => R::NotAuthorized,
        _ => R::ProtocolError,
    }
}

/// MQTT 5 PUBACK/PUBREC reason code for a publish that could not be stored.
pub fn publish_error_code(e: &IngestError) -> u8 {
    match e {
        IngestError::Append(AppendError::WalFull) => 0x97, // Quota exceeded
        IngestError::TooLarge { .. } => 0x95,              // Packet too large
        IngestError::Forward { .. } | IngestError::Append(AppendError::Fenced) => 0x83,
        IngestError::Append(AppendError::TooLarge) => 0x95,
        IngestError::NotAuthorized => 0x87, // Not authorized (an ACL)
        _ => 0x80,                          // Unspecified error
    }
}

fn puback_reason(code: Option<u8>) -> v5::PublishAckReason {
    use v5::PublishAckReason as P;
    match code {
        None => P::Success,
        Some(0x97) => P::QuotaExceeded,
        Some(0x83) => P::ImplementationSpecificError,
        Some(0x90) => P::TopicNameInvalid,
        Some(0x87) => P::NotAuthorized,
        // 0x95 has no PUBACK code; the packet itself was fine, the record is too large.
        Some(_) => P::UnspecifiedError,
    }
}

// ---------------------------------------------------------------------------------------------
// The codec.

#[derive(Debug)]
pub enum Codec {
    /// Before CONNECT: the version is not known yet.
    Unknown {
        max_in: u32,
    },
    V311(v3::Codec),
    V5(v5::Codec, OutAliases),
}

/// MQTT 5 topic aliases for what we send: a topic gets the next free alias the first time
/// (sent with its name), and only the alias afterwards, up to the client's Topic Alias
/// Maximum; no alias is reused for another topic.
#[derive(Debug, Default)]
pub struct OutAliases {
    max: u16,
    by_topic: std::collections::HashMap<String, u16>,
}

impl OutAliases {
    /// The alias for `topic` and whether it is new (the name must go with it).
    fn assign(&mut self, topic: &str) -> Option<(u16, bool)> {
        if let Some(a) = self.by_topic.get(topic) {
            return Some((*a, false));
        }
        if self.by_topic.len() >= usize::from(self.max) {
            return None;
        }
        let a = self.by_topic.len() as u16 + 1;
        self.by_topic.insert(topic.to_string(), a);
        Some((a, true))
    }
}

fn qos_u8(q: v5::QoS) -> u8 {
    match q {
        v5::QoS::AtMostOnce => 0,
        v5::QoS::AtLeastOnce => 1,
        v5::QoS::ExactlyOnce => 2,
    }
}

fn qos_of(q: u8) -> v5::QoS {
    match q {
        0 => v5::QoS::AtMostOnce,
        1 => v5::QoS::AtLeastOnce,
        _ => v5::QoS::ExactlyOnce,
    }
}

fn nz(id: u16) -> NonZeroU16 {
    // Packet ids we send come from the session, which never hands out 0; ids we echo were
    // decoded as NonZeroU16.
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

impl Codec {
    pub fn new(max_in: u32) -> Codec {
        Codec::Unknown { max_in }
    }

    pub fn proto(&self) -> Option<Proto> {
        match self {
            Codec::Unknown { .. } => None,
            Codec::V311(_) => Some(Proto::V311),
            Codec::V5(..) => Some(Proto::V5),
        }
    }

    /// The client's Maximum Packet Size for what we send (MQTT 5).
    pub fn set_max_outbound(&mut self, size: u32) {
        if let Codec::V5(c, _) = self {
            c.set_max_outbound_size(size);
        }
    }

    /// The client's Topic Alias Maximum for what we send (MQTT 5).
    pub fn set_topic_alias_max(&mut self, max: u16) {
        if let Codec::V5(_, aliases) = self {
            aliases.max = max.min(super::TOPIC_ALIASES_MAX);
        }
    }

    /// The protocol of the shared frames ([`shared_frame`]) this connection sends as they are: its own, unless
    /// it uses outbound topic aliases (MQTT 5 with a Topic Alias Maximum above 0), whose
    /// packets depend on what it was sent before.
    pub fn shares_frames(&self) -> Option<Proto> {
        match self {
            Codec::Unknown { .. } => None,
            Codec::V311(_) => Some(Proto::V311),
            Codec::V5(_, aliases) if aliases.max == 0 => Some(Proto::V5),
            Codec::V5(..) => None,
        }
    }

    /// Appends a run of shared frames of `proto` ([`shared_frame`]s, one after the other);
    /// returns how many were sent. MQTT 5 leaves out each frame larger than the client's
    /// Maximum Packet Size (the test the codec makes, on the remaining length). A connection
    /// that does not take `proto`'s frames ([`Codec::shares_frames`]) is an error: the router
    /// decides by what the connection told it at connect time, which does not change.
    pub fn put_frames(
        &self,
        proto: Proto,
        run: &[u8],
        count: usize,
        dst: &mut BytesMut,
    ) -> Result<usize, String> {
        if self.shares_frames() != Some(proto) {
            return Err(format!(
                "shared {proto:?} frames for a connection that takes {:?}",
                self.shares_frames()
            ));
        }
        let max = match self {
            Codec::V5(c, _) => c.max_outbound_size(),
            _ => 0,
        };
        if max == 0 {
            dst.extend_from_slice(run);
            return Ok(count);
        }
        let mut sent = 0;
        let mut at = 0;
        while at < run.len() {
            let rest = &run[at..];
            let Some((header, remaining)) = fixed_header(rest) else {
                return Err("a shared frame run with a torn packet".into());
            };
            let len = (header + remaining as usize).min(rest.len());
            if remaining <= max {
                dst.extend_from_slice(&rest[..len]);
                sent += 1;
            }
            at += len;
        }
        Ok(sent)
    }

    /// The next complete packet in `buf`, if any.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, WireError> {
        if let Codec::Unknown { max_in } = *self {
            match VersionCodec.decode(buf) {
                Ok(None) => return Ok(None),
                Ok(Some(ProtocolVersion::MQTT3)) => *self = Codec::V311(v3::Codec::new(max_in)),
                Ok(Some(ProtocolVersion::MQTT5)) => {
                    *self = Codec::V5(v5::Codec::new(max_in, 0), OutAliases::default())
                }
                Err(DecodeError::UnsupportedPacketType) => {
                    return Err(WireError::Protocol(
                        "the first packet must be CONNECT".into(),
                    ))
                }
                Err(e) => return Err(wire_error(e)),
            }
        }
        match self {
            Codec::Unknown { .. } => Ok(None),
            Codec::V311(c) => match c.decode(buf).map_err(wire_error)? {
                None => Ok(None),
                Some((p, _)) => Ok(Some(from_v3(p))),
            },
            Codec::V5(c, _) => match c.decode(buf).map_err(wire_error)? {
                None => Ok(None),
                Some((p, _)) => Ok(Some(from_v5(p))),
            },
        }
    }

    /// Appends `out` to `dst`. `Ok(false)`: nothing to send in this version (a 3.1.1
    /// DISCONNECT) or, for a PUBLISH, larger than the client accepts (dropped).
    pub fn encode(&mut self, out: Outbound, dst: &mut BytesMut) -> Result<bool, String> {
        match self {
            Codec::Unknown { .. } => Ok(false),
            Codec::V311(c) => match to_v3(out) {
                Some(p) => c.encode(p, dst).map(|_| true).map_err(|e| e.to_string()),
                None => Ok(false),
            },
            Codec::V5(c, aliases) => {
                let (alias, new_topic) = match &out {
                    Outbound::Publish(p) => {
                        let alias = aliases.assign(&p.delivery.message.topic);
                        // Kept to forget a new alias if the packet is not sent.
                        let new_topic =
                            matches!(alias, Some((_, true))).then(|| p.delivery.message.clone());
                        (alias, new_topic)
                    }
                    _ => (None, None),
                };
                let is_publish = matches!(out, Outbound::Publish(_));
                match c.encode(to_v5(out, alias), dst) {
                    Ok(()) => Ok(true),
                    Err(rmqtt_codec::error::EncodeError::OverMaxPacketSize { .. })
                        if is_publish =>
                    {
                        // Not sent: a new alias was not learned by the client.
                        if let Some(m) = new_topic {
                            aliases.by_topic.remove(&m.topic);
                        }
                        Ok(false)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// What to send when the connection fails with `code` before (`connected == false`) or
    /// after CONNACK. MQTT 3.1.1 has no such packet.
    pub fn failure_packet(&self, code: CloseCode, connected: bool) -> Option<Outbound> {
        match (self, connected) {
            (Codec::V5(..), true) => Some(Outbound::Disconnect(code)),
            (Codec::V5(..), false) => Some(Outbound::ConnAckFailure(code)),
            (Codec::V311(_), false) if code == CloseCode::ClientIdInvalid => {
                Some(Outbound::ConnAck {
                    session_present: false,
                    code: ConnCode::ClientIdRejected,
                    assigned_client_id: None,
                    receive_max: 0,
                    max_packet_size: 0,
                    session_expiry_secs: None,
                    server_keep_alive: None,
                    auth: None,
                })
            }
            _ => None,
        }
    }
}

fn text(s: &ByteString) -> String {
    s.to_string()
}

fn from_v3(p: v3::Packet) -> Inbound {
    use v3::Packet as P;
    match p {
        P::Connect(c) => {
            let will = c.last_will.map(|w| Message {
                topic: text(&w.topic),
                payload: w.message,
                qos: qos_u8(w.qos),
                retain: w.retain,
                user_properties: Vec::new(),
                ..Default::default()
            });
            Inbound::Connect(Box::new(ConnectIn {
                clean_start: c.clean_session,
                keep_alive_secs: c.keep_alive,
                client_id: text(&c.client_id),
                will,
                session_expiry_secs: if c.clean_session { 0 } else { u32::MAX },
                receive_max: u16::MAX,
                max_packet_size: None,
                topic_alias_max: 0,
                will_delay_secs: 0,
                username: c.username.as_ref().map(text),
                auth_method: None,
                auth_data: None,
                password: c.password.map(super::auth::Password),
            }))
        }
        P::Publish(p) => Inbound::Publish {
            message: Message {
                topic: text(&p.topic),
                payload: p.payload,
                qos: qos_u8(p.qos),
                retain: p.retain,
                user_properties: Vec::new(),
                ..Default::default()
            },
            packet_id: p.packet_id.map(|i| i.get()),
            topic_alias: None,
        },
        P::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
        P::PublishReceived { packet_id } => Inbound::PubRec {
            id: packet_id.get(),
            refused: false,
        },
        P::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
        P::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| {
                    (
                        text(&f),
                        SubOptions {
                            qos: qos_u8(q),
                            retain_as_published: false,
                            retain_handling: 0,
                            sub_id: None,
                            no_local: false,
                        },
                    )
                })
                .collect(),
        },
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id: packet_id.get(),
            filters: topic_filters.iter().map(text).collect(),
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect => Inbound::Disconnect {
            publish_will: false,
            session_expiry_secs: None,
        },
        P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
        P::SubscribeAck { .. } => Inbound::Unexpected("SUBACK"),
        P::UnsubscribeAck { .. } => Inbound::Unexpected("UNSUBACK"),
        P::PingResponse => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> Inbound {
    use v5::Packet as P;
    let props = |v: Vec<(ByteString, ByteString)>| -> Vec<(String, String)> {
        v.into_iter().map(|(k, v)| (text(&k), text(&v))).collect()
    };
    match p {
        P::Connect(c) => {
            let will_delay_secs = c
                .last_will
                .as_ref()
                .and_then(|w| w.will_delay_interval_sec)
                .unwrap_or(0);
            let will = c.last_will.map(|w| Message {
                topic: text(&w.topic),
                payload: w.message,
                qos: qos_u8(w.qos),
                retain: w.retain,
                user_properties: props(w.user_properties),
                expiry_secs: w.message_expiry_interval.map(|e| e.get()),
                response_topic: w.response_topic.as_ref().map(text),
                correlation_data: w.correlation_data,
                content_type: w.content_type.as_ref().map(text),
                payload_utf8: w.is_utf8_payload,
                ..Default::default()
            });
            Inbound::Connect(Box::new(ConnectIn {
                clean_start: c.clean_start,
                keep_alive_secs: c.keep_alive,
                client_id: text(&c.client_id),
                will,
                session_expiry_secs: c.session_expiry_interval_secs,
                receive_max: c.receive_max.map(|r| r.get()).unwrap_or(u16::MAX),
                max_packet_size: c.max_packet_size.map(|m| m.get()),
                topic_alias_max: c.topic_alias_max,
                will_delay_secs,
                username: c.username.as_ref().map(text),
                auth_method: c.auth_method.as_ref().map(text),
                auth_data: c.auth_data,
                password: c.password.map(super::auth::Password),
            }))
        }
        P::Publish(p) => {
            let pp = p.properties.unwrap_or_default();
            Inbound::Publish {
                topic_alias: pp.topic_alias.map(|a| a.get()),
                message: Message {
                    topic: text(&p.topic),
                    payload: p.payload,
                    qos: qos_u8(p.qos),
                    retain: p.retain,
                    expiry_secs: pp.message_expiry_interval.map(|e| e.get()),
                    user_properties: props(pp.user_properties),
                    expires_at_ms: None,
                    response_topic: pp.response_topic.as_ref().map(text),
                    correlation_data: pp.correlation_data,
                    content_type: pp.content_type.as_ref().map(text),
                    payload_utf8: pp.is_utf8_payload.then_some(true),
                    publisher: None,
                },
                packet_id: p.packet_id.map(|i| i.get()),
            }
        }
        P::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
        P::PublishReceived(a) => Inbound::PubRec {
            id: a.packet_id.get(),
            refused: !matches!(
                a.reason_code,
                v5::PublishAckReason::Success | v5::PublishAckReason::NoMatchingSubscribers
            ),
        },
        P::PublishRelease(a) => Inbound::PubRel(a.packet_id.get()),
        P::PublishComplete(a) => Inbound::PubComp(a.packet_id.get()),
        P::Subscribe(s) => {
            let sub_id = s.id.map(|i| i.get());
            Inbound::Subscribe {
                packet_id: s.packet_id.get(),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(f, o)| {
                        (
                            text(&f),
                            SubOptions {
                                qos: qos_u8(o.qos),
                                retain_as_published: o.retain_as_published,
                                retain_handling: match o.retain_handling {
                                    v5::RetainHandling::AtSubscribe => 0,
                                    v5::RetainHandling::AtSubscribeNew => 1,
                                    v5::RetainHandling::NoAtSubscribe => 2,
                                },
                                sub_id,
                                no_local: o.no_local,
                            },
                        )
                    })
                    .collect(),
            }
        }
        P::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.packet_id.get(),
            filters: u.topic_filters.iter().map(text).collect(),
        },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect(d) => Inbound::Disconnect {
            publish_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry_secs: d.session_expiry_interval_secs,
        },
        P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
        P::SubscribeAck(_) => Inbound::Unexpected("SUBACK"),
        P::UnsubscribeAck(_) => Inbound::Unexpected("UNSUBACK"),
        P::PingResponse => Inbound::Unexpected("PINGRESP"),
        P::Auth(a) => Inbound::Auth {
            reason: a.reason_code.into(),
            method: a.auth_method.as_ref().map(text),
            data: a.auth_data,
        },
    }
}

fn to_v3(out: Outbound) -> Option<v3::Packet> {
    use v3::Packet as P;
    Some(match out {
        Outbound::ConnAck {
            session_present,
            code,
            ..
        } => P::ConnectAck(v3::ConnectAck {
            session_present,
            return_code: match code {
                ConnCode::Accepted => v3::ConnectAckReason::ConnectionAccepted,
                ConnCode::ClientIdRejected => v3::ConnectAckReason::IdentifierRejected,
                ConnCode::ServerBusy => v3::ConnectAckReason::ServiceUnavailable,
                ConnCode::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
                ConnCode::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
            },
        }),
        Outbound::Publish(p) => {
            let d = p.delivery;
            P::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: d.dup && d.qos > 0,
                retain: d.retain,
                qos: qos_of(d.qos),
                topic: ByteString::from(d.message.topic.as_str()),
                packet_id: p.packet_id.map(nz),
                payload: d.message.payload.clone(),
                properties: None,
            }))
        }
        Outbound::PubAck { packet_id, .. } => P::PublishAck {
            packet_id: nz(packet_id),
        },
        Outbound::PubRec { packet_id, .. } => P::PublishReceived {
            packet_id: nz(packet_id),
        },
        Outbound::PubRel(id) => P::PublishRelease { packet_id: nz(id) },
        Outbound::PubComp { packet_id, .. } => P::PublishComplete {
            packet_id: nz(packet_id),
        },
        Outbound::SubAck { packet_id, results } => P::SubscribeAck {
            packet_id: nz(packet_id),
            status: results
                .into_iter()
                .map(|r| match r {
                    SubResult::Granted(q) => v3::SubscribeReturnCode::Success(qos_of(q)),
                    SubResult::FilterInvalid
                    | SubResult::SharedNotSupported
                    | SubResult::NotAuthorized => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Outbound::UnsubAck { packet_id, .. } => P::UnsubscribeAck {
            packet_id: nz(packet_id),
        },
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(_) | Outbound::ConnAckFailure(_) | Outbound::Auth { .. } => {
            return None
        }
    })
}

/// `alias`: for a PUBLISH, its topic alias and whether the topic name goes with it.
fn to_v5(out: Outbound, alias: Option<(u16, bool)>) -> v5::Packet {
    use v5::Packet as P;
    let bs = |s: &str| ByteString::from(s);
    match out {
        Outbound::ConnAck {
            session_present,
            code,
            assigned_client_id,
            receive_max,
            max_packet_size,
            session_expiry_secs,
            server_keep_alive,
            auth,
        } => P::ConnectAck(Box::new(v5::ConnectAck {
            session_present,
            auth_method: auth.as_ref().map(|(m, _)| bs(m)),
            auth_data: auth.map(|(_, d)| d),
            server_keepalive_sec: server_keep_alive,
            session_expiry_interval_secs: session_expiry_secs,
            reason_code: match code {
                ConnCode::Accepted => v5::ConnectAckReason::Success,
                ConnCode::ClientIdRejected => v5::ConnectAckReason::ClientIdentifierNotValid,
                ConnCode::ServerBusy => v5::ConnectAckReason::ServerBusy,
                ConnCode::BadCredentials => v5::ConnectAckReason::BadUserNameOrPassword,
                ConnCode::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
            },
            receive_max: NonZeroU16::new(receive_max).unwrap_or(NonZeroU16::MAX),
            max_packet_size: Some(max_packet_size),
            assigned_client_id: assigned_client_id.map(|s| bs(&s)),
            topic_alias_max: super::TOPIC_ALIASES_MAX,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            ..Default::default()
        })),
        Outbound::ConnAckFailure(code) => P::ConnectAck(Box::new(v5::ConnectAck {
            reason_code: connack_failure_reason(code),
            ..Default::default()
        })),
        Outbound::Auth { done, method, data } => P::Auth(v5::Auth {
            reason_code: if done {
                v5::AuthReasonCode::Success
            } else {
                v5::AuthReasonCode::ContinueAuth
            },
            auth_method: Some(bs(&method)),
            auth_data: Some(data),
            reason_string: None,
            user_properties: Vec::new(),
        }),
        Outbound::Publish(p) => {
            let d = p.delivery;
            let user_properties = d
                .message
                .user_properties
                .iter()
                .map(|(k, v)| (bs(k), bs(v)))
                .collect();
            P::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: d.dup && d.qos > 0,
                retain: d.retain,
                qos: qos_of(d.qos),
                topic: match alias {
                    Some((_, false)) => bs(""),
                    _ => bs(&d.message.topic),
                },
                packet_id: p.packet_id.map(nz),
                payload: d.message.payload.clone(),
                properties: Some(v5::PublishProperties {
                    user_properties,
                    response_topic: d.message.response_topic.as_deref().map(bs),
                    correlation_data: d.message.correlation_data.clone(),
                    content_type: d.message.content_type.as_deref().map(bs),
                    is_utf8_payload: d.message.payload_utf8 == Some(true),
                    topic_alias: alias.and_then(|(a, _)| NonZeroU16::new(a)),
                    subscription_ids: d
                        .sub_ids
                        .iter()
                        .filter_map(|i| NonZeroU32::new(*i))
                        .collect(),
                    // What is left of its lifetime, rounded up (MQTT 5 §3.3.2.3.3).
                    message_expiry_interval: d.message.expires_at_ms.and_then(|at| {
                        let left_ms = (at - crate::log::sequencer::now_ms()).max(1);
                        NonZeroU32::new(u32::try_from((left_ms + 999) / 1000).unwrap_or(u32::MAX))
                    }),
                }),
            }))
        }
        Outbound::PubAck { packet_id, error } => P::PublishAck(v5::PublishAck {
            packet_id: nz(packet_id),
            reason_code: puback_reason(error),
            ..Default::default()
        }),
        Outbound::PubRec { packet_id, error } => P::PublishReceived(v5::PublishAck {
            packet_id: nz(packet_id),
            reason_code: puback_reason(error),
            ..Default::default()
        }),
        Outbound::PubRel(id) => P::PublishRelease(v5::PublishAck2 {
            packet_id: nz(id),
            ..Default::default()
        }),
        Outbound::PubComp { packet_id, found } => P::PublishComplete(v5::PublishAck2 {
            packet_id: nz(packet_id),
            reason_code: if found {
                v5::PublishAck2Reason::Success
            } else {
                v5::PublishAck2Reason::PacketIdNotFound
            },
            ..Default::default()
        }),
        Outbound::SubAck { packet_id, results } => P::SubscribeAck(v5::SubscribeAck {
            packet_id: nz(packet_id),
            properties: Vec::new(),
            reason_string: None,
            status: results
                .into_iter()
                .map(|r| match r {
                    SubResult::Granted(0) => v5::SubscribeAckReason::GrantedQos0,
                    SubResult::Granted(1) => v5::SubscribeAckReason::GrantedQos1,
                    SubResult::Granted(_) => v5::SubscribeAckReason::GrantedQos2,
                    SubResult::FilterInvalid => v5::SubscribeAckReason::TopicFilterInvalid,
                    SubResult::SharedNotSupported => {
                        v5::SubscribeAckReason::SharedSubscriptionNotSupported
                    }
                    SubResult::NotAuthorized => v5::SubscribeAckReason::NotAuthorized,
                })
                .collect(),
        }),
        Outbound::UnsubAck { packet_id, found } => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: nz(packet_id),
            properties: Vec::new(),
            reason_string: None,
            status: found
                .into_iter()
                .map(|f| {
                    if f {
                        v5::UnsubscribeAckReason::Success
                    } else {
                        v5::UnsubscribeAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
        }),
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(code) => P::Disconnect(v5::Disconnect::new(close_reason(code))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn delivery(qos: u8, retain: bool) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t/fan".into(),
                payload: Bytes::from_static(b"payload"),
                qos,
                user_properties: vec![("k".into(), "v".into())],
                content_type: Some("text/plain".into()),
                ..Default::default()
            }),
            qos,
            retain,
            dup: false,
            origin: None,
            sub_ids: vec![],
        }
    }

    fn codec(proto: Proto, alias_max: u16, max_out: Option<u32>) -> Codec {
        let mut c = match proto {
            Proto::V311 => Codec::V311(v3::Codec::new(0)),
            Proto::V5 => Codec::V5(v5::Codec::new(0, 0), OutAliases::default()),
        };
        c.set_topic_alias_max(alias_max);
        if let Some(m) = max_out {
            c.set_max_outbound(m);
        }
        c
    }

    /// What `codec` writes for `d` (and whether it sent it).
    fn encoded(codec: &mut Codec, d: Delivery, packet_id: Option<u16>) -> (bool, Vec<u8>) {
        let mut buf = BytesMut::new();
        let sent = codec
            .encode(
                Outbound::Publish(OutPublish {
                    delivery: d,
                    packet_id,
                }),
                &mut buf,
            )
            .unwrap();
        (sent, buf.to_vec())
    }

    fn frame(d: &Delivery, proto: Proto) -> Option<Vec<u8>> {
        let mut buf = BytesMut::from(&b"before"[..]);
        let done = shared_frame(d, proto, &mut buf);
        assert_eq!(&buf[..6], b"before", "appended after what was there");
        if !done {
            assert_eq!(buf.len(), 6, "nothing appended");
        }
        done.then(|| buf[6..].to_vec())
    }

    fn put(c: &Codec, proto: Proto, run: &[u8], count: usize) -> Result<(usize, Vec<u8>), String> {
        let mut dst = BytesMut::new();
        let sent = c.put_frames(proto, run, count, &mut dst)?;
        Ok((sent, dst.to_vec()))
    }

    #[test]
    fn a_shared_frame_is_what_each_connection_would_encode() {
        for proto in [Proto::V311, Proto::V5] {
            for retain in [false, true] {
                let d = delivery(0, retain);
                let bytes = frame(&d, proto).unwrap();
                let own = encoded(&mut codec(proto, 0, None), d.clone(), None);
                assert_eq!(own, (true, bytes.clone()), "{proto:?} retain {retain}");
                assert_eq!(
                    put(&codec(proto, 0, None), proto, &bytes, 1),
                    Ok((1, bytes))
                );
            }
        }
        // The RETAIN flag and the version are in the bytes.
        let f = |retain, proto| frame(&delivery(0, retain), proto).unwrap();
        assert_ne!(f(false, Proto::V311), f(true, Proto::V311));
        assert_ne!(f(false, Proto::V311), f(false, Proto::V5));
    }

    #[test]
    fn only_receiver_independent_deliveries_are_shareable() {
        assert!(shareable(&delivery(0, false)));
        assert!(shareable(&delivery(0, true)));
        let not = [
            delivery(1, false),
            Delivery {
                sub_ids: vec![7],
                ..delivery(0, false)
            },
            Delivery {
                dup: true,
                ..delivery(0, false)
            },
            Delivery {
                message: Arc::new(Message {
                    expires_at_ms: Some(i64::MAX),
                    ..(*delivery(0, false).message).clone()
                }),
                ..delivery(0, false)
            },
        ];
        for d in not {
            assert!(!shareable(&d), "{d:?}");
            assert_eq!(frame(&d, Proto::V5), None);
            assert_eq!(frame(&d, Proto::V311), None);
        }
    }

    #[test]
    fn which_connections_take_shared_frames() {
        assert_eq!(
            codec(Proto::V311, 0, None).shares_frames(),
            Some(Proto::V311)
        );
        assert_eq!(codec(Proto::V5, 0, None).shares_frames(), Some(Proto::V5));
        assert_eq!(
            codec(Proto::V5, 0, Some(100)).shares_frames(),
            Some(Proto::V5)
        );
        assert_eq!(
            codec(Proto::V5, 10, None).shares_frames(),
            None,
            "topic aliases"
        );
        assert_eq!(Codec::new(0).shares_frames(), None, "before CONNECT");
    }

    #[test]
    fn a_connection_refuses_frames_it_cannot_send_as_they_are() {
        let v5 = frame(&delivery(0, false), Proto::V5).unwrap();
        // Another version's frames, or a connection with topic aliases (its packets carry them).
        assert!(put(&codec(Proto::V311, 0, None), Proto::V5, &v5, 1).is_err());
        assert!(put(&codec(Proto::V5, 10, None), Proto::V5, &v5, 1).is_err());
        assert!(put(&Codec::new(0), Proto::V5, &v5, 1).is_err());
    }

    /// Deliveries with payloads of different sizes, so that a Maximum Packet Size can sit
    /// between their packets.
    fn sized(n: usize) -> Delivery {
        let d = delivery(0, false);
        Delivery {
            message: Arc::new(Message {
                payload: Bytes::from(vec![b'x'; n]),
                ..(*d.message).clone()
            }),
            ..d
        }
    }

    #[test]
    fn a_run_of_frames_respects_each_clients_maximum_packet_size() {
        let ds: Vec<Delivery> = [10, 300, 20, 150].into_iter().map(sized).collect();
        let mut run = BytesMut::new();
        for d in &ds {
            assert!(shared_frame(d, Proto::V5, &mut run));
        }
        let sizes: Vec<u32> = ds
            .iter()
            .map(|d| frame(d, Proto::V5).unwrap().len() as u32)
            .collect();
        let mut limits = vec![0, 1000];
        for s in &sizes {
            limits.extend([s - 1, *s, s + 2, s + 3]); // around each frame's remaining length
        }
        for max in limits {
            // What each connection would send on its own, one by one.
            let mut c = codec(Proto::V5, 0, (max > 0).then_some(max));
            let mut want = Vec::new();
            let mut sent = 0;
            for d in &ds {
                let (ok, bytes) = encoded(&mut c, d.clone(), None);
                sent += usize::from(ok);
                want.extend(bytes);
            }
            let got = put(
                &codec(Proto::V5, 0, (max > 0).then_some(max)),
                Proto::V5,
                &run,
                ds.len(),
            );
            assert_eq!(got, Ok((sent, want)), "Maximum Packet Size {max}");
        }
        // 3.1.1 has no such limit: the run goes whole.
        let mut v3 = BytesMut::new();
        for d in &ds {
            assert!(shared_frame(d, Proto::V311, &mut v3));
        }
        assert_eq!(
            put(&codec(Proto::V311, 0, None), Proto::V311, &v3, 4),
            Ok((4, v3.to_vec()))
        );
    }

    #[test]
    fn packets_prefix_counts_whole_packets() {
        // Payloads around the one- and two-byte remaining length boundary.
        let ds: Vec<Delivery> = [1, 120, 200, 20_000].into_iter().map(sized).collect();
        let mut run = BytesMut::new();
        let mut ends = vec![0];
        for d in &ds {
            assert!(shared_frame(d, Proto::V311, &mut run));
            ends.push(run.len());
        }
        for (n, end) in ends.iter().enumerate() {
            assert_eq!(packets_prefix(&run, n), *end, "{n} packets");
        }
        assert_eq!(packets_prefix(&run, 99), run.len());
        assert_eq!(
            packets_prefix(&run[..run.len() - 1], 4),
            run.len() - 1,
            "a torn last one"
        );
    }
}
