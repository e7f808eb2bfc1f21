//! The mmap-backed metadata file of one task; storage-format.md is its byte-exact contract.
//!
//! The immutable header is written once (through a temp file and a rename) and protected by a crc32c. The
//! mutable fields and the piece table are updated in place through the shared mapping with atomic stores, so
//! a process killed at any instant leaves every word either old or new, and the kernel's page cache keeps
//! what was stored even though the process is gone.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use super::error::{Result, StorageError};
use super::layout::{self, MAX_PIECES};
use super::TaskId;

pub const MAGIC: [u8; 8] = *b"SHOALMD\0";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 4096;
pub const MAX_URL: usize = 2048;

const OFF_VERSION: usize = 8;
const OFF_HEADER_SIZE: usize = 12;
const OFF_PIECE_LENGTH: usize = 16;
const OFF_CAPACITY: usize = 20;
const OFF_CREATE_FLAGS: usize = 24;
const OFF_URL_LEN: usize = 28;
const OFF_CREATED: usize = 32;
const OFF_TASK_ID: usize = 40;
const OFF_EXPECTED: usize = 72;
const OFF_HEADER_CRC: usize = 124;
const OFF_URL: usize = 128;
const OFF_STATE: usize = 3072;
const OFF_CONTENT_LENGTH: usize = 3080;
const OFF_ACTUAL: usize = 3088;
const OFF_LAST_ACCESS: usize = 3120;

/// create_flags bits.
const CF_LENGTH_KNOWN: u32 = 1;
const CF_EXPECTED_DIGEST: u32 = 2;
const CF_DIGEST_ANNOUNCED: u32 = 4;
const CF_CREDENTIALED: u32 = 8;
/// state bits.
pub const ST_DIRTY: u32 = 1;
pub const ST_COMPLETE: u32 = 2;
pub const ST_DIGEST: u32 = 4;

/// content_length value meaning "not known yet".
pub const UNKNOWN: u64 = u64::MAX;
const PIECE_DONE: u64 = 1 << 32;

/// What a new task's metadata starts with.
pub struct NewMeta<'a> {
    pub id: TaskId,
    pub url: &'a str,
    pub content_length: Option<u64>,
    pub piece_length: u32,
    pub expected_sha256: Option<[u8; 32]>,
    /// The expected sha256 is announced later by the task's source (see [`Meta::digest_announced`]).
    pub digest_announced: bool,
    /// The task was created for a request that carried credentials (see [`Meta::credentialed`]).
    pub credentialed: bool,
    pub created_ms: u64,
}

/// A mapped metadata file.
pub struct Meta {
    map: MmapRaw,
    path: PathBuf,
    pub id: TaskId,
    pub url: String,
    pub piece_length: u32,
    pub capacity: u32,
    pub expected_sha256: Option<[u8; 32]>,
    /// Created from peers without a digest to check against: the content must match a sha256 announced
    /// later by its source before the task may complete (create flag bit 2).
    pub digest_announced: bool,
    /// Created for a request that carried credentials (or from peers of such a task): whoever serves it
    /// asks the origin first whether the requester may read it (create flag bit 3).
    pub credentialed: bool,
    pub created_ms: u64,
}

fn file_len(header: usize, capacity: u32) -> u64 {
    header as u64 + 8 * capacity as u64
}

/// Truncates at a char boundary: the URL in metadata is informational, the task ID is the identity.
fn clip_url(url: &str) -> &str {
    let mut end = url.len().min(MAX_URL);
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    &url[..end]
}

impl Meta {
    /// Writes a new metadata file at `path` via `path.tmp` + rename, then maps it.
    pub fn create(path: &Path, m: &NewMeta<'_>) -> Result<Meta> {
        if !layout::valid_piece_length(m.piece_length) {
            return Err(StorageError::Invalid(format!("piece length {}", m.piece_length)));
        }
        let capacity = match m.content_length {
            Some(len) => layout::piece_count(len, m.piece_length),
            None => layout::UNKNOWN_LENGTH_CAPACITY as u64,
        };
        if capacity > MAX_PIECES as u64 {
            return Err(StorageError::TooLarge(m.content_length.unwrap_or(0)));
        }
        let capacity = capacity as u32;
        let url = clip_url(m.url);
        let mut h = vec![0u8; HEADER_SIZE];
        h[..8].copy_from_slice(&MAGIC);
        put32(&mut h, OFF_VERSION, VERSION);
        put32(&mut h, OFF_HEADER_SIZE, HEADER_SIZE as u32);
        put32(&mut h, OFF_PIECE_LENGTH, m.piece_length);
        put32(&mut h, OFF_CAPACITY, capacity);
        let mut cf = 0;
        if m.content_length.is_some() {
            cf |= CF_LENGTH_KNOWN;
        }
        if m.expected_sha256.is_some() {
            cf |= CF_EXPECTED_DIGEST;
        }
        if m.digest_announced && m.expected_sha256.is_none() {
            cf |= CF_DIGEST_ANNOUNCED;
        }
        if m.credentialed {
            cf |= CF_CREDENTIALED;
        }
        put32(&mut h, OFF_CREATE_FLAGS, cf);
        put32(&mut h, OFF_URL_LEN, url.len() as u32);
        put64(&mut h, OFF_CREATED, m.created_ms);
        h[OFF_TASK_ID..OFF_TASK_ID + 32].copy_from_slice(&m.id.0);
        if let Some(d) = m.expected_sha256 {
            h[OFF_EXPECTED..OFF_EXPECTED + 32].copy_from_slice(&d);
        }
        h[OFF_URL..OFF_URL + url.len()].copy_from_slice(url.as_bytes());
        let crc = header_crc(&h, url.len());
        put32(&mut h, OFF_HEADER_CRC, crc);
        put32(&mut h, OFF_STATE, ST_DIRTY);
        put64(&mut h, OFF_CONTENT_LENGTH, m.content_length.unwrap_or(UNKNOWN));
        put64(&mut h, OFF_LAST_ACCESS, m.created_ms);

        let tmp = path.with_extension("meta.tmp");
        let io = |e| StorageError::io(&tmp, e);
        let mut f =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(&h).map_err(io)?;
        // The piece table stays a hole until pieces complete: no disk for unknown-length reservations.
        f.set_len(file_len(HEADER_SIZE, capacity)).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
        let flags = (m.expected_sha256, cf & CF_DIGEST_ANNOUNCED != 0, m.credentialed);
        Self::map(f, path, m.id, url.to_owned(), m.piece_length, capacity, flags, m.created_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn map(
        f: File,
        path: &Path,
        id: TaskId,
        url: String,
        piece_length: u32,
        capacity: u32,
        (expected_sha256, digest_announced, credentialed): (Option<[u8; 32]>, bool, bool),
        created_ms: u64,
    ) -> Result<Meta> {
        let map = MmapRaw::map_raw(&f).map_err(|e| StorageError::io(path, e))?;
        if map.len() as u64 != file_len(HEADER_SIZE, capacity) {
            return Err(bad(path, "file changed size while mapping"));
        }
        Ok(Meta {
            map,
            path: path.to_owned(),
            id,
            url,
            piece_length,
            capacity,
            expected_sha256,
            digest_announced,
            credentialed,
            created_ms,
        })
    }

    /// Opens and validates an existing metadata file. Every inconsistency is an error, never a panic.
    pub fn open(path: &Path, id: TaskId) -> Result<Meta> {
        let f = OpenOptions::new().read(true).write(true).open(path).map_err(|e| StorageError::io(path, e))?;
        let len = f.metadata().map_err(|e| StorageError::io(path, e))?.len();
        if len < HEADER_SIZE as u64 {
            return Err(bad(path, format!("truncated: {len} bytes")));
        }
        let mut h = vec![0u8; HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut h, 0).map_err(|e| StorageError::io(path, e))?;
        if h[..8] != MAGIC {
            return Err(bad(path, "bad magic"));
        }
        let version = get32(&h, OFF_VERSION);
        if version != VERSION {
            return Err(bad(path, format!("unknown format version {version}")));
        }
        if get32(&h, OFF_HEADER_SIZE) as usize != HEADER_SIZE {
            return Err(bad(path, "unexpected header size"));
        }
        let url_len = get32(&h, OFF_URL_LEN) as usize;
        if url_len > MAX_URL {
            return Err(bad(path, "url length out of range"));
        }
        if header_crc(&h, url_len) != get32(&h, OFF_HEADER_CRC) {
            return Err(bad(path, "header crc32c mismatch"));
        }
        let piece_length = get32(&h, OFF_PIECE_LENGTH);
        if !layout::valid_piece_length(piece_length) {
            return Err(bad(path, format!("invalid piece length {piece_length}")));
        }
        let capacity = get32(&h, OFF_CAPACITY);
        if capacity > MAX_PIECES {
            return Err(bad(path, "piece table too large"));
        }
        if len != file_len(HEADER_SIZE, capacity) {
            return Err(bad(path, format!("size {len} does not match a table of {capacity} pieces")));
        }
        let mut tid = [0u8; 32];
        tid.copy_from_slice(&h[OFF_TASK_ID..OFF_TASK_ID + 32]);
        if TaskId(tid) != id {
            return Err(bad(path, "task id does not match the file name"));
        }
        let cf = get32(&h, OFF_CREATE_FLAGS);
        let expected = (cf & CF_EXPECTED_DIGEST != 0).then(|| {
            let mut d = [0u8; 32];
            d.copy_from_slice(&h[OFF_EXPECTED..OFF_EXPECTED + 32]);
            d
        });
        let url =
            std::str::from_utf8(&h[OFF_URL..OFF_URL + url_len]).map_err(|_| bad(path, "url is not utf-8"))?.to_owned();
        let created = get64(&h, OFF_CREATED);
        let flags = (expected, cf & CF_DIGEST_ANNOUNCED != 0, cf & CF_CREDENTIALED != 0);
        let meta = Self::map(f, path, id, url, piece_length, capacity, flags, created)?;
        meta.check_consistent(cf & CF_LENGTH_KNOWN != 0)?;
        Ok(meta)
    }

    fn check_consistent(&self, length_known_at_create: bool) -> Result<()> {
        let p = &self.path;
        let state = self.state();
        if state & !(ST_DIRTY | ST_COMPLETE | ST_DIGEST) != 0 {
            return Err(bad(p, "unknown state bits"));
        }
        let count = match self.content_length() {
            Some(len) => {
                let n = layout::piece_count(len, self.piece_length);
                if n > self.capacity as u64 || (length_known_at_create && n != self.capacity as u64) {
                    return Err(bad(p, "content length does not match the piece table"));
                }
                n as u32
            }
            None if length_known_at_create => return Err(bad(p, "content length lost")),
            None => self.capacity,
        };
        for k in 0..self.capacity {
            let e = self.entry(k).load(Ordering::Acquire);
            if e >> 32 > 1 {
                return Err(bad(p, format!("piece {k}: invalid state word")));
            }
            if e & PIECE_DONE != 0 && k >= count {
                return Err(bad(p, format!("piece {k} complete beyond the content length")));
            }
        }
        if state & ST_COMPLETE != 0 {
            if self.content_length().is_none() || (0..count).any(|k| self.piece_crc(k).is_none()) {
                return Err(bad(p, "marked complete with pieces missing"));
            }
            if state & ST_DIGEST == 0 {
                return Err(bad(p, "marked complete without a digest"));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= HEADER_SIZE);
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned, and `off` is a 4-aligned constant
        // inside the header; the map lives as long as `self`. Other processes must not write the file (the
        // data dir is ours), so atomics are the only concurrent access.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU32) }
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= self.map.len());
        // SAFETY: as in word32; `off` is 8-aligned and inside the mapping (checked by callers' bounds).
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    fn entry(&self, k: u32) -> &AtomicU64 {
        assert!(k < self.capacity, "piece index checked by callers");
        self.word64(HEADER_SIZE + 8 * k as usize)
    }

    pub fn state(&self) -> u32 {
        self.word32(OFF_STATE).load(Ordering::Acquire)
    }

    pub fn set_state_bits(&self, bits: u32) {
        self.word32(OFF_STATE).fetch_or(bits, Ordering::AcqRel);
    }

    pub fn clear_state_bits(&self, bits: u32) {
        self.word32(OFF_STATE).fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn content_length(&self) -> Option<u64> {
        let v = self.word64(OFF_CONTENT_LENGTH).load(Ordering::Acquire);
        (v != UNKNOWN).then_some(v)
    }

    pub fn set_content_length(&self, len: u64) {
        self.word64(OFF_CONTENT_LENGTH).store(len, Ordering::Release);
    }

    /// The crc32c of piece `k` when it is complete.
    pub fn piece_crc(&self, k: u32) -> Option<u32> {
        if k >= self.capacity {
            return None;
        }
        let e = self.entry(k).load(Ordering::Acquire);
        (e & PIECE_DONE != 0).then_some(e as u32)
    }

    /// Marks piece `k` complete with its crc in one 8-byte store: a reader sees both or neither.
    pub fn mark_piece(&self, k: u32, crc: u32) {
        self.entry(k).store(PIECE_DONE | crc as u64, Ordering::Release);
    }

    pub fn clear_piece(&self, k: u32) {
        self.entry(k).store(0, Ordering::Release);
    }

    pub fn actual_sha256(&self) -> Option<[u8; 32]> {
        if self.state() & ST_DIGEST == 0 {
            return None;
        }
        let mut d = [0u8; 32];
        for (i, chunk) in d.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word64(OFF_ACTUAL + 8 * i).load(Ordering::Acquire).to_le_bytes());
        }
        Some(d)
    }

    /// Records the digest; the ST_DIGEST bit is set after the bytes, so a torn write reads as "no digest".
    pub fn set_actual_sha256(&self, d: &[u8; 32]) {
        for (i, chunk) in d.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.word64(OFF_ACTUAL + 8 * i).store(u64::from_le_bytes(w), Ordering::Release);
        }
        self.set_state_bits(ST_DIGEST);
    }

    pub fn last_access_ms(&self) -> u64 {
        self.word64(OFF_LAST_ACCESS).load(Ordering::Relaxed)
    }

    pub fn set_last_access_ms(&self, ms: u64) {
        self.word64(OFF_LAST_ACCESS).store(ms, Ordering::Relaxed);
    }

    /// Synchronously writes the mapping back to disk (the header page alone when `header_only`).
    pub fn flush(&self, header_only: bool) -> Result<()> {
        let r = if header_only { self.map.flush_range(0, HEADER_SIZE) } else { self.map.flush() };
        r.map_err(|e| StorageError::io(&self.path, e))
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::BadMetadata { path: path.to_owned(), reason: reason.into() }
}

fn header_crc(h: &[u8], url_len: usize) -> u32 {
    let c = crc32c::crc32c(&h[..OFF_HEADER_CRC]);
    crc32c::crc32c_append(c, &h[OFF_URL..OFF_URL + url_len])
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A metadata file built from fuzz input (see `crate::fuzzing::task_metadata`), and the ID to open it as.
/// Input: a mode byte; 128 bytes for the header's fixed fields; 56 for its mutable ones (state, length,
/// digest, access time); a u16 URL length and the URL; the rest is the piece table. With the mode's low
/// bit set the header is made self-consistent (magic, version, sizes, crc), so the fuzzer reaches the
/// checks behind the crc instead of stopping at it.
pub(crate) fn fuzz_image(data: &[u8]) -> (Vec<u8>, TaskId) {
    // Saturating: the piece table is "the rest" (n = usize::MAX); a wrapped sum gave it no bytes at all.
    let take = |from: usize, n: usize| data.get(from..data.len().min(from.saturating_add(n))).unwrap_or(&[]);
    let repair = data.first().is_some_and(|m| m & 1 == 1);
    let mut h = vec![0u8; HEADER_SIZE];
    let fixed = take(1, OFF_URL);
    h[..fixed.len()].copy_from_slice(fixed);
    let mutable = take(1 + OFF_URL, OFF_LAST_ACCESS + 8 - OFF_STATE);
    h[OFF_STATE..OFF_STATE + mutable.len()].copy_from_slice(mutable);
    let mut at = 1 + OFF_URL + (OFF_LAST_ACCESS + 8 - OFF_STATE);
    let url_len = take(at, 2).iter().fold(0usize, |a, &b| a << 8 | b as usize) % (MAX_URL + 1);
    at += 2;
    let url = take(at, url_len);
    h[OFF_URL..OFF_URL + url.len()].copy_from_slice(url);
    let table = take(at + url.len(), usize::MAX);
    let table = &table[..table.len() / 8 * 8];
    if repair {
        h[..8].copy_from_slice(&MAGIC);
        put32(&mut h, OFF_VERSION, VERSION);
        put32(&mut h, OFF_HEADER_SIZE, HEADER_SIZE as u32);
        put32(&mut h, OFF_URL_LEN, url.len() as u32);
        put32(&mut h, OFF_CAPACITY, (table.len() / 8) as u32);
        let crc = header_crc(&h, url.len());
        put32(&mut h, OFF_HEADER_CRC, crc);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[OFF_TASK_ID..OFF_TASK_ID + 32]);
    h.extend_from_slice(table);
    (h, TaskId(id))
}

fn get32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn get64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;
