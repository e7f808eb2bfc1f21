//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod curl;
pub mod hf;
pub mod lfs;
pub mod origin;
pub mod registry;
pub mod volatile_disk;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use shoal::storage::{IoEngineChoice, Store, StoreConfig, TaskId, TaskSpec};

/// Both io engines. io_uring must work on the CI machine; set SHOAL_TEST_NO_URING=1 only on hosts whose
/// seccomp forbids it (the sync engine is then the only one tested, and the run says so).
pub fn engines() -> Vec<IoEngineChoice> {
    if std::env::var_os("SHOAL_TEST_NO_URING").is_some() {
        eprintln!("SHOAL_TEST_NO_URING set: testing the sync engine only");
        return vec![IoEngineChoice::Sync];
    }
    vec![IoEngineChoice::Sync, IoEngineChoice::Uring]
}

pub fn open(dir: &Path, engine: IoEngineChoice) -> Arc<Store> {
    let mut cfg = StoreConfig::new(dir);
    cfg.io_engine = engine;
    Store::open(cfg).expect("open store").0
}

pub fn id(n: u8) -> TaskId {
    TaskId([n; 32])
}

/// Deterministic piece contents: a task's bytes depend only on (seed, offset).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

pub fn spec(n: u8, len: Option<u64>, piece: u32, expected: Option<[u8; 32]>) -> TaskSpec {
    TaskSpec {
        id: id(n),
        url: format!("http://origin.test/obj/{n}"),
        content_length: len,
        piece_length: Some(piece),
        expected_sha256: expected,
        digest_announced: false,
        credentialed: false,
    }
}

pub fn piece_of(all: &[u8], piece: u32, k: u32) -> Bytes {
    let start = (k as usize) * piece as usize;
    let end = (start + piece as usize).min(all.len());
    Bytes::copy_from_slice(&all[start..end])
}
