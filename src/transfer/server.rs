//! The upload server: answers piece requests with sendfile from the task file and pushes piece
//! availability to subscribed children (what each hears: availability.rs).
//!
//! Per connection, one task runs a reader and a writer side by side. The reader decodes frames and starts a
//! small task per request or subscription; those tasks queue their answers to the writer, which alone
//! touches the socket's write side, so a piece payload is never interleaved with anything. Everything
//! started for a connection lives in its JoinSet and dies with it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use super::error::ReadError;
use super::frame::{self, flag_set, Frame, FrameReader};
use super::limit::{RateMeter, TokenBucket};
use super::proto::{ErrorCode, Hello, PieceError, PieceHeader, SubscriptionEnd};
use crate::runtime::{reuseport_group, Cores};
use crate::storage::{StorageError, Store, TaskId, ZeroCopy};

/// Limits of the upload server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest control frame accepted (piece payloads are not frames).
    pub max_frame_len: u32,
    /// Requests one connection may have outstanding; more is a protocol error.
    pub max_in_flight: u32,
    /// Tasks one connection may subscribe to at once.
    pub max_subscriptions: usize,
    pub max_connections: usize,
    /// A connection with nothing outstanding and no frame for this long is closed.
    pub idle_timeout: Duration,
    /// A send or a half-received frame that makes no progress for this long ends the connection.
    pub stall_timeout: Duration,
    /// How long a request for a piece the server is still downloading waits before PIECE_NOT_AVAILABLE.
    pub piece_wait_timeout: Duration,
    /// Upload byte rate across all connections; `None` is unlimited.
    pub upload_rate: Option<u64>,
    /// Bytes that may go out at once before the rate applies.
    pub upload_burst: u64,
    /// Pieces being sent at the same time across all connections.
    pub max_concurrent_uploads: usize,
    /// The cluster secret children must prove; `None` serves anyone (in-process tests only).
    pub membership: Option<crate::membership::ClusterKey>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_len: frame::DEFAULT_MAX_FRAME,
            max_in_flight: 16,
            max_subscriptions: 1024,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(10),
            piece_wait_timeout: Duration::from_secs(30),
            upload_rate: None,
            upload_burst: 4 << 20,
            max_concurrent_uploads: 64,
            membership: None,
        }
    }
}

/// What a scheduler looks at to prefer idle parents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadLoad {
    pub bytes_per_sec: u64,
    pub connections: usize,
    pub active_uploads: usize,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub accepted: u64,
    pub active_connections: usize,
    pub pieces_served: u64,
    pub bytes_served: u64,
    pub bad_frames: u64,
    pub refused_busy: u64,
    /// Most requests any one connection had outstanding at once (shows pipelining at work).
    pub peak_in_flight: usize,
}

/// A cheap handle; clones share one server.
#[derive(Clone)]
pub struct UploadServer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<Store>,
    cfg: ServerConfig,
    uploads: Arc<Semaphore>,
    /// `None`: unlimited. Replaceable while serving (a configuration reload).
    limiter: Mutex<Option<TokenBucket>>,
    meter: Mutex<RateMeter>,
    accepted: AtomicU64,
    active: AtomicUsize,
    pieces: AtomicU64,
    bytes: AtomicU64,
    bad_frames: AtomicU64,
    busy: AtomicU64,
    peak_in_flight: AtomicUsize,
    stop: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values (bucket, meter) stay consistent at every instant, so poison means nothing here.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the writer is asked to put on the wire.
enum Out {
    Control(Bytes),
    /// A PieceError answering a request.
    Answer(Bytes),
    Piece {
        header: Bytes,
        zc: ZeroCopy,
    },
    /// A fatal Error frame; the connection closes after it.
    Close(Bytes),
}

impl UploadServer {
    pub fn new(store: Arc<Store>, cfg: ServerConfig) -> Self {
        let now = Instant::now();
        let limiter = Mutex::new(cfg.upload_rate.map(|r| TokenBucket::new(r, cfg.upload_burst, now)));
        UploadServer {
            shared: Arc::new(Shared {
                uploads: Arc::new(Semaphore::new(cfg.max_concurrent_uploads.max(1))),
                store,
                cfg,
                limiter,
                meter: Mutex::new(RateMeter::new(now)),
                accepted: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                pieces: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                bad_frames: AtomicU64::new(0),
                busy: AtomicU64::new(0),
                peak_in_flight: AtomicUsize::new(0),
                stop: watch::channel(false).0,
            }),
        }
    }

    /// Replaces the upload rate limit (`None`: unlimited); sends in progress follow it from their next chunk.
    pub fn set_upload_rate(&self, rate: Option<u64>) {
        let b = rate.map(|r| TokenBucket::new(r, self.shared.cfg.upload_burst, Instant::now()));
        *lock(&self.shared.limiter) = b;
    }

    /// Current upload load.
    pub fn load(&self) -> UploadLoad {
        let s = &self.shared;
        UploadLoad {
            bytes_per_sec: lock(&s.meter).rate(Instant::now()),
            connections: s.active.load(Ordering::Relaxed),
            active_uploads: s.cfg.max_concurrent_uploads.max(1) - s.uploads.available_permits(),
        }
    }

    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            active_connections: s.active.load(Ordering::Relaxed),
            pieces_served: s.pieces.load(Ordering::Relaxed),
            bytes_served: s.bytes.load(Ordering::Relaxed),
            bad_frames: s.bad_frames.load(Ordering::Relaxed),
            refused_busy: s.busy.load(Ordering::Relaxed),
            peak_in_flight: s.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Stops every accept loop and closes every connection.
    pub fn shutdown(&self) {
        let _ = self.shared.stop.send(true);
    }

    /// Accepts on `listener` until [`UploadServer::shutdown`]; runs on whatever tokio runtime polls it, and
    /// every connection it accepts stays on that runtime.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let mut stop = self.shared.stop.subscribe();
        // Ends only at shutdown; each turn accepts one connection or backs off after an error.
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = flag_set(&mut stop) => return Ok(()),
            };
            match accepted {
                Ok((sock, peer)) => {
                    self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::debug_span!("upload", child = %peer);
                    tokio::spawn(tracing::Instrument::instrument(self.shared.clone().connection(sock, peer), span));
                }
                Err(e) => {
                    // EMFILE, ECONNABORTED and the like concern one connection or a moment, not the listener.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One SO_REUSEPORT listener and accept loop per core. Returns the bound address (useful with port 0).
    pub fn start_on_cores(
        &self,
        cores: &Cores,
        addr: SocketAddr,
    ) -> io::Result<(SocketAddr, Vec<tokio::task::JoinHandle<io::Result<()>>>)> {
        let (bound, listeners) = reuseport_group(addr, cores.len())?;
        let handles = listeners
            .into_iter()
            .enumerate()
            .map(|(core, l)| {
                let server = self.clone();
                // The std listener becomes a tokio one on the core that accepts on it.
                cores.spawn_on(core, async move { server.serve(TcpListener::from_std(l)?).await })
            })
            .collect();
        Ok((bound, handles))
    }
}

struct ActiveGuard<'a>(&'a AtomicUsize);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the reader wants after a frame.
enum Step {
    Continue,
    Close,
    Fatal(Frame),
}

/// The reader's side of one connection.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    out: mpsc::UnboundedSender<Out>,
    inflight: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
    subs: HashMap<TaskId, AbortHandle>,
}

impl Shared {
    async fn connection(self: Arc<Self>, sock: TcpStream, peer: SocketAddr) {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        let _guard = ActiveGuard(&self.active);
        crate::runtime::tune_long_lived(&sock);
        let stall = self.cfg.stall_timeout;
        if active > self.cfg.max_connections {
            self.busy.fetch_add(1, Ordering::Relaxed);
            let mut sock = sock;
            let bytes = Frame::error(ErrorCode::Busy, "connection limit reached").to_bytes();
            let _ = tokio::time::timeout(stall, sock.write_all(&bytes)).await;
            return;
        }
        let mut sock = sock;
        if !super::admit::admit_child(&mut sock, self.cfg.membership.as_ref(), peer).await {
            return;
        }
        let (rd, wr) = sock.into_split();
        // Unbounded is safe: producers are bounded by max_in_flight requests and max_subscriptions, each
        // of which queues a bounded number of items before waiting on the task or the store.
        let (out, rx) = mpsc::unbounded_channel();
        let hello = Hello { max_in_flight: self.cfg.max_in_flight, max_frame_len: self.cfg.max_frame_len };
        let _ = out.send(Out::Control(Frame::Hello(hello).to_bytes()));
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut conn = Conn {
            shared: self.clone(),
            peer,
            out,
            inflight: inflight.clone(),
            tasks: JoinSet::new(),
            subs: HashMap::new(),
        };
        let mut stop = self.stop.subscribe();
        let out = conn.out.clone();
        let reader = conn.read_loop(FrameReader::new(rd, self.cfg.max_frame_len));
        let writer = self.write_loop(wr, rx, inflight);
        tokio::pin!(reader, writer);
        tokio::select! {
            fatal = &mut reader => {
                if let Some(f) = fatal {
                    let _ = out.send(Out::Close(f.to_bytes()));
                    // Gives the writer a bounded chance to deliver what is queued and the Error frame.
                    let _ = tokio::time::timeout(stall, &mut writer).await;
                }
            }
            r = &mut writer => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "upload connection ended by a write error");
                }
            }
            _ = flag_set(&mut stop) => {}
        }
        // Dropping `conn` aborts every request and subscription task of this connection.
    }

    async fn write_loop(
        &self,
        mut wr: OwnedWriteHalf,
        mut rx: mpsc::UnboundedReceiver<Out>,
        inflight: Arc<AtomicUsize>,
    ) -> io::Result<()> {
        let stall = self.cfg.stall_timeout;
        let mut buf = BytesMut::with_capacity(16 << 10);
        // Each turn sends one batch; ends when every sender is gone or on Close.
        loop {
            let Some(first) = rx.recv().await else { return Ok(()) };
            let mut next = Some(first);
            // Control frames queued together go out in one write.
            while let Some(item) = next.take() {
                match item {
                    Out::Control(b) => buf.extend_from_slice(&b),
                    Out::Answer(b) => {
                        buf.extend_from_slice(&b);
                        inflight.fetch_sub(1, Ordering::Relaxed);
                    }
                    Out::Close(b) => {
                        buf.extend_from_slice(&b);
                        write_timed(&mut wr, &buf, stall).await?;
                        let _ = wr.shutdown().await;
                        return Ok(());
                    }
                    Out::Piece { header, zc } => {
                        let _permit = self.uploads.acquire().await.map_err(io::Error::other)?;
                        buf.extend_from_slice(&header);
                        write_timed(&mut wr, &buf, stall).await?;
                        buf.clear();
                        self.send_piece(&wr, &zc).await?;
                        inflight.fetch_sub(1, Ordering::Relaxed);
                        self.pieces.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if buf.len() < 64 << 10 {
                    next = rx.try_recv().ok();
                }
            }
            if !buf.is_empty() {
                write_timed(&mut wr, &buf, stall).await?;
                buf.clear();
            }
        }
    }

    /// Sends a piece's bytes from the task file with sendfile, paced by the rate limit, in chunks so the
    /// stall timeout measures progress rather than the whole piece.
    async fn send_piece(&self, wr: &OwnedWriteHalf, zc: &ZeroCopy) -> io::Result<()> {
        let mut sent = 0u64;
        // Bounded by len / chunk turns.
        while sent < zc.len {
            let wait = {
                let mut l = lock(&self.limiter);
                // Small chunks under a limit keep the pacing smooth; large ones cost fewer syscalls.
                let n = (zc.len - sent).min(if l.is_some() { 256 << 10 } else { 1 << 20 });
                (n, l.as_mut().map_or(Duration::ZERO, |b| b.reserve(n, Instant::now())))
            };
            let (n, wait) = wait;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let part = zc.slice(sent, n).ok_or_else(|| io::Error::other("chunk outside the piece"))?;
            match tokio::time::timeout(self.cfg.stall_timeout, part.send_to(wr.as_ref())).await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "child stopped reading")),
            };
            sent += n;
            self.bytes.fetch_add(n, Ordering::Relaxed);
            lock(&self.meter).record(n, Instant::now());
        }
        Ok(())
    }

    /// Finds piece `k` of a task, waiting for it while the task is still downloading.
    async fn prepare(&self, id: u64, tid: TaskId, k: u32) -> Result<Out, (ErrorCode, String)> {
        let task = self.store.get(&tid).ok_or((ErrorCode::UnknownTask, String::new()))?;
        if let Some(n) = task.piece_count() {
            if k >= n {
                return Err((ErrorCode::PieceOutOfRange, format!("task has {n} pieces")));
            }
        }
        if !task.has_piece(k) {
            match tokio::time::timeout(self.cfg.piece_wait_timeout, task.wait_piece(k)).await {
                Err(_) => return Err((ErrorCode::PieceNotAvailable, "not downloaded in time".into())),
                Ok(Err(StorageError::PieceOutOfRange { .. })) => {
                    return Err((ErrorCode::PieceOutOfRange, String::new()))
                }
                Ok(Err(e)) => return Err((ErrorCode::TaskFailed, e.to_string())),
                Ok(Ok(())) => {}
            }
        }
        let zc = task.upload_piece(k).await.map_err(|e| match e {
            StorageError::PieceMissing(_) => (ErrorCode::PieceNotAvailable, e.to_string()),
            e => (ErrorCode::Storage, e.to_string()),
        })?;
        let crc = task.piece_crc(k).ok_or((ErrorCode::PieceNotAvailable, "piece dropped".into()))?;
        let length = u32::try_from(zc.len).map_err(|_| (ErrorCode::Storage, "piece too long".into()))?;
        let header = PieceHeader { id, task_id: tid.0.to_vec(), piece: k, offset: zc.offset, length, crc32c: crc };
        Ok(Out::Piece { header: Frame::Piece(header).to_bytes(), zc })
    }
}

async fn write_timed(wr: &mut OwnedWriteHalf, buf: &[u8], stall: Duration) -> io::Result<()> {
    match tokio::time::timeout(stall, wr.write_all(buf)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "child stopped reading")),
    }
}

impl Conn {
    /// Reads frames until the child leaves, goes idle, or breaks the protocol (then returns the Error
    /// frame to send before closing).
    async fn read_loop(&mut self, mut rd: FrameReader<OwnedReadHalf>) -> Option<Frame> {
        let cfg = self.shared.cfg.clone();
        let tick = (cfg.stall_timeout.min(cfg.idle_timeout) / 4).max(Duration::from_millis(10));
        let mut quiet_since = Instant::now();
        // Ends on EOF, error, idleness or a fatal frame; each turn waits at most `tick`.
        loop {
            while self.tasks.try_join_next().is_some() {}
            self.subs.retain(|_, h| !h.is_finished());
            let read = match tokio::time::timeout(tick, rd.read_frame()).await {
                Ok(r) => r,
                Err(_) => {
                    let busy = self.inflight.load(Ordering::Relaxed) > 0 || !self.subs.is_empty();
                    if busy && !rd.has_partial() {
                        quiet_since = Instant::now();
                    } else if rd.has_partial() && quiet_since.elapsed() >= cfg.stall_timeout {
                        return Some(Frame::error(ErrorCode::Timeout, "frame stalled"));
                    } else if !busy && quiet_since.elapsed() >= cfg.idle_timeout {
                        return None;
                    }
                    continue;
                }
            };
            quiet_since = Instant::now();
            match read {
                Ok(Some(f)) => match self.on_frame(f) {
                    Step::Continue => {}
                    Step::Close => return None,
                    Step::Fatal(f) => {
                        self.shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                        return Some(f);
                    }
                },
                Ok(None) => return None,
                Err(ReadError::Frame(e)) => {
                    self.shared.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %self.peer, error = %e, "bad frame; closing the connection");
                    return Some(Frame::error(e.code(), e.to_string()));
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "upload connection read ended");
                    return None;
                }
            }
        }
    }

    fn on_frame(&mut self, f: Frame) -> Step {
        match f {
            Frame::Request(r) => {
                let max = self.shared.cfg.max_in_flight as usize;
                if self.inflight.load(Ordering::Relaxed) >= max {
                    return Step::Fatal(Frame::error(ErrorCode::TooManyInFlight, format!("at most {max} requests")));
                }
                let Ok(tid) = frame::task_id_of(&r.task_id) else {
                    return Step::Fatal(Frame::error(ErrorCode::BadFrame, "task id"));
                };
                let now = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.peak_in_flight.fetch_max(now, Ordering::Relaxed);
                let (shared, out) = (self.shared.clone(), self.out.clone());
                self.tasks.spawn(async move {
                    let item = match shared.prepare(r.id, tid, r.piece).await {
                        Ok(item) => item,
                        Err((code, message)) => {
                            let e =
                                PieceError { id: r.id, task_id: r.task_id, piece: r.piece, code: code as i32, message };
                            Out::Answer(Frame::PieceError(e).to_bytes())
                        }
                    };
                    // A closed writer means the connection is going away; the answer has nowhere to go.
                    let _ = out.send(item);
                });
                Step::Continue
            }
            Frame::Subscribe(s) => {
                let Ok(tid) = frame::task_id_of(&s.task_id) else {
                    return Step::Fatal(Frame::error(ErrorCode::BadFrame, "task id"));
                };
                // A repeated Subscribe restarts the stream so the child gets a fresh snapshot.
                if let Some(h) = self.subs.remove(&tid) {
                    h.abort();
                }
                if self.subs.len() >= self.shared.cfg.max_subscriptions {
                    let end =
                        SubscriptionEnd { task_id: s.task_id, code: ErrorCode::Busy as i32, message: String::new() };
                    let _ = self.out.send(Out::Control(Frame::SubscriptionEnd(end).to_bytes()));
                    return Step::Continue;
                }
                let out = self.out.clone();
                let send = move |f: Frame| out.send(Out::Control(f.to_bytes())).is_ok();
                let h = self.tasks.spawn(super::availability::announce(self.shared.store.clone(), send, tid));
                self.subs.insert(tid, h);
                Step::Continue
            }
            Frame::Unsubscribe(u) => {
                if let Some(h) = frame::task_id_of(&u.task_id).ok().and_then(|t| self.subs.remove(&t)) {
                    h.abort();
                }
                Step::Continue
            }
            Frame::Error(e) => {
                tracing::debug!(peer = %self.peer, code = e.code, message = %e.message, "child closed with an error");
                Step::Close
            }
            other => {
                Step::Fatal(Frame::error(ErrorCode::BadFrame, format!("unexpected {} from a child", other.name())))
            }
        }
    }
}
