//! Generates the gRPC code of `proto/admin.proto` without a system `protoc` (as meta/build.rs
//! does): protox parses the file, tonic-prost-build generates the messages and the server.
//! The messages also derive `serde::Deserialize` (with defaults for missing fields): the admin
//! operations answer the JSON the HTTP API serves, and `admin::grpc` reads the same values
//! into these typed messages, so both transports share one implementation.
//! `proto/peer.proto` (broker to broker, `peer`) gets a client too, see below.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/admin.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    // The encoded descriptors, for gRPC server reflection (`admin::grpc`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("admin_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .message_attribute(".", "#[derive(serde::Deserialize)] #[serde(default)]")
        .compile_fds(descriptors)?;

    // The broker-to-broker service (`peer`): client and server, `bytes` as `Bytes` so record
    // batches are not copied.
    const PEER: &str = "proto/peer.proto";
    println!("cargo:rerun-if-changed={PEER}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".strata.peer.v1")
        .compile_fds(protox::compile([PEER], ["proto"])?)?;
    Ok(())
}
