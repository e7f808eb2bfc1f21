//! Owns the peer data plane: the piece protocol (proto/transfer.proto, frame.rs), the sendfile upload server, the verifying download pool.
//! Never decides which parent to use or when to go back to source, and never stores a partial piece or one whose crc32c failed.
//! Called by the engine (Pool::fetch_piece, subscribe, download) and the daemon (UploadServer::start_on_cores, load, shutdown).

mod admit;
mod availability;
mod client;
mod download;
mod error;
pub mod frame;
mod limit;
mod server;

/// Messages generated from proto/transfer.proto by build.rs.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/shoal.transfer.v1.rs"));
}

pub use client::{ClientConfig, Pool, SubEvent, Subscription};
pub use download::DownloadReport;
pub use error::{FrameError, ReadError, TransferError};
pub use limit::{RateMeter, TokenBucket};
pub use server::{ServerConfig, ServerStats, UploadLoad, UploadServer};
