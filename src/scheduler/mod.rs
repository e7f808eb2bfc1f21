//! The scheduler: tells each peer which other peers (parents) hold pieces of a task, and elects the one peer
//! (a seed peer when there are any) that fetches a task from the origin.
//!
//! Owns: the control protocol (proto/scheduler.proto, framed prost over one TCP connection per peer), the
//! in-memory cluster view (hosts, tasks, who holds how many pieces, bad-parent reports), the parent-selection
//! and back-to-source decisions, the standalone and embedded servers, and the client peers use to reach a
//! scheduler (rendezvous hashing of task IDs over several schedulers, reconnects, re-announcement).
//! Never: moves piece bytes, touches storage or the origin, or trusts anything read from a socket (every
//! frame is size-limited and validated; bad input closes that one connection, nothing panics).
//! Called by: main.rs (`shoal scheduler`), the daemon (embedded single-node scheduler), and the P2P engine
//! (through [`SchedulerClient`]: request_task, progress reports, seed triggers).
//!
//! The engine's loop for one task: `request_task` → `Parents` (download from them; `report_bad_parent`
//! for one that fails), `Wait` (ask again after `retry_after`), `BackToSource` or any error (fetch from the
//! origin). Meanwhile `task_progress` as pieces arrive, then `task_finished`, or `task_failed`;
//! `leave_task` when GC evicts it. A seed peer also drains `seed_triggers()` and fetches each trigger's URL
//! with its headers. With no `--scheduler`, the daemon runs [`Scheduler::spawn_embedded`] and points its
//! client at the returned address.

mod client;
mod conn;
mod error;
mod fanout;
mod frame;
mod hash;
mod ops;
mod server;
mod state;
mod types;

/// Generated prost types of proto/scheduler.proto (see build.rs).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/shoal.scheduler.v1.rs"));
}

pub use client::{ClientConfig, SchedulerClient};
pub use error::{ClientError, FrameError, ServerError, StateError};
pub use frame::{decode_envelope, encode_envelope, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use hash::{rendezvous_pick, rendezvous_score};
pub use server::{run_standalone, Scheduler, SchedulerHandle, ServerConfig};
pub use state::{Action, State, StateConfig, TaskSummary};
pub use types::{Answer, Decision, HostInfo, Parent, PeerLoad, SeedTrigger, TaskProgress, TaskRequest};
