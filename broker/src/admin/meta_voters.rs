//! The meta group's membership in the admin API: `GET /v1/meta`, `POST /v1/meta/voters`,
//! `DELETE /v1/meta/voters/{id}` (gRPC `GetMeta`, `AddMetaVoter`, `RemoveMetaVoter`; CLI
//! `strata cluster meta [add|remove]`).
//!
//! Only a meta member answers: a broker that follows metadata from outside (a `MetaMirror`)
//! has no view of the membership and answers 409 naming the members to ask instead. A member
//! that does not lead forwards the change to the leader (`MetaNode::add_learner`,
//! `change_membership`, `remove_voter`); the voter set a change starts from is read after a
//! linearizable read point, so it is the committed one.
//!
//! Adding a voter: the new node runs with `roles = ["meta"]` and a `meta.peers` list without
//! itself (it waits to be added); it is added as a learner, the call waits (bounded by
//! `learner_catch_up_wait_ms`, 30 s) until it has caught up with the leader's log, then the
//! voter set grows through a joint configuration. Removing one: it is demoted to a learner
//! first, so it hears that it no longer votes (a voter dropped outright never hears the final
//! configuration and keeps campaigning, harmlessly but noisily), then removed from the group.

use super::api::{json_object, only_fields};
use super::ApiError;
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{MembershipView, MetaError, MetaNode};

type ApiResult<T> = Result<T, ApiError>;

/// How long the add waits for a TCP connection to the new node's address before refusing it.
const PROBE_WAIT_MS: u64 = 3_000;

fn member(node: &Node) -> ApiResult<&MetaNode> {
    node.meta.member().ok_or_else(|| {
        let peers: Vec<String> = node
            .config
            .meta_peers
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect();
        ApiError::conflict(
            "not_a_meta_member",
            format!(
                "node {} is not a meta member (it follows metadata from {}); ask the admin API \
                 of a node with the meta role",
                node.config.node_id,
                peers.join(",")
            ),
        )
    })
}

/// What the voter count tolerates, when it is worth a warning (an even count or one voter).
pub(crate) fn voter_warnings(voters: usize) -> Vec<String> {
    let tolerated = voters.saturating_sub(1) / 2;
    if voters == 1 {
        vec!["1 meta voter tolerates no failure: add voters (3 or 5) for availability".into()]
    } else if voters.is_multiple_of(2) {
        vec![format!(
            "{voters} meta voters tolerate {tolerated} failure(s), as {} do; an odd count (3 or 5) \
             is better",
            voters - 1
        )]
    } else {
        Vec::new()
    }
}

fn view_json(view: &MembershipView) -> Value {
    serde_json::json!({
        "voters": view.voters.keys().collect::<Vec<_>>(),
        "learners": view.learners.keys().collect::<Vec<_>>(),
        "membership_log_index": view.log_index,
        "warnings": voter_warnings(view.voters.len()),
    })
}

/// The meta group as this member sees it (`GET /v1/meta`, gRPC `GetMeta`). Log positions of
/// the other nodes are known only to the leader (its replication progress), so they are null
/// on a follower.
pub(crate) fn meta_op(node: &Node) -> ApiResult<Value> {
    let member = member(node)?;
    let view = member.membership();
    let metrics = member.raft().metrics().borrow().clone();
    let this = member.node_id();
    let leader = metrics.current_leader;
    let brokers: std::collections::BTreeSet<u64> = node
        .meta
        .read()
        .cluster()
        .brokers()
        .map(|b| b.node_id)
        .collect();
    let matched = |id: u64| -> Option<u64> {
        if id == this {
            return metrics.last_log_index;
        }
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied())
            .flatten()
            .map(|l| l.index)
    };
    let row = |id: u64, addr: &String, role: &str| {
        serde_json::json!({
            "id": id,
            "address": addr,
            "role": role,
            "leader": leader == Some(id),
            "this_node": id == this,
            "matched_log_index": matched(id),
            "broker": brokers.contains(&id),
        })
    };
    let mut nodes: Vec<Value> = view
        .voters
        .iter()
        .map(|(id, addr)| row(*id, addr, "voter"))
        .collect();
    nodes.extend(
        view.learners
            .iter()
            .map(|(id, addr)| row(*id, addr, "learner")),
    );
    let mut out = view_json(&view);
    let extra = serde_json::json!({
        "node_id": this,
        "leader": leader,
        "this_node_leads": member.is_leader(),
        "term": metrics.current_term,
        "joint": view.joint,
        "last_log_index": metrics.last_log_index,
        "last_applied": metrics.last_applied.map(|l| l.index),
        "nodes": nodes,
    });
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    Ok(out)
}

/// A refused or failed membership change as an API error.
fn change_error(err: MetaError) -> ApiError {
    match &err {
        MetaError::Membership {
            retryable: true, ..
        } => ApiError::conflict(
            "membership_change_in_flight",
            format!("{err}; retry once it is done"),
        ),
        MetaError::Membership { .. }
        | MetaError::Remote {
            retryable: false, ..
        } => ApiError::conflict("refused", err.to_string()),
        MetaError::LearnerLagging { node_id, .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "learner_lagging",
            format!(
                "{err}; it stays a learner: add it again to wait more, or remove it with \
                 `strata cluster meta remove {node_id}`"
            ),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the meta membership change failed: {err}"),
        ),
    }
}

fn parse_node_id(value: Option<&Value>) -> ApiResult<u64> {
    match value {
        None => Err(ApiError::bad_field("node_id", "`node_id` is required")),
        Some(v) => v.as_u64().filter(|id| *id > 0).ok_or_else(|| {
            ApiError::bad_field(
                "node_id",
                format!("`node_id` must be a positive integer, not {v}"),
            )
        }),
    }
}

/// `host:port` of the new node's meta listener.
fn parse_address(value: Option<&Value>) -> ApiResult<String> {
    let example = "(the new node's meta.listen, for example 10.0.0.4:1228)";
    let s = match value {
        None => {
            return Err(ApiError::bad_field(
                "address",
                format!("`address` is required {example}"),
            ))
        }
        Some(Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(ApiError::bad_field(
                "address",
                format!("`address` must be a string host:port {example}, not {other}"),
            ))
        }
    };
    let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == '/')
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !valid {
        return Err(ApiError::bad_field(
            "address",
            format!("`{s}` is not host:port {example}"),
        ));
    }
    Ok(s.to_string())
}

/// Adds node `node_id` at `address` as a meta voter (`POST /v1/meta/voters`, gRPC
/// `AddMetaVoter`): learner, caught up, then voter. Adding a voter again at the same address
/// changes nothing.
pub(crate) async fn add_voter_op(node: &Node, body: Map<String, Value>) -> ApiResult<Value> {
    only_fields(&body, &["node_id", "address"])?;
    let id = parse_node_id(body.get("node_id"))?;
    let address = parse_address(body.get("address"))?;
    let member = member(node)?;
    member.sync().await.map_err(change_error)?;
    let view = member.membership();
    if view.joint {
        return Err(change_error(MetaError::Membership {
            reason: "another membership change is in flight".into(),
            retryable: true,
        }));
    }
    if let Some(known) = view.voters.get(&id) {
        if *known == address {
            let mut out = view_json(&view);
            out["node_id"] = id.into();
            out["address"] = address.into();
            out["changed"] = false.into();
            return Ok(out);
        }
        return Err(ApiError::conflict(
            "exists",
            format!("node {id} is already a meta voter, at {known}, not {address}"),
        ));
    }
    if let Some((other, _)) = view
        .voters
        .iter()
        .chain(&view.learners)
        .find(|(other, addr)| **other != id && **addr == address)
    {
        return Err(ApiError::conflict(
            "exists",
            format!("{address} is the address of meta node {other}"),
        ));
    }
    let broker_only = node
        .meta
        .read()
        .cluster()
        .brokers()
        .any(|b| b.node_id == id);
    if broker_only && !view.learners.contains_key(&id) {
        return Err(ApiError::conflict(
            "broker_only_node",
            format!(
                "node {id} is a registered broker, not a meta member; a meta voter is a node \
                 started with roles = [\"meta\"] under a node id of its own"
            ),
        ));
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(PROBE_WAIT_MS),
        tokio::net::TcpStream::connect(&address),
    )
    .await;
    let unreachable = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no connection within {PROBE_WAIT_MS} ms")),
    };
    if let Some(why) = unreachable {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "unreachable",
            message: format!(
                "no meta node answers at {address} ({why}); start node {id} with \
                 roles = [\"meta\"] and meta.listen = {address} first"
            ),
            field: Some("address"),
        });
    }
    tracing::info!(node_id = id, %address, "adding a meta voter (as a learner first)");
    member
        .add_learner(id, address.clone())
        .await
        .map_err(change_error)?;
    let mut voters: Vec<u64> = view.voters.keys().copied().collect();
    voters.push(id);
    let view = member
        .change_membership(voters, false)
        .await
        .map_err(change_error)?;
    tracing::info!(node_id = id, voters = ?view.voters.keys(), "meta voter added");
    let mut out = view_json(&view);
    out["node_id"] = id.into();
    out["address"] = address.into();
    out["changed"] = true.into();
    Ok(out)
}

/// Removes meta voter `id` from the group (`DELETE /v1/meta/voters/{id}`, gRPC
/// `RemoveMetaVoter`). The last voter cannot go; going down to an even count is allowed
/// with a warning.
pub(crate) async fn remove_voter_op(node: &Node, id: u64) -> ApiResult<Value> {
    let member = member(node)?;
    member.sync().await.map_err(change_error)?;
    let view = member.membership();
    if let (None, Some(address)) = (view.voters.get(&id), view.learners.get(&id).cloned()) {
        // A learner (an add that timed out in `learner_lagging`): it only leaves the group.
        tracing::info!(node_id = id, %address, "removing a meta learner");
        let view = member.remove_learners([id]).await.map_err(change_error)?;
        let mut out = view_json(&view);
        out["node_id"] = id.into();
        out["address"] = address.into();
        out["changed"] = true.into();
        return Ok(out);
    }
    let Some(address) = view.voters.get(&id).cloned() else {
        let voters: Vec<String> = view.voters.keys().map(u64::to_string).collect();
        return Err(ApiError::not_found(
            "unknown_meta_voter",
            format!(
                "node {id} is not a meta voter or learner; the voters are {}",
                voters.join(", ")
            ),
        ));
    };
    if view.voters.len() == 1 {
        return Err(ApiError::conflict(
            "last_voter",
            format!("node {id} is the only meta voter; a meta group needs one"),
        ));
    }
    tracing::info!(node_id = id, %address, "removing a meta voter");
    let view = member.remove_voter(id).await.map_err(change_error)?;
    tracing::info!(node_id = id, voters = ?view.voters.keys(), "meta voter removed");
    let mut out = view_json(&view);
    out["node_id"] = id.into();
    out["address"] = address.into();
    out["changed"] = true.into();
    Ok(out)
}

/// `GET /v1/meta`.
pub(crate) async fn meta(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    Ok(Json(meta_op(&node)?))
}

/// `POST /v1/meta/voters` `{"node_id": N, "address": "host:port"}`.
pub(crate) async fn add_voter(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_object(&body)?;
    Ok(Json(add_voter_op(&node, body).await?))
}

/// `DELETE /v1/meta/voters/{id}`.
pub(crate) async fn remove_voter(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("node id `{id}` is not a non-negative integer"),
        )
    })?;
    Ok(Json(remove_voter_op(&node, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_field_by_field() {
        let check_id = |v: Value, ok: Option<u64>| match (parse_node_id(Some(&v)), ok) {
            (Ok(got), Some(want)) => assert_eq!(got, want),
            (Err(e), None) => assert_eq!(e.field, Some("node_id"), "{v}"),
            (got, want) => panic!("{v}: got {got:?}, want {want:?}"),
        };
        check_id(Value::from(4), Some(4));
        check_id(Value::from(0), None);
        check_id(Value::from(-1), None);
        check_id(Value::from("4"), None);
        assert!(parse_node_id(None).is_err());

        let check_addr = |v: Value, ok: bool| {
            let got = parse_address(Some(&v));
            assert_eq!(got.is_ok(), ok, "{v}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.field, Some("address"));
            }
        };
        check_addr(Value::from("127.0.0.1:1228"), true);
        check_addr(Value::from("meta-4:1228"), true);
        check_addr(Value::from("[::1]:1228"), true);
        check_addr(Value::from("meta-4"), false);
        check_addr(Value::from("meta-4:0"), false);
        check_addr(Value::from("meta-4:99999"), false);
        check_addr(Value::from("http://meta-4:1228"), false);
        check_addr(Value::from(":1228"), false);
        check_addr(Value::from(1228), false);
    }

    #[test]
    fn even_and_single_voter_counts_warn() {
        assert_eq!(voter_warnings(1).len(), 1);
        assert!(voter_warnings(2)[0].contains("tolerate 0 failure(s), as 1 do"));
        assert!(voter_warnings(3).is_empty());
        assert!(voter_warnings(4)[0].contains("tolerate 1 failure(s), as 3 do"));
        assert!(voter_warnings(5).is_empty());
    }
}
