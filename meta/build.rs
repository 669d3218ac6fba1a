//! Generates the gRPC code of `proto/meta.proto` without a system `protoc`: protox parses the
//! file into a descriptor set, and tonic-prost-build generates the messages, clients and
//! servers from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/meta.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
