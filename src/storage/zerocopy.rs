//! Sending stored bytes to a socket without copying them through user space.
//!
//! The storage engine hands out a [`ZeroCopy`] (file, offset, length); senders in the transfer and proxy
//! layers call [`ZeroCopy::send_to`], which uses sendfile(2) and waits for socket writability through tokio.
//! Where the kernel refuses sendfile for a descriptor pair, it falls back to pread + write and counts it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// How many sends could not use sendfile since the process started.
pub fn fallback_count() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// A byte range of a task file that is complete and verified. It pins its task, so GC cannot evict the
/// task while the range is being sent.
#[derive(Clone)]
pub struct ZeroCopy {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    /// The same bytes already in memory (a piece still held after it was stored, or read with O_DIRECT):
    /// sent from there, so sending never fills the page cache (see `Task::upload_piece`).
    pub(super) mem: Option<bytes::Bytes>,
    /// The share of the daemon's upload-buffer budget `mem` holds, returned when the last clone goes.
    pub(super) _lease: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    pub(super) _pin: Arc<super::Task>,
}

/// Largest single sendfile call; keeps one connection from monopolising a core's runtime for too long.
const MAX_SEND: usize = 1 << 20;

impl std::fmt::Debug for ZeroCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroCopy").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

impl ZeroCopy {
    /// A sub-range, `offset` relative to this one (callers pacing a send chunk by chunk).
    pub fn slice(&self, offset: u64, len: u64) -> Option<ZeroCopy> {
        let end = offset.checked_add(len)?;
        let mem = match &self.mem {
            Some(m) if end <= self.len => Some(m.slice(offset as usize..end as usize)),
            _ => None,
        };
        (end <= self.len).then(|| ZeroCopy { offset: self.offset + offset, len, mem, ..self.clone() })
    }

    /// Sends the whole range to `sock`; returns the bytes sent (always `len` on success).
    pub async fn send_to(&self, sock: &TcpStream) -> io::Result<u64> {
        if self.mem.is_some() {
            return self.copy_to_socket(sock).await;
        }
        let mut sent = 0u64;
        let fd = self.file.as_raw_fd();
        while sent < self.len {
            let want = (self.len - sent).min(MAX_SEND as u64) as usize;
            let mut off = (self.offset + sent) as libc::off_t;
            let r = sock
                .async_io(Interest::WRITABLE, || {
                    // SAFETY: both descriptors are open for the duration of the call (the Arc<File> and the
                    // borrowed socket); `off` is a valid pointer to a local that the kernel updates.
                    let n = unsafe { libc::sendfile(sock.as_raw_fd(), fd, &mut off, want) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await;
            match r {
                Ok(0) => {
                    // The file is shorter than the range promised: never pad or end early silently.
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "task file shorter than range"));
                }
                Ok(n) => sent += n as u64,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) && sent == 0 => {
                    FALLBACKS.fetch_add(1, Ordering::Relaxed);
                    return self.copy_to_socket(sock).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    async fn copy_to_socket(&self, sock: &TcpStream) -> io::Result<u64> {
        self.copy_to(&mut SockWriter(sock)).await
    }

    /// The copying path, for writers that are not sockets (or when sendfile is refused).
    pub async fn copy_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<u64> {
        if let Some(m) = &self.mem {
            w.write_all(m).await?;
            return Ok(m.len() as u64);
        }
        let mut buf = vec![0u8; MAX_SEND.min(self.len as usize)];
        let mut sent = 0u64;
        while sent < self.len {
            let n = (self.len - sent).min(buf.len() as u64) as usize;
            let f = self.file.clone();
            let off = self.offset + sent;
            let mut b = std::mem::take(&mut buf);
            b.resize(n, 0);
            b = tokio::task::spawn_blocking(move || f.read_exact_at(&mut b, off).map(|_| b))
                .await
                .map_err(io::Error::other)??;
            w.write_all(&b).await?;
            sent += n as u64;
            buf = b;
        }
        Ok(sent)
    }
}

/// A borrowed socket as an `AsyncWrite` (the senders here only hold `&TcpStream`).
struct SockWriter<'a>(&'a TcpStream);

impl AsyncWrite for SockWriter<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        // Loops on WouldBlock until readiness is registered; bounded by the kernel's answers.
        loop {
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.0.poll_write_ready(cx) {
                    std::task::Poll::Ready(Ok(())) => continue,
                    std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                },
                r => return std::task::Poll::Ready(r),
            }
        }
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
