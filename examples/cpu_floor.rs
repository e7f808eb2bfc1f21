//! The CPU floor of a verified download, for the benchmark scripts: one sha256 pass over 1 GiB held in
//! memory plus one copy of it, on one core, with the same sha256 implementation the daemon uses.
//! Both buffers are written before the clock starts, so page faults are not part of the floor.
//!
//!   cargo run --release --example cpu_floor [MIB=1024]
//!
//! Prints one line: `sha256_s_per_gib memcpy_s_per_gib floor_s_per_gib sha256_gb_per_s`.

use std::time::Instant;

use sha2::{Digest, Sha256};

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024).max(1);
    let len = mib << 20;
    // Not all one byte value: a pattern the compiler cannot see through.
    let src: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect();
    let mut dst = vec![1u8; len];
    let gib = len as f64 / (1u64 << 30) as f64;

    let t = Instant::now();
    let mut h = Sha256::new();
    // 256 KiB at a time, as the daemon's hot path feeds it.
    for c in src.chunks(256 << 10) {
        h.update(c);
    }
    let digest = h.finalize();
    let sha = t.elapsed().as_secs_f64();

    let t = Instant::now();
    dst.copy_from_slice(&src);
    let copy = t.elapsed().as_secs_f64();
    // Keep both results observable.
    assert!(dst[len - 1] == src[len - 1] && digest.len() == 32);

    println!("{:.4} {:.4} {:.4} {:.3}", sha / gib, copy / gib, (sha + copy) / gib, len as f64 / sha / 1e9);
}
