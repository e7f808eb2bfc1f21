//! One client connection to one scheduler, as a task that owns the socket: connects, registers and
//! re-announces (the frames come from the client's book), matches replies to requests, hands seed triggers
//! to the client, pings when idle, and reconnects with bounded backoff until the client is dropped.
//!
//! While disconnected, requests fail at once with [`ClientError::Unavailable`] (the engine goes to the
//! origin) and one-way reports are dropped: the book holds each task's latest state and re-sends it on
//! reconnect, so nothing queues up without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::error::ClientError;
use super::frame::{codec, decode_envelope, encode_envelope};
use super::proto::{self, envelope::Msg};
use super::types::{Answer, Decision, SeedTrigger};
use crate::membership::{self, ClusterKey, HostIdentity, Role, Session};

/// Commands queued to a connection; beyond this many, one-way reports are dropped.
const CMD_QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Answer, ClientError>>;
type Rd = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
type Wr = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

pub(super) enum Cmd {
    Request { req_id: u64, frame: Bytes, reply: Reply },
    Send(Bytes),
    Leave(oneshot::Sender<()>),
}

/// The client's side of a connection task.
#[derive(Clone)]
pub(super) struct ConnHandle {
    tx: mpsc::Sender<Cmd>,
    connected: Arc<AtomicBool>,
}

impl ConnHandle {
    pub(super) async fn send(&self, c: Cmd) -> Result<(), ()> {
        self.tx.send(c).await.map_err(|_| ())
    }

    /// A one-way report; dropped when the queue is full (the book re-sends the latest state on reconnect).
    pub(super) fn push(&self, frame: Bytes) {
        let _ = self.tx.try_send(Cmd::Send(frame));
    }

    /// Sends Leave and waits (bounded by the write timeout) until it is written and the task has ended.
    pub(super) async fn leave(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::Leave(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The task has ended (its runtime stopped): a new one must be started.
    pub(super) fn is_dead(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Timeouts and limits of the client; the defaults suit a LAN.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A request without an answer by then fails with [`ClientError::Timeout`] (the engine then goes to the
    /// origin), including the time to connect.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Reconnect delays double from `backoff_min` up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// An idle connection sends a Ping this often (well within the server's idle timeout).
    pub keepalive: Duration,
    /// How long a DNS answer for the scheduler list is used before it is resolved again.
    pub resolve_every: Duration,
    /// A write to the scheduler that cannot complete by then drops the connection.
    pub write_timeout: Duration,
    /// The cluster secret to prove (and to hold the scheduler to) on every connection; `None` speaks to
    /// schedulers without membership (in-process tests only).
    pub membership: Option<ClusterKey>,
    /// The key this host registers with; its fingerprint must end the host ID.
    pub identity: Option<Arc<HostIdentity>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: Duration::from_secs(20),
            resolve_every: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            membership: None,
            identity: None,
        }
    }
}

/// What a connection asks of the client that owns it (the client implements it; this file does not
/// depend on the client's internals).
pub(super) trait ConnOwner: Send + Sync + 'static {
    fn config(&self) -> ClientConfig;
    /// The frames that rebuild this host's state at `addr` after a (re)connect; the Register is signed
    /// over `session` when the connection has one.
    fn hello(&self, addr: SocketAddr, session: Option<&Session>) -> Vec<Bytes>;
    /// A seed trigger arrived on the connection.
    fn on_trigger(&self, t: SeedTrigger);
}

pub(super) fn spawn_conn(addr: SocketAddr, inner: Weak<dyn ConnOwner>) -> ConnHandle {
    let (tx, rx) = mpsc::channel(CMD_QUEUE);
    let connected = Arc::new(AtomicBool::new(false));
    let cfg = inner.upgrade().map(|i| i.config()).unwrap_or_default();
    tokio::spawn(Conn { addr, inner, rx, connected: connected.clone(), cfg }.run());
    ConnHandle { tx, connected }
}

struct Conn {
    addr: SocketAddr,
    /// Weak: the client owns its connections, not the reverse; when the last client clone is dropped the
    /// command queue closes and this task ends.
    inner: Weak<dyn ConnOwner>,
    rx: mpsc::Receiver<Cmd>,
    connected: Arc<AtomicBool>,
    cfg: ClientConfig,
}

enum End {
    Exit,
    Lost(String),
}

impl Conn {
    async fn run(mut self) {
        let mut backoff = self.cfg.backoff_min;
        let mut carried = None;
        loop {
            let attempt = Instant::now();
            let reason = match self.connect().await {
                Ok((rd, wr)) => {
                    backoff = self.cfg.backoff_min;
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::debug!(addr = %self.addr, "connected to scheduler");
                    let end = self.serve(rd, wr, carried.take()).await;
                    self.connected.store(false, Ordering::Relaxed);
                    match end {
                        End::Exit => return,
                        End::Lost(r) => {
                            tracing::info!(addr = %self.addr, reason = %r, "scheduler connection lost; reconnecting");
                            r
                        }
                    }
                }
                Err(r) => {
                    tracing::debug!(addr = %self.addr, reason = %r, "scheduler unreachable");
                    r
                }
            };
            if let Some(c) = carried.take() {
                self.fail(c, &reason);
            }
            match self.back_off(backoff, &reason, attempt).await {
                None => return,
                Some(c) => carried = c,
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    /// Waits out the backoff. Requests that arrive meanwhile fail at once, except that one arriving after
    /// at least `backoff_min` since the last attempt triggers an attempt now, on its behalf. None: exit.
    async fn back_off(&mut self, d: Duration, reason: &str, last_attempt: Instant) -> Option<Option<Cmd>> {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Some(None),
                c = self.rx.recv() => match c {
                    None => return None,
                    Some(Cmd::Leave(ack)) => {
                        let _ = ack.send(());
                        return None;
                    }
                    Some(Cmd::Send(_)) => {}
                    Some(c) if last_attempt.elapsed() >= self.cfg.backoff_min => return Some(Some(c)),
                    Some(c) => self.fail(c, reason),
                },
            }
        }
    }

    fn fail(&self, c: Cmd, reason: &str) {
        match c {
            Cmd::Request { reply, .. } => {
                let _ = reply.send(Err(ClientError::Unavailable { addr: self.addr, reason: reason.to_owned() }));
            }
            Cmd::Leave(ack) => {
                let _ = ack.send(());
            }
            Cmd::Send(_) => {}
        }
    }

    async fn connect(&self) -> Result<(Rd, Wr), String> {
        let s = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| format!("connect timed out after {:?}", self.cfg.connect_timeout))?
            .map_err(|e| e.to_string())?;
        crate::runtime::tune_long_lived(&s);
        let mut s = s;
        let session = self.prove(&mut s).await?;
        let (rd, wr) = s.into_split();
        let mut wr = FramedWrite::new(wr, codec());
        let hello = self.inner.upgrade().ok_or("client dropped")?.hello(self.addr, session.as_ref());
        let n = hello.len();
        let write = async {
            for f in hello {
                wr.feed(f).await?;
            }
            SinkExt::<Bytes>::flush(&mut wr).await
        };
        match tokio::time::timeout(self.cfg.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("register: {e}")),
            Err(_) => return Err("register timed out".into()),
        }
        tracing::debug!(addr = %self.addr, frames = n, "registered and re-announced");
        Ok((FramedRead::new(rd, codec()), wr))
    }

    /// The membership handshake, when this client has a cluster secret. A failure is the operator's to
    /// fix (different secrets, or something that is not our scheduler at that address): logged loudly.
    async fn prove(&self, s: &mut TcpStream) -> Result<Option<Session>, String> {
        let Some(key) = &self.cfg.membership else { return Ok(None) };
        match membership::connect(s, key, Role::Scheduler, membership::HANDSHAKE_TIMEOUT).await {
            Ok(session) => Ok(Some(session)),
            Err(e) => {
                membership::count_refused(Role::Scheduler);
                tracing::warn!(addr = %self.addr, reason = %e, "scheduler membership handshake failed");
                Err(format!("membership: {e}"))
            }
        }
    }

    async fn serve(&mut self, mut rd: Rd, mut wr: Wr, first: Option<Cmd>) -> End {
        let mut pending: HashMap<u64, Reply> = HashMap::new();
        let every = self.cfg.keepalive.max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        let end = 'conn: {
            if let Some(c) = first {
                if let Some(end) = self.on_cmd(c, &mut wr, &mut pending).await {
                    break 'conn end;
                }
            }
            loop {
                let end = tokio::select! {
                    c = self.rx.recv() => match c {
                        None => Some(End::Exit),
                        Some(c) => self.on_cmd(c, &mut wr, &mut pending).await,
                    },
                    f = rd.next() => match f {
                        None => Some(End::Lost("closed by the scheduler".into())),
                        Some(Err(e)) => Some(End::Lost(format!("bad frame from the scheduler: {e}"))),
                        Some(Ok(b)) => self.on_frame(&b, &mut pending).err().map(End::Lost),
                    },
                    _ = ping.tick() => self.write(&mut wr, encode_envelope(Msg::Ping(proto::Ping {}))).await.err(),
                };
                if let Some(end) = end {
                    break 'conn end;
                }
            }
        };
        if let End::Lost(reason) = &end {
            for (_, reply) in pending.drain() {
                let _ = reply.send(Err(ClientError::Unavailable { addr: self.addr, reason: reason.clone() }));
            }
        }
        end
    }

    async fn write(&self, wr: &mut Wr, frame: Bytes) -> Result<(), End> {
        match tokio::time::timeout(self.cfg.write_timeout, wr.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Lost(format!("write: {e}"))),
            Err(_) => Err(End::Lost("write timed out".into())),
        }
    }

    async fn on_cmd(&self, c: Cmd, wr: &mut Wr, pending: &mut HashMap<u64, Reply>) -> Option<End> {
        match c {
            Cmd::Request { req_id, frame, reply } => {
                // Callers that timed out dropped their receivers; their entries go here, not never.
                if pending.len() >= 64 {
                    pending.retain(|_, r| !r.is_closed());
                }
                pending.insert(req_id, reply);
                self.write(wr, frame).await.err()
            }
            Cmd::Send(frame) => self.write(wr, frame).await.err(),
            Cmd::Leave(ack) => {
                let _ = self.write(wr, encode_envelope(Msg::Leave(proto::Leave {}))).await;
                let _ = ack.send(());
                Some(End::Exit)
            }
        }
    }

    /// Err: the connection must be dropped.
    fn on_frame(&self, b: &[u8], pending: &mut HashMap<u64, Reply>) -> Result<(), String> {
        let msg = match decode_envelope(b) {
            Ok(Some(m)) => m,
            // A newer scheduler's message this client does not know: ignored.
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("bad frame from the scheduler: {e}")),
        };
        match msg {
            Msg::RequestTaskReply(r) => {
                if let Some(reply) = pending.remove(&r.req_id) {
                    let sha256 = <[u8; 32]>::try_from(r.sha256.as_slice()).ok();
                    let credentialed = r.credentialed;
                    let d = Decision::from_proto(r.decision)
                        .map(|decision| Answer { decision, sha256, credentialed })
                        .map_err(|e| ClientError::Protocol { addr: self.addr, reason: e.to_string() });
                    let _ = reply.send(d);
                }
            }
            Msg::TriggerSeed(t) => match (SeedTrigger::from_proto(t), self.inner.upgrade()) {
                (Ok(t), Some(inner)) => {
                    tracing::info!(addr = %self.addr, task = %t.task_id, "seed triggered");
                    inner.on_trigger(t);
                }
                (Err(e), _) => tracing::warn!(addr = %self.addr, error = %e, "bad seed trigger ignored"),
                (Ok(_), None) => {}
            },
            Msg::Error(e) => {
                let reply = (e.req_id != 0).then(|| pending.remove(&e.req_id)).flatten();
                match reply {
                    Some(r) => {
                        let _ = r.send(Err(ClientError::Refused { addr: self.addr, message: e.message }));
                    }
                    None => tracing::warn!(addr = %self.addr, message = %e.message, fatal = e.fatal, "scheduler error"),
                }
            }
            _ => {}
        }
        Ok(())
    }
}
