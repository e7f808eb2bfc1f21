//! Shoal: a P2P distribution engine for large files behind an HTTP forward proxy.
//!
//! Floors, top to bottom; a module uses only what stands below it, so data flows one way:
//! `cli` → `daemon` → `proxy` → `engine` → `transfer` / `scheduler` (client) → `storage`, `runtime`,
//! with `config` beside `daemon`, `tls` (the interception CA and its leaf certificates) below `proxy`,
//! and `upstream` (outbound HTTP, origins' TLS trust), `units` (sizes, durations) and `gather` (receive
//! wake-up marks) below every floor that needs them.
//! Beside the daemon stand the programs that use one: `lfs` (git-lfs's transfer agent) → `client` (one
//! download through the local daemon, or an in-process `engine`). `fuzzing` (hidden) holds the fuzz
//! targets' bodies, over the parsers of every floor.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod gather;
pub mod lfs;
pub mod membership;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod scheduler;
pub mod storage;
pub mod tls;
pub mod transfer;
pub mod units;
pub mod upstream;

/// Milliseconds since the Unix epoch, the time base of task access times and GC (storage's step-proof
/// clock: wall time at first use, advanced by the monotonic clock).
pub fn storage_now_ms() -> u64 {
    storage::now_ms()
}
