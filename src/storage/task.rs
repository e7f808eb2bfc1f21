//! One task: its content file, its mapped metadata, piece writes and reads, waiters, and its lifecycle.
//!
//! Crash-safety order for a piece: crc32c computed from the bytes in memory → bytes written to the content
//! file (page cache) → one 8-byte store of {complete, crc} into the mapped piece table. A process killed at
//! any instant therefore never leaves a piece marked complete whose bytes were not handed to the kernel.
//! Against power loss and bit rot, every piece is checked against its crc the first time this process
//! reads it (see `verified`), and a task is marked complete only after an fdatasync.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::buf;
use super::digest::HashState;
use super::error::{FailReason, Result, StorageError};
use super::io::IoEngine;
use super::layout;
use super::meta::{Meta, ST_COMPLETE, ST_DIRTY};
use super::TaskId;

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    InProgress,
    Complete,
    Failed(FailReason),
}

/// A snapshot for listings (`shoal ls`) and GC decisions.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    pub id: TaskId,
    pub url: String,
    pub content_length: Option<u64>,
    pub piece_length: u32,
    pub pieces_complete: u32,
    pub piece_count: Option<u32>,
    pub state: TaskState,
    pub created_ms: u64,
    pub last_access_ms: u64,
    pub sha256: Option<[u8; 32]>,
    /// The content file (what `shoal get` copies out).
    pub data_path: PathBuf,
}

/// The digest announcement of a task created with `digest_announced`.
#[derive(Default)]
pub(super) struct Announced {
    pub(super) expected: Option<[u8; 32]>,
    pub(super) parked: Option<[u8; 32]>,
}

pub struct Task {
    pub(super) id: TaskId,
    pub(super) meta: Meta,
    pub(super) data: Arc<File>,
    /// The same file opened with O_DIRECT, when the store ingests that way.
    pub(super) direct: Option<Arc<File>>,
    /// Stored pieces still in memory (daemon-wide cap, [`buf::HOLD_CAP`]): those the whole-content hash
    /// has not reached yet, so it need not read them back, and those a client streaming the download has
    /// still to read (every [`super::Reader`]), so it reads them without a copy (and, with O_DIRECT,
    /// without going to the disk). With no client streaming, pieces stay until the cap needs room.
    pub(super) held: buf::HeldPieces,
    pub(super) data_path: PathBuf,
    pub(super) io: IoEngine,
    writing: Mutex<HashSet<u32>>,
    /// One crc/sha256 pass at a time, taken in arrival order (FIFO): pieces written in order then reach
    /// the hasher in order and all take the hot path, instead of overtaking each other on the blocking
    /// pool and leaving the digest to the slower read-back path.
    hash_turn: tokio::sync::Mutex<()>,
    /// One bit per piece: its bytes were written or crc-checked by this process.
    verified: Vec<AtomicU64>,
    /// Bumped on every change a waiter may care about.
    changed: watch::Sender<u64>,
    failed: Mutex<Option<FailReason>>,
    /// For a task whose digest is announced later: the announced sha256, and the one the hashing pass
    /// computed while none was announced yet (the task then waits, incomplete, for the announcement).
    pub(super) announced: Mutex<Announced>,
    pub(super) hasher: Mutex<HashState>,
    pub(super) removed: AtomicBool,
    /// Pieces streaming readers wait for (wanted.rs).
    pub(super) wanted: super::wanted::Wanted,
    /// Clients streaming this task now ([`Reader`]): a held piece waits for all of them.
    pub(super) readers: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here cannot leave the guarded data half-updated, so poison carries no meaning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) use super::clock::now_ms;

impl Task {
    pub(super) fn new(meta: Meta, data: File, direct: Option<File>, data_path: PathBuf, io: IoEngine) -> Arc<Task> {
        let words = (meta.capacity as usize).div_ceil(64);
        Arc::new(Task {
            id: meta.id,
            verified: (0..words).map(|_| AtomicU64::new(0)).collect(),
            meta,
            data: Arc::new(data),
            direct: direct.map(Arc::new),
            held: buf::HeldPieces::default(),
            data_path,
            io,
            writing: Mutex::new(HashSet::new()),
            hash_turn: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            failed: Mutex::new(None),
            announced: Mutex::new(Announced::default()),
            hasher: Mutex::new(HashState::default()),
            removed: AtomicBool::new(false),
            wanted: Default::default(),
            readers: AtomicUsize::new(0),
        })
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn url(&self) -> &str {
        &self.meta.url
    }

    pub fn content_length(&self) -> Option<u64> {
        self.meta.content_length()
    }

    pub fn piece_length(&self) -> u32 {
        self.meta.piece_length
    }

    /// The sha256 the content must have: named at creation, or announced since by the task's source.
    pub fn expected_sha256(&self) -> Option<[u8; 32]> {
        self.meta.expected_sha256.or_else(|| lock(&self.announced).expected)
    }

    /// Whether the content is checked against a digest before the task completes (named at creation, or
    /// to be announced by its source): a response must then not end before the task is complete.
    pub fn verifies_content(&self) -> bool {
        self.meta.expected_sha256.is_some() || self.meta.digest_announced
    }

    /// Whether the task was created for a request that carried credentials (persisted): its content may
    /// be private to whoever the origin lets read it.
    pub fn credentialed(&self) -> bool {
        self.meta.credentialed
    }

    /// Whether the task still waits for its source to announce the digest it must match.
    pub fn awaits_digest(&self) -> bool {
        self.meta.expected_sha256.is_none() && self.meta.digest_announced && lock(&self.announced).expected.is_none()
    }

    /// The sha256 the task's source announced. A task created with `digest_announced` completes only once
    /// its content matches it (a mismatch discards the task: a parent sent wrong bytes). Ignored for other
    /// tasks and after a first announcement.
    pub fn announce_sha256(self: &Arc<Self>, d: [u8; 32]) {
        if !self.meta.digest_announced || self.meta.expected_sha256.is_some() {
            return;
        }
        let parked = {
            let mut a = lock(&self.announced);
            if a.expected.is_some() {
                return;
            }
            a.expected = Some(d);
            a.parked.take()
        };
        if let Some(got) = parked {
            // Hashed already: settle now (fdatasync included), off the caller's thread.
            let t = self.clone();
            let spawned = std::thread::Builder::new().name("shoal-sha256".into()).spawn(move || {
                super::digest::settle(&t, got);
            });
            if let Err(e) = spawned {
                self.fail(FailReason::io("starting the sha256 thread", &e));
            }
        }
        self.notify();
    }

    /// Known once the content length is.
    pub fn piece_count(&self) -> Option<u32> {
        self.content_length().map(|l| layout::piece_count(l, self.meta.piece_length) as u32)
    }

    /// Offset and length of piece `k`, when the content length is known and `k` is in range.
    pub fn piece_range(&self, k: u32) -> Option<(u64, u32)> {
        layout::piece_range(self.content_length()?, self.meta.piece_length, k)
    }

    pub fn has_piece(&self, k: u32) -> bool {
        self.meta.piece_crc(k).is_some()
    }

    pub fn piece_crc(&self, k: u32) -> Option<u32> {
        self.meta.piece_crc(k)
    }

    /// Indices of complete pieces (what a parent advertises to a child).
    pub fn completed_pieces(&self) -> Vec<u32> {
        let n = self.piece_count().unwrap_or(self.meta.capacity);
        (0..n).filter(|&k| self.has_piece(k)).collect()
    }

    pub fn state(&self) -> TaskState {
        if let Some(r) = lock(&self.failed).clone() {
            return TaskState::Failed(r);
        }
        if self.meta.state() & ST_COMPLETE != 0 {
            TaskState::Complete
        } else {
            TaskState::InProgress
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state() == TaskState::Complete
    }

    /// The sha256 of the whole content, once every piece has been hashed in order.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.meta.actual_sha256()
    }

    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id,
            url: self.meta.url.clone(),
            content_length: self.content_length(),
            piece_length: self.meta.piece_length,
            pieces_complete: self.completed_pieces().len() as u32,
            piece_count: self.piece_count(),
            state: self.state(),
            created_ms: self.meta.created_ms,
            last_access_ms: self.meta.last_access_ms(),
            sha256: self.sha256(),
            data_path: self.data_path.clone(),
        }
    }

    /// A receiver that sees every later change; check the condition after subscribing, then await.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn check_failed(&self) -> Result<()> {
        match lock(&self.failed).as_ref() {
            Some(r) => Err(r.clone().into()),
            None => Ok(()),
        }
    }

    /// Length piece `k` must have, or an error if `k` cannot exist.
    fn expected_piece_len(&self, k: u32) -> Result<usize> {
        match self.content_length() {
            Some(len) => match layout::piece_range(len, self.meta.piece_length, k) {
                Some((_, l)) => Ok(l as usize),
                None => Err(StorageError::PieceOutOfRange { piece: k, count: self.piece_count().unwrap_or(0) }),
            },
            None if k < self.meta.capacity => Ok(self.meta.piece_length as usize),
            None => Err(StorageError::TooLarge((k as u64 + 1) * self.meta.piece_length as u64)),
        }
    }

    /// Writes piece `k` and publishes it. With `expected_crc` (a piece from a peer) the bytes are checked
    /// first and a mismatch writes nothing. Writing a piece that is already complete is a no-op.
    /// crc32c (and, on the hot path, sha256) of a piece on the blocking pool: a few ms of CPU per piece that
    /// would otherwise hold the core's runtime, which meanwhile receives the next piece and streams earlier
    /// ones to clients. If this future is dropped while the pass runs, a digest it advanced is reset.
    async fn crc_and_hash_off_core(
        self: &Arc<Self>,
        k: u32,
        data: &Bytes,
        expected: Option<u32>,
    ) -> Result<(u32, bool)> {
        enum Pass {
            Running,
            Done(bool),
            Abandoned,
        }
        struct Pending(Arc<Task>, Arc<Mutex<Pass>>, bool);
        impl Drop for Pending {
            fn drop(&mut self) {
                if !self.2 {
                    return;
                }
                let mut p = lock(&self.1);
                match *p {
                    Pass::Running => *p = Pass::Abandoned,
                    Pass::Done(true) => {
                        super::digest::reset(&self.0);
                        super::digest::kick(&self.0);
                    }
                    _ => {}
                }
            }
        }
        let _turn = self.hash_turn.lock().await;
        let pass = Arc::new(Mutex::new(Pass::Running));
        let mut pending = Pending(self.clone(), pass.clone(), true);
        let (task, bytes) = (self.clone(), data.clone());
        let job = tokio::task::spawn_blocking(move || {
            let r = super::digest::crc_and_hash(&task, k, &bytes, expected);
            let mut p = lock(&pass);
            if matches!(*p, Pass::Abandoned) {
                if r.1 {
                    // The pieces may all be in by now: start the pass over them again.
                    super::digest::reset(&task);
                    super::digest::kick(&task);
                }
            } else {
                *p = Pass::Done(r.1);
            }
            r
        });
        let r = job.await.map_err(|e| StorageError::Invalid(format!("hashing piece {k}: {e}")))?;
        // From here the caller's own guard owns the reset.
        pending.2 = false;
        Ok(r)
    }

    pub async fn write_piece(self: &Arc<Self>, k: u32, data: Bytes, expected_crc: Option<u32>) -> Result<()> {
        self.check_failed()?;
        let want = self.expected_piece_len(k)?;
        if data.len() != want {
            return Err(StorageError::PieceLength { piece: k, got: data.len(), expected: want });
        }
        if self.has_piece(k) {
            return Ok(());
        }
        let (crc, hashed) = self.crc_and_hash_off_core(k, &data, expected_crc).await?;
        if let Some(exp) = expected_crc {
            if exp != crc {
                return Err(StorageError::CrcMismatch { piece: k, expected: exp, got: crc });
            }
        }
        // Until the piece is marked, a digest that already includes it must be recomputed if we give up
        // (error or cancellation).
        struct Unhash<'a>(&'a Task, bool);
        impl Drop for Unhash<'_> {
            fn drop(&mut self) {
                if self.1 {
                    super::digest::reset(self.0);
                }
            }
        }
        let mut unhash = Unhash(self, hashed);
        struct Claim<'a>(&'a Mutex<HashSet<u32>>, u32);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                lock(self.0).remove(&self.1);
            }
        }
        if !lock(&self.writing).insert(k) {
            return Err(StorageError::PieceBusy(k));
        }
        let _claim = Claim(&self.writing, k);
        let offset = k as u64 * self.meta.piece_length as u64;
        self.io
            .store_piece(&self.data, self.direct.as_ref(), data.clone(), offset)
            .await
            .map_err(|e| StorageError::io(&self.data_path, e))?;
        // The task may have failed or been removed while the bytes were in flight; a piece of a dropped
        // task must not be published.
        self.check_failed()?;
        self.meta.mark_piece(k, crc);
        unhash.1 = false;
        self.set_verified(k);
        if !self.is_complete() {
            self.keep_in_memory(k, data);
        }
        self.notify();
        super::digest::kick(self);
        Ok(())
    }

    /// Fixes the length of a task whose origin did not announce one (a chunked stream has ended).
    /// Pieces already written must all lie inside it.
    pub fn set_content_length(self: &Arc<Self>, len: u64) -> Result<()> {
        if let Some(cur) = self.content_length() {
            return if cur == len { Ok(()) } else { Err(StorageError::LengthConflict(len)) };
        }
        let count = layout::piece_count(len, self.meta.piece_length);
        if count > self.meta.capacity as u64 {
            return Err(StorageError::TooLarge(len));
        }
        let count = count as u32;
        // A full piece written where the final, shorter piece belongs would be the wrong length.
        let last_short = len % self.meta.piece_length as u64 != 0;
        let conflict = self.completed_pieces().into_iter().any(|k| k >= count || (last_short && k == count - 1));
        if conflict {
            return Err(StorageError::LengthConflict(len));
        }
        self.data.set_len(len).map_err(|e| StorageError::io(&self.data_path, e))?;
        self.meta.set_content_length(len);
        self.notify();
        super::digest::kick(self);
        Ok(())
    }

    pub(super) fn is_verified(&self, k: u32) -> bool {
        self.verified[(k / 64) as usize].load(Ordering::Acquire) & (1 << (k % 64)) != 0
    }

    pub(super) fn set_verified(&self, k: u32) {
        self.verified[(k / 64) as usize].fetch_or(1 << (k % 64), Ordering::AcqRel);
    }

    /// A complete piece's bytes whose crc did not match: forget the piece so it is fetched again.
    pub(super) fn drop_corrupt_piece(&self, k: u32, expected: u32, got: u32) -> StorageError {
        tracing::warn!(task = %self.id, piece = k, "piece failed its crc32c check; it will be fetched again");
        self.meta.clear_piece(k);
        self.meta.clear_state_bits(ST_COMPLETE);
        self.meta.set_state_bits(ST_DIRTY);
        super::digest::reset(self);
        self.notify();
        StorageError::CrcMismatch { piece: k, expected, got }
    }

    /// Where a stored piece's bytes are; before the length is known every stored piece is a full one.
    pub(super) fn stored_range(&self, k: u32) -> Option<(u64, u32)> {
        match self.content_length() {
            Some(_) => self.piece_range(k),
            None => {
                (k < self.meta.capacity).then(|| (k as u64 * self.meta.piece_length as u64, self.meta.piece_length))
            }
        }
    }

    /// Pieces the whole-content hash has taken so far (it takes them in order).
    pub fn hashed_pieces(&self) -> u32 {
        super::digest::next_unhashed(self)
    }

    /// Reads a complete piece through the io engine, checking its crc32c.
    pub async fn read_piece(&self, k: u32) -> Result<Bytes> {
        let crc = self.meta.piece_crc(k).ok_or(StorageError::PieceMissing(k))?;
        let (off, len) = self.stored_range(k).ok_or(StorageError::PieceMissing(k))?;
        if let Some(b) = self.resident_piece(k) {
            self.touch();
            return Ok(b);
        }
        let v = self
            .io
            .read_exact_at(&self.data, len as usize, off)
            .await
            .map_err(|e| StorageError::io(&self.data_path, e))?;
        self.check_read(k, crc, &v)?;
        self.touch();
        Ok(Bytes::from(v))
    }

    /// Checks bytes of piece `k` read back from the file against its stored `crc`, the first time this
    /// process reads the piece; a mismatch forgets the piece so it is fetched again. A piece this process
    /// wrote or already checked is trusted, as the zero-copy path trusts it: a client streaming a download
    /// as it lands would otherwise pay a second crc pass per piece.
    pub(super) fn check_read(&self, k: u32, crc: u32, bytes: &[u8]) -> Result<()> {
        if !self.is_verified(k) {
            let got = crc32c::crc32c(bytes);
            if got != crc {
                return Err(self.drop_corrupt_piece(k, crc, got));
            }
            self.set_verified(k);
        }
        Ok(())
    }

    /// Puts a copy of the complete content at `dest`, which must not exist.
    pub fn export_to(&self, dest: &std::path::Path) -> Result<()> {
        if !self.is_complete() {
            return Err(StorageError::NotComplete);
        }
        // A copy, never a hard link: whoever owns `dest` may change it, and the cache must not change with
        // it. std's copy is copy_file_range here, which shares extents (a reflink) on file systems that can.
        // A new file, never through a link someone left at `dest`.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .map_err(|e| StorageError::io(dest, e))?;
        let mut src = File::open(&self.data_path).map_err(|e| StorageError::io(&self.data_path, e))?;
        std::io::copy(&mut src, &mut out).map_err(|e| StorageError::io(dest, e))?;
        Ok(())
    }

    /// Waits until piece `k` is complete, or the task fails.
    pub async fn wait_piece(&self, k: u32) -> Result<()> {
        let mut rx = self.subscribe();
        loop {
            if self.has_piece(k) {
                return Ok(());
            }
            self.check_failed()?;
            if let Some(n) = self.piece_count() {
                if k >= n {
                    return Err(StorageError::PieceOutOfRange { piece: k, count: n });
                }
            }
            if rx.changed().await.is_err() {
                return Err(FailReason::Dropped.into());
            }
        }
    }

    /// Waits until every piece is stored, hashed, synced and (when expected) matched; returns the sha256.
    pub async fn wait_complete(self: &Arc<Self>) -> Result<[u8; 32]> {
        let mut rx = self.subscribe();
        // A task reloaded after a restart with all its pieces needs one hashing pass to complete.
        super::digest::kick(self);
        // Ends with completion or failure; a quiet second re-kicks the hashing pass, so a digest reset
        // that raced with the last write (an abandoned write's reset lands after every kick) cannot leave
        // a whole task waiting forever.
        loop {
            self.check_failed()?;
            if self.is_complete() {
                if let Some(d) = self.sha256() {
                    return Ok(d);
                }
            }
            match tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(FailReason::Dropped.into()),
                Err(_) => super::digest::kick(self),
            }
        }
    }

    /// Fails the task: waiters get the reason, nothing more is published. Files stay until `discard`.
    pub fn fail(&self, reason: FailReason) {
        let mut f = lock(&self.failed);
        if f.is_none() {
            *f = Some(reason);
        }
        drop(f);
        self.release_resident();
        self.notify();
    }

    /// Fails the task and deletes its files, freeing the space at once; the store forgets it on its next
    /// look. Whoever still holds a handle gets errors (never a silently shortened body), since a discarded
    /// task is either failed or one that GC proved nobody was using.
    pub fn discard(&self, reason: FailReason) {
        self.release_resident();
        if !self.removed.swap(true, Ordering::AcqRel) {
            // Unlinking alone would keep the blocks until the last descriptor closes.
            let _ = self.data.set_len(0);
            for p in [self.meta.path(), self.data_path.as_path()] {
                if let Err(e) = std::fs::remove_file(p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %p.display(), error = %e, "could not remove task file");
                    }
                }
            }
        }
        self.fail(reason);
    }

    /// Records a read for LRU eviction; coarse so that hot reads do not dirty the page on every call.
    pub fn touch(&self) {
        let now = now_ms();
        if now.saturating_sub(self.meta.last_access_ms()) >= 1000 {
            self.meta.set_last_access_ms(now);
        }
    }

    /// Records an access at a given instant (ms since the Unix epoch), for callers that keep their own
    /// clock, such as a re-announcement of a task after restart, and for tests of GC order.
    pub fn touch_at(&self, ms: u64) {
        self.meta.set_last_access_ms(ms);
    }

    /// Clean shutdown of an unfinished task: data and metadata synced, then the dirty bit cleared.
    pub(super) fn close_clean(&self) -> Result<()> {
        if self.removed.load(Ordering::Acquire) || lock(&self.failed).is_some() {
            return Ok(());
        }
        if self.meta.state() & ST_DIRTY == 0 {
            return Ok(());
        }
        self.data.sync_data().map_err(|e| StorageError::io(&self.data_path, e))?;
        self.meta.flush(false)?;
        self.meta.clear_state_bits(ST_DIRTY);
        self.meta.flush(true)
    }
}
