//! Owns: the peer data plane — the piece protocol (frame.rs, proto/transfer.proto), the upload server that sendfile()s pieces, the download client that verifies them.
//! Never: decides which parent to use or when to go back to source, and never writes a piece whose crc32c failed or that arrived partially.
//! Called by: the engine (Pool::fetch_piece / subscribe / download) and the daemon (UploadServer::start_on_cores, load()).

mod client;
mod error;
pub mod frame;
mod limit;
mod server;

/// Messages generated from proto/transfer.proto by build.rs.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/shoal.transfer.v1.rs"));
}

pub use client::{ClientConfig, DownloadReport, Pool, SubEvent, Subscription};
pub use error::{FrameError, ReadError, TransferError};
pub use limit::{RateMeter, TokenBucket};
pub use server::{ServerConfig, ServerStats, UploadLoad, UploadServer};
