//! The set of tasks under one data directory: creating, finding, loading at start, removing.
//!
//! Layout: `<data_dir>/tasks/<first two hex digits>/<task id>.{meta,data}`. A new task's metadata is
//! written to `<id>.meta.tmp` and renamed into place after its content file exists, so a crash leaves at
//! worst files that the next start recognises as orphans and deletes.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{Result, StorageError};
use super::io::{Ingest, IoEngine, IoEngineChoice};
use super::layout;
use super::meta::{Meta, NewMeta, ST_COMPLETE, ST_DIRTY};
use super::task::{now_ms, Task, TaskInfo};
use super::TaskId;

/// How the store is set up.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub io_engine: IoEngineChoice,
    /// How pieces are written (page cache or O_DIRECT).
    pub ingest: Ingest,
    /// The GC limits at start ([`Store::set_gc_limits`] replaces them later).
    pub gc: GcLimits,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            io_engine: IoEngineChoice::Auto,
            ingest: Ingest::default(),
            gc: GcLimits::default(),
        }
    }
}

/// The limits GC enforces; replaceable while the store runs (a configuration reload).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GcLimits {
    /// Bytes the store may use; `None` means "the file system": usage is then the file system's.
    pub quota_bytes: Option<u64>,
    /// GC starts above this fraction of the quota…
    pub high_watermark: f64,
    /// …and evicts least-recently-used tasks until usage is below this one.
    pub low_watermark: f64,
    /// Tasks not read for this long are evicted.
    pub ttl: Option<Duration>,
}

impl Default for GcLimits {
    fn default() -> Self {
        GcLimits {
            quota_bytes: None,
            high_watermark: 0.8,
            low_watermark: 0.6,
            ttl: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

impl GcLimits {
    fn validate(&self) -> Result<()> {
        let (l, h) = (self.low_watermark, self.high_watermark);
        if !(0.0 < l && l <= h && h <= 1.0) {
            return Err(StorageError::Invalid("watermarks must satisfy 0 < low <= high <= 1".into()));
        }
        Ok(())
    }
}

/// What a caller asks to create.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub id: TaskId,
    /// The source URL with volatile query parameters already removed.
    pub url: String,
    pub content_length: Option<u64>,
    /// `None` chooses from the content length (see layout.rs).
    pub piece_length: Option<u32>,
    pub expected_sha256: Option<[u8; 32]>,
    /// No expected digest yet, but the content must match one announced later by the task's source
    /// ([`Task::announce_sha256`]) before it completes: a task fetched from peers by its URL.
    pub digest_announced: bool,
    /// Created for a request that carried credentials: a cached copy is served only after the origin
    /// confirms the requester may read it (the engine's authorization probe).
    pub credentialed: bool,
}

pub struct Store {
    pub(super) cfg: StoreConfig,
    /// The GC limits in force: those of `cfg` until a reload replaces them.
    pub(super) limits: Mutex<GcLimits>,
    engine: IoEngine,
    tasks_dir: PathBuf,
    pub(super) tasks: Mutex<HashMap<TaskId, Arc<Task>>>,
    pub(super) evictions: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the start-up scan found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    pub unclean: usize,
    pub discarded: usize,
    pub orphans_removed: usize,
    /// Pieces of unfinished tasks left by an unclean stop that were read back at load and matched their crc.
    pub pieces_checked: u64,
    /// Pieces of those tasks whose bytes did not match (a power loss reached the piece table first): cleared.
    pub pieces_cleared: u64,
}

impl Store {
    /// Opens (creating if needed) the data directory, picks the io engine and loads every task on disk.
    pub fn open(cfg: StoreConfig) -> Result<(Arc<Store>, LoadReport)> {
        let limits = cfg.gc;
        limits.validate()?;
        let engine = IoEngine::select(cfg.io_engine).map_err(StorageError::UringUnavailable)?;
        let tasks_dir = cfg.data_dir.join("tasks");
        private_dir(&tasks_dir)?;
        // Task files hold other users' downloads and URLs: the data directory is the daemon's alone.
        fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StorageError::io(&cfg.data_dir, e))?;
        let store = Store {
            cfg,
            limits: Mutex::new(limits),
            engine,
            tasks_dir,
            tasks: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
        };
        let report = store.load()?;
        tracing::info!(
            engine = engine.name(),
            loaded = report.loaded,
            unclean = report.unclean,
            discarded = report.discarded,
            orphans = report.orphans_removed,
            pieces_checked = report.pieces_checked,
            pieces_cleared = report.pieces_cleared,
            "storage opened"
        );
        Ok((Arc::new(store), report))
    }

    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn paths(&self, id: &TaskId) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.tasks_dir.join(id.shard());
        let meta = dir.join(format!("{id}.meta"));
        let data = dir.join(format!("{id}.data"));
        (dir, meta, data)
    }

    fn load(&self) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let shards = fs::read_dir(&self.tasks_dir).map_err(|e| StorageError::io(&self.tasks_dir, e))?;
        for shard in shards.flatten() {
            let name = shard.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            self.load_shard(&shard.path(), &name, &mut report);
        }
        Ok(report)
    }

    fn load_shard(&self, dir: &Path, shard: &str, report: &mut LoadReport) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut metas = Vec::new();
        let mut datas = Vec::new();
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let (stem, ext) = file.split_once('.').unwrap_or((file.as_str(), ""));
            let Ok(id) = stem.parse::<TaskId>() else {
                // Not a name we would have written: leave it alone.
                tracing::warn!(path = %path.display(), "unknown file in the data directory left alone");
                continue;
            };
            match ext {
                "meta" if id.shard() == shard => metas.push(id),
                "data" if id.shard() == shard => datas.push(id),
                "meta.tmp" => report.orphans_removed += remove_quiet(&path) as usize,
                _ => {
                    tracing::warn!(path = %path.display(), "unknown file in the data directory left alone")
                }
            }
        }
        for id in &metas {
            let (_, meta_path, data_path) = self.paths(id);
            match self.load_task(*id, &meta_path, &data_path) {
                Ok((task, unclean)) => {
                    report.loaded += 1;
                    report.unclean += unclean as usize;
                    if unclean && !task.is_complete() {
                        let s = super::scrub::scrub(&task);
                        report.pieces_checked += u64::from(s.good);
                        report.pieces_cleared += u64::from(s.cleared);
                        if s.cleared > 0 {
                            tracing::warn!(task = %id, cleared = s.cleared, good = s.good, "unclean stop: pieces failed their crc at load and will be fetched again");
                        }
                    }
                    lock(&self.tasks).insert(*id, task);
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "task discarded at load");
                    report.discarded += 1;
                    remove_quiet(&meta_path);
                    remove_quiet(&data_path);
                }
            }
        }
        for id in datas.iter().filter(|d| !metas.contains(d)) {
            report.orphans_removed += remove_quiet(&self.paths(id).2) as usize;
        }
    }

    /// A second descriptor of a content file, opened with O_DIRECT, when the store ingests that
    /// way and the file system accepts it (tmpfs before 6.6 and some FUSE file systems do not: those tasks
    /// are written through the page cache, and the daemon says so once).
    fn open_direct(&self, data_path: &Path) -> Option<std::fs::File> {
        if self.cfg.ingest != Ingest::Direct {
            return None;
        }
        match OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(data_path) {
            Ok(f) => Some(f),
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| tracing::warn!(error = %e, "O_DIRECT refused here; writing through the page cache"));
                None
            }
        }
    }

    fn load_task(&self, id: TaskId, meta_path: &Path, data_path: &Path) -> Result<(Arc<Task>, bool)> {
        let meta = Meta::open(meta_path, id)?;
        let data =
            OpenOptions::new().read(true).write(true).open(data_path).map_err(|e| StorageError::io(data_path, e))?;
        let size = data.metadata().map_err(|e| StorageError::io(data_path, e))?.len();
        if meta.state() & ST_COMPLETE != 0 && Some(size) != meta.content_length() {
            return Err(StorageError::BadMetadata {
                path: meta_path.to_owned(),
                reason: format!("complete task but content file has {size} bytes"),
            });
        }
        let unclean = meta.state() & ST_DIRTY != 0;
        if meta.state() & ST_COMPLETE == 0 {
            // Someone may resume writing it: an unclean stop from now on must be visible at the next load.
            meta.set_state_bits(ST_DIRTY);
            meta.flush(true)?;
        }
        // Hashing of surviving pieces starts with the next write or wait, not here: a process that only
        // reads the store (or lists it) never competes with the one that will resume the download.
        let direct = self.open_direct(data_path);
        Ok((Task::new(meta, data, direct, data_path.to_owned(), self.engine), unclean))
    }

    /// The task with this ID, if the store has it (pins it against GC while the handle lives).
    pub fn get(&self, id: &TaskId) -> Option<Arc<Task>> {
        let mut tasks = lock(&self.tasks);
        match tasks.get(id) {
            Some(t) if t.removed.load(Ordering::Acquire) => {
                tasks.remove(id);
                None
            }
            Some(t) => Some(t.clone()),
            None => None,
        }
    }

    /// Returns the existing task (`false`) or creates it (`true`): one node never downloads a task twice.
    pub fn get_or_create(&self, spec: &TaskSpec) -> Result<(Arc<Task>, bool)> {
        let mut tasks = lock(&self.tasks);
        if let Some(t) = tasks.get(&spec.id) {
            if !t.removed.load(Ordering::Acquire) && !matches!(t.state(), super::TaskState::Failed(_)) {
                return Ok((t.clone(), false));
            }
            tasks.remove(&spec.id);
        }
        let task = self.create_files(spec)?;
        tasks.insert(spec.id, task.clone());
        Ok((task, true))
    }

    /// Creates a new task; an existing one is an error.
    pub fn create(&self, spec: &TaskSpec) -> Result<Arc<Task>> {
        match self.get_or_create(spec)? {
            (t, true) => Ok(t),
            (_, false) => Err(StorageError::TaskExists(spec.id)),
        }
    }

    fn create_files(&self, spec: &TaskSpec) -> Result<Arc<Task>> {
        if let Some(len) = spec.content_length {
            self.check_fits(len)?;
        }
        let piece_length = match spec.piece_length {
            Some(p) if layout::valid_piece_length(p) => p,
            Some(p) => return Err(StorageError::Invalid(format!("piece length {p} is not a power of two in range"))),
            None => spec.content_length.map_or(layout::UNKNOWN_LENGTH_PIECE, layout::auto_piece_length),
        };
        let (dir, meta_path, data_path) = self.paths(&spec.id);
        private_dir(&dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&data_path)
            .map_err(|e| StorageError::io(&data_path, e))?;
        let cleanup = |e: StorageError| {
            let _ = fs::remove_file(&data_path);
            let _ = fs::remove_file(&meta_path);
            e
        };
        if let Some(len) = spec.content_length.filter(|&l| l > 0) {
            preallocate(&data, len).map_err(|e| cleanup(StorageError::io(&data_path, e)))?;
        }
        let meta = Meta::create(
            &meta_path,
            &NewMeta {
                id: spec.id,
                url: &spec.url,
                content_length: spec.content_length,
                piece_length,
                expected_sha256: spec.expected_sha256,
                digest_announced: spec.digest_announced,
                credentialed: spec.credentialed,
                created_ms: now_ms(),
            },
        )
        .map_err(cleanup)?;
        meta.flush(true).map_err(cleanup)?;
        let direct = self.open_direct(&data_path);
        let task = Task::new(meta, data, direct, data_path.clone(), self.engine);
        // An empty object is complete as soon as it exists (its digest is that of no bytes).
        super::digest::kick(&task);
        Ok(task)
    }

    /// Deletes a task's files; handles already open keep working on the unlinked files.
    pub fn remove(&self, id: &TaskId, reason: &str) -> bool {
        match lock(&self.tasks).remove(id) {
            Some(t) => {
                t.discard(super::FailReason::Removed(reason.to_owned()));
                true
            }
            None => false,
        }
    }

    pub fn list(&self) -> Vec<TaskInfo> {
        let tasks: Vec<_> = lock(&self.tasks).values().cloned().collect();
        let mut v: Vec<_> = tasks.iter().filter(|t| !t.removed.load(Ordering::Acquire)).map(|t| t.info()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Replaces the GC limits; the next GC pass uses them.
    pub fn set_gc_limits(&self, limits: GcLimits) -> Result<()> {
        limits.validate()?;
        *lock(&self.limits) = limits;
        Ok(())
    }

    pub fn gc_limits(&self) -> GcLimits {
        *lock(&self.limits)
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Clean shutdown: every unfinished task synced and marked clean.
    pub fn close(&self) -> Result<()> {
        let tasks: Vec<_> = lock(&self.tasks).values().cloned().collect();
        let mut first = Ok(());
        for t in tasks {
            if let Err(e) = t.close_clean() {
                tracing::warn!(task = %t.id(), error = %e, "clean close failed; the task reloads as unclean");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Removes one of our files that cannot be accounted for; true when it is gone.
fn remove_quiet(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed unaccounted file");
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove unaccounted file");
            false
        }
    }
}

/// Reserves the whole content up front so a full disk shows at creation, not halfway through a download.
fn preallocate(f: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate takes no pointers; the descriptor is valid for the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // File systems without fallocate (some FUSE, older NFS): a sized sparse file still works.
        return f.set_len(len);
    }
    Err(e)
}

/// Creates `dir` and its missing parents readable by the daemon's user only (0700).
fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| StorageError::io(dir, e))
}
