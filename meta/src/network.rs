//! The raft transport between meta nodes — none yet.
//!
//! Today the metadata group has a single voter, which never sends a raft RPC, so the
//! [`NoNetwork`] factory hands out clients that answer every call with `Unreachable`. The tonic
//! transport on the admin/control gRPC port (1228) replaces this module in the meta-cluster
//! issue; nothing else has to change, because membership is data in the raft log.

use crate::error::MetaError;
use crate::raft::{NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

/// Creates [`NoConnection`]s.
#[derive(Clone, Debug, Default)]
pub struct NoNetwork;

/// A client to another meta node that cannot reach it.
#[derive(Clone, Debug)]
pub struct NoConnection {
    target: NodeId,
}

impl NoConnection {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        tracing::warn!(
            target_node = self.target,
            "meta raft RPC without a transport"
        );
        RPCError::Unreachable(Unreachable::new(&MetaError::PeerUnreachable {
            node_id: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        NoConnection { target }
    }
}

impl RaftNetwork<TypeConfig> for NoConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
