//! The admin API over gRPC (`proto/admin.proto`, package `strata.admin.v1`), served on
//! `meta.listen` (default 127.0.0.1:1228): beside the meta services in multi-node mode, on a
//! listener of its own on a single node.
//!
//! One implementation, two transports: every RPC calls the operation the HTTP handler calls
//! (`api::*_op`). Requests are turned into the JSON object the HTTP body would carry, so the
//! checks and their messages are the same; answers are the JSON value the HTTP API serves,
//! read into the typed proto messages (which derive `serde::Deserialize`, see build.rs).
//! Errors keep the HTTP message; the code maps the status ([`status`]) and the trailing
//! metadata carries `strata-error` (the JSON `error` kind) and `strata-field` (the request
//! field at fault, when one is).
//!
//! The node is built after metadata opens (the meta gRPC server, and so this service, start
//! first): until [`AdminService::set_node`] is called every RPC answers UNAVAILABLE.

use super::{api, meta_voters, ApiError};
use crate::node::Node;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The code tonic-prost-build generates from `proto/admin.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("strata.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};

/// `proto/admin.proto` compiled to a descriptor set (build.rs), for server reflection.
const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");

/// The `Admin` gRPC service; answers UNAVAILABLE until the node is set.
#[derive(Clone, Default)]
pub struct AdminService {
    node: Arc<OnceLock<Arc<Node>>>,
}

impl AdminService {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts answering with `node` (once; later calls are ignored).
    pub fn set_node(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
    }

    /// The tonic routes to serve beside the meta services: the Admin service and gRPC server
    /// reflection (v1 and v1alpha) describing it.
    pub fn routes(&self) -> tonic::service::Routes {
        let mut routes = tonic::service::Routes::new(AdminServer::new(self.clone()))
            .add_service(crate::peer::PeerService::new(self.node.clone()));
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        };
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => {
                routes = routes.add_service(v1).add_service(v1alpha);
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(%err, "admin gRPC reflection is off");
            }
        }
        routes
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node.get().cloned().ok_or_else(|| {
            Status::unavailable("the node is starting: the admin API answers once it serves")
        })
    }
}

/// Serves `routes` (single-node mode: the Admin service and the node's `Meta` service for
/// non-member clients such as the Lambda function) on `listener` until `shutdown`.
pub async fn serve(
    routes: tonic::service::Routes,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(err) = served {
        tracing::error!(%err, "admin gRPC listener failed");
    }
}

/// The gRPC status of an admin API error: same message, code by HTTP status class.
pub(crate) fn status(err: ApiError) -> Status {
    let code = match err.status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::CONFLICT => tonic::Code::FailedPrecondition,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        _ => tonic::Code::Internal,
    };
    let mut status = Status::new(code, err.message);
    if let Ok(v) = err.kind.parse() {
        status.metadata_mut().insert("strata-error", v);
    }
    if let Some(field) = err.field.and_then(|f| f.parse().ok()) {
        status.metadata_mut().insert("strata-field", field);
    }
    status
}

/// Reads an answer of the JSON API into its proto message.
fn typed<M: DeserializeOwned>(value: impl Serialize) -> Result<M, Status> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| Status::internal(format!("answer does not fit the proto message: {e}")))
}

fn ok<M: DeserializeOwned>(value: impl Serialize) -> Result<Response<M>, Status> {
    typed(value).map(Response::new)
}

/// The JSON body of `POST /v1/topics` for a `CreateTopic` request.
fn create_topic_body(r: pb::CreateTopicRequest) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("name".into(), Value::from(r.name));
    if let Some(p) = r.partitions {
        body.insert("partitions".into(), Value::from(p));
    }
    if !r.configs.is_empty() {
        let configs = r.configs.into_iter().map(|(k, v)| (k, Value::from(v)));
        body.insert("configs".into(), Value::Object(configs.collect()));
    }
    body
}

/// The JSON body of `PATCH /v1/topics/{name}` for an `AlterTopic` request.
fn alter_topic_body(r: pb::AlterTopicRequest) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(p) = r.partitions {
        body.insert("partitions".into(), Value::from(p));
    }
    if !r.set.is_empty() {
        let set = r.set.into_iter().map(|(k, v)| (k, Value::from(v)));
        body.insert("set".into(), Value::Object(set.collect()));
    }
    if !r.delete.is_empty() {
        body.insert("delete".into(), Value::from(r.delete));
    }
    if r.validate_only {
        body.insert("validate_only".into(), Value::Bool(true));
    }
    body
}

/// The JSON body of `POST /v1/groups/{id}/reset-offsets` for a `ResetGroupOffsets` request.
/// Giving more than one target makes a `to` the shared parser refuses (naming `to`).
fn reset_offsets_body(r: pb::ResetGroupOffsetsRequest) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("topic".into(), Value::from(r.topic));
    if !r.partitions.is_empty() {
        body.insert("partitions".into(), Value::from(r.partitions));
    }
    let mut to = Map::new();
    if let Some(n) = r.to_offset {
        to.insert("offset".into(), Value::from(n));
    }
    if let Some(n) = r.to_timestamp {
        to.insert("timestamp".into(), Value::from(n));
    }
    match (r.to.is_empty(), to.is_empty()) {
        (true, true) => {}
        (false, true) => {
            body.insert("to".into(), Value::from(r.to));
        }
        (true, false) => {
            body.insert("to".into(), Value::Object(to));
        }
        (false, false) => {
            to.insert("to".into(), Value::from(r.to));
            body.insert("to".into(), Value::Object(to));
        }
    }
    if r.dry_run {
        body.insert("dry_run".into(), Value::Bool(true));
    }
    body
}

/// The JSON body of `POST /v1/users` for an `UpsertUser` request (salts in base64).
fn upsert_user_body(r: pb::UpsertUserRequest) -> Map<String, Value> {
    use base64::Engine;
    let b64 = |b: &[u8]| Value::from(base64::engine::general_purpose::STANDARD.encode(b));
    let mut body = Map::new();
    body.insert("name".into(), Value::from(r.name));
    body.insert("mechanism".into(), Value::from(r.mechanism));
    body.insert("iterations".into(), Value::from(r.iterations));
    body.insert("salt".into(), b64(&r.salt));
    body.insert("salted_password".into(), b64(&r.salted_password));
    body
}

/// The JSON filter of `GET`/`DELETE /v1/acls` for an `AclFilter` (unset fields left out).
fn acl_filter_body(f: pb::AclFilter) -> Map<String, Value> {
    let fields = [
        ("resource_type", f.resource_type),
        ("resource_name", f.resource_name),
        ("pattern_type", f.pattern_type),
        ("principal", f.principal),
        ("host", f.host),
        ("operation", f.operation),
        ("permission", f.permission),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::from(v?))))
        .collect()
}

/// The JSON body of `POST /v1/acls` for an `Acl` (empty fields left out: defaults or
/// "required" errors, as over HTTP).
fn create_acl_body(a: pb::Acl) -> Map<String, Value> {
    let fields = [
        ("resource_type", a.resource_type),
        ("resource_name", a.resource_name),
        ("pattern_type", a.pattern_type),
        ("principal", a.principal),
        ("host", a.host),
        ("operation", a.operation),
        ("permission", a.permission),
    ];
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_cluster(
        &self,
        _: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        ok(api::cluster_op(&*self.node()?))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = api::list_topics(&*self.node()?);
        Ok(Response::new(pb::ListTopicsResponse {
            topics: typed(topics)?,
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let node = self.node()?;
        ok(api::topic_detail(&node, &request.into_inner().name).map_err(status)?)
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let node = self.node()?;
        let body = create_topic_body(request.into_inner());
        ok(api::create_topic_op(&node, body).await.map_err(status)?)
    }

    async fn alter_topic(
        &self,
        request: Request<pb::AlterTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let node = self.node()?;
        let request = request.into_inner();
        let name = request.name.clone();
        let body = alter_topic_body(request);
        ok(api::alter_topic_op(&node, &name, body)
            .await
            .map_err(status)?)
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let node = self.node()?;
        ok(api::delete_topic_op(&node, &request.into_inner().name)
            .await
            .map_err(status)?)
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let node = self.node()?;
        let groups = api::groups_op(&node).await.map_err(status)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: typed(groups)?,
        }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let node = self.node()?;
        ok(
            api::describe_group_op(&node, &request.into_inner().group_id)
                .await
                .map_err(status)?,
        )
    }

    async fn reset_group_offsets(
        &self,
        request: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::ResetGroupOffsetsResponse>, Status> {
        let node = self.node()?;
        let request = request.into_inner();
        let group = request.group_id.clone();
        let body = reset_offsets_body(request);
        ok(api::reset_offsets_op(&node, &group, body)
            .await
            .map_err(status)?)
    }

    async fn get_storage(
        &self,
        _: Request<pb::GetStorageRequest>,
    ) -> Result<Response<pb::Storage>, Status> {
        ok(api::storage_op(&*self.node()?))
    }

    async fn get_wal(&self, _: Request<pb::GetWalRequest>) -> Result<Response<pb::Wal>, Status> {
        ok(api::wal_op(&*self.node()?))
    }

    async fn get_meta(
        &self,
        _: Request<pb::GetMetaRequest>,
    ) -> Result<Response<pb::MetaGroup>, Status> {
        ok(meta_voters::meta_op(&*self.node()?).map_err(status)?)
    }

    async fn add_meta_voter(
        &self,
        request: Request<pb::AddMetaVoterRequest>,
    ) -> Result<Response<pb::MetaVoterChange>, Status> {
        let node = self.node()?;
        let r = request.into_inner();
        let mut body = Map::new();
        body.insert("node_id".into(), Value::from(r.node_id));
        body.insert("address".into(), Value::from(r.address));
        ok(meta_voters::add_voter_op(&node, body)
            .await
            .map_err(status)?)
    }

    async fn remove_meta_voter(
        &self,
        request: Request<pb::RemoveMetaVoterRequest>,
    ) -> Result<Response<pb::MetaVoterChange>, Status> {
        let node = self.node()?;
        ok(
            meta_voters::remove_voter_op(&node, request.into_inner().node_id)
                .await
                .map_err(status)?,
        )
    }

    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let users = api::users_op(&*self.node()?);
        Ok(Response::new(pb::ListUsersResponse {
            users: typed(users)?,
        }))
    }

    async fn upsert_user(
        &self,
        request: Request<pb::UpsertUserRequest>,
    ) -> Result<Response<pb::UpsertUserResponse>, Status> {
        let node = self.node()?;
        let body = upsert_user_body(request.into_inner());
        ok(api::upsert_user_op(&node, body).await.map_err(status)?)
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let node = self.node()?;
        ok(api::delete_user_op(&node, &request.into_inner().name)
            .await
            .map_err(status)?)
    }

    async fn list_acls(
        &self,
        request: Request<pb::AclFilter>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        let node = self.node()?;
        let filter = acl_filter_body(request.into_inner());
        let acls = api::list_acls_op(&node, &filter).map_err(status)?;
        Ok(Response::new(pb::ListAclsResponse { acls: typed(acls)? }))
    }

    async fn create_acl(&self, request: Request<pb::Acl>) -> Result<Response<pb::Acl>, Status> {
        let node = self.node()?;
        let body = create_acl_body(request.into_inner());
        let (_, acl) = api::create_acl_op(&node, &body).await.map_err(status)?;
        ok(acl)
    }

    async fn delete_acls(
        &self,
        request: Request<pb::AclFilter>,
    ) -> Result<Response<pb::DeleteAclsResponse>, Status> {
        let node = self.node()?;
        let filter = acl_filter_body(request.into_inner());
        ok(api::delete_acls_op(&node, &filter).await.map_err(status)?)
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let node = self.node()?;
        let request = request.into_inner();
        let mut body = Map::new();
        if let Some(draining) = request.draining {
            body.insert("draining".into(), Value::Bool(draining));
        }
        ok(api::drain_op(&node, request.node_id, body)
            .await
            .map_err(status)?)
    }

    async fn list_mqtt_clients(
        &self,
        _: Request<pb::ListMqttClientsRequest>,
    ) -> Result<Response<pb::ListMqttClientsResponse>, Status> {
        let node = self.node()?;
        ok(api::mqtt_clients_op(&node).await.map_err(status)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_map_to_grpc_codes_with_the_http_message() {
        let s = status(ApiError::bad_field(
            "partitions",
            "`partitions` must be 1..=5",
        ));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "`partitions` must be 1..=5");
        assert_eq!(s.metadata().get("strata-field").unwrap(), "partitions");
        assert_eq!(s.metadata().get("strata-error").unwrap(), "bad_request");

        let s = status(ApiError::not_found(
            "unknown_topic",
            "topic `x` does not exist",
        ));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "topic `x` does not exist");
        assert!(s.metadata().get("strata-field").is_none());

        let s = status(ApiError::conflict("group_active", "live members"));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.metadata().get("strata-error").unwrap(), "group_active");

        let unavailable = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "m");
        assert_eq!(status(unavailable).code(), tonic::Code::Unavailable);
        let forbidden = ApiError::new(StatusCode::FORBIDDEN, "forbidden", "m");
        assert_eq!(status(forbidden).code(), tonic::Code::PermissionDenied);
        let internal = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "m");
        assert_eq!(status(internal).code(), tonic::Code::Internal);
    }

    #[test]
    fn reflection_describes_the_admin_service() {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .with_service_name("strata.admin.v1.Admin")
            .build_v1()
            .expect("the descriptor set holds the Admin service");
    }

    #[tokio::test]
    async fn rpcs_are_unavailable_until_the_node_is_set() {
        let service = AdminService::new();
        let err = service
            .get_cluster(Request::new(pb::GetClusterRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let err = service
            .create_topic(Request::new(pb::CreateTopicRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn requests_become_the_http_bodies() {
        let body = create_topic_body(pb::CreateTopicRequest {
            name: "t".into(),
            partitions: Some(3),
            configs: [("retention.ms".to_string(), "5".to_string())].into(),
        });
        assert_eq!(
            Value::Object(body),
            json!({"name": "t", "partitions": 3, "configs": {"retention.ms": "5"}})
        );
        let body = create_topic_body(pb::CreateTopicRequest {
            name: "t".into(),
            ..Default::default()
        });
        assert_eq!(Value::Object(body), json!({"name": "t"}));

        let body = alter_topic_body(pb::AlterTopicRequest {
            name: "t".into(),
            delete: vec!["a".into()],
            validate_only: true,
            ..Default::default()
        });
        assert_eq!(
            Value::Object(body),
            json!({"delete": ["a"], "validate_only": true})
        );

        let reset = |to: &str, offset: Option<i64>, timestamp: Option<i64>| {
            let body = reset_offsets_body(pb::ResetGroupOffsetsRequest {
                topic: "t".into(),
                to: to.into(),
                to_offset: offset,
                to_timestamp: timestamp,
                ..Default::default()
            });
            body.get("to").cloned()
        };
        assert_eq!(reset("earliest", None, None), Some(json!("earliest")));
        assert_eq!(reset("", Some(4), None), Some(json!({"offset": 4})));
        assert_eq!(reset("", None, Some(9)), Some(json!({"timestamp": 9})));
        assert_eq!(reset("", None, None), None);
        let body = upsert_user_body(pb::UpsertUserRequest {
            name: "u".into(),
            mechanism: "SCRAM-SHA-256".into(),
            iterations: 4096,
            salt: b"salt".to_vec(),
            salted_password: vec![],
        });
        assert_eq!(body["salt"], json!("c2FsdA=="));
        assert_eq!(body["salted_password"], json!(""));
        // Two targets: an object the shared parser refuses.
        assert_eq!(
            reset("latest", Some(1), None),
            Some(json!({"offset": 1, "to": "latest"}))
        );
    }

    #[test]
    fn acl_requests_become_the_http_bodies() {
        let filter = acl_filter_body(pb::AclFilter {
            resource_type: Some("topic".into()),
            principal: Some("User:a".into()),
            ..Default::default()
        });
        assert_eq!(
            Value::Object(filter),
            json!({"resource_type": "topic", "principal": "User:a"})
        );
        assert!(acl_filter_body(pb::AclFilter::default()).is_empty());
        let body = create_acl_body(pb::Acl {
            resource_type: "Topic".into(),
            resource_name: "t".into(),
            principal: "User:a".into(),
            operation: "Read".into(),
            permission: "Allow".into(),
            ..Default::default()
        });
        assert_eq!(
            Value::Object(body),
            json!({"resource_type": "Topic", "resource_name": "t", "principal": "User:a",
                   "operation": "Read", "permission": "Allow"})
        );
        let acl: pb::Acl = typed(json!({"resource_type": "Topic", "host": "*"})).unwrap();
        assert_eq!(acl.host, "*");
        let clients: pb::ListMqttClientsResponse = typed(json!({
            "node_id": 1, "enabled": true, "connections": 1,
            "clients": [{"client_id": "c", "connected": true, "protocol": "5.0",
                         "keep_alive_secs": 30, "expires_ms": null, "session_expiry_secs": null}],
        }))
        .unwrap();
        assert_eq!(clients.clients[0].keep_alive_secs, Some(30));
        assert_eq!(clients.clients[0].session_expiry_secs, None);
    }

    #[test]
    fn json_answers_fit_the_messages() {
        let cluster: pb::Cluster = typed(json!({
            "node_id": 1,
            "cluster_id": "c",
            "roles": ["meta", "broker"],
            "listeners": {"kafka": "k", "meta": null, "wal": "w"},
            "meta": {"leader": null, "voters": [1, 2]},
            "brokers": [{"id": 2, "rack": null, "alive": true, "draining": false}],
            "wal": {"stream_epoch": 3, "stream_holder": null},
            "some_new_key": {"ignored": true},
        }))
        .unwrap();
        assert_eq!(cluster.roles, ["meta", "broker"]);
        assert_eq!(cluster.listeners.unwrap().wal.as_deref(), Some("w"));
        assert_eq!(cluster.meta.unwrap().voters, [1, 2]);
        assert!(cluster.brokers[0].alive);
        assert_eq!(cluster.wal.unwrap().stream_epoch, Some(3));
        let wrong: Result<pb::Cluster, _> = typed(json!({"node_id": "one"}));
        assert_eq!(wrong.unwrap_err().code(), tonic::Code::Internal);
    }
}
