//! Which engine moves piece bytes between memory and task files: io_uring (a ring per thread) or plain
//! pread/pwrite on tokio's blocking pool. `auto` probes io_uring once at start, because container runtimes'
//! default seccomp profiles (Docker, containerd, Kubernetes RuntimeDefault) and gVisor refuse it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::uring::{self, Ring};

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoEngineChoice {
    #[default]
    Auto,
    Uring,
    Sync,
}

impl std::str::FromStr for IoEngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "sync" => Ok(Self::Sync),
            other => Err(format!("unknown io engine {other:?} (expected auto, uring or sync)")),
        }
    }
}

/// How piece bytes reach the content file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ingest {
    /// Through the page cache (pwrite), writeback started per piece.
    Buffered,
    /// O_DIRECT from the aligned piece buffer: no page-cache copy and no dirty pages; readers of a piece
    /// just written take it from memory (the task's resident piece), later readers from the disk. Falls
    /// back to buffered on file systems that refuse O_DIRECT, and for a piece's unaligned tail. The
    /// default: measured at half the CPU per GiB of buffered ingest (docs/benchmarks.md).
    #[default]
    Direct,
}

impl std::str::FromStr for Ingest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buffered" => Ok(Self::Buffered),
            "direct" => Ok(Self::Direct),
            other => Err(format!("unknown ingest mode {other:?} (expected buffered or direct)")),
        }
    }
}

/// The engine that actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    Uring,
    Sync,
}

impl IoEngine {
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Uring => "uring",
            IoEngine::Sync => "sync",
        }
    }

    /// Resolves a choice; `Err` only when io_uring was demanded and is not available.
    pub fn select(choice: IoEngineChoice) -> Result<IoEngine, String> {
        match choice {
            IoEngineChoice::Sync => Ok(IoEngine::Sync),
            IoEngineChoice::Uring => uring::probe().map(|_| IoEngine::Uring).map_err(|e| e.to_string()),
            IoEngineChoice::Auto => match uring::probe() {
                Ok(()) => Ok(IoEngine::Uring),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable (seccomp or kernel); using pread/pwrite");
                    Ok(IoEngine::Sync)
                }
            },
        }
    }

    /// Writes all of `buf` at `offset`.
    pub async fn write_all_at(self, file: &Arc<File>, buf: Bytes, offset: u64) -> io::Result<()> {
        match self {
            IoEngine::Sync => {
                let f = file.clone();
                blocking(move || f.write_all_at(&buf, offset)).await
            }
            IoEngine::Uring => {
                let ring = Ring::current()?;
                // Every chunk is queued before the first is awaited, so one piece alone fills the queue.
                let ops: Vec<_> = (0..buf.len())
                    .step_by(uring::CHUNK)
                    .map(|start| {
                        let end = (start + uring::CHUNK).min(buf.len());
                        (start, end, ring.write_at(file, buf.slice(start..end), offset + start as u64))
                    })
                    .collect();
                let mut first_err = None;
                for (start, end, op) in ops {
                    let done = op.await.result;
                    let r = match done {
                        Ok(n) if n == end - start => Ok(()),
                        // Short write (rare on regular files): finish that chunk synchronously-ordered.
                        Ok(n) => write_rest(&ring, file, buf.slice(start + n..end), offset + (start + n) as u64).await,
                        Err(e) => Err(e),
                    };
                    if let (Err(e), None) = (r, &first_err) {
                        first_err = Some(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
        }
    }

    /// Writes a whole piece and starts its writeback at once, as Dragonfly does: dirty pages never pile
    /// up, and the fdatasync that completes a task finds little left to do (so it overlaps with hashing
    /// instead of following it).
    pub async fn write_piece_at(self, file: &Arc<File>, buf: Bytes, offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.write_all_at(file, buf, offset).await?;
        match self {
            IoEngine::Sync => {
                let f = file.clone();
                blocking(move || start_writeback(&f, offset, len)).await
            }
            IoEngine::Uring => {
                // Fire and forget: the slot keeps the file open until the kernel answers.
                drop(Ring::current()?.start_writeback(file, offset, len as u32));
                Ok(())
            }
        }
    }

    /// Writes a piece through `direct` (an O_DIRECT descriptor of the same file) when there is one and
    /// the bytes allow it: the block-aligned head goes straight from `buf` to the device, and a short tail
    /// (the last piece of an object) through the page cache. Anything else goes through the page cache.
    pub async fn store_piece(
        self,
        buffered: &Arc<File>,
        direct: Option<&Arc<File>>,
        buf: Bytes,
        offset: u64,
    ) -> io::Result<()> {
        let head = buf.len() / super::buf::ALIGN * super::buf::ALIGN;
        match direct {
            Some(d) if head > 0 && super::buf::direct_writable(&buf, offset) => {
                match self.write_all_at(d, buf.slice(..head), offset).await {
                    // A device whose blocks are larger than ALIGN refuses it: the page cache then.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        return self.write_piece_at(buffered, buf, offset).await;
                    }
                    r => r?,
                }
                if head < buf.len() {
                    self.write_piece_at(buffered, buf.slice(head..), offset + head as u64).await?;
                }
                Ok(())
            }
            _ => self.write_piece_at(buffered, buf, offset).await,
        }
    }

    /// Reads `len` bytes at `offset` (block-aligned) through an O_DIRECT descriptor into a pooled,
    /// aligned buffer: the whole blocks covering them, the file's end cutting the last one short.
    pub async fn read_direct(self, direct: &Arc<File>, len: usize, offset: u64) -> io::Result<Bytes> {
        let want = len.div_ceil(super::buf::ALIGN) * super::buf::ALIGN;
        let mut b = super::buf::take(want);
        let f = direct.clone();
        // O_DIRECT reads of whole pieces: on the blocking pool for either engine (no page cache to hit).
        let b = blocking(move || {
            b.read_at(&f, offset, len, want)?;
            b.truncate(len);
            Ok(b)
        })
        .await?;
        Ok(b.freeze())
    }

    /// Reads exactly `len` bytes at `offset`.
    pub async fn read_exact_at(self, file: &Arc<File>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        match self {
            IoEngine::Sync => {
                let f = file.clone();
                blocking(move || {
                    let mut v = vec![0u8; len];
                    f.read_exact_at(&mut v, offset).map(|_| v)
                })
                .await
            }
            IoEngine::Uring => {
                let ring = Ring::current()?;
                let done = ring.read_at(file, len, offset).await;
                let n = done.result?;
                let mut v = done.buf.ok_or_else(|| io::Error::other("read buffer lost"))?;
                if n < len {
                    // Short read from the page cache edge: read the rest the simple way.
                    let f = file.clone();
                    let tail = blocking(move || {
                        let mut t = vec![0u8; len - n];
                        f.read_exact_at(&mut t, offset + n as u64).map(|_| t)
                    })
                    .await?;
                    v.truncate(n);
                    v.extend_from_slice(&tail);
                }
                Ok(v)
            }
        }
    }

    pub async fn sync_data(self, file: &Arc<File>) -> io::Result<()> {
        match self {
            IoEngine::Sync => {
                let f = file.clone();
                blocking(move || f.sync_data()).await
            }
            IoEngine::Uring => Ring::current()?.fdatasync(file).await.result.map(|_| ()),
        }
    }
}

/// Starts writeback of `len` bytes at `offset` without waiting (sync_file_range SYNC_FILE_RANGE_WRITE), so
/// that a later fdatasync finds little left to flush. Only a hint: errors are logged at debug, never returned
/// as failures.
pub fn start_writeback(f: &impl std::os::fd::AsFd, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_fd();
    // SAFETY: sync_file_range takes no pointers; `fd` is borrowed from an open file for the whole call.
    let r = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    // Only a hint: a file system that refuses it loses nothing.
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range refused");
    }
    Ok(())
}

async fn write_rest(ring: &Arc<Ring>, file: &Arc<File>, mut buf: Bytes, mut offset: u64) -> io::Result<()> {
    // Bounded: each round either moves at least one byte or returns an error.
    while !buf.is_empty() {
        let n = ring.write_at(file, buf.clone(), offset).await.result?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "io_uring wrote 0 bytes"));
        }
        buf = buf.slice(n..);
        offset += n as u64;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("blocking task: {e}")))?
}
