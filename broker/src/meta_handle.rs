//! [`MetaHandle`]: how a broker reaches metadata, whether or not it is a meta member.
//!
//! A node with the `meta` role is a raft member ([`MetaNode`]): it reads the state it applied
//! itself. A broker without it (an elastic broker: `roles = ["broker", ...]` with `meta.peers`
//! naming the members) keeps a [`MetaMirror`]: a local copy of the state that a member streams
//! applied commands into. Both answer `read` from memory — a fetch never waits on raft — and
//! both make `write` and `sync` read-your-writes and linearizable (see `strata_meta::mirror`).
//!
//! Member-only operations (raft metrics, membership changes, the metadata backup) are reached
//! through [`MetaHandle::member`]; a mirror reports no membership and never leads.

use parking_lot::RwLockReadGuard;
use std::net::SocketAddr;
use strata_meta::{
    Command, CommandResult, MembershipView, MetaError, MetaMirror, MetaNode, MetaState,
};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub enum MetaHandle {
    /// This process is a member of the meta group.
    Member(MetaNode),
    /// This process follows the group from outside.
    Remote(MetaMirror),
}

impl From<MetaNode> for MetaHandle {
    fn from(node: MetaNode) -> Self {
        MetaHandle::Member(node)
    }
}

impl MetaHandle {
    /// The applied (member) or mirrored (remote) state; local, no I/O. Drop the guard before
    /// any `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        match self {
            MetaHandle::Member(node) => node.read(),
            MetaHandle::Remote(mirror) => mirror.read(),
        }
    }

    /// Proposes `cmd`; answers once `read` here shows it.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        match self {
            MetaHandle::Member(node) => node.write(cmd).await,
            MetaHandle::Remote(mirror) => mirror.write(cmd).await,
        }
    }

    /// Waits until `read` shows every write acknowledged before the call.
    pub async fn sync(&self) -> Result<(), MetaError> {
        match self {
            MetaHandle::Member(node) => node.sync().await,
            MetaHandle::Remote(mirror) => mirror.sync().await,
        }
    }

    /// Fires when the state `read` answers changes (value: its last applied log index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            MetaHandle::Member(node) => node.subscribe(),
            MetaHandle::Remote(mirror) => mirror.subscribe(),
        }
    }

    /// The meta member, if this process is one.
    pub fn member(&self) -> Option<&MetaNode> {
        match self {
            MetaHandle::Member(node) => Some(node),
            MetaHandle::Remote(_) => None,
        }
    }

    /// The membership as this member applied it; empty for a mirror.
    pub fn membership(&self) -> MembershipView {
        self.member().map(MetaNode::membership).unwrap_or_default()
    }

    /// The meta leader this member knows of; `None` for a mirror.
    pub fn leader(&self) -> Option<u64> {
        self.member().and_then(MetaNode::leader)
    }

    /// Whether this process leads the meta group (a mirror never does).
    pub fn is_leader(&self) -> bool {
        self.member().is_some_and(MetaNode::is_leader)
    }

    /// Where this member serves the meta gRPC API (multi-node members only).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.member().and_then(MetaNode::grpc_addr)
    }

    /// `routes` plus, on a member, the `Meta` client service (for a listener the caller runs).
    pub fn client_routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        match self {
            MetaHandle::Member(node) => node.client_routes(routes),
            MetaHandle::Remote(_) => routes,
        }
    }

    /// Stops the member's raft and server, or the mirror's follow task.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        match self {
            MetaHandle::Member(node) => node.shutdown().await,
            MetaHandle::Remote(mirror) => {
                mirror.shutdown();
                Ok(())
            }
        }
    }
}
