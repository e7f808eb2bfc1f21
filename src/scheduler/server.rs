//! The scheduler server: accepts one connection per peer, reads frames, applies them to the shared
//! [`State`], answers requests and pushes seed triggers. Runs standalone (`shoal scheduler`) or embedded in
//! a daemon on the daemon's tokio runtime.
//!
//! All state lives behind one std mutex that is never held across an await: each frame is a few
//! microseconds of map work, far below what a shard-per-core design would save at scheduler scale.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::error::{ServerError, StateError};
use super::frame::{codec, decode_envelope, encode_envelope};
use super::ops::{self, Kind, Stats};
use super::proto::{self, envelope::Msg};
use super::state::{Action, ConnId, State, StateConfig, TaskSummary};
use super::types::{task_id_from, HostInfo, PeerLoad, TaskProgress, TaskRequest};
use crate::membership::{self, ClusterKey, Role, Session};
use crate::storage::TaskId;

/// Tunables of the server (the decision rules' are in [`StateConfig`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub state: StateConfig,
    /// A connection with no frame from the peer for this long is closed (clients ping well within it), so a
    /// peer that vanished without a FIN is removed from its tasks.
    pub idle_timeout: Duration,
    /// A write that cannot complete in this long means a stuck peer: its connection is closed.
    pub write_timeout: Duration,
    /// Connections above this are closed at once (bounds memory and file descriptors).
    pub max_connections: usize,
    /// Frames queued to one peer (seed triggers) before further ones are dropped.
    pub outbound_queue: usize,
    /// Frames one connection may send per second; beyond it the server stops reading that connection
    /// for the rest of the second (TCP backpressure), so one host cannot take the scheduler's CPU.
    pub max_frames_per_sec: u32,
    /// The cluster secret every connection must prove (membership handshake, then a signed Register).
    /// `None` serves anyone who connects: only for in-process tests; the binaries always set it.
    pub membership: Option<ClusterKey>,
    /// Where `/metrics` and `/healthz` answer (ops.rs); `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            state: StateConfig::default(),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(5),
            max_connections: 20_000,
            outbound_queue: 256,
            max_frames_per_sec: 5_000,
            membership: None,
            metrics_addr: None,
        }
    }
}

struct Shared {
    state: State,
    /// host → (its current connection, the queue of frames pushed to it).
    outbound: HashMap<String, (ConnId, mpsc::Sender<Bytes>)>,
    next_conn: ConnId,
    stats: Arc<Stats>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &SharedRef) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave the maps half-updated in a way later frames would trip
    // over (each operation is self-contained), so a poisoned lock is still used.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts schedulers.
pub struct Scheduler;

impl Scheduler {
    /// Listens on `addr` and serves on the current tokio runtime until the handle is shut down or dropped.
    /// Must be called from within a tokio runtime.
    pub fn spawn(addr: SocketAddr, cfg: ServerConfig) -> Result<SchedulerHandle, ServerError> {
        let std_listener = bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let listener = TcpListener::from_std(std_listener).map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let shared = Arc::new(Mutex::new(Shared {
            state: State::new(cfg.state.clone()),
            outbound: HashMap::new(),
            next_conn: 1,
            stats: Arc::new(Stats::default()),
        }));
        let metrics = match cfg.metrics_addr {
            Some(a) => Some(start_ops(a, &shared).map_err(|source| ServerError::Bind { addr: a, source })?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), cfg, stop_rx));
        Ok(SchedulerHandle { addr: local, metrics, stop, task: Some(task), shared })
    }

    /// The single-node scheduler a daemon runs when no `--scheduler` is configured: 127.0.0.1 on a free
    /// port, default tunables, on the current tokio runtime, requiring `membership` (the daemon's own
    /// generated key) when given. Hand the address to the daemon's [`crate::scheduler::SchedulerClient`].
    pub fn spawn_embedded(membership: Option<ClusterKey>) -> Result<(SocketAddr, SchedulerHandle), ServerError> {
        let cfg = ServerConfig { membership, ..ServerConfig::default() };
        let h = Scheduler::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)?;
        Ok((h.local_addr(), h))
    }
}

/// A running scheduler. Dropping it stops accepting; [`SchedulerHandle::shutdown`] also waits for every
/// connection to be closed.
pub struct SchedulerHandle {
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    shared: SharedRef,
}

impl SchedulerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` and `/healthz` answer, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops accepting, closes every connection and waits until they are closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn host_count(&self) -> usize {
        lock(&self.shared).state.host_count()
    }

    pub fn task_ids(&self) -> Vec<TaskId> {
        lock(&self.shared).state.task_ids()
    }

    pub fn task_summary(&self, task: &TaskId) -> Option<TaskSummary> {
        lock(&self.shared).state.task_summary(task)
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// `shoal scheduler --listen ADDR`: serves until SIGTERM or SIGINT, then closes every connection and returns.
pub fn run_standalone(listen: SocketAddr, cfg: ServerConfig) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ServerError::Runtime)?;
    rt.block_on(async move {
        // Handlers before binding: a SIGTERM during start-up must still mean "stop cleanly".
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;
        let h = Scheduler::spawn(listen, cfg)?;
        if let Some(m) = h.metrics_addr() {
            tracing::info!(addr = %m, "scheduler metrics listening");
        }
        tracing::info!(addr = %h.local_addr(), "scheduler listening");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("scheduler shutting down");
        h.shutdown().await;
        tracing::info!("scheduler stopped");
        Ok(())
    })
}

/// The operations endpoint, reading hosts, tasks and connections from the shared state per scrape.
fn start_ops(addr: SocketAddr, shared: &SharedRef) -> std::io::Result<SocketAddr> {
    let stats = lock(shared).stats.clone();
    let weak = Arc::downgrade(shared);
    let gauges = move || {
        let Some(s) = weak.upgrade() else { return ops::Gauges { hosts: 0, tasks: 0, task_peers: 0, connections: 0 } };
        let sh = lock(&s);
        ops::Gauges {
            hosts: sh.state.host_count() as u64,
            tasks: sh.state.task_count() as u64,
            task_peers: sh.state.task_peer_count() as u64,
            connections: sh.outbound.len() as u64,
        }
    };
    ops::start(addr, stats, Arc::new(gauges))
}

/// A plain listener (SO_REUSEADDR so a restart can rebind at once; no SO_REUSEPORT, so a second scheduler
/// on the same port fails loudly instead of silently sharing it).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn accept_loop(listener: TcpListener, shared: SharedRef, cfg: ServerConfig, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Err: the handle is gone, which also means stop.
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if conns.len() >= cfg.max_connections {
                        tracing::warn!(%peer, limit = cfg.max_connections, "too many connections; refusing");
                        continue;
                    }
                    conns.spawn(serve(stream, peer, shared.clone(), cfg.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// What to do after one inbound frame.
struct Outcome {
    reply: Option<Bytes>,
    close: bool,
}

impl Outcome {
    fn none() -> Outcome {
        Outcome { reply: None, close: false }
    }
    fn reply(m: Msg) -> Outcome {
        Outcome { reply: Some(encode_envelope(m)), close: false }
    }
    fn error(message: String, fatal: bool, req_id: u64) -> Outcome {
        Outcome { reply: Some(encode_envelope(Msg::Error(proto::Error { message, fatal, req_id }))), close: fatal }
    }
}

/// One peer's connection: its own frames in, replies and pushed frames out.
struct Conn {
    id: ConnId,
    peer: SocketAddr,
    host: Option<String>,
    /// Until registration, the sender of this connection's push queue; then it lives in `outbound`, and the
    /// queue closing means a newer connection of the same host replaced this one.
    push: Option<mpsc::Sender<Bytes>>,
    shared: SharedRef,
    /// The membership handshake's session, which a Register must be signed over; `None` without membership.
    session: Option<Session>,
}

/// Runs the membership handshake when the server requires it. `Err(())`: the dialler is not a member and
/// the connection is dropped (logged and counted here).
async fn admit(stream: &mut TcpStream, peer: SocketAddr, key: Option<&ClusterKey>) -> Result<Option<Session>, ()> {
    let Some(key) = key else { return Ok(None) };
    match membership::accept(stream, key, Role::Scheduler, membership::HANDSHAKE_TIMEOUT).await {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            membership::count_refused(Role::Scheduler);
            tracing::warn!(%peer, reason = %e, "scheduler connection refused: not a cluster member");
            Err(())
        }
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: SharedRef, cfg: ServerConfig) {
    crate::runtime::tune_long_lived(&stream);
    let Ok(session) = admit(&mut stream, peer, cfg.membership.as_ref()).await else { return };
    let (rd, wr) = stream.into_split();
    let mut rd = FramedRead::new(rd, codec());
    let mut wr = FramedWrite::new(wr, codec());
    let (push, mut pushed) = mpsc::channel::<Bytes>(cfg.outbound_queue.max(1));
    let id = {
        let mut s = lock(&shared);
        s.next_conn += 1;
        s.next_conn
    };
    let mut c = Conn { id, peer, host: None, push: Some(push), shared, session };
    let mut deadline = tokio::time::Instant::now() + cfg.idle_timeout;
    let mut rate = FrameRate::new(cfg.max_frames_per_sec);
    loop {
        let out = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                Outcome::error(format!("idle for {:?}", cfg.idle_timeout), true, 0)
            }
            m = pushed.recv(), if c.host.is_some() => match m {
                Some(frame) => Outcome { reply: Some(frame), close: false },
                None => Outcome::error("replaced by a newer connection of the same host".into(), true, 0),
            },
            f = rd.next() => match f {
                None => break,
                // Oversized frames land here (InvalidData) before any of their body is buffered.
                Some(Err(e)) => Outcome::error(format!("bad frame: {e}"), true, 0),
                Some(Ok(frame)) => {
                    rate.admit().await;
                    deadline = tokio::time::Instant::now() + cfg.idle_timeout;
                    c.on_frame(&frame)
                }
            },
        };
        if let Some(frame) = out.reply {
            if !send(&mut wr, frame, cfg.write_timeout).await {
                break;
            }
        }
        if out.close {
            break;
        }
    }
    c.close();
}

/// Frames per one-second window on one connection.
struct FrameRate {
    limit: u32,
    window: tokio::time::Instant,
    seen: u32,
}

impl FrameRate {
    fn new(limit: u32) -> FrameRate {
        FrameRate { limit: limit.max(1), window: tokio::time::Instant::now(), seen: 0 }
    }

    /// Counts one frame; past the limit, waits (at most a second) for the next window.
    async fn admit(&mut self) {
        let now = tokio::time::Instant::now();
        if now >= self.window + Duration::from_secs(1) {
            self.window = now;
            self.seen = 0;
        }
        self.seen += 1;
        if self.seen > self.limit {
            tokio::time::sleep_until(self.window + Duration::from_secs(1)).await;
            self.window = tokio::time::Instant::now();
            self.seen = 1;
        }
    }
}

async fn send(wr: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>, frame: Bytes, t: Duration) -> bool {
    matches!(tokio::time::timeout(t, wr.send(frame)).await, Ok(Ok(())))
}

impl Conn {
    fn on_frame(&mut self, frame: &[u8]) -> Outcome {
        let msg = match decode_envelope(frame) {
            Ok(Some(m)) => m,
            Ok(None) => return Outcome::error("unknown message".into(), false, 0),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "closing connection after a bad frame");
                return Outcome::error(e.to_string(), true, 0);
            }
        };
        let req_id = match &msg {
            Msg::RequestTask(r) => r.req_id,
            _ => 0,
        };
        match self.apply(msg) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(peer = %self.peer, host = ?self.host, error = %e, "message refused");
                Outcome::error(e.to_string(), e.is_fatal(), req_id)
            }
        }
    }

    fn apply(&mut self, msg: Msg) -> Result<Outcome, StateError> {
        let now = Instant::now();
        let host = match (&msg, &self.host) {
            (Msg::Register(r), _) => return self.register(r.clone()),
            (Msg::Ping(_), _) => return Ok(Outcome::none()),
            (_, Some(h)) => h.clone(),
            (_, None) => return Err(StateError::NotRegistered),
        };
        let mut g = lock(&self.shared);
        let sh = &mut *g;
        match msg {
            Msg::RequestTask(r) => request_task(sh, &host, r, now),
            Msg::TaskProgress(p) => {
                sh.state.progress(&host, &TaskProgress::from_proto(p)?, now)?;
                Ok(Outcome::none())
            }
            Msg::TaskFinished(f) => {
                let id = task_id_from(&f.task_id)?;
                let sha256 = <[u8; 32]>::try_from(f.sha256.as_slice()).ok();
                sh.state.finished(&host, id, f.content_length, f.piece_length, sha256, now)?;
                Ok(Outcome::none())
            }
            Msg::TaskFailed(f) => {
                let id = task_id_from(&f.task_id)?;
                tracing::debug!(%host, task = %id, reason = %truncated(&f.reason), "task failed on peer");
                sh.state.failed(&host, id)?;
                Ok(Outcome::none())
            }
            Msg::ReportBadParent(b) => {
                let id = task_id_from(&b.task_id)?;
                tracing::info!(child = %host, parent = %truncated(&b.parent_host_id), task = %id,
                    reason = %truncated(&b.reason), "bad parent reported");
                sh.state.report_bad_parent(&host, id, &b.parent_host_id)?;
                Ok(Outcome::none())
            }
            Msg::Load(l) => {
                let load =
                    PeerLoad { upload_bytes_per_sec: l.upload_bytes_per_sec, upload_connections: l.upload_connections };
                sh.state.report_load(&host, load)?;
                Ok(Outcome::none())
            }
            Msg::LeaveTask(l) => {
                let id = task_id_from(&l.task_id)?;
                tracing::debug!(%host, task = %id, "host left the task");
                sh.state.leave_task(&host, id)?;
                Ok(Outcome::none())
            }
            Msg::Leave(_) => {
                tracing::info!(%host, "host left");
                sh.state.remove_host(&host);
                if sh.outbound.get(&host).is_some_and(|(c, _)| *c == self.id) {
                    sh.outbound.remove(&host);
                }
                self.host = None;
                Ok(Outcome { reply: None, close: true })
            }
            Msg::Error(e) => {
                tracing::debug!(%host, message = %truncated(&e.message), "peer reported an error");
                Ok(Outcome::none())
            }
            Msg::Register(_) | Msg::Ping(_) => Ok(Outcome::none()),
            Msg::RequestTaskReply(_) | Msg::TriggerSeed(_) => {
                Err(StateError::Invalid("a scheduler-to-peer message sent to the scheduler".into()))
            }
        }
    }

    fn register(&mut self, r: proto::Register) -> Result<Outcome, StateError> {
        if let Some(session) = &self.session {
            if let Err(e) = membership::verify_registration(&r.identity_key, &r.identity_proof, session, &r.host_id) {
                membership::count_refused(Role::Scheduler);
                tracing::warn!(peer = %self.peer, host = %truncated(&r.host_id), reason = %e,
                    "registration refused: the host's identity proof does not hold");
                return Ok(Outcome::error(format!("registration refused: {e}"), true, 0));
            }
        }
        let info = HostInfo::from_proto(r)?;
        if let Some(h) = &self.host {
            if *h != info.host_id {
                return Ok(Outcome::error("host_id cannot change on a connection".into(), true, 0));
            }
        }
        let mut g = lock(&self.shared);
        let sh = &mut *g;
        let id = info.host_id.clone();
        if let Err(e) = sh.state.may_register(&id) {
            tracing::warn!(host = %id, peer = %self.peer, error = %e, "registration refused");
            return Ok(Outcome::error(e.to_string(), true, 0));
        }
        tracing::info!(host = %id, ip = %info.ip, seed = info.is_seed, peer = %self.peer, "host registered");
        if let Some(prev) = sh.state.register(self.id, info) {
            tracing::info!(host = %id, old_conn = prev, "host re-registered on a new connection; closing the old one");
        }
        if let Some(push) = self.push.take() {
            // Dropping the old connection's sender closes its push queue, which ends it.
            sh.outbound.insert(id.clone(), (self.id, push));
        }
        self.host = Some(id);
        Ok(Outcome::none())
    }

    fn close(&mut self) {
        let Some(h) = self.host.take() else { return };
        let mut g = lock(&self.shared);
        let sh = &mut *g;
        if sh.state.disconnect(self.id, &h) {
            tracing::info!(host = %h, "host disconnected; removed from its tasks");
        }
        if sh.outbound.get(&h).is_some_and(|(c, _)| *c == self.id) {
            sh.outbound.remove(&h);
        }
    }
}

/// Peer-supplied text for logs, cut short.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decision_name(d: &crate::scheduler::Decision) -> &'static str {
    match d {
        crate::scheduler::Decision::Parents(_) => "parents",
        crate::scheduler::Decision::BackToSource => "back-to-source",
        crate::scheduler::Decision::Wait { .. } => "wait",
    }
}

/// A peer asks where to get a task: the state decides; a seed trigger it implies goes out on the seed's
/// queue; the decision is the reply.
fn request_task(sh: &mut Shared, host: &str, r: proto::RequestTask, now: Instant) -> Result<Outcome, StateError> {
    let req_id = r.req_id;
    let req = TaskRequest::from_proto(r)?;
    let started = Instant::now();
    let decided = sh.state.request_task(host, &req, now);
    let kind = match &decided {
        Ok((crate::scheduler::Decision::Parents(_), _)) => Kind::Parents,
        Ok((crate::scheduler::Decision::BackToSource, _)) => Kind::BackToSource,
        Ok((crate::scheduler::Decision::Wait { .. }, _)) => Kind::Wait,
        Err(_) => Kind::Refused,
    };
    sh.stats.decided(kind, started.elapsed());
    let (decision, action) = decided?;
    tracing::debug!(task = %req.task_id, %host, decision = decision_name(&decision), "task request");
    if let Some(Action::TriggerSeed { seed_host, trigger }) = action {
        let sent = sh
            .outbound
            .get(&seed_host)
            .map(|(_, q)| q.try_send(encode_envelope(Msg::TriggerSeed(trigger.to_proto()))).is_ok());
        // Undelivered: the seed never reports progress, and stall detection elects another.
        if sent != Some(true) {
            tracing::warn!(seed = %seed_host, task = %req.task_id, "seed trigger not delivered");
        } else {
            tracing::debug!(seed = %seed_host, task = %req.task_id, "seed triggered");
        }
    }
    let sha256 = sh.state.task_sha256(&req.task_id).map(|d| d.to_vec()).unwrap_or_default();
    let credentialed = sh.state.task_credentialed(&req.task_id);
    let reply = proto::RequestTaskReply { req_id, decision: Some(decision.to_proto()), sha256, credentialed };
    Ok(Outcome::reply(Msg::RequestTaskReply(reply)))
}
