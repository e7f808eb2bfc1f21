//! The download client: one pipelined connection per parent, pieces verified against their crc32c before
//! they reach storage, and piece availability streams from parents.
//!
//! A connection has a reader task (demultiplexes answers to the requests waiting for them, reads piece
//! payloads) and a writer task (sends request frames). Any failure on a connection fails every request
//! waiting on it with the same typed error, and the pool opens a new connection on the next request.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::error::{ReadError, TransferError};
use super::frame::{self, flag_set, Frame, FrameReader};
use super::proto::{ErrorCode, PieceRequest, Subscribe, Unsubscribe};
use crate::storage::{StorageError, Task, TaskId};

/// Limits of the download client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub max_frame_len: u32,
    /// Requests outstanding per connection (also capped by the parent's Hello).
    pub pieces_in_flight: u32,
    pub connect_timeout: Duration,
    /// No byte for this long in the middle of a piece fails the connection.
    pub stall_timeout: Duration,
    /// A request not answered within this long fails the connection (the parent waits for pieces it is
    /// still downloading for its own, shorter, piece wait timeout).
    pub request_timeout: Duration,
    /// A connection with nothing outstanding for this long is closed.
    pub idle_timeout: Duration,
    /// Source address for connections (e.g. one loopback address per node in tests).
    pub bind_ip: Option<IpAddr>,
    /// The cluster secret to prove to parents and hold them to; `None` skips the handshake (tests only).
    pub membership: Option<crate::membership::ClusterKey>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_frame_len: frame::DEFAULT_MAX_FRAME,
            pieces_in_flight: 8,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            bind_ip: None,
            membership: None,
        }
    }
}

/// Why a connection died; cloned into the error of every request that was waiting on it.
#[derive(Clone, Debug)]
enum Failure {
    Lost(String),
    Stalled,
    Timeout,
    Protocol(String),
    Closed(ErrorCode, String),
    /// A PieceError for one request; the connection itself lives on.
    Refused(ErrorCode, String),
    Idle,
}

impl Failure {
    fn to_error(&self, parent: SocketAddr, cfg: &ClientConfig) -> TransferError {
        match self {
            Failure::Lost(r) => TransferError::ConnectionLost { parent, reason: r.clone() },
            Failure::Idle => TransferError::ConnectionLost { parent, reason: "closed while idle".into() },
            Failure::Stalled => TransferError::Stalled { parent, secs: cfg.stall_timeout.as_secs_f64() },
            Failure::Timeout => TransferError::Timeout { parent, secs: cfg.request_timeout.as_secs_f64() },
            Failure::Protocol(r) => TransferError::Protocol { parent, reason: r.clone() },
            Failure::Closed(code, m) => TransferError::Closed { parent, code: *code, message: m.clone() },
            Failure::Refused(code, m) => TransferError::Refused { parent, piece: 0, code: *code, message: m.clone() },
        }
    }

    fn from_read(e: ReadError) -> Failure {
        match e {
            ReadError::Stalled => Failure::Stalled,
            ReadError::Frame(e) => Failure::Protocol(e.to_string()),
            ReadError::Eof { mid_piece: true } => Failure::Lost("parent closed mid-piece".into()),
            e => Failure::Lost(e.to_string()),
        }
    }
}

/// A piece as it came off the wire, not yet checked.
struct Received {
    data: Bytes,
    crc: u32,
}

type Answer = Result<Received, Failure>;

struct Pending {
    task: TaskId,
    piece: u32,
    len: u32,
    tx: oneshot::Sender<Answer>,
    /// Held until the answer is read, so the parent never sees more than its in-flight limit.
    _slot: OwnedSemaphorePermit,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubEvent {
    /// Everything the parent has now (first event, and again if the content length becomes known).
    Snapshot { content_length: Option<u64>, piece_length: u32, pieces: Vec<u32>, complete: bool },
    /// Pieces that completed on the parent since the last event.
    Have(Vec<u32>),
    /// The parent will send nothing more for this task.
    Ended { code: ErrorCode, message: String },
}

struct State {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    subs: HashMap<TaskId, mpsc::UnboundedSender<Result<SubEvent, Failure>>>,
    dead: Option<Failure>,
    last_used: Instant,
}

/// One connection to one parent.
struct Conn {
    parent: SocketAddr,
    cfg: ClientConfig,
    out: mpsc::UnboundedSender<Bytes>,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    dead: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the state whole, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn is_alive(&self) -> bool {
        lock(&self.state).dead.is_none()
    }

    /// Marks the connection dead and fails everything waiting on it. The first failure wins.
    fn fail(&self, why: Failure) {
        let (pending, subs) = {
            let mut st = lock(&self.state);
            if st.dead.is_some() {
                return;
            }
            st.dead = Some(why.clone());
            (std::mem::take(&mut st.pending), std::mem::take(&mut st.subs))
        };
        for (_, p) in pending {
            let _ = p.tx.send(Err(why.clone()));
        }
        for (_, s) in subs {
            let _ = s.send(Err(why.clone()));
        }
        let _ = self.dead.send(true);
    }

    fn send(&self, f: Frame) -> Result<(), TransferError> {
        self.out.send(f.to_bytes()).map_err(|_| self.error())
    }

    fn error(&self) -> TransferError {
        let why = lock(&self.state).dead.clone().unwrap_or(Failure::Lost("connection closed".into()));
        why.to_error(self.parent, &self.cfg)
    }

    /// Sends a request and returns where its answer will arrive.
    async fn request(&self, task: TaskId, piece: u32, len: u32) -> Result<oneshot::Receiver<Answer>, TransferError> {
        let slot = match tokio::time::timeout(self.cfg.request_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(self.error()),
            Err(_) => return Err(Failure::Timeout.to_error(self.parent, &self.cfg)),
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = lock(&self.state);
            if let Some(why) = &st.dead {
                return Err(why.to_error(self.parent, &self.cfg));
            }
            let id = st.next_id;
            st.next_id += 1;
            st.last_used = Instant::now();
            st.pending.insert(id, Pending { task, piece, len, tx, _slot: slot });
            id
        };
        // Unbounded and synchronous, so a cancelled caller can never leave half a request registered.
        self.send(Frame::Request(PieceRequest { id, task_id: task.0.to_vec(), piece }))?;
        Ok(rx)
    }
}

/// Where the connection to one parent lives; its async lock serialises connection attempts.
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// Connections to parents, one per parent, shared by every download of this node.
pub struct Pool {
    cfg: ClientConfig,
    slots: Mutex<HashMap<SocketAddr, ConnSlot>>,
    bad: Mutex<HashSet<(SocketAddr, TaskId)>>,
    connects: AtomicU64,
}

impl Pool {
    pub fn new(cfg: ClientConfig) -> Arc<Pool> {
        Arc::new(Pool {
            cfg,
            slots: Mutex::new(HashMap::new()),
            bad: Mutex::new(HashSet::new()),
            connects: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Connections opened since the pool was created.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Whether `parent` sent a corrupt piece of `task`.
    pub fn is_bad(&self, parent: SocketAddr, task: TaskId) -> bool {
        lock(&self.bad).contains(&(parent, task))
    }

    /// Forgets a bad mark (e.g. after the scheduler says the parent re-verified its copy).
    pub fn clear_bad(&self, parent: SocketAddr, task: TaskId) {
        lock(&self.bad).remove(&(parent, task));
    }

    /// The live connection to `parent`, opening one if there is none. Concurrent callers share one
    /// connection attempt, so a parent–child pair never has two.
    async fn conn(&self, parent: SocketAddr) -> Result<Arc<Conn>, TransferError> {
        let slot = lock(&self.slots).entry(parent).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let c = self.connect(parent).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self, parent: SocketAddr) -> Result<Arc<Conn>, TransferError> {
        let err = |source| TransferError::Connect { parent, source };
        let sock = if parent.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
        if let Some(ip) = self.cfg.bind_ip {
            sock.bind(SocketAddr::new(ip, 0)).map_err(err)?;
        }
        let timeout = self.cfg.connect_timeout;
        let stream = match tokio::time::timeout(timeout, sock.connect(parent)).await {
            Ok(r) => r.map_err(err)?,
            Err(_) => return Err(TransferError::Timeout { parent, secs: timeout.as_secs_f64() }),
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        crate::runtime::tune_long_lived(&stream);
        let mut stream = stream;
        super::admit::prove_to_parent(&mut stream, self.cfg.membership.as_ref(), parent).await?;
        let (rd, wr) = stream.into_split();
        let mut rd = FrameReader::new(rd, self.cfg.max_frame_len);
        let hello = match tokio::time::timeout(timeout, rd.read_frame()).await {
            Err(_) => return Err(TransferError::Timeout { parent, secs: timeout.as_secs_f64() }),
            Ok(Ok(Some(Frame::Hello(h)))) => h,
            Ok(Ok(Some(Frame::Error(e)))) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                return Err(TransferError::Closed { parent, code, message: e.message });
            }
            Ok(Ok(Some(f))) => {
                return Err(TransferError::Protocol { parent, reason: format!("{} before Hello", f.name()) })
            }
            Ok(Ok(None)) => return Err(TransferError::ConnectionLost { parent, reason: "closed before Hello".into() }),
            Ok(Err(e)) => return Err(Failure::from_read(e).to_error(parent, &self.cfg)),
        };
        let slots = self.cfg.pieces_in_flight.min(hello.max_in_flight).max(1) as usize;
        let (out, out_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            parent,
            cfg: self.cfg.clone(),
            out,
            slots: Arc::new(Semaphore::new(slots)),
            state: Mutex::new(State {
                next_id: 1,
                pending: HashMap::new(),
                subs: HashMap::new(),
                dead: None,
                last_used: Instant::now(),
            }),
            dead: watch::channel(false).0,
        });
        tokio::spawn(write_loop(conn.clone(), wr, out_rx));
        tokio::spawn(read_loop(conn.clone(), rd));
        Ok(conn)
    }

    /// Fetches piece `k` of `task` from `parent`, checks its crc32c and stores it. On a crc mismatch the
    /// bytes are dropped, the parent is marked bad for the task, and `CrcMismatch` tells the caller to
    /// fetch the piece elsewhere. On any error nothing is stored.
    pub async fn fetch_piece(&self, parent: SocketAddr, task: &Arc<Task>, k: u32) -> Result<(), TransferError> {
        let tid = task.id();
        let (_, len) = task.piece_range(k).ok_or(TransferError::NoSuchPiece { task: tid, piece: k })?;
        if task.has_piece(k) {
            return Ok(());
        }
        let got = self.receive(parent, tid, k, len).await?;
        // write_piece computes the crc once, checks it against the parent's, and writes nothing if they differ.
        match task.write_piece(k, got.data, Some(got.crc)).await {
            Ok(()) => Ok(()),
            Err(StorageError::CrcMismatch { piece, expected, got }) => {
                Err(self.corrupt(parent, tid, piece, expected, got))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches piece `k` (of `len` bytes) of task `tid` and checks its crc32c, without storing it: for a
    /// caller that stores or streams the bytes itself. Errors as for [`Pool::fetch_piece`].
    pub async fn fetch_bytes(&self, parent: SocketAddr, tid: TaskId, k: u32, len: u32) -> Result<Bytes, TransferError> {
        let got = self.receive(parent, tid, k, len).await?;
        let crc = crc32c::crc32c(&got.data);
        if crc != got.crc {
            return Err(self.corrupt(parent, tid, k, got.crc, crc));
        }
        Ok(got.data)
    }

    fn corrupt(&self, parent: SocketAddr, task: TaskId, piece: u32, expected: u32, got: u32) -> TransferError {
        lock(&self.bad).insert((parent, task));
        tracing::warn!(%parent, %task, piece, "corrupt piece from parent; parent marked bad for the task");
        TransferError::CrcMismatch { parent, task, piece, expected, got }
    }

    /// One request and its unverified answer.
    async fn receive(&self, parent: SocketAddr, tid: TaskId, k: u32, len: u32) -> Result<Received, TransferError> {
        if self.is_bad(parent, tid) {
            return Err(TransferError::ParentBad { parent, task: tid });
        }
        let conn = self.conn(parent).await?;
        let rx = conn.request(tid, k, len).await?;
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(Failure::Refused(code, message)))) => {
                Err(TransferError::Refused { parent, piece: k, code, message })
            }
            Ok(Ok(Err(why))) => Err(why.to_error(parent, &self.cfg)),
            Ok(Err(_)) => Err(conn.error()),
            Err(_) => {
                // The answer may still be queued behind others, but a parent this slow is treated as gone:
                // everything on the connection fails now instead of each request waiting its own timeout.
                conn.fail(Failure::Timeout);
                Err(conn.error())
            }
        }
    }

    /// Subscribes to `task`'s piece availability on `parent`.
    pub async fn subscribe(&self, parent: SocketAddr, task: TaskId) -> Result<Subscription, TransferError> {
        let conn = self.conn(parent).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = lock(&conn.state);
            if let Some(why) = &st.dead {
                return Err(why.to_error(parent, &self.cfg));
            }
            st.subs.insert(task, tx);
            st.last_used = Instant::now();
        }
        conn.send(Frame::Subscribe(Subscribe { task_id: task.0.to_vec() }))?;
        Ok(Subscription { conn, task, rx })
    }
}

/// A stream of piece availability for one task from one parent. Dropping it unsubscribes.
pub struct Subscription {
    conn: Arc<Conn>,
    task: TaskId,
    rx: mpsc::UnboundedReceiver<Result<SubEvent, Failure>>,
}

impl Subscription {
    /// The next event; `Ok(None)` once the parent ended the stream and it has been drained.
    pub async fn next(&mut self) -> Result<Option<SubEvent>, TransferError> {
        match self.rx.recv().await {
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(why)) => Err(why.to_error(self.conn.parent, &self.conn.cfg)),
            None => Ok(None),
        }
    }

    pub fn parent(&self) -> SocketAddr {
        self.conn.parent
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let removed = lock(&self.conn.state).subs.remove(&self.task).is_some();
        if removed {
            let _ = self.conn.send(Frame::Unsubscribe(Unsubscribe { task_id: self.task.0.to_vec() }));
        }
    }
}

async fn write_loop(conn: Arc<Conn>, mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut dead = conn.dead.subscribe();
    // Each turn writes one frame; ends when the connection dies.
    loop {
        let b = tokio::select! {
            b = rx.recv() => b,
            _ = flag_set(&mut dead) => return,
        };
        let Some(b) = b else { return };
        match tokio::time::timeout(conn.cfg.stall_timeout, wr.write_all(&b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return conn.fail(Failure::Lost(e.to_string())),
            Err(_) => return conn.fail(Failure::Stalled),
        }
    }
}

async fn read_loop(conn: Arc<Conn>, mut rd: FrameReader<OwnedReadHalf>) {
    let mut dead = conn.dead.subscribe();
    let tick = (conn.cfg.idle_timeout / 4).max(Duration::from_millis(10));
    // Each turn handles one frame (and its payload) or one idle check; ends when the connection dies.
    let why = loop {
        let read = tokio::select! {
            r = rd.read_frame() => r,
            _ = flag_set(&mut dead) => return,
            _ = tokio::time::sleep(tick) => {
                let st = lock(&conn.state);
                let idle = st.pending.is_empty() && st.subs.is_empty() && st.last_used.elapsed() >= conn.cfg.idle_timeout;
                drop(st);
                if idle && !rd.has_partial() {
                    break Failure::Idle;
                }
                continue;
            }
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => break Failure::Lost("parent closed the connection".into()),
            Err(e) => break Failure::from_read(e),
        };
        if let Err(why) = on_frame(&conn, &mut rd, frame).await {
            break why;
        }
    };
    conn.fail(why);
}

async fn on_frame(conn: &Conn, rd: &mut FrameReader<OwnedReadHalf>, frame: Frame) -> Result<(), Failure> {
    match frame {
        Frame::Piece(h) => {
            let Some(p) = lock(&conn.state).pending.remove(&h.id) else {
                return Err(Failure::Protocol(format!("piece for unknown request {}", h.id)));
            };
            if h.task_id != p.task.0 || h.piece != p.piece || h.length != p.len {
                let msg = format!("answer {} does not match its request (piece {} len {})", h.id, h.piece, h.length);
                let _ = p.tx.send(Err(Failure::Protocol(msg.clone())));
                return Err(Failure::Protocol(msg));
            }
            match rd.read_payload(h.length as usize, conn.cfg.stall_timeout).await {
                Ok(data) => {
                    lock(&conn.state).last_used = Instant::now();
                    // The requester may have given up; the bytes are simply dropped then.
                    let _ = p.tx.send(Ok(Received { data, crc: h.crc32c }));
                    Ok(())
                }
                Err(e) => {
                    let why = Failure::from_read(e);
                    let _ = p.tx.send(Err(why.clone()));
                    Err(why)
                }
            }
        }
        Frame::PieceError(e) => {
            let Some(p) = lock(&conn.state).pending.remove(&e.id) else {
                return Err(Failure::Protocol(format!("error for unknown request {}", e.id)));
            };
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            let _ = p.tx.send(Err(Failure::Refused(code, e.message)));
            Ok(())
        }
        Frame::Availability(a) => {
            let ev = SubEvent::Snapshot {
                content_length: a.content_length,
                piece_length: a.piece_length,
                pieces: frame::bitmap_pieces(&a.bitmap),
                complete: a.complete,
            };
            route(conn, &a.task_id, ev, false);
            Ok(())
        }
        Frame::Have(h) => {
            route(conn, &h.task_id, SubEvent::Have(h.pieces), false);
            Ok(())
        }
        Frame::SubscriptionEnd(e) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            route(conn, &e.task_id, SubEvent::Ended { code, message: e.message }, true);
            Ok(())
        }
        Frame::Error(e) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            Err(Failure::Closed(code, e.message))
        }
        Frame::Hello(_) => Ok(()),
        f => Err(Failure::Protocol(format!("unexpected {} from a parent", f.name()))),
    }
}

/// Hands an availability event to its subscriber; `last` ends that subscription.
fn route(conn: &Conn, task_id: &[u8], ev: SubEvent, last: bool) {
    let Ok(tid) = frame::task_id_of(task_id) else { return };
    let mut st = lock(&conn.state);
    let gone = match st.subs.get(&tid) {
        Some(tx) => tx.send(Ok(ev)).is_err() || last,
        None => false,
    };
    if gone {
        st.subs.remove(&tid);
    }
}
