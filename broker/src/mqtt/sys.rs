//! `$SYS/broker/...` statistics, published every `mqtt.sys_interval_secs` (0: off).
//!
//! Topics: `version`, `uptime` (seconds), `clients/connected` (sessions on live
//! connections), `messages/received` and `messages/sent` (PUBLISH packets since start). They
//! are retained in memory (a subscriber gets the latest at once) and routed live; they are
//! not stored in a partition, so a persistent session sees them only as retained messages at
//! subscribe time.

use super::connection::Shared;
use super::router::RouterMsg;
use super::Message;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const SYS_PREFIX: &str = "$SYS/broker/";

/// The statistics as (topic, value) pairs.
pub fn snapshot(shared: &Shared, uptime: Duration) -> Vec<(String, String)> {
    let m = &shared.node.metrics.mqtt;
    [
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("uptime", uptime.as_secs().to_string()),
        (
            "clients/connected",
            m.sessions.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/received",
            shared.received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "messages/sent",
            shared.sent.load(Ordering::Relaxed).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{SYS_PREFIX}{k}"), v))
    .collect()
}

pub async fn run(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let msgs = snapshot(&shared, started.elapsed())
            .into_iter()
            .map(|(topic, value)| {
                Arc::new(Message {
                    topic,
                    payload: Bytes::from(value),
                    qos: 0,
                    retain: true,
                    ..Default::default()
                })
            })
            .collect();
        if shared.router.send(RouterMsg::Sys(msgs)).await.is_err() {
            return;
        }
    }
}
