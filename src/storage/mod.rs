//! The storage engine: every piece that arrives from an origin or a peer is written here, and every piece
//! served to a client or a peer is read from here.
//!
//! Owns: task content files (preallocated, written through io_uring or pread/pwrite, with O_DIRECT from
//! page-aligned pooled piece buffers by default), their mmap-backed metadata (storage-format.md), the
//! stored pieces kept in memory for the hash and for streaming readers (`buf`, `stream`), piece waiters, the
//! whole-content digest, zero-copy and upload read handles, GC, and the data directory's one-owner lock.
//! Never: speaks HTTP or the peer protocol, or decides where bytes come from; it calls nothing above it.
//! Called by: the engine (writes pieces, waits for them), transfer and proxy (zero-copy reads), the daemon
//! (open, GC, clean close).

pub mod buf;
mod clock;
mod digest;
mod dirlock;
mod error;
mod gc;
mod id;
mod io;
pub mod layout;
mod meta;
mod scrub;
mod store;
mod stream;
mod task;
mod upload;
mod uring;
mod wanted;
mod zerocopy;

pub use clock::now_ms;
pub use digest::hash_rate;
pub use dirlock::{DirLock, DirLockError, Holder};
pub use error::{FailReason, Result, StorageError};
pub use gc::GcReport;
pub use id::{BadTaskId, TaskId};
pub use io::{start_writeback, Ingest, IoEngine, IoEngineChoice};
pub use meta::{HEADER_SIZE as META_HEADER_SIZE, MAGIC as META_MAGIC, VERSION as META_VERSION};
pub use store::{GcLimits, LoadReport, Store, StoreConfig, TaskSpec};
pub use stream::Reader;
pub use task::{Task, TaskInfo, TaskState};
pub use zerocopy::{fallback_count as zero_copy_fallbacks, ZeroCopy};

/// Writes the metadata file that fuzz input `data` describes to `path` and loads it as the store would:
/// true if it loads. For the fuzz target `crate::fuzzing::task_metadata`; nothing else calls it.
#[doc(hidden)]
pub fn fuzz_load_meta(data: &[u8], path: &std::path::Path) -> std::io::Result<bool> {
    let (image, id) = meta::fuzz_image(data);
    std::fs::write(path, image)?;
    Ok(meta::Meta::open(path, id).is_ok())
}
