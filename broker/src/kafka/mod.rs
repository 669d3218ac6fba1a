//! The Kafka front-end: the real Kafka wire protocol, through the `kafka-protocol` codec.

pub mod acl_handlers;
pub mod admin_handlers;
pub mod auth;
pub mod client;
pub mod errors;
pub mod frame;
pub mod group_handlers;
pub mod handlers;
pub mod principal;
pub mod scram;
pub mod server;
pub mod trace;
pub mod versions;
