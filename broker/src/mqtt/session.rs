//! One connection's QoS state as a value (sans-IO): packet ids and in-flight windows in both
//! directions. The connection task feeds it events and sends what it returns.
//!
//! *Outbound* (server → client): QoS 1/2 deliveries get a packet id that is not in use; at most
//! `send_window` are unacknowledged at once (the client's Receive Maximum, capped by ours);
//! the rest wait in a bounded queue, and a full queue drops (counted by the caller).
//! QoS 1: PUBLISH → PUBACK. QoS 2: PUBLISH → PUBREC → (PUBREL) → PUBCOMP.
//!
//! *Inbound* (client → server): a QoS 2 packet id is remembered from its PUBLISH until its
//! PUBREL, so a re-sent PUBLISH with the same id is not stored twice. Inbound QoS 1/2 messages
//! not yet answered count against our Receive Maximum.
//!
//! *Across connections* ([`Session::resume`], [`Session::qos2_ids`]): a persistent session's
//! open QoS 2 exchanges outlive the connection — the inbound ids not yet released, and the
//! outbound ids released (PUBREC received) and not yet completed. A delivery is the client's
//! once it answered PUBREC: from then on only its PUBREL is sent again, never the message
//! (so [`Session::on_pubrec`] hands its origin back for the cursor to move past).
//!
//! *Invariant:* `outbound.len() <= send_window`; a packet id is in `outbound` at most once.

use super::store::Qos2Ids;
use super::{Delivery, Origin};
use std::collections::{HashMap, HashSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published { qos: u8 },
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// A PUBLISH to send now, with its packet id (`None` for QoS 0).
#[derive(Debug, Clone, PartialEq)]
pub struct OutPublish {
    pub delivery: Delivery,
    pub packet_id: Option<u16>,
}

#[derive(Debug)]
pub struct Session {
    next_packet_id: u16,
    /// In-flight ids, with where their message is stored (persistent sessions).
    outbound: HashMap<u16, (OutState, Option<Origin>)>,
    send_window: usize,
    waiting: VecDeque<Delivery>,
    waiting_max: usize,
    /// Inbound QoS 2 ids between PUBLISH and PUBREL.
    inbound_qos2: HashSet<u16>,
}

/// What an acknowledgement from the client did.
#[derive(Debug, PartialEq)]
pub enum AckOutcome {
    /// Known id: the acknowledged message's origin, and the queued deliveries that may now be
    /// sent.
    Done {
        origin: Option<Origin>,
        next: Vec<OutPublish>,
    },
    /// No delivery waits for this acknowledgement (a protocol error in MQTT 5 terms; ignored).
    Unknown,
}

/// What a PUBREC from the client did.
#[derive(Debug, PartialEq)]
pub enum PubRec {
    /// The client has the message now: its origin (the cursor moves past it; the packet id
    /// stays in use until PUBCOMP).
    Received(Option<Origin>),
    /// A repeated PUBREC.
    Again,
    /// No QoS 2 delivery has this id.
    Unknown,
}

impl Session {
    pub fn new(send_window: usize, waiting_max: usize) -> Session {
        assert!(send_window > 0 && send_window <= usize::from(u16::MAX));
        Session {
            next_packet_id: 1,
            outbound: HashMap::new(),
            send_window,
            waiting: VecDeque::new(),
            waiting_max,
            inbound_qos2: HashSet::new(),
        }
    }

    /// A persistent session's next connection: the QoS 2 exchanges its last one left open.
    /// The released ids hold their packet ids and window slots until their PUBCOMP.
    pub fn resume(send_window: usize, waiting_max: usize, qos2: &Qos2Ids) -> Session {
        let mut s = Session::new(send_window, waiting_max);
        s.inbound_qos2.extend(qos2.received.iter().copied());
        for &id in &qos2.released {
            s.outbound.insert(id, (OutState::Released, None));
        }
        s
    }

    /// The PUBRELs a resumed session sends before anything else (MQTT 5 §4.4).
    pub fn released_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self
            .outbound
            .iter()
            .filter(|(_, (state, _))| *state == OutState::Released)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The open QoS 2 exchanges a next connection goes on with; `pending` are inbound ids whose
    /// PUBLISH is not stored yet (not answered: the client sends it again, and it must be
    /// stored then).
    pub fn qos2_ids(&self, pending: &HashSet<u16>) -> Qos2Ids {
        let mut received: Vec<u16> = self.inbound_qos2.difference(pending).copied().collect();
        received.sort_unstable();
        Qos2Ids {
            received,
            released: self.released_ids(),
        }
    }

    pub fn inflight_out(&self) -> usize {
        self.outbound.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A message for this client. `Ok(Some)`: send it now; `Ok(None)`: queued behind the
    /// window; `Err(())`: the queue is full and it was dropped.
    #[allow(clippy::result_unit_err)]
    pub fn deliver(&mut self, d: Delivery) -> Result<Option<OutPublish>, ()> {
        if d.qos == 0 {
            return Ok(Some(OutPublish {
                delivery: d,
                packet_id: None,
            }));
        }
        if self.outbound.len() < self.send_window && self.waiting.is_empty() {
            return Ok(Some(self.start(d)));
        }
        if self.waiting.len() >= self.waiting_max {
            return Err(());
        }
        self.waiting.push_back(d);
        Ok(None)
    }

    fn start(&mut self, d: Delivery) -> OutPublish {
        debug_assert!(self.outbound.len() < self.send_window);
        let id = self.allocate();
        self.outbound
            .insert(id, (OutState::Published { qos: d.qos }, d.origin));
        OutPublish {
            delivery: d,
            packet_id: Some(id),
        }
    }

    fn allocate(&mut self) -> u16 {
        // The window is below 65535, so a free id is always found.
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.outbound.contains_key(&id) {
                return id;
            }
        }
    }

    fn release_window(&mut self) -> Vec<OutPublish> {
        let mut out = Vec::new();
        while self.outbound.len() < self.send_window {
            let Some(d) = self.waiting.pop_front() else {
                break;
            };
            out.push(self.start(d));
        }
        out
    }

    /// PUBACK from the client.
    pub fn on_puback(&mut self, id: u16) -> AckOutcome {
        match self.outbound.get(&id) {
            Some((OutState::Published { qos: 1 }, origin)) => {
                let origin = *origin;
                self.outbound.remove(&id);
                AckOutcome::Done {
                    origin,
                    next: self.release_window(),
                }
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// Gives up an outbound delivery that could not be sent (larger than the client's Maximum
    /// Packet Size): its id is free again. Returns its origin and what may be sent now.
    pub fn abandon(&mut self, id: u16) -> (Option<Origin>, Vec<OutPublish>) {
        match self.outbound.remove(&id) {
            Some((_, origin)) => (origin, self.release_window()),
            None => (None, Vec::new()),
        }
    }

    /// PUBREC from the client: answer PUBREL (also for an unknown id, as the spec asks, so the
    /// client can finish its flow).
    pub fn on_pubrec(&mut self, id: u16) -> PubRec {
        match self.outbound.get_mut(&id) {
            Some((state @ OutState::Published { qos: 2 }, origin)) => {
                *state = OutState::Released;
                PubRec::Received(origin.take())
            }
            Some((OutState::Released, _)) => PubRec::Again,
            _ => PubRec::Unknown,
        }
    }

    /// PUBCOMP from the client.
    pub fn on_pubcomp(&mut self, id: u16) -> AckOutcome {
        match self.outbound.get(&id) {
            Some((OutState::Released, origin)) => {
                let origin = *origin;
                self.outbound.remove(&id);
                AckOutcome::Done {
                    origin,
                    next: self.release_window(),
                }
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// An inbound QoS 2 PUBLISH: whether it is new (store it) or a re-send of one not yet
    /// released (answer PUBREC again, do not store it twice).
    pub fn on_inbound_qos2(&mut self, id: u16) -> bool {
        self.inbound_qos2.insert(id)
    }

    /// Forgets an inbound QoS 2 id whose store failed (the client may send it again).
    pub fn forget_inbound_qos2(&mut self, id: u16) {
        self.inbound_qos2.remove(&id);
    }

    /// PUBREL from the client: whether the id was known (PUBCOMP reason 0x92 otherwise).
    pub fn on_pubrel(&mut self, id: u16) -> bool {
        self.inbound_qos2.remove(&id)
    }

    pub fn inbound_qos2_open(&self) -> usize {
        self.inbound_qos2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::Message;
    use std::sync::Arc;

    fn d(qos: u8, n: u8) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: bytes::Bytes::from(vec![n]),
                qos,
                retain: false,
                user_properties: vec![],
                ..Default::default()
            }),
            qos,
            retain: false,
            dup: false,
            origin: None,
            sub_ids: vec![],
        }
    }

    fn ids(v: &[OutPublish]) -> Vec<Option<u16>> {
        v.iter().map(|p| p.packet_id).collect()
    }

    #[test]
    fn qos1_window_and_queue() {
        let mut s = Session::new(2, 2);
        assert_eq!(s.deliver(d(1, 1)).unwrap().unwrap().packet_id, Some(1));
        assert_eq!(s.deliver(d(1, 2)).unwrap().unwrap().packet_id, Some(2));
        assert_eq!(s.deliver(d(1, 3)), Ok(None));
        assert_eq!(s.deliver(d(1, 4)), Ok(None));
        assert_eq!(s.deliver(d(1, 5)), Err(()));
        // QoS 0 is never held back.
        assert_eq!(s.deliver(d(0, 6)).unwrap().unwrap().packet_id, None);
        assert_eq!(s.on_puback(9), AckOutcome::Unknown);
        let AckOutcome::Done { next, .. } = s.on_puback(2) else {
            panic!()
        };
        assert_eq!(ids(&next), vec![Some(3)]);
        assert_eq!(next[0].delivery.message.payload[0], 3);
        let AckOutcome::Done { next, .. } = s.on_puback(1) else {
            panic!()
        };
        assert_eq!(ids(&next), vec![Some(4)]);
        assert_eq!((s.inflight_out(), s.waiting()), (2, 0));
    }

    #[test]
    fn qos2_flow() {
        let mut s = Session::new(1, 10);
        let p = s.deliver(d(2, 1)).unwrap().unwrap();
        assert_eq!(p.packet_id, Some(1));
        assert_eq!(s.deliver(d(2, 2)), Ok(None));
        // A PUBACK is not the answer to a QoS 2 PUBLISH.
        assert_eq!(s.on_puback(1), AckOutcome::Unknown);
        assert_eq!(s.on_pubcomp(1), AckOutcome::Unknown);
        assert_eq!(s.on_pubrec(1), PubRec::Received(None));
        assert_eq!(
            s.on_pubrec(1),
            PubRec::Again,
            "a repeated PUBREC gets PUBREL again"
        );
        assert_eq!(s.on_pubrec(7), PubRec::Unknown);
        let AckOutcome::Done { next, .. } = s.on_pubcomp(1) else {
            panic!()
        };
        assert_eq!(ids(&next), vec![Some(2)]);
    }

    #[test]
    fn packet_ids_skip_those_in_use() {
        let mut s = Session::new(3, 0);
        s.next_packet_id = u16::MAX;
        let a = s.deliver(d(1, 0)).unwrap().unwrap().packet_id;
        let b = s.deliver(d(1, 0)).unwrap().unwrap().packet_id;
        assert_eq!((a, b), (Some(u16::MAX), Some(1)));
        s.next_packet_id = u16::MAX;
        let c = s.deliver(d(1, 0)).unwrap().unwrap().packet_id;
        assert_eq!(c, Some(2), "0 is never used and ids in flight are skipped");
    }

    #[test]
    fn acknowledgements_return_the_origin() {
        let origin = |offset| Origin {
            key: strata_types::PartitionKey {
                topic: strata_types::TopicId(uuid::Uuid::from_u128(3)),
                partition: 0,
            },
            offset,
        };
        let with = |qos, offset| Delivery {
            origin: Some(origin(offset)),
            ..d(qos, 0)
        };
        let mut s = Session::new(2, 10);
        let a = s.deliver(with(1, 10)).unwrap().unwrap().packet_id.unwrap();
        let b = s.deliver(with(2, 11)).unwrap().unwrap().packet_id.unwrap();
        assert_eq!(s.deliver(with(1, 12)), Ok(None));
        let AckOutcome::Done { origin: o, next } = s.on_puback(a) else {
            panic!()
        };
        assert_eq!(o, Some(origin(10)));
        assert_eq!(next[0].delivery.origin, Some(origin(12)));
        assert_eq!(
            s.on_pubrec(b),
            PubRec::Received(Some(origin(11))),
            "a QoS 2 message is the client's at PUBREC"
        );
        let AckOutcome::Done { origin: o, next: n } = s.on_pubcomp(b) else {
            panic!()
        };
        assert_eq!(o, None, "its origin was handed back at PUBREC");
        assert!(n.is_empty(), "the window was full until the PUBCOMP");
        let c = next[0].packet_id.unwrap();
        assert_eq!(s.abandon(c).0, Some(origin(12)));
        assert_eq!(s.abandon(c), (None, vec![]));
    }

    #[test]
    fn inbound_qos2_dedup() {
        let mut s = Session::new(1, 1);
        assert!(s.on_inbound_qos2(5));
        assert!(!s.on_inbound_qos2(5));
        assert_eq!(s.inbound_qos2_open(), 1);
        assert!(s.on_pubrel(5));
        assert!(!s.on_pubrel(5));
        assert!(s.on_inbound_qos2(5));
    }

    #[test]
    fn open_qos2_exchanges_outlive_the_connection() {
        let mut s = Session::new(2, 10);
        // Inbound: 5 stored and answered, 6 still being stored.
        assert!(s.on_inbound_qos2(5) && s.on_inbound_qos2(6));
        // Outbound: 1 released (PUBREC received), 2 only published.
        let a = s.deliver(d(2, 1)).unwrap().unwrap().packet_id.unwrap();
        assert!(s.deliver(d(2, 2)).unwrap().is_some());
        assert!(matches!(s.on_pubrec(a), PubRec::Received(_)));
        let ids = s.qos2_ids(&HashSet::from([6]));
        assert_eq!(
            ids,
            Qos2Ids {
                received: vec![5],
                released: vec![a],
            },
            "an id whose PUBLISH is not stored yet is not kept: its re-send must be stored"
        );

        let mut r = Session::resume(2, 10, &ids);
        assert_eq!(r.released_ids(), vec![a], "PUBREL goes out again");
        assert!(
            !r.on_inbound_qos2(5),
            "a re-sent PUBLISH 5 is not stored twice"
        );
        assert!(r.on_pubrel(5), "PUBREL 5 finds its id");
        assert_eq!(r.on_pubrec(a), PubRec::Again);
        // The released id holds its window slot and packet id until PUBCOMP.
        let c = r.deliver(d(2, 3)).unwrap().unwrap().packet_id.unwrap();
        assert_ne!(c, a);
        assert_eq!(
            r.deliver(d(2, 4)),
            Ok(None),
            "window of 2: one released, one new"
        );
        let AckOutcome::Done { origin, next } = r.on_pubcomp(a) else {
            panic!()
        };
        assert_eq!(origin, None);
        assert_eq!(next.len(), 1, "the PUBCOMP opened the window");
        assert!(r.qos2_ids(&HashSet::new()).is_empty());
    }
}
