//! [`MetaMirror`]: a local, continuously followed copy of the metadata, for a process that is
//! not a member of the meta group (an elastic broker).
//!
//! A member ([`crate::MetaNode`]) reads the state its own raft applied. A mirror keeps a
//! [`MetaState`] of its own and applies to it, in log order, every command a member streams to
//! it (`Meta.Follow`): `MetaState::apply` is pure (no clock, no randomness; times and ids come
//! inside the commands), so the mirror reaches exactly the state the members reach. Reads are
//! local — [`MetaMirror::read`] takes a lock, no I/O — so a fetch never waits on raft.
//!
//! # Consistency
//!
//! - [`MetaMirror::write`] sends the command to the leader ([`RemoteMeta::write_indexed`]),
//!   then waits until the mirror has applied the command's log index: a caller reads its own
//!   writes, as on a member.
//! - [`MetaMirror::sync`] asks the leader for a read index (raft's ReadIndex) and waits until
//!   the mirror has applied it: after it, `read` shows every write acknowledged anywhere before
//!   the call.
//! - Between those, `read` may lag the leader by the stream's delay, as a member's follower
//!   state does.
//!
//! # The follow task
//!
//! One task per mirror holds one Follow stream, to the last known leader first, else to the
//! configured members in turn, asking for the entries after the mirror's applied index. A
//! member that dies or restarts ends the stream; the task follows another member from where it
//! stopped. A member that cannot serve from there (its log was purged behind a snapshot, or the
//! mirror fell behind its live feed) says `Resnapshot`: the task reads the whole state
//! ([`RemoteMeta::state`], linearizable) and follows from its index. A `write` or `sync` whose
//! index does not arrive within half its wait makes the task drop its stream and follow another
//! member (the one it followed may be cut off from the leader).

use crate::error::MetaError;
use crate::grpc::{self, pb, Followed, WIRE_FORMAT};
use crate::remote::{meta_client, RemoteMeta, REMOTE_RETRY_MS_MAX, REMOTE_RETRY_MS_MIN};
use crate::state::{Command, CommandResult, MetaState};
use parking_lot::{RwLock, RwLockReadGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// A metadata copy for a process outside the meta group; see the module docs. Cheap to clone;
/// clones share the state and the follow task, which runs until [`MetaMirror::shutdown`] (the
/// task holds the state while a stream is open, so dropping every clone alone does not stop it
/// until that stream ends).
#[derive(Clone)]
pub struct MetaMirror {
    inner: Arc<Inner>,
}

struct Inner {
    remote: RemoteMeta,
    state: Arc<RwLock<MetaState>>,
    applied_tx: watch::Sender<u64>,
    /// How long `write` and `sync` wait for the mirror to apply their index.
    apply_wait: Duration,
    /// Asks the follow task to drop its stream and follow another member.
    refollow: Notify,
    /// Tells the follow task to stop.
    stop: watch::Sender<bool>,
    /// Whole-state reads after a `Resnapshot` (for metrics and tests).
    resnapshots: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl std::fmt::Debug for MetaMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaMirror")
            .field("remote", &self.inner.remote)
            .field("applied", &*self.inner.applied_tx.borrow())
            .finish_non_exhaustive()
    }
}

impl MetaMirror {
    /// Reads the whole state from the leader through `remote` (bounded by its timeout), then
    /// starts following. `apply_wait` bounds how long [`MetaMirror::write`] and
    /// [`MetaMirror::sync`] wait for the mirror to apply their index.
    pub async fn start(remote: RemoteMeta, apply_wait: Duration) -> Result<MetaMirror, MetaError> {
        if apply_wait.is_zero() {
            return Err(MetaError::Config {
                reason: "the mirror's apply wait must be above zero".into(),
            });
        }
        let initial = remote.state().await?;
        let applied = initial.last_applied();
        let (applied_tx, _) = watch::channel(applied);
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            remote,
            state: Arc::new(RwLock::new((*initial).clone())),
            applied_tx,
            apply_wait,
            refollow: Notify::new(),
            stop,
            resnapshots: AtomicU64::new(0),
        });
        tokio::spawn(follow(Arc::downgrade(&inner), stop_rx));
        tracing::info!(applied, "metadata mirror started");
        Ok(MetaMirror { inner })
    }

    /// The mirrored state (local, no I/O). The guard blocks the follow task while held: take
    /// it, read, drop it; it cannot be held across `.await` in a `Send` future.
    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.inner.state.read()
    }

    /// Fires when the mirrored state changes (value: its last applied log index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// How many times the mirror read the whole state again because a member could not
    /// continue from its index.
    pub fn resnapshots(&self) -> u64 {
        self.inner.resnapshots.load(Ordering::Relaxed)
    }

    /// The client the mirror writes and reads the leader with.
    pub fn remote(&self) -> &RemoteMeta {
        &self.inner.remote
    }

    /// Proposes `cmd` on the leader and returns its result once the mirror has applied it
    /// (so [`MetaMirror::read`] shows it). Errors as [`RemoteMeta::write`]; also
    /// [`MetaError::ApplyLagging`] if the command was applied but the mirror did not get it
    /// within its apply wait.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let (result, index) = self.inner.remote.write_indexed(cmd).await?;
        self.wait_applied(index).await?;
        Ok(result)
    }

    /// Waits until [`MetaMirror::read`] shows every write acknowledged anywhere before the call.
    pub async fn sync(&self) -> Result<(), MetaError> {
        let index = self.inner.remote.read_index().await?;
        self.wait_applied(index).await
    }

    /// Stops the follow task (also done when the last clone is dropped). Reads keep answering
    /// the last state; writes still go to the leader but wait in vain for their index.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }

    async fn wait_applied(&self, index: u64) -> Result<(), MetaError> {
        let mut applied = self.inner.applied_tx.subscribe();
        let half = self.inner.apply_wait / 2;
        for round in 0..2 {
            let reached = tokio::time::timeout(half, applied.wait_for(|&a| a >= index))
                .await
                .map(|r| r.map(|_| ()));
            match reached {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => return Err(MetaError::ShutDown),
                Err(_) if round == 0 => {
                    tracing::info!(
                        index,
                        applied = *applied.borrow(),
                        "metadata mirror is behind; following another member"
                    );
                    self.inner.refollow.notify_one();
                }
                Err(_) => {}
            }
        }
        Err(MetaError::ApplyLagging {
            log_index: index,
            waited_ms: self.inner.apply_wait.as_millis() as u64,
        })
    }
}

/// Why one Follow stream ended.
enum Ended {
    /// The member went away, or was told to: follow another one.
    Next(String),
    /// The member cannot continue from the mirror's index: read the whole state.
    Resnapshot(String),
}

/// The follow task: one stream at a time, until stopped or every mirror clone is gone.
async fn follow(inner: std::sync::Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut cursor = 0usize;
    let mut pause = Duration::from_millis(REMOTE_RETRY_MS_MIN);
    loop {
        let Some(mirror) = inner.upgrade() else {
            return;
        };
        let addr = {
            let (addrs, leader) = mirror.remote.addrs();
            match leader {
                Some(leader) if cursor == 0 => leader,
                _ => {
                    cursor += 1;
                    addrs[cursor % addrs.len()].clone()
                }
            }
        };
        let ended = tokio::select! {
            ended = follow_one(&mirror, &addr) => ended,
            () = mirror.refollow.notified() => {
                cursor += 1;
                Ended::Next("asked to follow another member".into())
            }
            _ = stop.wait_for(|&s| s) => return,
        };
        let refollow = match ended {
            Ended::Next(reason) => {
                tracing::debug!(%addr, %reason, "metadata follow stream ended");
                true
            }
            Ended::Resnapshot(reason) => {
                tracing::info!(%addr, %reason, "metadata mirror reads the whole state again");
                let read = tokio::select! {
                    read = mirror.remote.state() => read,
                    _ = stop.wait_for(|&s| s) => return,
                };
                match read {
                    Ok(state) => {
                        let applied = state.last_applied();
                        *mirror.state.write() = (*state).clone();
                        mirror.applied_tx.send_replace(applied);
                        mirror.resnapshots.fetch_add(1, Ordering::Relaxed);
                        pause = Duration::from_millis(REMOTE_RETRY_MS_MIN);
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metadata mirror cannot read the state");
                        true
                    }
                }
            }
        };
        drop(mirror);
        if refollow {
            cursor += 1;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|&s| s) => return,
            }
            pause = (pause * 2).min(Duration::from_millis(REMOTE_RETRY_MS_MAX));
        }
    }
}

/// Follows `addr` from the mirror's applied index until the stream ends.
async fn follow_one(mirror: &Inner, addr: &str) -> Ended {
    let channel = match mirror.remote.channel(addr) {
        Ok(channel) => channel,
        Err(e) => return Ended::Next(e.to_string()),
    };
    let from_applied = mirror.state.read().last_applied();
    let request = pb::FollowRequest {
        format: WIRE_FORMAT,
        from_applied,
    };
    let mut stream = match meta_client(channel).follow(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            return Ended::Next(format!("{:?}: {}", status.code(), status.message()));
        }
    };
    tracing::debug!(%addr, from_applied, "following metadata");
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ended::Next("the member ended the stream".into()),
            Err(status) => {
                return Ended::Next(format!("{:?}: {}", status.code(), status.message()))
            }
        };
        match grpc::followed(event) {
            Ok(Followed::Entry { index, command }) => {
                let mut state = mirror.state.write();
                let applied = state.last_applied();
                if index <= applied {
                    continue;
                }
                if index != applied + 1 {
                    return Ended::Resnapshot(format!(
                        "the stream skipped from {applied} to {index}"
                    ));
                }
                if let Some(cmd) = &command {
                    // The result is the leader's to report; the state is what matters here.
                    let _ = state.apply(cmd);
                }
                state.set_last_applied(index);
                drop(state);
                mirror.applied_tx.send_replace(index);
            }
            Ok(Followed::Resnapshot { reason }) => return Ended::Resnapshot(reason),
            Err(e) => return Ended::Resnapshot(format!("an unreadable entry: {e}")),
        }
    }
}
