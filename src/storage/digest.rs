//! The whole-content sha256, computed in piece order as pieces complete, and the task's completion.
//!
//! Two paths, one state. The hot path: a writer whose piece is the next one in order (a sequential origin
//! stream always is) claims the hasher and feeds sha256 in 256 KiB chunks interleaved with the crc32c pass,
//! while the bytes sit in L2 — measured here, sha256 runs at ~1.5 GB/s on cached data but ~0.75 GB/s on
//! data streamed from RAM, so this doubles ingest when hashing is the limit. The catch-up path: pieces that
//! arrived out of order (from several peers) are read back from the page cache by a hashing thread, their
//! crc32c checked on the way so a piece corrupted after it was written cannot poison the digest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::error::FailReason;
use super::meta::{ST_COMPLETE, ST_DIRTY};
use super::task::Task;

#[derive(Default)]
pub struct HashState {
    /// The first piece not yet hashed.
    next: u32,
    /// Absent while a runner has it.
    ctx: Option<Sha256>,
    running: bool,
    finished: bool,
    /// A piece already hashed was found corrupt: start over once it is fetched again.
    restart: bool,
    /// The crc32c of each piece as it was hashed. A hot-path pass hashes a piece before it is stored; if
    /// that write is then abandoned and the piece stored later with other bytes, the digest would not be
    /// the stored content's. Finishing checks these against the stored crcs and starts over on a mismatch.
    crcs: Vec<u32>,
}

/// The whole-content hash's own rate, daemon-wide: bytes per second of its passes over whole pieces
/// (sha256, with crc32c on the hot path), as `f64` bits; 0 until one was timed. A recent average, so a
/// pass slowed by a core shared with other work counts as slow: that is the rate the hash keeps up with.
static PASS_RATE: AtomicU64 = AtomicU64::new(0);

/// How fast the whole-content hash runs here (bytes per second, recent pieces), once one was timed.
/// An origin download gains nothing from delivering faster than this: every byte waits for it.
pub fn hash_rate() -> Option<f64> {
    Some(f64::from_bits(PASS_RATE.load(Ordering::Relaxed))).filter(|&r| r > 0.0)
}

/// Counts a pass over `bytes` that began at `t0` in [`hash_rate`]. Short pieces (an object's last) are
/// left out: their time is mostly the call's, not the hash's.
fn timed(bytes: usize, t0: Instant) {
    let dt = t0.elapsed().as_secs_f64();
    if bytes < 1 << 20 || dt <= 0.0 {
        return;
    }
    let now = bytes as f64 / dt;
    // One writer at a time per task but several tasks at once: a lost update only drops one sample.
    let _ = PASS_RATE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let old = f64::from_bits(old);
        Some(if old > 0.0 { old + (now - old) / 4.0 } else { now }.to_bits())
    });
}

/// Called when a complete piece turns out corrupt: the digest must be recomputed over the refetched bytes.
pub fn reset(task: &Task) {
    lock(&task.announced).parked = None;
    let mut h = lock(&task.hasher);
    if h.running {
        h.restart = true;
    } else {
        *h = HashState::default();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Chunk size for interleaving crc32c and sha256 over a piece: small enough to stay in L2 between the two.
const HOT_CHUNK: usize = 256 << 10;

/// Computes piece `k`'s crc32c. When `k` is exactly the next piece in order and no hashing run is active,
/// sha256 is fed in the same pass and the hasher advances past `k` at once, so a writer that pipelines
/// in-order pieces keeps every one of them on the hot path. A crc that disagrees with `expected` leaves the
/// digest untouched. Returns (crc, hashed); a caller that got `hashed` but then fails to store the piece
/// must call [`reset`], because the digest already includes bytes that are not on disk.
pub fn crc_and_hash(task: &Task, k: u32, data: &[u8], expected: Option<u32>) -> (u32, bool) {
    let ctx = {
        let mut h = lock(&task.hasher);
        if h.running || h.finished || h.next != k || h.restart {
            drop(h);
            return (crc32c::crc32c(data), false);
        }
        h.running = true;
        h.ctx.take().unwrap_or_default()
    };
    // Hashed outside the lock (a few ms per piece); `running` keeps every other pass away meanwhile.
    let mut advanced = ctx.clone();
    let mut crc = 0;
    let t0 = Instant::now();
    for ch in data.chunks(HOT_CHUNK) {
        crc = crc32c::crc32c_append(crc, ch);
        advanced.update(ch);
    }
    timed(data.len(), t0);
    let ok = expected.is_none_or(|e| e == crc);
    let mut h = lock(&task.hasher);
    h.running = false;
    if std::mem::take(&mut h.restart) {
        *h = HashState::default();
        return (crc, false);
    }
    if ok {
        h.next = k + 1;
        h.ctx = Some(advanced);
        h.crcs.push(crc);
    } else {
        h.ctx = Some(ctx);
    }
    (crc, ok)
}

/// The first piece the whole-content hash has not taken yet.
pub(super) fn next_unhashed(task: &Task) -> u32 {
    lock(&task.hasher).next
}

/// Starts a hashing run if the next piece in order is available and no run is active.
pub fn kick(task: &Arc<Task>) {
    let mut h = lock(&task.hasher);
    if h.running || h.finished || task.is_complete() {
        return;
    }
    let ready = task.has_piece(h.next) || task.piece_count() == Some(h.next);
    if !ready {
        return;
    }
    h.running = true;
    let ctx = h.ctx.take().unwrap_or_default();
    drop(h);
    let t = task.clone();
    let spawned = std::thread::Builder::new().name("shoal-sha256".into()).spawn(move || run(t, ctx));
    if let Err(e) = spawned {
        // Without a thread the task cannot complete; say so rather than hang its waiters.
        task.fail(FailReason::io("starting the sha256 thread", &e));
        lock(&task.hasher).running = false;
    }
}

fn run(task: Arc<Task>, mut ctx: Sha256) {
    let mut chunk = super::buf::take(READ_BACK);
    // Bounded by the piece count: every round hashes one piece or leaves.
    loop {
        let k = {
            let mut h = lock(&task.hasher);
            if std::mem::take(&mut h.restart) {
                h.next = 0;
                h.crcs.clear();
                ctx = Sha256::default();
            }
            let k = h.next;
            if let Some(count) = task.piece_count().filter(|&c| c == k) {
                // Pieces hashed on the hot path may still be on their way to the disk: complete only when
                // every one is stored; the write that stores the last one kicks this again.
                if (0..count).any(|i| !task.has_piece(i)) {
                    h.ctx = Some(ctx);
                    h.running = false;
                    return;
                }
                // Every piece stored must be the one that was hashed; otherwise hash the stored ones.
                if (0..count).any(|i| h.crcs.get(i as usize).copied() != task.piece_crc(i)) {
                    h.next = 0;
                    h.crcs.clear();
                    ctx = Sha256::default();
                    continue;
                }
                h.finished = true;
                h.running = false;
                drop(h);
                finish(&task, ctx);
                return;
            }
            // Checked under the lock so a writer that marks piece k and then kicks cannot be missed.
            if !task.has_piece(k) || task.removed.load(std::sync::atomic::Ordering::Acquire) {
                h.ctx = Some(ctx);
                h.running = false;
                return;
            }
            k
        };
        let (Some(crc), Some((off, len))) = (
            task.piece_crc(k),
            task.piece_range(k).or_else(|| {
                // Length still unknown: every complete piece is a full one.
                Some((k as u64 * task.piece_length() as u64, task.piece_length()))
            }),
        ) else {
            continue;
        };
        let read = match task.resident_piece(k) {
            // A piece still in memory is the very bytes whose crc was computed before they were stored.
            Some(b) => {
                let mut hashed = ctx.clone();
                let t0 = Instant::now();
                hashed.update(&b);
                timed(b.len(), t0);
                Ok((crc, hashed))
            }
            None => read_back(&task, &mut chunk, off, len as usize, &ctx),
        };
        let (got, hashed) = match read {
            Ok(r) => r,
            Err(e) => {
                task.fail(FailReason::io("reading a piece for the sha256", &e));
                lock(&task.hasher).running = false;
                return;
            }
        };
        if got != crc {
            task.drop_corrupt_piece(k, crc, got);
            continue;
        }
        ctx = hashed;
        {
            let mut h = lock(&task.hasher);
            h.next = k + 1;
            h.crcs.push(crc);
        }
        task.hashed_through(k + 1);
    }
}

/// How much of a piece the catch-up pass reads at a time: its memory per hashing task.
const READ_BACK: usize = 1 << 20;

/// Reads `len` bytes at `off` back from the task file in [`READ_BACK`] chunks (with O_DIRECT when the
/// task has that descriptor: reading through the page cache would fill it for one pass), returning their
/// crc32c and `ctx` advanced over them. The caller keeps the advanced digest only if the crc matches.
fn read_back(
    task: &Task,
    chunk: &mut super::buf::PieceBuf,
    off: u64,
    len: usize,
    ctx: &Sha256,
) -> std::io::Result<(u32, Sha256)> {
    let (file, align) = match &task.direct {
        Some(d) => (d.as_ref(), super::buf::ALIGN),
        None => (task.data.as_ref(), 1),
    };
    let (mut trial, mut crc, mut done) = (ctx.clone(), 0u32, 0usize);
    // Bounded by len / READ_BACK chunks, each read in finitely many turns.
    while done < len {
        let n = (len - done).min(READ_BACK);
        let want = n.div_ceil(align) * align;
        chunk.truncate(0);
        chunk.read_at(file, off + done as u64, n, want)?;
        let bytes = &chunk.as_ref()[..n];
        crc = crc32c::crc32c_append(crc, bytes);
        trial.update(bytes);
        done += n;
    }
    Ok((crc, trial))
}

fn finish(task: &Arc<Task>, ctx: Sha256) {
    let digest: [u8; 32] = ctx.finalize().into();
    {
        // Nothing to compare with yet: the task waits, incomplete, until its source announces the digest.
        let mut a = task.announced.lock().unwrap_or_else(|p| p.into_inner());
        if task.meta.digest_announced && task.meta.expected_sha256.is_none() && a.expected.is_none() {
            a.parked = Some(digest);
            return;
        }
    }
    settle(task, digest);
}

/// Completes a task whose whole content hashed to `digest`, if it matches what the task is held to;
/// otherwise discards it.
pub(super) fn settle(task: &Arc<Task>, digest: [u8; 32]) {
    if let Some(exp) = task.expected_sha256() {
        if exp != digest {
            let reason = FailReason::DigestMismatch { expected: exp, got: digest };
            tracing::warn!(task = %task.id(), %reason, "task discarded");
            task.discard(reason);
            return;
        }
    }
    // Complete means durable: the bytes reach the disk before the flag that vouches for them.
    if let Err(e) = task.data.sync_data() {
        task.fail(FailReason::io("fdatasync", &e));
        return;
    }
    task.meta.set_actual_sha256(&digest);
    task.meta.set_state_bits(ST_COMPLETE);
    task.meta.clear_state_bits(ST_DIRTY);
    task.release_resident();
    if let Err(e) = task.meta.flush(false) {
        tracing::warn!(task = %task.id(), error = %e, "metadata flush failed; the task reloads as dirty");
    }
    task.notify();
}
