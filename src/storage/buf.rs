//! Piece buffers: page-aligned, so a full piece can be written with O_DIRECT straight from the memory it
//! was received into, and recycled, so a download does not fault in fresh memory for every piece.
//!
//! A filled buffer becomes an immutable [`Bytes`] without a copy; when the last clone of it is dropped, the
//! memory goes back to the daemon-wide pool (up to [`IDLE_CAP`] bytes of idle buffers, and only while all
//! piece memory is within [`KEEP_UNDER`]; beyond that it is freed). Pieces are kept in memory after they
//! are stored ([`Held`]) only within the same bound, so buffers in flight are what fills it. On the VM
//! this project is measured on, memory the kernel hands out fresh costs ~2.5 s of CPU per GiB on first
//! touch (the hypervisor backs it lazily), which is why both the pool and O_DIRECT (no page-cache pages
//! at all) pay.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Alignment O_DIRECT needs of buffer addresses, lengths and file offsets (covers 512 B and 4 KiB sectors).
pub const ALIGN: usize = 4096;
/// Idle buffers kept for reuse, daemon-wide; in-use buffers are bounded by the engine's ingest budget,
/// [`HOLD_CAP`] and the upload budget. Reuse matters on a VM: memory given back and faulted in again
/// costs ~2.5 s per GiB there. Measured against keeping idle buffers while all piece memory stayed
/// under 64 MiB: the same CPU per GiB, and 12 MiB less RSS once downloads end (docs/benchmarks.md).
pub const IDLE_CAP: usize = 32 << 20;

/// Idle buffers are kept, and stored pieces held, only while all piece-buffer memory is at most this
/// much. Without it, held pieces (32 MiB), buffers in flight (the ingest budget, 32 MiB) and idle ones
/// (32 MiB) could all be full at once: 8 concurrent cold 1 GiB downloads peaked at 60-69 MiB of RssAnon,
/// with it at 52-54 (docs/benchmarks.md). One download rarely reaches it.
pub const KEEP_UNDER: usize = 48 << 20;

/// Piece-buffer memory that exists right now, idle or in use (see [`live_bytes`]).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The part of it idle in the pool: changed only under the pool's lock, read without it.
static IDLE: AtomicUsize = AtomicUsize::new(0);

/// A buffer's memory: its own anonymous mapping (page-aligned, and given back to the kernel when dropped,
/// so the daemon's RSS falls when downloads end; glibc kept heap buffers of this size in its arenas), or,
/// should mapping fail, heap memory with an aligned window in it.
enum Mem {
    None,
    Map(memmap2::MmapMut),
    Heap { v: Vec<u8>, off: usize },
}

impl Mem {
    /// `size` usable bytes (a power of two, at least [`ALIGN`]), page-aligned.
    fn new(size: usize) -> Mem {
        LIVE.fetch_add(size, Ordering::AcqRel);
        match memmap2::MmapMut::map_anon(size) {
            Ok(m) => {
                // Transparent huge pages where the system allows them (THP "madvise"): a 4 MiB buffer
                // then faults in twice rather than 1,024 times. Only advice: refused, nothing changes.
                if size >= 2 << 20 {
                    let _ = m.advise(memmap2::Advice::HugePage);
                }
                Mem::Map(m)
            }
            Err(_) => {
                let v = vec![0u8; size + ALIGN];
                let off = v.as_ptr().align_offset(ALIGN);
                Mem::Heap { v, off }
            }
        }
    }

    /// The aligned, usable bytes.
    fn window(&self) -> &[u8] {
        match self {
            Mem::None => &[],
            Mem::Map(m) => m,
            Mem::Heap { v, off } => &v[*off..*off + (v.len() - ALIGN)],
        }
    }

    fn window_mut(&mut self) -> &mut [u8] {
        match self {
            Mem::None => &mut [],
            Mem::Map(m) => m,
            Mem::Heap { v, off } => {
                let n = v.len() - ALIGN;
                &mut v[*off..*off + n]
            }
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        LIVE.fetch_sub(self.window().len(), Ordering::AcqRel);
    }
}

/// A piece-sized buffer: `cap` usable bytes starting at a page boundary, the first `len` of them filled.
/// Its memory comes in powers of two so that a last, short piece's buffer is reused by a full one.
pub struct PieceBuf {
    mem: Mem,
    len: usize,
    cap: usize,
}

impl PieceBuf {
    /// A buffer with no room at all, holding no memory (a placeholder while a full one is handed on).
    pub fn empty() -> PieceBuf {
        PieceBuf { mem: Mem::None, len: 0, cap: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// Copies as much of `src` as fits; returns how many bytes were taken.
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.cap - self.len);
        let at = self.len;
        self.mem.window_mut()[at..at + n].copy_from_slice(&src[..n]);
        self.len += n;
        n
    }

    /// The unfilled part, for reading from a socket straight into the buffer; see [`PieceBuf::advance`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let (from, to) = (self.len, self.cap);
        &mut self.mem.window_mut()[from..to]
    }

    /// Marks `n` more bytes of the spare part as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.cap);
    }

    /// Fills the buffer from `file`, whose byte `offset` lands at the buffer's start, until at least
    /// `need` bytes are in, asking for no more than `limit` (a block multiple, for O_DIRECT). The file
    /// ending first is an error: a piece is never taken short.
    pub fn read_at(&mut self, file: &std::fs::File, offset: u64, need: usize, limit: usize) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        // Bounded: each turn reads at least one byte or returns.
        while self.len < need {
            let (at, room) = (offset + self.len as u64, limit.min(self.cap) - self.len);
            match file.read_at(&mut self.spare_mut()[..room], at)? {
                0 => {
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "task file shorter than piece");
                    return Err(e);
                }
                n => self.advance(n),
            }
        }
        Ok(())
    }

    /// Keeps only the first `n` filled bytes.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The filled bytes as `Bytes`, without copying; the memory returns to the pool when every clone is gone.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PieceBuf {
    fn as_ref(&self) -> &[u8] {
        &self.mem.window()[..self.len]
    }
}

/// Whichever way a buffer ends (frozen and its last clone dropped, or dropped unfilled: a connection's
/// next piece when its chunk ended on a piece boundary), its memory goes back to the pool. Before every
/// drop did, a download in 8 MiB chunks unmapped one warm buffer per chunk and faulted in a fresh one
/// (188 huge-page faults per cold GiB, 12% of the daemon's CPU in `clear_page`).
impl Drop for PieceBuf {
    fn drop(&mut self) {
        pool().put(std::mem::replace(&mut self.mem, Mem::None));
    }
}

struct Pool {
    /// Idle buffers by allocation size (their total is [`IDLE`]).
    idle: Mutex<HashMap<usize, Vec<Mem>>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { idle: Mutex::new(HashMap::new()) })
}

impl Pool {
    /// Keeps `mem` for reuse if the idle cap has room; otherwise it is unmapped (outside the lock).
    fn put(&self, mem: Mem) {
        let size = mem.window().len();
        if size == 0 {
            return;
        }
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if IDLE.load(Ordering::Acquire) + size <= IDLE_CAP && LIVE.load(Ordering::Acquire) <= KEEP_UNDER {
            g.entry(size).or_default().push(mem);
            IDLE.fetch_add(size, Ordering::AcqRel);
            return;
        }
        drop(g);
        drop(mem);
    }

    fn take(&self, cap: usize) -> Option<Mem> {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mem = g.get_mut(&class(cap))?.pop()?;
        IDLE.fetch_sub(mem.window().len(), Ordering::AcqRel);
        Some(mem)
    }
}

fn class(cap: usize) -> usize {
    cap.checked_next_power_of_two().unwrap_or(cap).max(ALIGN)
}

/// Bytes of stored pieces kept in memory daemon-wide (see [`Held`]).
static HELD: AtomicUsize = AtomicUsize::new(0);
/// At most this many bytes of stored pieces stay in memory at once, daemon-wide.
pub const HOLD_CAP: usize = 32 << 20;

/// A stored piece kept in memory for a while after it reached the disk: for the whole-content hash when
/// it arrived ahead of the pieces before it (ranged origin connections, several parents), and for
/// clients streaming the download as it lands. Counts against [`HOLD_CAP`] until dropped.
pub struct Held(Bytes);

impl Held {
    /// Holds `b` if the daemon-wide cap has room and piece memory is within [`KEEP_UNDER`]; otherwise gives
    /// it back (the piece is read back from the file when needed).
    pub fn try_new(b: Bytes) -> Result<Held, Bytes> {
        if LIVE.load(Ordering::Acquire) > KEEP_UNDER {
            // Many downloads at once: their buffers in flight come first; this one is read back if needed.
            return Err(b);
        }
        let n = b.len();
        match HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur + n <= HOLD_CAP).then_some(cur + n)) {
            Ok(_) => Ok(Held(b)),
            Err(_) => Err(b),
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0.len(), Ordering::AcqRel);
    }
}

/// One task's stored pieces still in memory, by piece index, and which of them a client has read to
/// their end.
#[derive(Default)]
pub struct HeldPieces(Mutex<HeldInner>);

#[derive(Default)]
struct HeldInner {
    pieces: BTreeMap<u32, Held>,
    /// Held pieces streaming clients have read to their end, and how many clients have.
    read: BTreeMap<u32, usize>,
}

impl HeldInner {
    fn remove(&mut self, k: u32) {
        self.pieces.remove(&k);
        self.read.remove(&k);
    }
}

impl HeldPieces {
    pub fn get(&self, k: u32) -> Option<Bytes> {
        lock(&self.0).pieces.get(&k).map(|h| h.0.clone())
    }

    /// Keeps piece `k` (the hash has taken every piece before `next`). When the cap is reached, this
    /// task makes room: first pieces the hash took before its last two (oldest first: a streaming
    /// client is past them), then pieces farther ahead than this one (the hash needs the nearest first;
    /// the others are read back from the file when it gets there). Otherwise `k` is not kept.
    pub fn keep(&self, k: u32, data: Bytes, next: u32) {
        let mut m = lock(&self.0);
        let mut data = Some(data);
        // Bounded by the map: every round inserts, or removes one entry, or gives up.
        while let Some(d) = data.take() {
            match Held::try_new(d) {
                Ok(h) => {
                    m.pieces.insert(k, h);
                    m.read.remove(&k);
                }
                Err(d) => {
                    // The two pieces the hash took last are where a streaming client reads: kept.
                    let stale = m.pieces.keys().next().copied().filter(|&x| x + 2 < next);
                    let far = || m.pieces.keys().next_back().copied().filter(|&far| far > k);
                    if let Some(v) = stale.or_else(far) {
                        m.remove(v);
                        data = Some(d);
                    }
                }
            }
        }
    }

    /// One of `readers` streaming clients read piece `k` to its end. Once all of them have and the hash
    /// has it too (every piece before `next`), it need not stay; until the hash has it, it waits for
    /// [`HeldPieces::hashed`].
    pub fn consumed(&self, k: u32, next: u32, readers: usize) {
        let mut m = lock(&self.0);
        if !m.pieces.contains_key(&k) {
            return;
        }
        let n = m.read.entry(k).or_default();
        *n += 1;
        if *n >= readers && k < next {
            m.remove(k);
        }
    }

    /// The hash has taken every piece before `next`: those that all `readers` streaming clients have
    /// read too are let go now, so that a client reading ahead of the hash does not leave the cap full of
    /// pieces nobody needs (their buffers go back to the pool, instead of fresh memory being faulted in
    /// for the next pieces). With no client streaming, pieces stay for children until the cap needs room.
    pub fn hashed(&self, next: u32, readers: usize) {
        if readers == 0 {
            return;
        }
        let mut m = lock(&self.0);
        let done: Vec<u32> = m.read.range(..next).filter(|(_, &n)| n >= readers).map(|(&k, _)| k).collect();
        for k in done {
            m.remove(k);
        }
    }

    pub fn clear(&self) {
        let mut m = lock(&self.0);
        m.pieces.clear();
        m.read.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes of stored pieces held in memory right now, daemon-wide.
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Acquire)
}

/// An empty buffer of `cap` bytes, reused from the pool when one of that size is idle.
pub fn take(cap: usize) -> PieceBuf {
    let mem = pool().take(cap).unwrap_or_else(|| Mem::new(class(cap)));
    PieceBuf { mem, len: 0, cap }
}

/// Bytes that O_DIRECT can write as they are: an aligned address and an offset on a block boundary.
pub fn direct_writable(b: &[u8], offset: u64) -> bool {
    (b.as_ptr() as usize) % ALIGN == 0 && offset % ALIGN as u64 == 0
}

/// Piece-buffer memory mapped right now, idle or in use.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Acquire)
}

/// Idle bytes held by the pool (for tests and metrics).
pub fn idle_bytes() -> usize {
    IDLE.load(Ordering::Acquire)
}

/// Piece-buffer memory in use: filled, being filled, on its way to the disk, held, or being sent.
pub fn in_use_bytes() -> usize {
    live_bytes().saturating_sub(idle_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_filled_in_order_and_come_back() {
        let _one = serial();
        let mut b = take(3 * ALIGN);
        assert_eq!(b.spare_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.fill_from(&[1; 5000]), 5000);
        assert_eq!(b.fill_from(&[2; 10_000]), 3 * ALIGN - 5000, "takes only what fits");
        assert!(b.is_full());
        let bytes = b.freeze();
        assert_eq!(bytes.len(), 3 * ALIGN);
        assert!(direct_writable(&bytes, 0) && !direct_writable(&bytes[1..], 0) && !direct_writable(&bytes, 512));
        assert_eq!(&bytes[..5000], &[1; 5000][..]);
        assert_eq!(bytes[5000], 2);
        let clone = bytes.slice(ALIGN..);
        drop(bytes);
        let before = idle_bytes();
        drop(clone);
        assert!(idle_bytes() > before || idle_bytes() + 4 * ALIGN > IDLE_CAP, "the last clone returns it");
        let mut again = take(3 * ALIGN);
        assert!(again.is_empty());
        again.spare_mut()[..3].copy_from_slice(b"abc");
        again.advance(3);
        assert_eq!(again.as_ref(), b"abc");
    }

    #[test]
    fn a_buffer_dropped_unfilled_goes_back_to_the_pool_too() {
        let _one = serial();
        // A size class no other test uses, so the buffer taken again is this one.
        let mut b = take(5 * ALIGN + 1);
        b.spare_mut()[..4].copy_from_slice(b"warm");
        let room = idle_bytes() + 8 * ALIGN <= IDLE_CAP && live_bytes() <= KEEP_UNDER;
        drop(b);
        let mut again = take(5 * ALIGN + 1);
        assert!(again.is_empty());
        if room {
            // A fresh mapping would read zeros.
            assert_eq!(&again.spare_mut()[..4], b"warm", "the same warm memory, not a fresh mapping");
        }
    }

    /// The tests that move the daemon-wide piece memory past [`KEEP_UNDER`], or depend on it staying
    /// under, run one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        lock(&SERIAL)
    }

    #[test]
    fn no_piece_is_held_while_piece_memory_is_past_what_idle_buffers_may_fill() {
        let _one = serial();
        // Mapped but never touched: the test's RSS stays small.
        let busy: Vec<PieceBuf> = (0..=KEEP_UNDER / (4 << 20)).map(|_| take(4 << 20)).collect();
        assert!(live_bytes() > KEEP_UNDER);
        assert!(Held::try_new(Bytes::from(vec![1u8; 1 << 20])).is_err(), "buffers in flight come first");
        drop(busy);
        assert!(live_bytes() <= KEEP_UNDER, "the idle pool keeps no more than that: {}", live_bytes());
        let held = Held::try_new(Bytes::from(vec![1u8; 1 << 20]));
        assert!(held.is_ok(), "room again");
    }

    #[test]
    fn held_pieces_keep_what_the_hash_and_a_reader_need_within_the_cap() {
        let _one = serial();
        let mib = |k: u32| Bytes::from(vec![k as u8; 1 << 20]);
        let cap = (HOLD_CAP >> 20) as u32;
        let h = HeldPieces::default();
        // Nothing hashed yet: the nearest pieces fill the cap, farther ones are left to the file.
        for k in 0..cap + 8 {
            h.keep(k, mib(k), 0);
        }
        assert!(h.get(cap - 1).is_some() && h.get(cap).is_none());
        assert!(held_bytes() <= HOLD_CAP);
        h.keep(cap + 1, mib(0), 0);
        assert!(h.get(cap + 1).is_none(), "farther than all held: not kept");
        // Once the hash is at 20, pieces it took before its last two go first (oldest first).
        h.keep(cap + 2, mib(1), 20);
        assert!(h.get(0).is_none() && h.get(cap + 2).is_some());
        assert!(h.get(18).is_some() && h.get(19).is_some(), "the last two hashed stay for a reader");
        // A reader that finished a hashed piece lets it go; an unhashed one stays for the hash.
        h.consumed(5, 20, 1);
        h.consumed(25, 20, 1);
        assert!(h.get(5).is_none() && h.get(25).is_some());
        // ...and the piece read ahead of the hash goes once the hash passes it; an unread one stays.
        h.hashed(25, 1);
        assert!(h.get(25).is_some(), "not hashed yet");
        h.hashed(26, 1);
        assert!(h.get(25).is_none() && h.get(24).is_some(), "read and hashed: gone; hashed only: kept");
        // Two clients streaming: a piece waits for the second one, hashed or not.
        h.consumed(6, 20, 2);
        assert!(h.get(6).is_some(), "one of two has read it");
        h.consumed(6, 20, 2);
        assert!(h.get(6).is_none(), "both have");
        h.consumed(27, 20, 2);
        h.hashed(28, 2);
        assert!(h.get(27).is_some(), "hashed, but one client still to read it");
        h.consumed(27, 28, 2);
        assert!(h.get(27).is_none());
        // No client streaming: the hash passing lets nothing go (children may still ask for it).
        h.hashed(40, 0);
        assert!(h.get(24).is_some());
        h.clear();
        assert_eq!(held_bytes(), 0, "dropping held pieces returns their share of the cap");
        // A piece nearer the hash than the farthest held one takes its place.
        for k in 10..10 + cap {
            h.keep(k, mib(k), 0);
        }
        h.keep(3, mib(3), 0);
        assert!(h.get(3).is_some() && h.get(9 + cap).is_none() && h.get(8 + cap).is_some());
        h.clear();
    }
}
