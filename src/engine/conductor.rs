//! One task's download on this node: local hit, peers, or origin, decided with the scheduler.
//!
//! The first request for a task starts a conductor; concurrent requests for the same task join it (one node
//! never runs two downloads of one task). The conductor publishes a [`Fetch`] as soon as the task exists
//! locally (headers known), then keeps filling it; callers stream pieces with `Task::wait_piece`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::sync::watch;

use super::error::EngineError;
use super::{pieces, Engine, FetchRequest};
use crate::metrics::{self, Metrics};
use crate::scheduler::{Answer, Decision, TaskProgress, TaskRequest};
use crate::storage::{Task, TaskSpec};

/// Where this node got (or is getting) the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Peer,
    Origin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::Origin => "origin",
        }
    }
}

/// A task being (or already) delivered on this node.
#[derive(Clone)]
pub struct Fetch {
    pub task: Arc<Task>,
    pub source: Source,
    /// The origin's response headers when this node fetched from the origin.
    pub origin_headers: Option<Arc<HeaderMap>>,
    /// When this node is streaming the task from the origin: the fingerprint of the credentials that
    /// origin GET carried (the origin already let exactly those read it).
    pub fetched_with: Option<[u8; 32]>,
}

pub(super) type Published = Option<Result<Fetch, Arc<EngineError>>>;

/// Runs the download of `req`, publishing the Fetch (or the reason there is none) on `tx` once known.
pub(super) async fn conduct(engine: Arc<Engine>, req: FetchRequest, tx: watch::Sender<Published>) {
    let m = metrics::global();
    Metrics::add(&m.tasks_started, 1);
    let r = run(&engine, &req, &tx).await;
    Metrics::add(if r.is_ok() { &m.tasks_completed } else { &m.tasks_failed }, 1);
    if let Err(e) = r {
        let e = Arc::new(e);
        tracing::warn!(task = %req.task_id, error = %e, "download failed");
        if let Some(s) = &engine.scheduler {
            let _ = s.task_failed(req.task_id, &e.to_string()).await;
        }
        if let Some(t) = engine.store.get(&req.task_id) {
            if !t.is_complete() {
                // Nothing half-fetched is kept: waiters get the failure, the next request starts afresh.
                t.discard(crate::storage::FailReason::Download(e.to_string()));
            }
        }
        tx.send_modify(|p| {
            if p.is_none() {
                *p = Some(Err(e));
            }
        });
    }
    engine.finish_active(&req.task_id);
}

async fn run(engine: &Arc<Engine>, req: &FetchRequest, tx: &watch::Sender<Published>) -> Result<(), EngineError> {
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    // Peer rounds that ended without the whole task; waiting for a seed does not count.
    let mut rounds = 0;
    let mut peer_bytes = 0u64;
    // Bounded: each round either finishes, goes to the origin, or waits within `parent_wait`, and peer
    // rounds are capped.
    loop {
        let Answer { decision, sha256, credentialed } = ask_scheduler(engine, req).await;
        tracing::debug!(task = %req.task_id, ?decision, rounds, waited_ms = waited.as_millis() as u64, "scheduler decision");
        match decision {
            Decision::Parents(ps) if rounds < engine.cfg.max_peer_rounds => {
                engine.remember_parents(&ps);
                let addrs: Vec<_> = ps.iter().take(engine.cfg.max_parents).map(|p| p.addr()).collect();
                let known = Known { sha256, credentialed };
                let (round, bytes) = from_peers(engine, req, &addrs, tx, known).await?;
                peer_bytes += bytes;
                match round {
                    PeerRound::Whole if digest_announced(engine, req).await => {
                        return finish(engine, req, Source::Peer, started, peer_bytes).await
                    }
                    PeerRound::Whole => {
                        // Nobody vouches for the peers' bytes: from_origin replaces them with the origin's.
                        tracing::warn!(task = %req.task_id, "its source never announced the digest; refetching");
                        from_origin(engine, req, tx).await?;
                        return finish(engine, req, Source::Origin, started, peer_bytes).await;
                    }
                    // The parents have not started the task yet (a seed just triggered): that is waiting,
                    // not a failed round.
                    PeerRound::NotStarted if waited < engine.cfg.parent_wait => {
                        let d = Duration::from_millis(50);
                        tokio::time::sleep(d).await;
                        waited += d;
                    }
                    PeerRound::NotStarted | PeerRound::Incomplete => rounds += 1,
                }
            }
            Decision::Wait { retry_after } if waited < engine.cfg.parent_wait => {
                // Polled often: the first pieces of a seed's download should reach peers within a few tens of ms.
                let d = retry_after.clamp(Duration::from_millis(10), Duration::from_millis(100));
                tokio::time::sleep(d).await;
                waited += d;
            }
            _ => {
                from_origin(engine, req, tx).await?;
                return finish(engine, req, Source::Origin, started, peer_bytes).await;
            }
        }
    }
}

/// Where to get the task, and its content digest once its source announced it. No scheduler, or one that
/// does not answer in time: the origin.
async fn ask_scheduler(engine: &Arc<Engine>, req: &FetchRequest) -> Answer {
    let back_to_source = Answer { decision: Decision::BackToSource, sha256: None, credentialed: false };
    let Some(s) = &engine.scheduler else { return back_to_source };
    match tokio::time::timeout(engine.cfg.scheduler_timeout, s.request_task(&scheduler_request(req))).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(task = %req.task_id, error = %e, "scheduler unreachable; going to the origin");
            back_to_source
        }
        Err(_) => {
            tracing::warn!(task = %req.task_id, "scheduler did not answer in time; going to the origin");
            back_to_source
        }
    }
}

/// A task taken from peers by its URL completes only against the sha256 its back-to-source peer
/// announced (its parents' crc32c are their own word). Asks the scheduler for it until it comes, for at
/// most `parent_stall`: the source finishes moments after the last piece reaches anyone. False if it
/// never came.
async fn digest_announced(engine: &Arc<Engine>, req: &FetchRequest) -> bool {
    let Some(task) = engine.store.get(&req.task_id) else { return true };
    let deadline = Instant::now() + engine.cfg.parent_stall;
    // Bounded by the deadline.
    while task.awaits_digest() {
        if Instant::now() >= deadline {
            return false;
        }
        if let Some(d) = ask_scheduler(engine, req).await.sha256 {
            task.announce_sha256(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// What the scheduler is told about a request. Credentials in headers never leave this node for a
/// scheduler or a seed (their connections are not encrypted): such a request is private, its credential
/// headers are left out, and no seed fetches it on this node's behalf.
fn scheduler_request(req: &FetchRequest) -> TaskRequest {
    let secret = |n: &str| super::CREDENTIAL_HEADERS.iter().any(|c| n.eq_ignore_ascii_case(c));
    let private = req.headers.iter().any(|(n, _)| secret(n));
    TaskRequest {
        task_id: req.task_id,
        url: req.url.clone(),
        headers: req.headers.iter().filter(|(n, _)| !secret(n)).cloned().collect(),
        content_length: None,
        piece_length: None,
        private,
        credentialed: req.credentials.any(),
    }
}

async fn finish(
    engine: &Arc<Engine>,
    req: &FetchRequest,
    source: Source,
    started: Instant,
    peer_bytes: u64,
) -> Result<(), EngineError> {
    let task = engine.store.get(&req.task_id).ok_or(EngineError::Vanished)?;
    task.wait_complete().await?;
    if let Some(s) = &engine.scheduler {
        let _ = s.task_progress(&progress(&task, source == Source::Origin)).await;
        let (len, pl) = (task.content_length().unwrap_or(0), task.piece_length());
        let _ = s.task_finished(task.id(), len, pl, task.sha256()).await;
    }
    let size = task.content_length().unwrap_or(0);
    // The origin stream is one whole GET, so an origin finish counts the whole size from there.
    let from_origin = if source == Source::Origin { size } else { 0 };
    tracing::info!(
        task = %req.task_id,
        size,
        source = source.as_str(),
        ms = started.elapsed().as_millis() as u64,
        from_peers = peer_bytes,
        from_origin,
        "task complete"
    );
    Ok(())
}

fn progress(task: &Task, b2s: bool) -> TaskProgress {
    TaskProgress {
        task_id: task.id(),
        pieces_complete: task.completed_pieces().len() as u32,
        piece_count: task.piece_count(),
        content_length: task.content_length(),
        piece_length: task.piece_length(),
        back_to_source: b2s,
        credentialed: task.credentialed(),
    }
}

/// Tells the scheduler about our pieces while the download runs, so others can use us as a parent.
fn spawn_progress_reporter(engine: &Arc<Engine>, task: &Arc<Task>, b2s: bool) {
    let Some(s) = engine.scheduler.clone() else { return };
    let task = task.clone();
    let every = engine.cfg.progress_interval;
    tokio::spawn(async move {
        let mut rx = task.subscribe();
        let mut last = u32::MAX;
        // Ends when the task completes or fails (its channel then closes or stops changing state).
        loop {
            let p = progress(&task, b2s);
            if p.pieces_complete != last {
                last = p.pieces_complete;
                let _ = s.task_progress(&p).await;
            }
            if !matches!(task.state(), crate::storage::TaskState::InProgress) {
                return;
            }
            tokio::time::sleep(every).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// What the scheduler knows of a task besides its parents.
struct Known {
    /// The content's sha256 its source announced.
    sha256: Option<[u8; 32]>,
    /// Some node brought the task in for a request with credentials.
    credentialed: bool,
}

enum PeerRound {
    Whole,
    /// No parent knows the task yet.
    NotStarted,
    /// The parents failed before the task was whole.
    Incomplete,
}

async fn from_peers(
    engine: &Arc<Engine>,
    req: &FetchRequest,
    parents: &[std::net::SocketAddr],
    tx: &watch::Sender<Published>,
    known: Known,
) -> Result<(PeerRound, u64), EngineError> {
    let task = match engine.store.get(&req.task_id) {
        Some(t) => t,
        None => {
            // The geometry (length, piece length) must be the parents'; the first one that answers tells.
            let Some((len, pl)) = geometry(engine, req, parents).await else { return Ok((PeerRound::NotStarted, 0)) };
            let spec = TaskSpec {
                id: req.task_id,
                url: req.display_url.clone(),
                content_length: len,
                piece_length: Some(pl),
                expected_sha256: req.expected_sha256,
                // Peers' bytes of a task named by its URL are held to the sha256 its source announces.
                digest_announced: req.expected_sha256.is_none(),
                // Private if this request, or the one that brought the task into the swarm, had credentials.
                credentialed: req.credentials.any() || known.credentialed,
            };
            engine.store.get_or_create(&spec)?.0
        }
    };
    if let Some(d) = known.sha256 {
        task.announce_sha256(d);
    }
    publish(tx, &task, Source::Peer, None, None);
    spawn_progress_reporter(engine, &task, false);
    // A parent fetching a large piece from a slow origin announces nothing until the piece is whole: the
    // bound grows with the piece so that 1 MiB/s at the source still counts as progress.
    let per_piece = Duration::from_secs(u64::from(task.piece_length()).div_ceil(1 << 20));
    let stall = engine.cfg.parent_stall.max(per_piece);
    let r = pieces::download(&engine.pool, &task, parents, engine.cfg.pieces_per_parent, stall, &engine.ingest).await;
    tracing::debug!(
        task = %req.task_id,
        bytes = r.bytes,
        parents = parents.len(),
        complete = r.complete,
        stalled = r.stalled,
        "peer round"
    );
    for f in &r.failures {
        tracing::warn!(task = %req.task_id, parent = %f.parent, reason = %f.reason, "parent dropped");
        if let Some(s) = &engine.scheduler {
            let host = engine.host_id_of(f.parent);
            let _ = s.report_bad_parent(req.task_id, &host, &f.reason).await;
        }
    }
    Ok((if r.complete { PeerRound::Whole } else { PeerRound::Incomplete }, r.bytes))
}

async fn geometry(
    engine: &Arc<Engine>,
    req: &FetchRequest,
    parents: &[std::net::SocketAddr],
) -> Option<(Option<u64>, u32)> {
    for &p in parents {
        let Ok(mut sub) = engine.pool.subscribe(p, req.task_id).await else { continue };
        let ev = tokio::time::timeout(engine.cfg.scheduler_timeout, sub.next()).await;
        if let Ok(Ok(Some(crate::transfer::SubEvent::Snapshot { content_length, piece_length, .. }))) = ev {
            // A parent's word sizes this node's piece buffers: nothing larger than Shoal itself would pick.
            if piece_length > crate::storage::layout::MAX_AUTO_PIECE {
                tracing::warn!(parent = %p, piece_length, "parent declares pieces over 64 MiB; not used");
                continue;
            }
            return Some((content_length, piece_length));
        }
    }
    None
}

/// Where an interrupted download of the task can go on: the offset of its first missing piece (and where
/// that gap ends), when this
/// node holds the first pieces of a task whose content digest is known in advance. Only then: the
/// pieces on disk could be of another version of a URL-named object, and only a digest named up front
/// proves the joined whole right.
fn resume_offset(t: &Task) -> Option<(u64, Option<u64>)> {
    if t.is_complete() || t.expected_sha256().is_none() {
        return None;
    }
    let count = t.piece_count()?;
    let first_missing = (0..count).find(|&k| !t.has_piece(k))?;
    // Where the first gap ends (the next stored piece), so the first request does not fetch again what
    // other connections had stored ahead of it.
    let gap_end = (first_missing..count).find(|&k| t.has_piece(k)).map(|k| u64::from(k) * u64::from(t.piece_length()));
    (first_missing > 0).then(|| (u64::from(first_missing) * u64::from(t.piece_length()), gap_end))
}

fn publish(
    tx: &watch::Sender<Published>,
    task: &Arc<Task>,
    source: Source,
    headers: Option<HeaderMap>,
    fetched_with: Option<[u8; 32]>,
) {
    let f = Fetch { task: task.clone(), source, origin_headers: headers.map(Arc::new), fetched_with };
    tx.send_modify(|p| {
        if p.is_none() {
            *p = Some(Ok(f));
        }
    });
}

async fn from_origin(
    engine: &Arc<Engine>,
    req: &FetchRequest,
    tx: &watch::Sender<Published>,
) -> Result<(), EngineError> {
    Metrics::add(&metrics::global().back_to_source, 1);
    // This download's first connection is an origin stream from before its request: downloads that
    // arrive together see each other before any of them widens (`segments::next_chunk`).
    let _stream = engine.ingest.count_stream();
    // A download cut short (a crash, a failed attempt) goes on from its first missing piece when the
    // origin serves ranges; an origin that answers 200 instead sends the whole object again.
    // With several connections allowed, even a fresh download asks for a range (from 0): a 206 proves
    // the origin serves ranges, and the rest of the object can go over more connections.
    let existing = engine.store.get(&req.task_id);
    let resume = existing.as_ref().and_then(|t| resume_offset(t));
    // A task already on disk keeps its piece length: the first window must end on one of its pieces.
    let pl = existing.as_ref().map_or(0, |t| u64::from(t.piece_length()));
    let range = super::segments::first_range(resume, engine.cfg.origin_connections, pl);
    let resp = match engine.origin.get(&req.url, &req.headers, range).await {
        // The range does not fit what the origin holds now (or the object is empty): the whole object.
        Err(EngineError::OriginStatus { status: http::StatusCode::RANGE_NOT_SATISFIABLE, .. }) if range.is_some() => {
            engine.origin.get(&req.url, &req.headers, None).await?
        }
        // A window that cannot be joined with later ranges (length unknown, or nothing to hold them to
        // its version) is not the whole either: ask for the whole object on one connection.
        Ok(r) if super::segments::unjoinable(&r.headers, r.content_length, r.end, req.expected_sha256.is_some()) => {
            engine.origin.get(&req.url, &req.headers, None).await?
        }
        r => r?,
    };
    if let Some((at, _)) = resume.filter(|_| resp.range_proven) {
        tracing::info!(task = %req.task_id, offset = at, "resuming from the origin");
    }
    let spec = TaskSpec {
        id: req.task_id,
        url: req.display_url.clone(),
        content_length: resp.content_length,
        piece_length: None,
        expected_sha256: req.expected_sha256,
        digest_announced: false,
        credentialed: req.credentials.any(),
    };
    engine.granted_by_fetch(req.task_id, &req.credentials.fingerprint);
    let (mut task, created) = engine.store.get_or_create(&spec)?;
    if task.awaits_digest() {
        // Pieces from peers that nobody vouches for: the origin's bytes replace them all.
        engine.store.remove(&req.task_id, "refetched from the origin");
        task = engine.store.get_or_create(&spec)?.0;
    } else if !created && !task.verifies_content() && !task.is_complete() && !task.completed_pieces().is_empty() {
        // Pieces of an earlier attempt (an origin error, a crash) at a URL named by nothing else: the
        // origin may hold another object of the same length by now, and no digest would catch old
        // pieces joined to new ones. Start clean.
        engine.store.remove(&req.task_id, "earlier attempt of a task with no digest");
        task = engine.store.get_or_create(&spec)?.0;
    }
    if task.content_length().is_some() && task.content_length() != resp.content_length && resp.content_length.is_some()
    {
        // A leftover from an earlier, different object: start clean.
        engine.store.remove(&req.task_id, "origin length changed");
        return Err(EngineError::Vanished);
    }
    publish(tx, &task, Source::Origin, Some(resp.headers.clone()), Some(req.credentials.fingerprint));
    spawn_progress_reporter(engine, &task, true);
    let (in_flight, idle) = (engine.cfg.origin_in_flight, engine.cfg.origin_idle_timeout);
    let s = super::source::Streaming { in_flight, idle, budget: &engine.ingest, pace: None };
    match super::segments::plan(&task, &resp, engine.cfg.origin_connections) {
        Some(plan) => {
            tracing::debug!(task = %req.task_id, connections = plan.connections, "ranged back-to-source");
            super::segments::fetch(&engine.origin, req, &task, resp, &plan, &s).await?
        }
        None => super::source::stream_pieces(&task, resp, None, &s).await?,
    };
    Ok(())
}
