//! raftq: one binary for the server (`serve`, `dev`) and the command-line client.
//!
//! The gRPC services, configuration and HTTP side port live here; Raft lives in
//! raftq-cluster, storage in raftq-store, queue rules in raftq-core. This crate must not
//! touch RocksDB or openraft types directly.

mod admission;
mod agent;
mod auth;
mod cli;
mod config;
mod context;
mod data_dir;
mod dev;
mod error;
mod grpc;
mod http;
mod metrics_port;
mod probes;
mod routing;
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

/// Turns transparent huge pages off for this process and the nodes it starts. mimalloc
/// asks for them on its heap (`MADV_HUGEPAGE`), and the kernel then backs every 2 MiB of
/// heap that is touched at all with a whole huge page: with a backlog of a million
/// messages, node peaks were 276-318 MiB with them and 236-253 MiB without, at the same
/// batched throughput (see "Transparent huge pages off" in docs/performance-log.md). A
/// kernel without the setting (before 3.15) keeps its default, which is only a matter of
/// memory.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
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
