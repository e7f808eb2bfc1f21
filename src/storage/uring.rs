//! One io_uring ring per thread, its completions delivered through an eventfd that tokio's AsyncFd polls.
//!
//! Operations push their SQE when they are created (not when first polled), so a caller that creates
//! several writes and then awaits them keeps them all in flight. A driver task on the same runtime submits
//! everything pushed since its last turn in one `io_uring_enter` (batched submission) and reaps completions.
//! Buffers and the file are owned by the operation's slot until the kernel reports completion, so dropping a
//! future never lets the kernel touch freed memory. Nor does dropping the ring: when its runtime stops with
//! operations in flight, the ring cancels them and waits for every completion before a slot is freed
//! (see `Drop for Inner`); an operation the kernel never completes within a bound has its buffer leaked,
//! never freed.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Submission queue entries per ring; with 256 KiB chunks this is 32 MiB of writes in flight per core.
const RING_ENTRIES: u32 = 128;
/// Large writes are split so one piece alone reaches the queue depth where io_uring beats pwrite.
pub const CHUNK: usize = 256 << 10;

/// What a slot keeps alive for the kernel until its completion arrives.
enum Keep {
    Write(#[allow(dead_code)] Bytes),
    Read(Vec<u8>),
    None,
}

struct Slot {
    result: Option<i32>,
    waker: Option<Waker>,
    keep: Keep,
    _file: Arc<File>,
    abandoned: bool,
}

struct Inner {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    unsubmitted: usize,
}

pub struct Ring {
    inner: Mutex<Inner>,
    kick: Notify,
    alive: AtomicBool,
}

thread_local! {
    static RING: RefCell<Weak<Ring>> = const { RefCell::new(Weak::new()) };
    /// Operations this thread's rings found in flight when they closed, and waited for (for tests).
    static AWAITED_AT_CLOSE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// user_data of the close-time cancel request; no slot has this index.
const CANCEL_ALL: u64 = u64::MAX;
/// How long a closing ring waits for the kernel to finish or cancel what it still owns.
const CLOSE_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks that io_uring can be set up here and supports the opcodes we use.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(4)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::Write::CODE, "write"),
        (opcode::Read::CODE, "read"),
        (opcode::Fsync::CODE, "fsync"),
        (opcode::SyncFileRange::CODE, "sync_file_range"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks {name}")));
        }
    }
    Ok(())
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock would leave the ring consistent (no partial state), so poison is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ring {
    /// The ring of the current thread, created with its driver task on first use. Must run inside a tokio
    /// runtime; a ring whose runtime has gone is replaced.
    pub fn current() -> io::Result<Arc<Ring>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("io_uring engine used outside a tokio runtime"));
        }
        RING.with(|cell| {
            if let Some(r) = cell.borrow().upgrade() {
                if r.alive.load(Ordering::Acquire) {
                    return Ok(r);
                }
            }
            let ring = IoUring::builder().build(RING_ENTRIES)?;
            // SAFETY: eventfd(2) takes no pointers; the returned fd is checked before use and owned below.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: efd is a fresh, valid descriptor that nothing else owns.
            let efd = unsafe { OwnedFd::from_raw_fd(efd) };
            ring.submitter().register_eventfd(efd.as_raw_fd())?;
            let r = Arc::new(Ring {
                inner: Mutex::new(Inner { ring, slots: Vec::new(), free: Vec::new(), unsubmitted: 0 }),
                kick: Notify::new(),
                alive: AtomicBool::new(true),
            });
            // SAFETY: `efd` is an OwnedFd: open, and the same descriptor for as long as the AsyncFd owns it.
            let afd = unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?;
            tokio::spawn(drive(r.clone(), afd));
            *cell.borrow_mut() = Arc::downgrade(&r);
            Ok(r)
        })
    }

    /// Pushes one SQE; the slot owns `keep` (whose heap buffer the entry points into) and `file` until the
    /// kernel's completion arrives.
    fn push(self: &Arc<Self>, file: &Arc<File>, keep: Keep, entry: io_uring::squeue::Entry) -> Op {
        let mut g = lock(&self.inner);
        let slot = Slot { result: None, waker: None, keep, _file: file.clone(), abandoned: false };
        let idx = match g.free.pop() {
            Some(i) => {
                g.slots[i] = Some(slot);
                i
            }
            None => {
                g.slots.push(Some(slot));
                g.slots.len() - 1
            }
        };
        let entry = entry.user_data(idx as u64);
        loop {
            // SAFETY: the entry's buffer and fd are owned by slot `idx`, which is freed only after its CQE.
            if unsafe { g.ring.submission().push(&entry) }.is_ok() {
                g.unsubmitted += 1;
                break;
            }
            // Queue full: submit what is queued now, on this thread, then retry.
            match g.ring.submit() {
                Ok(_) => g.unsubmitted = 0,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => reap(&mut g),
                Err(e) => {
                    // Never queued: the op completes with the error instead of hanging.
                    if let Some(s) = g.slots[idx].as_mut() {
                        s.result = Some(-e.raw_os_error().unwrap_or(libc::EIO));
                    }
                    break;
                }
            }
        }
        drop(g);
        self.kick.notify_one();
        Op { ring: self.clone(), idx, done: false }
    }

    pub fn write_at(self: &Arc<Self>, file: &Arc<File>, buf: Bytes, offset: u64) -> Op {
        let fd = types::Fd(file.as_raw_fd());
        let entry = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32).offset(offset).build();
        self.push(file, Keep::Write(buf), entry)
    }

    pub fn read_at(self: &Arc<Self>, file: &Arc<File>, len: usize, offset: u64) -> Op {
        let fd = types::Fd(file.as_raw_fd());
        let mut buf = vec![0u8; len];
        // The Vec's heap buffer does not move when the Vec is moved into the slot.
        let entry = opcode::Read::new(fd, buf.as_mut_ptr(), len as u32).offset(offset).build();
        self.push(file, Keep::Read(buf), entry)
    }

    /// Starts writeback of a range without waiting for it (sync_file_range SYNC_FILE_RANGE_WRITE).
    pub fn start_writeback(self: &Arc<Self>, file: &Arc<File>, offset: u64, len: u32) -> Op {
        let fd = types::Fd(file.as_raw_fd());
        let entry = opcode::SyncFileRange::new(fd, len).offset(offset).flags(libc::SYNC_FILE_RANGE_WRITE).build();
        self.push(file, Keep::None, entry)
    }

    pub fn fdatasync(self: &Arc<Self>, file: &Arc<File>) -> Op {
        let fd = types::Fd(file.as_raw_fd());
        let entry = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
        self.push(file, Keep::None, entry)
    }
}

impl Inner {
    fn in_flight(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.result.is_none()).count()
    }
}

impl Drop for Inner {
    /// The ring closes after this returns and the slots are freed with it; the kernel must own none of
    /// their buffers by then. Every operation still in flight is cancelled (reads and writes of regular
    /// files usually just finish; a read that would block is cancelled) and its completion reaped.
    fn drop(&mut self) {
        let pending = self.in_flight();
        if pending == 0 {
            return;
        }
        AWAITED_AT_CLOSE.with(|c| c.set(c.get() + pending as u64));
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any().all()).build().user_data(CANCEL_ALL);
        // SAFETY: a cancel request carries no buffer or descriptor of ours.
        if unsafe { self.ring.submission().push(&cancel) }.is_err() {
            tracing::debug!("io_uring queue full at close; waiting for completions without a cancel");
        }
        let deadline = std::time::Instant::now() + CLOSE_BOUND;
        let tick = types::Timespec::from(std::time::Duration::from_millis(100));
        // Bounded by the deadline: each turn waits at most 100 ms for a completion.
        while self.in_flight() > 0 {
            if std::time::Instant::now() >= deadline {
                // Freeing these buffers could let the kernel write into reused memory: leak them instead.
                let left = self.in_flight();
                tracing::error!(
                    operations = left,
                    "io_uring operations still in flight at close; their buffers are leaked"
                );
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            let args = types::SubmitArgs::new().timespec(&tick);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring wait at close failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            reap(self);
        }
    }
}

/// Operations this thread's rings awaited when they closed with them in flight.
#[cfg(test)]
pub(crate) fn awaited_at_close() -> u64 {
    AWAITED_AT_CLOSE.with(|c| c.get())
}

fn reap(g: &mut Inner) {
    let done: Vec<(usize, i32)> = g.ring.completion().map(|c| (c.user_data() as usize, c.result())).collect();
    for (idx, res) in done {
        let Some(Some(slot)) = g.slots.get_mut(idx) else {
            continue;
        };
        if slot.abandoned {
            g.slots[idx] = None;
            g.free.push(idx);
            continue;
        }
        slot.result = Some(res);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// Submits batches and reaps completions for one ring until its runtime shuts down.
async fn drive(ring: Arc<Ring>, efd: AsyncFd<OwnedFd>) {
    struct Dead<'a>(&'a AtomicBool);
    impl Drop for Dead<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _dead = Dead(&ring.alive);
    loop {
        {
            let mut g = lock(&ring.inner);
            if g.unsubmitted > 0 {
                g.unsubmitted = 0;
                if let Err(e) = g.ring.submit() {
                    tracing::error!(error = %e, "io_uring submit failed");
                }
            }
            reap(&mut g);
        }
        tokio::select! {
            _ = ring.kick.notified() => {}
            ready = efd.readable() => match ready {
                Ok(mut guard) => {
                    let mut buf = [0u8; 8];
                    // SAFETY: reading 8 bytes into a stack buffer from our own non-blocking eventfd.
                    let _ = unsafe { libc::read(efd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring eventfd failed");
                    return;
                }
            },
        }
    }
}

/// A pending ring operation; resolves to the kernel's result (bytes moved, or 0 for fsync).
pub struct Op {
    ring: Arc<Ring>,
    idx: usize,
    done: bool,
}

/// What a completed read returns: the result and the buffer it filled.
pub struct Completed {
    pub result: io::Result<usize>,
    pub buf: Option<Vec<u8>>,
}

impl Future for Op {
    type Output = Completed;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completed> {
        if !self.ring.alive.load(Ordering::Acquire) {
            self.done = true;
            let e = io::Error::other("io_uring driver stopped");
            return Poll::Ready(Completed { result: Err(e), buf: None });
        }
        let ring = self.ring.clone();
        let mut g = lock(&ring.inner);
        let idx = self.idx;
        let Some(slot) = g.slots[idx].as_mut() else {
            self.done = true;
            return Poll::Ready(Completed { result: Err(io::Error::other("io_uring slot lost")), buf: None });
        };
        match slot.result {
            Some(res) => {
                let keep = std::mem::replace(&mut slot.keep, Keep::None);
                g.slots[idx] = None;
                g.free.push(idx);
                self.done = true;
                let result = if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as usize) };
                let buf = match keep {
                    Keep::Read(v) => Some(v),
                    _ => None,
                };
                Poll::Ready(Completed { result, buf })
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut g = lock(&self.ring.inner);
        if let Some(slot) = g.slots[self.idx].as_mut() {
            if slot.result.is_some() {
                g.slots[self.idx] = None;
                g.free.push(self.idx);
            } else {
                // The kernel may still write into the buffer: the slot lives until reap() sees the CQE.
                slot.abandoned = true;
                slot.waker = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A runtime that stops while the kernel still owns a read's buffer: the ring's close must cancel the
    /// read and reap it before the buffer is freed. A pipe that nobody writes makes the read wait in the
    /// kernel for as long as we like; afterwards, bytes written to the pipe must still be in it (no read
    /// consumed them into freed memory).
    #[test]
    fn a_runtime_stopped_with_reads_in_flight_cancels_them_before_freeing_buffers() {
        if probe().is_err() {
            eprintln!("io_uring unavailable here: nothing to test");
            return;
        }
        let (reader, mut writer) = std::io::pipe().unwrap();
        let file = Arc::new(File::from(OwnedFd::from(reader)));
        let before = awaited_at_close();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ring = Ring::current().unwrap();
            // Offset -1: "the current position", the only one a pipe has.
            let ops: Vec<Op> = (0..4).map(|_| ring.read_at(&file, 4096, u64::MAX)).collect();
            for op in ops {
                tokio::spawn(op);
            }
            // Let the driver submit them; they then wait in the kernel for data that never comes.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let started = std::time::Instant::now();
        drop(rt);
        assert!(started.elapsed() < CLOSE_BOUND, "the close waited for cancellations, not for the bound");
        assert_eq!(awaited_at_close() - before, 4, "the four reads were still in flight at close and were awaited");
        writer.write_all(b"canary").unwrap();
        drop(writer);
        let mut left = Vec::new();
        File::from(OwnedFd::from(Arc::into_inner(file).expect("the ring released the file")))
            .read_to_end(&mut left)
            .unwrap();
        assert_eq!(left, b"canary", "no cancelled read took the bytes");
    }
}
