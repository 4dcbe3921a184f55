//! Generates the gRPC code from `proto/` with a pure-Rust protobuf compiler (no `protoc`).

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: [&str; 4] = [
    "raftq/v1/queue.proto",
    "raftq/v1/message.proto",
    "raftq/v1/admin.proto",
    "raftq/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: the compiled build script is shared by every
    // checkout that uses the same target directory, and must look at the checkout running it.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let files = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set feeds gRPC server reflection.
    std::fs::write(out_dir.join("raftq_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
