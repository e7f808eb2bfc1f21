//! Eviction: a TTL on last access, and a disk quota with high/low watermarks (least recently used first).
//!
//! A task is a candidate only when the store's map holds the sole reference to it: any writer, reader,
//! hashing thread or upload keeps a handle, so nothing in use is ever evicted. GC deletes only files of
//! tasks it knows, through the same path as any removal.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::store::{lock, Store};
use super::task::{Task, TaskState};
use super::TaskId;

/// What one GC pass did.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub expired: Vec<TaskId>,
    pub evicted: Vec<TaskId>,
    pub freed_bytes: u64,
    pub usage_before: u64,
    pub usage_after: u64,
    pub limit: u64,
}

/// Bytes a task occupies on disk (allocated blocks, so sparse tables and holes are not counted).
fn disk_bytes(t: &Task) -> u64 {
    [t.meta.path(), t.data_path.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn fs_usage(path: &std::path::Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let total = s.f_blocks as u64 * s.f_frsize as u64;
    let free = s.f_bfree as u64 * s.f_frsize as u64;
    Some((total, total - free))
}

impl Store {
    /// Bytes the store's tasks occupy on disk.
    pub fn usage_bytes(&self) -> u64 {
        let tasks: Vec<_> = lock(&self.tasks).values().cloned().collect();
        tasks.iter().map(|t| disk_bytes(t)).sum()
    }

    /// Refuses content that could never fit: longer than the quota, or than the whole file system when
    /// there is none. Checked before a task's file is preallocated, so a declared length cannot make the
    /// store reserve what GC would have to evict everything for (or fail to find).
    pub(super) fn check_fits(&self, len: u64) -> Result<(), super::StorageError> {
        let limit = match self.gc_limits().quota_bytes {
            Some(q) => q,
            None => fs_usage(self.data_dir()).map_or(u64::MAX, |(total, _)| total),
        };
        match len > limit {
            true => Err(super::StorageError::ExceedsQuota { len, limit }),
            false => Ok(()),
        }
    }

    /// What GC keeps usage under: the quota, or the file system's size when there is none.
    pub fn limit_bytes(&self) -> u64 {
        self.usage_and_limit().1
    }

    /// The quota in force and the usage it is compared with.
    fn usage_and_limit(&self) -> (u64, u64) {
        match self.gc_limits().quota_bytes {
            Some(q) => (self.usage_bytes(), q),
            None => fs_usage(self.data_dir()).map(|(t, u)| (u, t)).unwrap_or((0, u64::MAX)),
        }
    }

    /// Tasks no one holds, with their last access, oldest first.
    fn idle_tasks(&self) -> Vec<(u64, Arc<Task>)> {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|_, t| !t.removed.load(Ordering::Acquire));
        let mut v: Vec<_> = tasks
            .values()
            // Only the map's reference: no writer, reader or hasher has it.
            .filter(|t| Arc::strong_count(t) == 1)
            .map(|t| (t.meta.last_access_ms(), t.clone()))
            .collect();
        // Unfinished leftovers go before complete tasks of the same age: they are worth less.
        v.sort_by_key(|(at, t)| (*at, t.state() == TaskState::Complete));
        v
    }

    /// One GC pass at time `now_ms`.
    pub fn gc(&self, now_ms: u64) -> GcReport {
        let mut r = GcReport::default();
        let limits = self.gc_limits();
        let (usage, limit) = self.usage_and_limit();
        r.usage_before = usage;
        r.limit = limit;
        let mut usage = usage;
        let idle = self.idle_tasks();
        let mut rest = Vec::new();
        for (at, t) in idle {
            let expired = limits.ttl.is_some_and(|ttl| now_ms.saturating_sub(at) > ttl.as_millis() as u64);
            if expired {
                usage = usage.saturating_sub(self.evict(&t, "ttl expired", &mut r));
                r.expired.push(t.id());
            } else {
                rest.push(t);
            }
        }
        let high = (limit as f64 * limits.high_watermark) as u64;
        let low = (limit as f64 * limits.low_watermark) as u64;
        if usage > high {
            for t in rest {
                if usage <= low {
                    break;
                }
                usage = usage.saturating_sub(self.evict(&t, "evicted by quota", &mut r));
                r.evicted.push(t.id());
            }
        }
        r.usage_after = usage;
        if !r.expired.is_empty() || !r.evicted.is_empty() {
            tracing::info!(
                expired = r.expired.len(),
                evicted = r.evicted.len(),
                freed = r.freed_bytes,
                usage = r.usage_after,
                limit,
                "gc pass"
            );
        }
        r
    }

    fn evict(&self, t: &Arc<Task>, why: &str, r: &mut GcReport) -> u64 {
        let bytes = disk_bytes(t);
        {
            let mut tasks = lock(&self.tasks);
            // Re-checked under the lock: a handle may have been taken since the candidate list was made
            // (the candidate list itself holds one reference).
            if tasks.get(&t.id()).is_some_and(|m| Arc::strong_count(m) > 2) {
                return 0;
            }
            tasks.remove(&t.id());
        }
        t.discard(super::FailReason::Removed(why.to_owned()));
        self.evictions.fetch_add(1, Ordering::Relaxed);
        r.freed_bytes += bytes;
        bytes
    }
}
