//! What a peer's engine uses to talk to the schedulers.
//!
//! Each task belongs to one scheduler, picked by rendezvous hashing of the task ID over the resolved
//! scheduler addresses, so every peer sends a given task to the same scheduler with no coordination. One
//! connection per scheduler, opened on first use and kept open (reconnecting with bounded backoff); after a
//! reconnect the client registers again and re-announces every task it announced there, which is how a
//! restarted scheduler, whose state lives only in memory, rebuilds it. The connection itself is in conn.rs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use super::conn::ClientConfig;
use super::conn::{spawn_conn, Cmd, ConnHandle, ConnOwner};
use super::error::ClientError;
use super::frame::encode_envelope;
use super::hash::rendezvous_pick;
use super::proto::{self, envelope::Msg};
use super::types::{Answer, Decision, HostInfo, PeerLoad, SeedTrigger, TaskProgress, TaskRequest};
use crate::membership::Session;
use crate::storage::TaskId;

/// Seed triggers not yet taken by the engine; more are dropped (the scheduler recovers through its stall
/// detection).
const TRIGGER_QUEUE: usize = 1024;

/// A peer's connection to the scheduler cluster. Cheap to clone; all clones share the connections. Must be
/// used from within a tokio runtime (connections are tasks on the runtime that first needs them).
#[derive(Clone)]
pub struct SchedulerClient {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) cfg: ClientConfig,
    pub(super) host: HostInfo,
    next_req: AtomicU64,
    pub(super) triggers: mpsc::Sender<SeedTrigger>,
    trigger_rx: Mutex<Option<mpsc::Receiver<SeedTrigger>>>,
    m: Mutex<Book>,
}

/// What the client must remember to rebuild a scheduler's view after a reconnect.
#[derive(Default)]
pub(super) struct Book {
    /// The configured scheduler entries (`host:port`, possibly DNS names).
    entries: Vec<String>,
    resolved: Vec<SocketAddr>,
    resolved_at: Option<Instant>,
    conns: HashMap<SocketAddr, ConnHandle>,
    /// task → (its scheduler, the frame that announces the task's latest state there).
    announced: HashMap<TaskId, (SocketAddr, Bytes)>,
    /// Tasks this host fetches from the origin (told BackToSource, or triggered as a seed): every progress
    /// report says so, so a restarted scheduler does not elect a second origin fetcher.
    sources: HashSet<TaskId>,
    load: Option<Bytes>,
    closed: bool,
}

impl Inner {
    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        // Each update of the book is self-contained, so a poisoned lock is still consistent enough to use.
        self.m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The frames that rebuild this host's state at `addr` after a (re)connect: Register, last Load, every
    /// task announced there.
    fn hello_frames(&self, addr: SocketAddr, session: Option<&Session>) -> Vec<Bytes> {
        let mut reg = self.host.to_proto();
        if let (Some(id), Some(session)) = (&self.cfg.identity, session) {
            reg.identity_key = id.public_key();
            reg.identity_proof = id.prove(session, &reg.host_id);
        }
        let mut v = vec![encode_envelope(Msg::Register(reg))];
        let b = self.book();
        v.extend(b.load.clone());
        v.extend(b.announced.values().filter(|(a, _)| *a == addr).map(|(_, f)| f.clone()));
        v
    }

    /// A seed trigger arrived: remember that this host fetches the task, and hand it to the engine.
    fn take_trigger(&self, t: SeedTrigger) {
        self.book().sources.insert(t.task_id);
        if self.triggers.try_send(t).is_err() {
            tracing::warn!("seed trigger dropped: the engine is not taking them");
        }
    }
}

impl ConnOwner for Inner {
    fn config(&self) -> ClientConfig {
        self.cfg.clone()
    }

    fn hello(&self, addr: SocketAddr, session: Option<&Session>) -> Vec<Bytes> {
        self.hello_frames(addr, session)
    }

    fn on_trigger(&self, t: SeedTrigger) {
        self.take_trigger(t)
    }
}

impl SchedulerClient {
    /// `addrs`: `host:port` entries; a DNS name may resolve to several schedulers (a Kubernetes headless
    /// Service). Nothing is resolved or connected until first use.
    pub fn new(addrs: Vec<String>, host: HostInfo) -> SchedulerClient {
        SchedulerClient::with_config(addrs, host, ClientConfig::default())
    }

    pub fn with_config(addrs: Vec<String>, host: HostInfo, cfg: ClientConfig) -> SchedulerClient {
        let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
        SchedulerClient {
            inner: Arc::new(Inner {
                cfg,
                host,
                next_req: AtomicU64::new(1),
                triggers: tx,
                trigger_rx: Mutex::new(Some(rx)),
                m: Mutex::new(Book { entries: addrs, ..Book::default() }),
            }),
        }
    }

    pub fn host(&self) -> &HostInfo {
        &self.inner.host
    }

    /// Asks the task's scheduler where to download it from. Fails within `request_timeout`; every error
    /// means "no decision" and the engine should go to the origin.
    pub async fn request_task(&self, req: &TaskRequest) -> Result<Answer, ClientError> {
        let t = self.inner.cfg.request_timeout;
        let mut addr = None;
        let r = tokio::time::timeout(t, self.request_inner(req, &mut addr)).await;
        match (r, addr) {
            (Ok(r), _) => r,
            (Err(_), Some(addr)) => Err(ClientError::Timeout { addr, after: t }),
            (Err(_), None) => {
                Err(ClientError::Resolve { addr: self.inner.book().entries.join(","), reason: "timed out".into() })
            }
        }
    }

    async fn request_inner(&self, req: &TaskRequest, addr_out: &mut Option<SocketAddr>) -> Result<Answer, ClientError> {
        let addr = self.scheduler_for(&req.task_id).await?;
        *addr_out = Some(addr);
        let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let frame = encode_envelope(Msg::RequestTask(req.to_proto(req_id)));
        // The request makes this host a peer of the task there: announce it (0 pieces) so that a restarted
        // scheduler learns it again, unless a richer announcement exists.
        let conn = self.route(req.task_id, addr, || progress_frame(req.task_id, 0, false))?;
        let (reply, rx) = oneshot::channel();
        conn.send(Cmd::Request { req_id, frame, reply }).await.map_err(|_| ClientError::Closed)?;
        let d = rx.await.map_err(|_| ClientError::Unavailable { addr, reason: "connection closed".into() })??;
        if d.decision == Decision::BackToSource {
            let mut b = self.inner.book();
            b.sources.insert(req.task_id);
            if let Some(e) = b.announced.get_mut(&req.task_id) {
                if e.1 == progress_frame(req.task_id, 0, false) {
                    e.1 = progress_frame(req.task_id, 0, true);
                }
            }
        }
        Ok(d)
    }

    /// Reports that the task started (0 pieces) or has more pieces. Reports are one-way: while the
    /// scheduler is unreachable they are not queued, the latest one is re-sent on reconnect instead.
    pub async fn task_progress(&self, p: &TaskProgress) -> Result<(), ClientError> {
        let mut p = p.clone();
        p.back_to_source |= self.inner.book().sources.contains(&p.task_id);
        self.announce(p.task_id, encode_envelope(Msg::TaskProgress(p.to_proto()))).await
    }

    /// The task is whole here; `sha256` is its content digest, which the scheduler keeps when this host
    /// fetched it from the origin.
    pub async fn task_finished(
        &self,
        task_id: TaskId,
        content_length: u64,
        piece_length: u32,
        sha256: Option<[u8; 32]>,
    ) -> Result<(), ClientError> {
        let sha256 = sha256.map(|d| d.to_vec()).unwrap_or_default();
        let m = proto::TaskFinished { task_id: task_id.0.to_vec(), content_length, piece_length, sha256 };
        self.announce(task_id, encode_envelope(Msg::TaskFinished(m))).await
    }

    /// The download failed here: this host is no longer a parent (nor the origin fetcher) of the task.
    pub async fn task_failed(&self, task_id: TaskId, reason: &str) -> Result<(), ClientError> {
        let m = proto::TaskFailed { task_id: task_id.0.to_vec(), reason: reason.to_owned() };
        self.forget(task_id, encode_envelope(Msg::TaskFailed(m))).await
    }

    /// This host no longer holds the task (evicted, cancelled).
    pub async fn leave_task(&self, task_id: TaskId) -> Result<(), ClientError> {
        self.forget(task_id, encode_envelope(Msg::LeaveTask(proto::LeaveTask { task_id: task_id.0.to_vec() }))).await
    }

    /// `parent_host_id` served bad data or could not be reached: never offer it to this host for the task.
    pub async fn report_bad_parent(
        &self,
        task_id: TaskId,
        parent_host_id: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        let m = proto::ReportBadParent {
            task_id: task_id.0.to_vec(),
            parent_host_id: parent_host_id.to_owned(),
            reason: reason.to_owned(),
        };
        let addr = self.scheduler_for(&task_id).await?;
        let conn = self.route(task_id, addr, || progress_frame(task_id, 0, false))?;
        conn.push(encode_envelope(Msg::ReportBadParent(m)));
        Ok(())
    }

    /// This host's upload load, sent to every scheduler it is connected to (and on every reconnect).
    pub async fn report_load(&self, load: PeerLoad) -> Result<(), ClientError> {
        let m = proto::Load {
            upload_bytes_per_sec: load.upload_bytes_per_sec,
            upload_connections: load.upload_connections,
        };
        let f = encode_envelope(Msg::Load(m));
        let conns: Vec<ConnHandle> = {
            let mut b = self.inner.book();
            b.load = Some(f.clone());
            b.conns.values().cloned().collect()
        };
        for c in conns {
            c.push(f.clone());
        }
        Ok(())
    }

    /// The seed triggers sent to this host, for a seed peer's engine (None after the first call). Also
    /// connects to every scheduler (from within a tokio runtime), since any of them may elect this host.
    /// On a trigger the engine fetches from the origin with the trigger's URL and headers and reports
    /// progress as usual; the client marks those reports as the origin fetcher's.
    pub fn seed_triggers(&self) -> Option<mpsc::Receiver<SeedTrigger>> {
        let rx = self.inner.trigger_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let me = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = me.connect_all().await {
                        tracing::warn!(error = %e, "seed peer cannot reach its schedulers yet");
                    }
                });
            }
            Err(_) => tracing::warn!("seed_triggers called outside a tokio runtime: call connect_all() too"),
        }
        rx
    }

    /// Opens (or keeps) a connection to every scheduler, so each knows this host: what a seed peer needs.
    pub async fn connect_all(&self) -> Result<(), ClientError> {
        for a in self.schedulers().await? {
            self.conn(a)?;
        }
        Ok(())
    }

    /// The scheduler a task belongs to (the same on every peer given the same scheduler set).
    pub async fn scheduler_for(&self, task_id: &TaskId) -> Result<SocketAddr, ClientError> {
        owner(&self.schedulers().await?, task_id).ok_or(ClientError::NoSchedulers)
    }

    /// Replaces the configured scheduler entries (a configuration reload) and resolves them at once; tasks
    /// whose owner changes move to their new scheduler.
    pub async fn set_schedulers(&self, addrs: Vec<String>) -> Result<Vec<SocketAddr>, ClientError> {
        {
            let mut b = self.inner.book();
            b.entries = addrs;
            b.resolved_at = None;
        }
        self.schedulers().await
    }

    /// Whether the connection to `addr` is up (and this host registered there).
    pub fn is_connected(&self, addr: SocketAddr) -> bool {
        self.inner.book().conns.get(&addr).is_some_and(ConnHandle::is_connected)
    }

    /// Sends Leave to every scheduler (they drop this host from every task) and closes the connections.
    pub async fn shutdown(&self) {
        let conns: Vec<ConnHandle> = {
            let mut b = self.inner.book();
            b.closed = true;
            b.conns.drain().map(|(_, c)| c).collect()
        };
        for c in conns {
            c.leave().await;
        }
    }

    /// The resolved scheduler addresses, sorted; re-resolved every `resolve_every`. A failed re-resolution
    /// keeps the previous list (a DNS blip must not move every task).
    async fn schedulers(&self) -> Result<Vec<SocketAddr>, ClientError> {
        {
            let b = self.inner.book();
            if b.closed {
                return Err(ClientError::Closed);
            }
            let fresh = b.resolved_at.is_some_and(|t| t.elapsed() < self.inner.cfg.resolve_every);
            if fresh && !b.resolved.is_empty() {
                return Ok(b.resolved.clone());
            }
        }
        let entries = self.inner.book().entries.clone();
        if entries.is_empty() {
            return Err(ClientError::NoSchedulers);
        }
        let mut all = Vec::new();
        let mut last_err = None;
        for e in &entries {
            match tokio::net::lookup_host(e.as_str()).await {
                Ok(it) => all.extend(it),
                Err(err) => last_err = Some(ClientError::Resolve { addr: e.clone(), reason: err.to_string() }),
            }
        }
        all.sort();
        all.dedup();
        let mut b = self.inner.book();
        if all.is_empty() {
            if !b.resolved.is_empty() {
                // Retried after resolve_every, not on every call while DNS is down.
                b.resolved_at = Some(Instant::now());
                return Ok(b.resolved.clone());
            }
            return Err(last_err.unwrap_or(ClientError::NoSchedulers));
        }
        b.resolved_at = Some(Instant::now());
        if b.resolved != all {
            tracing::info!(schedulers = ?all, "scheduler set resolved");
            let before = std::mem::replace(&mut b.resolved, all.clone());
            drop(b);
            if !before.is_empty() {
                self.rebalance(&all);
            }
            if self.inner.host.is_seed {
                for a in &all {
                    let _ = self.conn(*a);
                }
            }
        }
        Ok(all)
    }

    /// The scheduler set changed: every announced task whose owner changed moves to its new owner (a leave
    /// at the old one, its latest state at the new one), and connections to schedulers no longer in the set
    /// are dropped, which also removes this host there.
    fn rebalance(&self, addrs: &[SocketAddr]) {
        let moves: Vec<(TaskId, SocketAddr, SocketAddr, Bytes)> = {
            let b = self.inner.book();
            b.announced
                .iter()
                .filter_map(|(t, (old, f))| {
                    owner(addrs, t).filter(|new| new != old).map(|new| (*t, *old, new, f.clone()))
                })
                .collect()
        };
        for (task, old, new, frame) in moves {
            let Ok(conn) = self.conn(new) else { return };
            let mut b = self.inner.book();
            if let Some(c) = b.conns.get(&old) {
                c.push(encode_envelope(Msg::LeaveTask(proto::LeaveTask { task_id: task.0.to_vec() })));
            }
            b.announced.insert(task, (new, frame.clone()));
            conn.push(frame);
        }
        self.inner.book().conns.retain(|a, _| addrs.contains(a));
    }

    /// The connection to `addr`, started if needed.
    fn conn(&self, addr: SocketAddr) -> Result<ConnHandle, ClientError> {
        let mut b = self.inner.book();
        if b.closed {
            return Err(ClientError::Closed);
        }
        if let Some(c) = b.conns.get(&addr).filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        let owner: std::sync::Weak<dyn ConnOwner> = Arc::downgrade(&self.inner) as _;
        let c = spawn_conn(addr, owner);
        b.conns.insert(addr, c.clone());
        Ok(c)
    }

    /// The connection for `task` at `addr`. Makes sure the task is announced there: if it was announced to
    /// another scheduler (the set changed), it leaves that one and its latest state moves here.
    fn route(&self, task: TaskId, addr: SocketAddr, first: impl FnOnce() -> Bytes) -> Result<ConnHandle, ClientError> {
        let conn = self.conn(addr)?;
        let mut b = self.inner.book();
        let (announce, old) = match b.announced.get(&task) {
            Some((a, _)) if *a == addr => (None, None),
            Some((a, f)) => (Some(f.clone()), Some(*a)),
            None => (Some(first()), None),
        };
        if let Some(f) = announce {
            b.announced.insert(task, (addr, f.clone()));
            conn.push(f);
        }
        if let Some(old) = old.and_then(|a| b.conns.get(&a)) {
            old.push(encode_envelope(Msg::LeaveTask(proto::LeaveTask { task_id: task.0.to_vec() })));
        }
        Ok(conn)
    }

    async fn announce(&self, task: TaskId, frame: Bytes) -> Result<(), ClientError> {
        let addr = self.scheduler_for(&task).await?;
        let conn = self.route(task, addr, || frame.clone())?;
        let fresh = {
            let mut b = self.inner.book();
            let fresh = b.announced.get(&task).is_some_and(|(_, f)| *f == frame);
            b.announced.insert(task, (addr, frame.clone()));
            fresh
        };
        // route() has just sent it when it was this task's first announcement.
        if !fresh {
            conn.push(frame);
        }
        Ok(())
    }

    async fn forget(&self, task: TaskId, frame: Bytes) -> Result<(), ClientError> {
        let addr = self.scheduler_for(&task).await?;
        let conn = {
            let mut b = self.inner.book();
            b.announced.remove(&task);
            b.sources.remove(&task);
            b.conns.get(&addr).cloned()
        };
        if let Some(c) = conn {
            c.push(frame);
        }
        Ok(())
    }
}

/// The scheduler that owns `task` among `addrs` (rendezvous hashing over the addresses' text form).
fn owner(addrs: &[SocketAddr], task: &TaskId) -> Option<SocketAddr> {
    let names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    let pick = rendezvous_pick(&task.0, names.iter().map(String::as_str))?;
    names.iter().position(|n| n == pick).and_then(|i| addrs.get(i).copied())
}

fn progress_frame(task: TaskId, pieces: u32, back_to_source: bool) -> Bytes {
    let p = TaskProgress {
        task_id: task,
        pieces_complete: pieces,
        piece_count: None,
        content_length: None,
        piece_length: 0,
        back_to_source,
        credentialed: false,
    };
    encode_envelope(Msg::TaskProgress(p.to_proto()))
}
