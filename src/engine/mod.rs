//! The engine: gets a task's bytes into local storage from the best place — local store, peers, or the
//! origin — and publishes every piece the moment it lands.
//!
//! Owns: back-to-source HTTP (source.rs). Never: speaks to clients (that is the proxy) or decides the
//! on-disk format (storage). Called by: the proxy and `shoal get`; calls storage (and, later, transfer and
//! the scheduler client).

mod error;
pub mod source;

pub use error::EngineError;
pub use source::{stream_into, OriginClient, OriginResponse};
