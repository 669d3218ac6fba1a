//! [`RemoteMeta`]: the metadata client of a process that is not a member of the meta group
//! (the Lambda function, later stateless brokers).
//!
//! A member ([`crate::MetaNode`]) reads its own applied state and forwards writes to the leader.
//! A remote client has no state of its own: it knows only the gRPC addresses of some members
//! (their `meta.listen`) and sends every call to the leader over the `Meta` service —
//! `Write` for a command, `ReadState` for a linearizable copy of the whole state (see
//! [`crate::grpc`] for its encoding and limits).
//!
//! # Finding the leader
//!
//! A call goes first to the last address that answered as leader, else to the configured
//! addresses in turn. A member that does not lead answers `NotLeader` with the leader's address
//! as the membership records it; the client follows that hint at once (a second hint in a row
//! waits a pause first, so two members with stale views cannot bounce it quickly). A member that
//! cannot be reached, a group without a leader yet, or a retryable refusal (a leader that cannot
//! reach a quorum) makes it pause — [`REMOTE_RETRY_MS_MIN`] doubling up to
//! [`REMOTE_RETRY_MS_MAX`] — and try the next address, until the timeout given to
//! [`RemoteMeta::new`] has passed since the call began. It then fails with
//! [`MetaError::RemoteUnavailable`], which names every address tried and the last failure.
//!
//! A write is sent again only while it is known not to have run: the connection could not be
//! made, or a member refused it. Once a write reached a node and no answer came back, the call
//! ends with [`MetaError::RemoteOutcomeUnknown`] (as [`MetaError::ForwardFailed`] does for a
//! member): only the caller knows whether its command is harmless to repeat.
//!
//! # The cached state
//!
//! [`RemoteMeta::state`] keeps the last state it received (shared by every clone). Each call
//! still asks the leader (that is what makes it linearizable), but sends the applied index it
//! holds; while the leader has applied nothing newer the reply is one small `unchanged` message
//! and the call answers the same `Arc`. A change costs one full copy of the state, compressed:
//! remote readers suit small-to-medium metadata (the index of a long history should be
//! compacted first; a state over [`crate::grpc::STATE_BYTES_MAX`] compressed is refused).

use crate::error::MetaError;
use crate::grpc::{
    self, pb, Refusal, StateRead, CONNECT_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS, KEEPALIVE_TIMEOUT_MS,
    MESSAGE_BYTES_MAX, PEER_CONNECTIONS_MAX,
};
use crate::leader::{Attempt, LeaderHint};
use crate::network::{endpoint, is_connect_error, with_timeout};
use crate::state::{Command, CommandResult, MetaState};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// First pause between two tries of a call (after an unreachable member or a group without a
/// leader); it doubles up to [`REMOTE_RETRY_MS_MAX`].
pub const REMOTE_RETRY_MS_MIN: u64 = 50;
pub const REMOTE_RETRY_MS_MAX: u64 = 200;
/// Addresses a [`RemoteMeta`] may be given (hints it follows come on top).
pub const REMOTE_ADDRS_MAX: usize = 64;

/// A metadata client for a process outside the meta group. Cheap to clone; clones share the
/// connections, the leader hint and the cached state.
#[derive(Clone)]
pub struct RemoteMeta {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    timeout: Duration,
    /// One lazily connected channel per address (configured or learned from a hint).
    channels: Mutex<HashMap<String, Channel>>,
    /// The address that last answered as leader.
    leader: Mutex<Option<String>>,
    /// The newest state received; its `last_applied` is what `ReadState` is told we hold.
    cached: Mutex<Option<Arc<MetaState>>>,
}

impl std::fmt::Debug for RemoteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMeta")
            .field("addrs", &self.inner.addrs)
            .field("timeout", &self.inner.timeout)
            .field("leader", &*self.inner.leader.lock())
            .finish_non_exhaustive()
    }
}

/// The outcome of one try of a call on one address.
enum Step<T> {
    Done(T),
    /// The node does not lead; nothing was changed.
    NotLeader(LeaderHint),
    /// The call did not run (or, for a read, may be repeated): try again, elsewhere or later.
    Retry(String),
}

/// The reply of a read-only call, or the retry step that names why there is none: a read
/// changes nothing, so any failure may be tried again.
fn read_reply<T, R>(
    answer: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    remaining: Duration,
) -> Result<T, Step<R>> {
    match answer {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(Step::Retry(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
        Err(_) => Err(Step::Retry(format!(
            "no answer within {} ms",
            remaining.as_millis()
        ))),
    }
}

impl RemoteMeta {
    /// `addrs`: meta gRPC addresses ("host:port", the `meta.listen` of members). No I/O here.
    ///
    /// `timeout` bounds each call ([`RemoteMeta::write`], [`RemoteMeta::state`]) as a whole,
    /// retries included. The addresses are checked here (at least one, at most
    /// [`REMOTE_ADDRS_MAX`], each a valid address); the error names the offending one.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<RemoteMeta, MetaError> {
        let config = |reason: String| MetaError::Config { reason };
        if addrs.is_empty() {
            return Err(config(
                "a remote meta client needs at least one address".into(),
            ));
        }
        if addrs.len() > REMOTE_ADDRS_MAX {
            return Err(config(format!(
                "a remote meta client takes at most {REMOTE_ADDRS_MAX} addresses, not {}",
                addrs.len()
            )));
        }
        if timeout.is_zero() {
            return Err(config("the remote meta timeout must be above zero".into()));
        }
        let mut unique: Vec<String> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let addr = addr.trim().to_owned();
            if addr.is_empty() {
                return Err(config("a remote meta address is empty".into()));
            }
            endpoint(&addr)?;
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        Ok(RemoteMeta {
            inner: Arc::new(Inner {
                addrs: unique,
                timeout,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                cached: Mutex::new(None),
            }),
        })
    }

    /// Proposes `cmd` on the leader (following NotLeader hints, retrying retryable failures and
    /// unreachable members until `timeout`); the applied result.
    ///
    /// A rejected command is a result ([`CommandResult::Rejected`]), not an error. After
    /// [`MetaError::RemoteOutcomeUnknown`] the command may have been applied; after any other
    /// error it was not.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        self.write_indexed(cmd).await.map(|(result, _)| result)
    }

    /// [`RemoteMeta::write`], also answering the raft log index the command was applied at
    /// (what a [`crate::MetaMirror`] waits for to read its own write).
    pub async fn write_indexed(&self, cmd: Command) -> Result<(CommandResult, u64), MetaError> {
        let request = grpc::write_request(&cmd)?;
        self.on_leader(|channel, addr, remaining| {
            let request = request.clone();
            async move {
                let mut client = meta_client(channel);
                let call = client.write(with_timeout(request, remaining));
                let reply = match tokio::time::timeout(remaining, call).await {
                    Ok(Ok(reply)) => reply.into_inner(),
                    Ok(Err(status)) if is_connect_error(&status) => {
                        return Ok(Step::Retry(format!("cannot connect: {}", status.message())))
                    }
                    // The node did not decode the command: it did not run.
                    Ok(Err(status))
                        if matches!(
                            status.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::Unimplemented
                        ) =>
                    {
                        return Err(MetaError::RemoteRefused {
                            addr,
                            reason: format!("{:?}: {}", status.code(), status.message()),
                        })
                    }
                    Ok(Err(status)) => {
                        return Err(MetaError::RemoteOutcomeUnknown {
                            addr,
                            reason: format!("{:?}: {}", status.code(), status.message()),
                        })
                    }
                    Err(_) => {
                        return Err(MetaError::RemoteOutcomeUnknown {
                            addr,
                            reason: format!("no answer within {} ms", remaining.as_millis()),
                        })
                    }
                };
                step(grpc::remote_write_outcome_indexed(reply), addr)
            }
        })
        .await
    }

    /// The leader's read index (raft's ReadIndex: it confirmed its leadership with a quorum):
    /// a state that has applied it shows every write acknowledged before the call.
    pub async fn read_index(&self) -> Result<u64, MetaError> {
        self.on_leader(|channel, addr, remaining| async move {
            let mut client = meta_client(channel);
            let request = with_timeout(pb::ReadIndexRequest {}, remaining);
            // A read point changes nothing: it may be asked again, anywhere.
            let answer = tokio::time::timeout(remaining, client.read_index(request)).await;
            let reply = match read_reply(answer, remaining) {
                Ok(reply) => reply,
                Err(retry) => return Ok(retry),
            };
            step(grpc::remote_read_index_outcome(reply), addr)
        })
        .await
    }

    /// The configured addresses, and the one that last answered as leader.
    pub(crate) fn addrs(&self) -> (&[String], Option<String>) {
        (&self.inner.addrs, self.inner.leader.lock().clone())
    }

    /// A linearizable view of the whole applied state: at least as new as every write that
    /// completed before the call. Cached; refreshed only when the leader has applied more.
    ///
    /// Two calls between which the leader applied nothing answer the same `Arc`.
    pub async fn state(&self) -> Result<Arc<MetaState>, MetaError> {
        let cached = self.inner.cached.lock().clone();
        let known_applied = cached.as_ref().map_or(0, |s| s.last_applied());
        let read = self
            .on_leader(|channel, addr, remaining| async move {
                let mut client = meta_client(channel);
                let request = with_timeout(pb::ReadStateRequest { known_applied }, remaining);
                // A read changes nothing: whatever went wrong, it may be tried again (a node
                // of an older build without ReadState included: others may have it).
                let answer = tokio::time::timeout(remaining, client.read_state(request)).await;
                let reply = match read_reply(answer, remaining) {
                    Ok(reply) => reply,
                    Err(retry) => return Ok(retry),
                };
                // Decoding a large state takes a while: off the async threads.
                let outcome = tokio::task::spawn_blocking(move || {
                    grpc::read_state_outcome(reply, known_applied)
                })
                .await
                .map_err(|e| MetaError::Raft {
                    reason: format!("the state decoding task failed: {e}"),
                })?;
                step(outcome, addr)
            })
            .await?;
        match read {
            StateRead::Unchanged { applied_index } => match cached {
                // `read_state_outcome` checked that the index is the one we sent.
                Some(state) if state.last_applied() == applied_index => Ok(state),
                _ => Err(MetaError::Raft {
                    reason: "an `unchanged` state reply without a cached state".into(),
                }),
            },
            StateRead::Changed(state) => {
                // Replaced even by a lower index: a group restored from a backup starts its log
                // over, and a cache that stays ahead of it would be fetched in full every time.
                // (A slower concurrent call may put back an older state; that costs one more
                // full fetch, never a stale answer: every call asks the leader.)
                *self.inner.cached.lock() = Some(Arc::clone(&state));
                Ok(state)
            }
        }
    }

    /// Runs `call` on the leader, as the module docs describe. `call` gets the channel and the
    /// address of the node to try and the time left; its error ends the whole call.
    async fn on_leader<T, F, Fut>(&self, call: F) -> Result<T, MetaError>
    where
        F: Fn(Channel, String, Duration) -> Fut,
        Fut: Future<Output = Result<Step<T>, MetaError>>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.timeout;
        let mut tried: Vec<String> = Vec::new();
        let mut last: String;
        let mut pause = Duration::from_millis(REMOTE_RETRY_MS_MIN);
        let mut next: Option<String> = inner.leader.lock().clone();
        let mut via_hint = false;
        let mut cursor = 0;
        loop {
            let (addr, hinted) = match next.take() {
                Some(addr) => (addr, via_hint),
                None => {
                    let addr = inner.addrs[cursor % inner.addrs.len()].clone();
                    cursor += 1;
                    (addr, false)
                }
            };
            via_hint = false;
            if !tried.contains(&addr) {
                tried.push(addr.clone());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let step = match self.channel(&addr) {
                Ok(channel) if !remaining.is_zero() => {
                    call(channel, addr.clone(), remaining).await?
                }
                Ok(_) => Step::Retry("the timeout ran out".into()),
                Err(e) => Step::Retry(e.to_string()),
            };
            match step {
                Step::Done(value) => {
                    *inner.leader.lock() = Some(addr);
                    return Ok(value);
                }
                Step::NotLeader(hint) => {
                    self.forget_leader(&addr);
                    last = match (&hint.id, &hint.addr) {
                        (_, Some(leader)) => format!("{addr}: not the leader (it names {leader})"),
                        (Some(id), None) => {
                            format!(
                                "{addr}: not the leader (it names node {id}, without an address)"
                            )
                        }
                        (None, None) => format!("{addr}: not the leader, and knows of none"),
                    };
                    if let Some(leader) = hint.addr.filter(|l| *l != addr) {
                        next = Some(leader);
                        via_hint = true;
                        if !hinted && Instant::now() < deadline {
                            continue;
                        }
                    }
                }
                Step::Retry(reason) => {
                    self.forget_leader(&addr);
                    last = format!("{addr}: {reason}");
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(MetaError::RemoteUnavailable {
                    tried: tried.join(", "),
                    waited_ms: started.elapsed().as_millis() as u64,
                    last,
                });
            }
            tracing::debug!(%last, "meta leader not found yet; retrying");
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(REMOTE_RETRY_MS_MAX));
        }
    }

    fn forget_leader(&self, addr: &str) {
        let mut leader = self.inner.leader.lock();
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    /// The channel to `addr`; connects on first use (within [`CONNECT_TIMEOUT_MS`]).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, MetaError> {
        if let Some(channel) = self.inner.channels.lock().get(addr) {
            return Ok(channel.clone());
        }
        let channel = endpoint(addr)?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
            .connect_lazy();
        let mut channels = self.inner.channels.lock();
        if channels.len() >= PEER_CONNECTIONS_MAX {
            // Addresses of leaders long gone; live ones re-dial on their next call.
            channels.clear();
        }
        Ok(channels.entry(addr.to_owned()).or_insert(channel).clone())
    }
}

pub(crate) fn meta_client(channel: Channel) -> pb::meta_client::MetaClient<Channel> {
    pb::meta_client::MetaClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// One try's outcome from a decoded reply: a retryable refusal is tried again, any other
/// refusal ends the call.
fn step<T>(outcome: Result<Attempt<T>, Refusal>, addr: String) -> Result<Step<T>, MetaError> {
    match outcome {
        Ok(Attempt::Done(value)) => Ok(Step::Done(value)),
        Ok(Attempt::NotLeader(hint)) => Ok(Step::NotLeader(hint)),
        Err(r) if r.retryable => Ok(Step::Retry(r.reason)),
        Err(r) => Err(MetaError::RemoteRefused {
            addr,
            reason: r.reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_timeout_are_checked() {
        let check = |addrs: &[&str], timeout_ms: u64, expected: Option<&str>| {
            let addrs = addrs.iter().map(|a| a.to_string()).collect();
            match (
                RemoteMeta::new(addrs, Duration::from_millis(timeout_ms)),
                expected,
            ) {
                (Ok(_), None) => {}
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, _) => panic!("expected {expected:?}, got {got:?}"),
            }
        };
        check(&["127.0.0.1:1228"], 1_000, None);
        check(
            &["meta-1:1228", "http://meta-2:1228", "meta-1:1228"],
            1,
            None,
        );
        check(&[], 1_000, Some("needs at least one address"));
        check(&["a:1", " "], 1_000, Some("a remote meta address is empty"));
        check(
            &["a b:1"],
            1_000,
            Some("`a b:1` is not a meta node address"),
        );
        check(&["a:1"], 0, Some("timeout must be above zero"));
        let many: Vec<String> = (0..=REMOTE_ADDRS_MAX).map(|i| format!("m{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        check(&many, 1_000, Some("at most 64 addresses"));
    }

    #[test]
    fn duplicate_addresses_are_tried_once() {
        let remote = RemoteMeta::new(
            vec!["a:1".into(), " a:1 ".into(), "b:1".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(remote.inner.addrs, ["a:1", "b:1"]);
    }
}
