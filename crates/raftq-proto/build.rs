//! Generates the gRPC code from `proto/` with a pure-Rust protobuf compiler (no `protoc`).

use std::path::PathBuf;

use protox::prost::Message;

/// The public API: what clients call, and what the public port describes by reflection.
const PUBLIC_PROTOS: [&str; 4] = [
    "raftq/v1/queue.proto",
    "raftq/v1/message.proto",
    "raftq/v1/admin.proto",
    "raftq/v1/agent.proto",
];
/// Served on the internal port only.
const INTERNAL_PROTOS: [&str; 1] = ["raftq/v1/raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: the compiled build script is shared by every
    // checkout that uses the same target directory, and must look at the checkout running it.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The public API's encoded descriptor set feeds gRPC server reflection on the public
    // port; the internal protocol is not described there.
    let public = protox::compile(PUBLIC_PROTOS, [&proto_root])?;
    std::fs::write(out_dir.join("raftq_public.bin"), public.encode_to_vec())?;
    let files = protox::compile(PUBLIC_PROTOS.iter().chain(&INTERNAL_PROTOS), [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
