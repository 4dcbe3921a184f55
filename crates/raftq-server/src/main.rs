//! raftq: one binary for the server (`serve`, `dev`) and the command-line client.
//!
//! The gRPC services, configuration and HTTP side port live here; Raft lives in
//! raftq-cluster, storage in raftq-store, queue rules in raftq-core. This crate must not
//! touch RocksDB or openraft types directly.

mod cli;
mod config;
mod context;
mod dev;
mod error;
mod http;
mod serve;
mod services;

use clap::Parser;

/// mimalloc, not the system allocator, for everything on the Rust side: with a backlog of a
/// million messages it gave 10-20 % more throughput here at the same peak memory, and it
/// gives freed pages back (see [`release_freed_memory`]). RocksDB's C++ keeps the system
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives back to the system now the free pages waiting in mimalloc's arenas, and those of
/// the calling thread's heap (other threads' heaps are left to mimalloc). On its own,
/// mimalloc returns a freed page after a delay and only when a thread next goes through
/// its slow path: with a backlog of a million messages a node peaked about 25 MiB higher
/// without this, and returning every page the moment it is freed instead cost 30 % of
/// the fill rate. The server calls this every 250 ms.
pub(crate) fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Largest public API request or response (a send batch, a receive).
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("raftq: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("raftq: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
