//! The clients of the meta gRPC API: openraft's transport ([`GrpcNetwork`]) and the calls a
//! node forwards to the leader ([`Peers`]).
//!
//! A node's address is the `addr` of its `BasicNode` in the raft membership (`host:port` of
//! its gRPC listener), so the transport needs no address book of its own: membership is data
//! in the raft log. [`Peers`] keeps one lazily connected HTTP/2 channel per address; every RPC
//! to that node (replication, votes, snapshot chunks, forwarded calls) shares it, and it
//! re-dials by itself after the peer restarts.
//!
//! Errors are mapped so that openraft backs off from a dead peer: a failed connect, any
//! `UNAVAILABLE`, or a peer that does not read this wire format is `Unreachable` (openraft
//! waits [`UNREACHABLE_BACKOFF_MS`] before the next try); a call without an answer within
//! openraft's `RPCOption` TTL is `Timeout`; an error answered by the peer's raft is a
//! `RemoteError` carrying it. An AppendEntries message over [`MESSAGE_BYTES_MAX`] is
//! `PayloadTooLarge`, so openraft sends fewer entries at a time.
//!
//! For forwarded calls the question is whether the call may have run: a failed connect is
//! `CallError::NotSent` (safe to try again, on another leader too); anything else after the
//! request left is [`MetaError::ForwardFailed`], whose outcome is unknown.

use crate::error::MetaError;
use crate::grpc::{
    self, pb, CONNECT_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS, KEEPALIVE_TIMEOUT_MS, MESSAGE_BYTES_MAX,
    PEER_CONNECTIONS_MAX, UNREACHABLE_BACKOFF_MS,
};
use crate::leader::{Attempt, MembershipView, Written};
use crate::raft::{NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// One lazily connected channel per peer address, shared by every client of this node.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("connections", &self.channels.lock().len())
            .finish()
    }
}

impl Peers {
    /// The channel to `addr` (`host:port`, or a URI with a scheme). Connects on first use.
    fn channel(&self, node_id: NodeId, addr: &str) -> Result<Channel, MetaError> {
        if let Some(channel) = self.channels.lock().get(addr) {
            return Ok(channel.clone());
        }
        let unreachable = |reason: String| MetaError::PeerUnreachable { node_id, reason };
        if addr.is_empty() {
            return Err(unreachable("the membership holds no address for it".into()));
        }
        let channel = endpoint(addr)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let mut channels = self.channels.lock();
        if channels.len() >= PEER_CONNECTIONS_MAX {
            // Addresses of nodes long gone; live ones re-dial on their next call.
            channels.clear();
        }
        Ok(channels.entry(addr.to_owned()).or_insert(channel).clone())
    }

    fn meta_client(
        &self,
        node_id: NodeId,
        addr: &str,
    ) -> Result<pb::meta_client::MetaClient<Channel>, CallError> {
        let channel = self
            .channel(node_id, addr)
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        Ok(pb::meta_client::MetaClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// Forwards a write to `leader`.
    pub(crate) async fn write(
        &self,
        leader: NodeId,
        addr: String,
        request: pb::WriteRequest,
        timeout: Duration,
    ) -> Result<Attempt<Written>, CallError> {
        let mut client = self.meta_client(leader, &addr)?;
        let reply = unary(
            leader,
            timeout,
            client.write(with_timeout(request, timeout)),
        )
        .await?;
        grpc::write_outcome(reply, leader).map_err(CallError::Failed)
    }

    /// Asks `leader` for a linearizable read index.
    pub(crate) async fn read_index(
        &self,
        leader: NodeId,
        addr: String,
        timeout: Duration,
    ) -> Result<Attempt<u64>, CallError> {
        let mut client = self.meta_client(leader, &addr)?;
        let request = with_timeout(pb::ReadIndexRequest {}, timeout);
        let reply = unary(leader, timeout, client.read_index(request)).await?;
        grpc::read_index_outcome(reply, leader).map_err(CallError::Failed)
    }

    /// Asks `leader` to add a learner.
    pub(crate) async fn add_learner(
        &self,
        leader: NodeId,
        addr: String,
        learner: (NodeId, String),
        timeout: Duration,
    ) -> Result<Attempt<MembershipView>, CallError> {
        let mut client = self.meta_client(leader, &addr)?;
        let request = pb::AddLearnerRequest {
            node_id: learner.0,
            addr: learner.1,
        };
        let reply = unary(
            leader,
            timeout,
            client.add_learner(with_timeout(request, timeout)),
        )
        .await?;
        grpc::membership_outcome(reply, leader, Some(learner.0)).map_err(CallError::Failed)
    }

    /// Asks `leader` to replace the voter set.
    pub(crate) async fn change_membership(
        &self,
        leader: NodeId,
        addr: String,
        voters: BTreeSet<NodeId>,
        retain: bool,
        timeout: Duration,
    ) -> Result<Attempt<MembershipView>, CallError> {
        let mut client = self.meta_client(leader, &addr)?;
        let request = pb::ChangeMembershipRequest {
            voter_ids: voters.into_iter().collect(),
            retain,
            remove_learner_ids: Vec::new(),
        };
        let reply = unary(
            leader,
            timeout,
            client.change_membership(with_timeout(request, timeout)),
        )
        .await?;
        grpc::membership_outcome(reply, leader, None).map_err(CallError::Failed)
    }
}

impl Peers {
    /// Asks `leader` to remove learners from the group.
    pub(crate) async fn remove_learners(
        &self,
        leader: NodeId,
        addr: String,
        ids: BTreeSet<NodeId>,
        timeout: Duration,
    ) -> Result<Attempt<MembershipView>, CallError> {
        let mut client = self.meta_client(leader, &addr)?;
        let request = pb::ChangeMembershipRequest {
            voter_ids: Vec::new(),
            retain: false,
            remove_learner_ids: ids.into_iter().collect(),
        };
        let reply = unary(
            leader,
            timeout,
            client.change_membership(with_timeout(request, timeout)),
        )
        .await?;
        grpc::membership_outcome(reply, leader, None).map_err(CallError::Failed)
    }
}

/// The endpoint of a meta node's gRPC address: `host:port`, or a URI with a scheme.
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint, MetaError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri).map_err(|e| MetaError::Config {
        reason: format!("`{addr}` is not a meta node address: {e}"),
    })
}

/// Why a forwarded call has no outcome.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The call never left this node (no connection): trying again cannot apply it twice.
    NotSent(String),
    /// The call failed; the error says whether its outcome is known.
    Failed(MetaError),
}

pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    // Sent as `grpc-timeout`, so the leader drops the call when this node stops waiting.
    request.set_timeout(timeout);
    request
}

/// Whether the status says the connection could not be made, so the request was not sent.
pub(crate) fn is_connect_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn unary<T>(
    leader: NodeId,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) if is_connect_error(&status) => {
            Err(CallError::NotSent(status.message().to_owned()))
        }
        Ok(Err(status)) => Err(CallError::Failed(MetaError::ForwardFailed {
            leader,
            reason: format!("{:?}: {}", status.code(), status.message()),
        })),
        Err(_) => Err(CallError::Failed(MetaError::ForwardFailed {
            leader,
            reason: format!("no answer within {} ms", timeout.as_millis()),
        })),
    }
}

/// openraft's network factory: one [`GrpcConnection`] per replication stream or vote.
#[derive(Clone, Debug)]
pub struct GrpcNetwork {
    node_id: NodeId,
    peers: Peers,
}

impl GrpcNetwork {
    pub fn new(node_id: NodeId, peers: Peers) -> Self {
        Self { node_id, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GrpcConnection {
            node_id: self.node_id,
            target,
            node: node.clone(),
            // A bad address is reported (as unreachable) on every call, not here: openraft
            // gives this method no way to fail.
            channel: self.peers.channel(target, &node.addr),
        }
    }
}

/// openraft's client to one peer.
pub struct GrpcConnection {
    node_id: NodeId,
    target: NodeId,
    node: BasicNode,
    channel: Result<Channel, MetaError>,
}

enum Outgoing {
    AppendEntries(pb::RaftMessage),
    Vote(pb::RaftMessage),
    InstallSnapshot(pb::SnapshotChunk),
}

impl GrpcConnection {
    fn unreachable<E: std::error::Error>(&self, reason: String) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&MetaError::PeerUnreachable {
            node_id: self.target,
            reason,
        }))
    }

    /// Sends one RPC and decodes the peer's `Result<Response, RaftError<E>>`.
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        outgoing: Outgoing,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(e) => return Err(self.unreachable(e.to_string())),
        };
        let mut client = pb::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let reply = async {
            match outgoing {
                Outgoing::AppendEntries(m) => client.append_entries(with_timeout(m, ttl)).await,
                Outgoing::Vote(m) => client.vote(with_timeout(m, ttl)).await,
                Outgoing::InstallSnapshot(c) => client.install_snapshot(with_timeout(c, ttl)).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, reply).await {
            Ok(Ok(reply)) => reply.into_inner(),
            // Down, or of a build that does not speak this format: back off either way.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::Unimplemented
                ) =>
            {
                return Err(self.unreachable(status.message().to_owned()))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.node_id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = grpc::decode(
            reply.format,
            &reply.json,
            "raft reply",
        )
        .map_err(|e| {
            // A peer of another build: back off rather than spin on it.
            tracing::warn!(target_node = self.target, error = %e, "undecodable meta raft reply");
            self.unreachable(e.to_string())
        })?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let message = grpc::raft_message(&rpc, "AppendEntriesRequest")
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if message.json.len() > MESSAGE_BYTES_MAX - 1024 {
            if entries > 1 {
                // openraft sends fewer entries per message from now on.
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2) as u64),
                ));
            }
            // Cannot happen: `MetaNode::write` refuses commands this large.
            tracing::error!(
                target_node = self.target,
                bytes = message.json.len(),
                "a single meta log entry exceeds the message limit"
            );
            return Err(self.unreachable("a single log entry exceeds the message limit".into()));
        }
        self.call(
            RPCTypes::AppendEntries,
            option.hard_ttl(),
            Outgoing::AppendEntries(message),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let chunk =
            grpc::snapshot_chunk(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(
            RPCTypes::InstallSnapshot,
            option.hard_ttl(),
            Outgoing::InstallSnapshot(chunk),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let message = grpc::raft_message(&rpc, "VoteRequest")
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(RPCTypes::Vote, option.hard_ttl(), Outgoing::Vote(message))
            .await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(
            UNREACHABLE_BACKOFF_MS,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address where nothing listens (bound, then released).
    fn dead_addr() -> String {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_peer_that_cannot_be_reached_is_unreachable_and_nothing_is_sent() {
        let peers = Peers::default();
        let addr = dead_addr();

        // A forwarded call that could not connect is known not to have been sent.
        let request =
            grpc::write_request(&crate::Command::AllocateProducerIds { count: 1 }).unwrap();
        let sent = peers
            .write(2, addr.clone(), request, Duration::from_secs(5))
            .await;
        assert!(matches!(sent, Err(CallError::NotSent(_))), "{sent:?}");

        // openraft is told to back off.
        let mut network = GrpcNetwork::new(1, peers.clone());
        let mut conn = network.new_client(2, &BasicNode::new(&addr)).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(5));
        let res = conn.vote(vote, option).await;
        assert!(matches!(res, Err(RPCError::Unreachable(_))), "{res:?}");

        // So is a peer without an address (a group formed by `MetaNode::open`).
        let mut conn = network.new_client(3, &BasicNode::default()).await;
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let res = conn
            .vote(vote, RPCOption::new(Duration::from_secs(5)))
            .await;
        assert!(matches!(res, Err(RPCError::Unreachable(_))), "{res:?}");
    }
}
