//! The scheduler's in-memory view of the cluster and every decision taken from it. Pure logic: no sockets
//! and no clock (callers pass `now`), so each rule is unit-tested directly (state_tests.rs).
//!
//! Rules, in the order [`State::request_task`] applies them:
//! - parents are other peers holding at least one piece (or all), or downloading the task from other
//!   parents (started, not yet holding a piece), not reported bad by this requester, and feeding
//!   fewer than `fan_out` children of the task (fanout.rs: the bound that makes a distribution tree);
//!   ranked by free upload capacity, then level in the tree, then more pieces, then fewer children, then
//!   fewer upload connections;
//!   at most `max_parents`, of which at most `tree_parents` still downloading;
//! - a task has at most one elected back-to-source peer while that peer is healthy (connected, not failed,
//!   and progressing within `stall_timeout`); when there is none and nobody has the whole task, a new one
//!   is elected: a seed peer chosen by rendezvous hashing of the task ID (sent a TriggerSeed with the
//!   requester's URL and headers), or, with no seed left, the requester itself;
//! - a requester with nothing to download yet waits (`Wait`), at most `max_wait` in total, then goes to the
//!   origin itself: a slow or silent origin fetcher can delay others but never block them.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::error::StateError;
use super::fanout::FanOut;
use super::hash::rendezvous_pick;
use super::types::{Decision, HostInfo, Parent, PeerLoad, SeedTrigger, TaskProgress, TaskRequest};
use crate::storage::TaskId;

/// Identifies one connection, so that a stale connection closing cannot remove a host that re-registered
/// on a newer one.
pub type ConnId = u64;

/// Most parents one child may report bad for one task (the set is kept for the task's life).
const MAX_EXCLUDED_PER_CHILD: usize = 1024;

/// Tunables of the decisions; defaults suit a LAN cluster.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// Most parents returned for one request.
    pub max_parents: usize,
    /// Most children of one task a parent is given to at once: no uplink carries more than this many
    /// copies of a task's newest pieces (fanout.rs).
    pub fan_out: u32,
    /// Most parents still downloading the task that one child is given (finished ones fill the rest up to
    /// `max_parents`): with `fan_out` 4 and 2 of them, each level of the tree feeds twice its width.
    pub tree_parents: usize,
    /// What a waiting requester is told to wait before asking again.
    pub retry_after: Duration,
    /// Longest a requester is kept waiting for the origin fetcher's first piece before it is sent to the
    /// origin itself.
    pub max_wait: Duration,
    /// An origin fetcher that has not completed a new piece for this long is replaced by the next requester
    /// (it stays a parent for the pieces it has).
    pub stall_timeout: Duration,
    /// Most tasks one host may hold in the scheduler's view (bounds memory per connection).
    pub max_tasks_per_host: usize,
    /// Most hosts registered at once; a new host beyond it is refused (bounds the scheduler's memory
    /// whatever members do).
    pub max_hosts: usize,
    /// Most tasks known at once; a request that would create one more is refused (the requester goes to
    /// the origin), requests for known tasks go on.
    pub max_tasks: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_parents: 4,
            fan_out: 4,
            tree_parents: 2,
            retry_after: Duration::from_millis(500),
            max_wait: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            max_tasks_per_host: 100_000,
            max_hosts: 50_000,
            max_tasks: 1_000_000,
        }
    }
}

/// Something the server must do besides answering: push a message to another connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    TriggerSeed { seed_host: String, trigger: SeedTrigger },
}

/// A task as the scheduler sees it (for logs, tests and the embedded handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    pub peers: usize,
    pub finished: usize,
    /// The most children any parent of the task feeds now.
    pub widest_fan_out: u32,
    /// The deepest level of the task's distribution tree now (1: children of the fetcher or of holders).
    pub tree_depth: u32,
    /// The elected back-to-source peer.
    pub source: Option<String>,
}

struct Host {
    info: HostInfo,
    conn: ConnId,
    load: PeerLoad,
    tasks: HashSet<TaskId>,
}

struct Peer {
    pieces_complete: u32,
    /// It reported progress with the task's geometry: the task exists in its store, so children may
    /// subscribe to it.
    started: bool,
    finished: bool,
    back_to_source: bool,
    /// When this peer last completed a new piece (or was elected / joined): what stall detection measures.
    last_progress: Instant,
}

#[derive(Default)]
struct Task {
    url: String,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    piece_length: Option<u32>,
    piece_count: Option<u32>,
    peers: HashMap<String, Peer>,
    source: Option<String>,
    /// Hosts whose origin fetch of this task failed, stalled or vanished: not elected again as its seed.
    failed_sources: HashSet<String>,
    /// child → parents it reported bad.
    excluded: HashMap<String, HashSet<String>>,
    /// child → when it was first told to wait (cleared once it gets parents).
    waiting_since: HashMap<String, Instant>,
    /// The content's sha256 as a back-to-source peer reported it when it finished.
    sha256: Option<[u8; 32]>,
    /// Some peer asked for or holds the task for a request with credentials: sticky, since the bytes
    /// in the swarm may then be private.
    credentialed: bool,
    /// Who feeds whom.
    fanout: FanOut,
}

/// Hosts and tasks. One instance per scheduler, behind the server's lock.
pub struct State {
    cfg: StateConfig,
    hosts: HashMap<String, Host>,
    tasks: HashMap<TaskId, Task>,
}

impl State {
    pub fn new(cfg: StateConfig) -> State {
        State { cfg, hosts: HashMap::new(), tasks: HashMap::new() }
    }

    pub fn config(&self) -> &StateConfig {
        &self.cfg
    }

    /// Registers (or re-registers) a host on `conn`. Returns the previous connection of the same host when
    /// it was a different one, which the server then closes.
    pub fn register(&mut self, conn: ConnId, info: HostInfo) -> Option<ConnId> {
        match self.hosts.get_mut(&info.host_id) {
            Some(h) => {
                let prev = h.conn;
                h.info = info;
                h.conn = conn;
                (prev != conn).then_some(prev)
            }
            None => {
                let key = info.host_id.clone();
                self.hosts.insert(key, Host { info, conn, load: PeerLoad::default(), tasks: HashSet::new() });
                None
            }
        }
    }

    /// Whether `host_id` may register now: a known host always may, a new one while there is room.
    pub fn may_register(&self, host_id: &str) -> Result<(), StateError> {
        if self.hosts.contains_key(host_id) || self.hosts.len() < self.cfg.max_hosts {
            return Ok(());
        }
        Err(StateError::TooManyHosts { limit: self.cfg.max_hosts })
    }

    /// A connection closed: removes its host from every task, unless the host has re-registered since.
    pub fn disconnect(&mut self, conn: ConnId, host_id: &str) -> bool {
        if self.hosts.get(host_id).is_some_and(|h| h.conn == conn) {
            self.remove_host(host_id);
            return true;
        }
        false
    }

    /// The host leaves (Leave message, or its connection is gone).
    pub fn remove_host(&mut self, host_id: &str) {
        if let Some(h) = self.hosts.remove(host_id) {
            for t in h.tasks {
                self.remove_peer(&t, host_id, true);
            }
        }
    }

    pub fn report_load(&mut self, host_id: &str, load: PeerLoad) -> Result<(), StateError> {
        self.hosts.get_mut(host_id).ok_or(StateError::NotRegistered)?.load = load;
        Ok(())
    }

    /// Decides where `host_id` gets `req.task_id` from. The optional action (a seed trigger) must be sent
    /// by the caller; if it is lost, stall detection and the bounded wait recover.
    pub fn request_task(
        &mut self,
        host_id: &str,
        req: &TaskRequest,
        now: Instant,
    ) -> Result<(Decision, Option<Action>), StateError> {
        self.join(host_id, req.task_id, now)?;
        let cfg = self.cfg.clone();
        let State { hosts, tasks, .. } = self;
        let Some(task) = tasks.get_mut(&req.task_id) else {
            return Err(StateError::Invalid("task vanished".into()));
        };
        task.credentialed |= req.credentialed;
        if !req.private {
            // What a seed would fetch with; a private request's URL and headers trigger no seed.
            task.url.clone_from(&req.url);
            task.headers.clone_from(&req.headers);
        }
        task.set_shape(req.content_length, req.piece_length, None);

        // The elected origin fetcher asks again (a restart or a retry): it goes on fetching.
        if task.source.as_deref() == Some(host_id) {
            if let Some(p) = task.peers.get_mut(host_id) {
                p.back_to_source = true;
                p.last_progress = now;
            }
            return Ok((Decision::BackToSource, None));
        }

        // Asking again ends what it was given before.
        task.fanout.release(host_id);
        let parents = candidates(hosts, task, host_id, &cfg);
        let mut action = None;
        if !task.peers.values().any(|p| p.finished) && !task.source_healthy(now, cfg.stall_timeout) {
            if req.private {
                // Its credentials stay on the requester: it fetches, and others take pieces from it.
                return Ok((task.elect(host_id, now), None));
            }
            if let Some(old) = task.source.take() {
                task.failed_sources.insert(old);
            }
            let seeds = hosts
                .values()
                .filter(|h| h.info.is_seed && !task.failed_sources.contains(&h.info.host_id))
                .map(|h| h.info.host_id.as_str());
            match rendezvous_pick(&req.task_id.0, seeds).map(str::to_owned) {
                Some(seed) if seed != host_id => {
                    if let Some(h) = hosts.get_mut(&seed) {
                        h.tasks.insert(req.task_id);
                    }
                    let p = task.peers.entry(seed.clone()).or_insert_with(|| Peer::new(now));
                    p.back_to_source = true;
                    p.last_progress = now;
                    task.source = Some(seed.clone());
                    let trigger = SeedTrigger {
                        task_id: req.task_id,
                        url: req.url.clone(),
                        headers: req.headers.clone(),
                        content_length: req.content_length,
                        piece_length: req.piece_length,
                    };
                    action = Some(Action::TriggerSeed { seed_host: seed, trigger });
                }
                // No seed left to elect (or the requester is the chosen seed): the requester fetches.
                _ => return Ok((task.elect(host_id, now), None)),
            }
        }
        if !parents.is_empty() {
            task.waiting_since.remove(host_id);
            task.fanout.assign(host_id, parents.iter().map(|p| p.host_id.clone()).collect());
            return Ok((Decision::Parents(parents), action));
        }
        let since = *task.waiting_since.entry(host_id.to_owned()).or_insert(now);
        if now.saturating_duration_since(since) >= cfg.max_wait {
            task.waiting_since.remove(host_id);
            if let Some(p) = task.peers.get_mut(host_id) {
                p.back_to_source = true;
                p.last_progress = now;
            }
            return Ok((Decision::BackToSource, action));
        }
        Ok((Decision::Wait { retry_after: cfg.retry_after }, action))
    }

    /// A peer started a task or has more pieces (also how peers re-announce after a scheduler restart).
    pub fn progress(&mut self, host_id: &str, p: &TaskProgress, now: Instant) -> Result<(), StateError> {
        let new = self.join(host_id, p.task_id, now)?;
        let stall = self.cfg.stall_timeout;
        let Some(task) = self.tasks.get_mut(&p.task_id) else { return Ok(()) };
        task.set_shape(p.content_length, (p.piece_length > 0).then_some(p.piece_length), p.piece_count);
        task.credentialed |= p.credentialed;
        let count = task.piece_count;
        let healthy = task.source_healthy(now, stall);
        let Some(peer) = task.peers.get_mut(host_id) else { return Ok(()) };
        if new || p.pieces_complete > peer.pieces_complete {
            peer.last_progress = now;
        }
        // A report with the task's geometry comes from the task in its store (the client's own
        // announcement on first request has none): from now on children may subscribe to it.
        peer.started |= p.piece_length > 0;
        peer.pieces_complete = p.pieces_complete;
        // With the piece count still unknown, an earlier TaskFinished stands.
        if let Some(c) = count {
            peer.finished = p.pieces_complete >= c;
        }
        if p.back_to_source {
            peer.back_to_source = true;
            if !healthy {
                task.source = Some(host_id.to_owned());
            }
        }
        if peer.pieces_complete > 0 {
            task.waiting_since.remove(host_id);
        }
        Ok(())
    }

    pub fn finished(
        &mut self,
        host_id: &str,
        task_id: TaskId,
        content_length: u64,
        piece_length: u32,
        sha256: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<(), StateError> {
        self.join(host_id, task_id, now)?;
        let Some(task) = self.tasks.get_mut(&task_id) else { return Ok(()) };
        task.set_shape(Some(content_length), (piece_length > 0).then_some(piece_length), None);
        let count = task.piece_count;
        task.waiting_since.remove(host_id);
        task.fanout.release(host_id);
        if let Some(peer) = task.peers.get_mut(host_id) {
            // Only the node that read the origin speaks for the content; children only repeat it.
            if peer.back_to_source && task.sha256.is_none() {
                task.sha256 = sha256;
            }
            peer.finished = true;
            peer.started = true;
            peer.last_progress = now;
            if let Some(c) = count {
                peer.pieces_complete = c;
            }
        }
        Ok(())
    }

    /// Whether the task was asked for or announced by a peer for a request with credentials.
    pub fn task_credentialed(&self, task_id: &TaskId) -> bool {
        self.tasks.get(task_id).is_some_and(|t| t.credentialed)
    }

    /// The content's sha256 as the task's back-to-source peer reported it, once it finished.
    pub fn task_sha256(&self, task_id: &TaskId) -> Option<[u8; 32]> {
        self.tasks.get(task_id).and_then(|t| t.sha256)
    }

    /// The peer gave up on the task: it is no longer a parent, and no longer its origin fetcher.
    pub fn failed(&mut self, host_id: &str, task_id: TaskId) -> Result<(), StateError> {
        self.require(host_id)?;
        self.remove_peer(&task_id, host_id, true);
        Ok(())
    }

    pub fn leave_task(&mut self, host_id: &str, task_id: TaskId) -> Result<(), StateError> {
        self.require(host_id)?;
        self.remove_peer(&task_id, host_id, false);
        Ok(())
    }

    /// `child` will never be offered `parent` for this task again.
    pub fn report_bad_parent(&mut self, child: &str, task_id: TaskId, parent: &str) -> Result<(), StateError> {
        self.require(child)?;
        if let Some(task) = self.tasks.get_mut(&task_id) {
            if task.peers.contains_key(child) {
                let set = task.excluded.entry(child.to_owned()).or_default();
                if set.len() < MAX_EXCLUDED_PER_CHILD {
                    set.insert(parent.to_owned());
                }
            }
        }
        Ok(())
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Every (task, peer) pair known: what a restarted scheduler must have heard again to be whole.
    pub fn task_peer_count(&self) -> usize {
        self.tasks.values().map(|t| t.peers.len()).sum()
    }

    pub fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.keys().copied().collect()
    }

    pub fn task_summary(&self, task_id: &TaskId) -> Option<TaskSummary> {
        self.tasks.get(task_id).map(|t| TaskSummary {
            peers: t.peers.len(),
            finished: t.peers.values().filter(|p| p.finished).count(),
            widest_fan_out: t.fanout.widest(),
            tree_depth: t.fanout.deepest(),
            source: t.source.clone(),
        })
    }

    fn require(&self, host_id: &str) -> Result<(), StateError> {
        if self.hosts.contains_key(host_id) {
            Ok(())
        } else {
            Err(StateError::NotRegistered)
        }
    }

    /// Makes `host_id` a peer of the task (creating the task). Returns whether it was new.
    fn join(&mut self, host_id: &str, task_id: TaskId, now: Instant) -> Result<bool, StateError> {
        let limit = self.cfg.max_tasks_per_host;
        if !self.tasks.contains_key(&task_id) && self.tasks.len() >= self.cfg.max_tasks {
            return Err(StateError::TooManyTasksInAll { limit: self.cfg.max_tasks });
        }
        let host = self.hosts.get_mut(host_id).ok_or(StateError::NotRegistered)?;
        if !host.tasks.contains(&task_id) {
            if host.tasks.len() >= limit {
                return Err(StateError::TooManyTasks { host: host_id.to_owned(), limit });
            }
            host.tasks.insert(task_id);
        }
        let task = self.tasks.entry(task_id).or_default();
        if task.peers.contains_key(host_id) {
            return Ok(false);
        }
        task.peers.insert(host_id.to_owned(), Peer::new(now));
        Ok(true)
    }

    fn remove_peer(&mut self, task_id: &TaskId, host_id: &str, failed: bool) {
        if let Some(h) = self.hosts.get_mut(host_id) {
            h.tasks.remove(task_id);
        }
        let Some(task) = self.tasks.get_mut(task_id) else { return };
        task.peers.remove(host_id);
        task.fanout.forget(host_id);
        task.excluded.remove(host_id);
        task.waiting_since.remove(host_id);
        if task.source.as_deref() == Some(host_id) {
            task.source = None;
            if failed {
                task.failed_sources.insert(host_id.to_owned());
            }
        }
        if task.peers.is_empty() {
            self.tasks.remove(task_id);
        }
    }
}

impl Peer {
    fn new(now: Instant) -> Peer {
        Peer { pieces_complete: 0, started: false, finished: false, back_to_source: false, last_progress: now }
    }
}

impl Task {
    fn source_healthy(&self, now: Instant, stall: Duration) -> bool {
        let Some(s) = &self.source else { return false };
        self.peers.get(s).is_some_and(|p| p.finished || now.saturating_duration_since(p.last_progress) < stall)
    }

    fn elect(&mut self, host_id: &str, now: Instant) -> Decision {
        self.source = Some(host_id.to_owned());
        self.waiting_since.remove(host_id);
        if let Some(p) = self.peers.get_mut(host_id) {
            p.back_to_source = true;
            p.last_progress = now;
        }
        Decision::BackToSource
    }

    /// Learns the content's shape from whoever knows it; a known piece count is what "finished" means.
    fn set_shape(&mut self, len: Option<u64>, piece_len: Option<u32>, count: Option<u32>) {
        if len.is_some() {
            self.content_length = len;
        }
        if piece_len.is_some_and(|p| p > 0) {
            self.piece_length = piece_len;
        }
        if count.is_some() {
            self.piece_count = count;
        } else if let (Some(l), Some(p)) = (self.content_length, self.piece_length) {
            self.piece_count = u32::try_from(l.div_ceil(u64::from(p))).ok();
        }
    }
}

/// The best parents for `child`, best first.
fn candidates(hosts: &HashMap<String, Host>, task: &Task, child: &str, cfg: &StateConfig) -> Vec<Parent> {
    let excluded = task.excluded.get(child);
    // A child of other parents is a parent before its first piece: its children then follow it a piece
    // behind instead of all asking the fetcher. (The fetcher itself is offered once it has a piece, so
    // that children wait for the origin's first bytes under `max_wait`, not under a peer round's stall.)
    let feeds = |h: &str, p: &Peer| p.finished || p.pieces_complete > 0 || (p.started && task.fanout.is_child(h));
    // Ranked by free upload capacity, then level (shallower first), then more pieces, then fewer
    // children, then fewer connections: a level of the tree fills before the next one is used, and
    // evenly, instead of growing a chain (swarm_sim showed one with children ranked before pieces).
    // Keys are computed once per candidate, and only the best few are sorted: a task with 10,000 peers
    // is decided in one pass over them (swarm_sim measures the latency).
    let (mut finished, mut unfinished) = (Vec::new(), Vec::new());
    for (h, p) in &task.peers {
        if h == child || !feeds(h, p) || task.fanout.children(h) >= cfg.fan_out {
            continue;
        }
        if excluded.is_some_and(|e| e.contains(h.as_str())) {
            continue;
        }
        let Some(host) = hosts.get(h) else { continue };
        let free = host.info.upload_capacity_bytes_per_sec.saturating_sub(host.load.upload_bytes_per_sec);
        let pieces = if p.finished { u32::MAX } else { p.pieces_complete };
        let key = (
            Reverse(free),
            task.fanout.depth(h),
            Reverse(pieces),
            task.fanout.children(h),
            host.load.upload_connections,
            h.as_str(),
        );
        if p.finished { &mut finished } else { &mut unfinished }.push((key, host, p));
    }
    // Parents still downloading hand on the newest pieces: a child takes at most `tree_parents` of them,
    // so that each level of the tree feeds fan_out / tree_parents times as many children as it has.
    let best = |mut v: Vec<_>, k: usize| {
        if v.len() > k && k > 0 {
            v.select_nth_unstable_by(k - 1, |a: &(Key<'_>, &Host, &Peer), b| a.0.cmp(&b.0));
        }
        v.truncate(k);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut c = best(finished, cfg.max_parents);
    c.extend(best(unfinished, cfg.tree_parents.min(cfg.max_parents)));
    c.sort_by(|a, b| a.0.cmp(&b.0));
    c.truncate(cfg.max_parents);
    c.into_iter()
        .map(|(_, h, p)| Parent {
            host_id: h.info.host_id.clone(),
            ip: h.info.ip,
            upload_port: h.info.upload_port,
            pieces_complete: p.pieces_complete,
            is_seed: h.info.is_seed,
            finished: p.finished,
        })
        .collect()
}

/// A candidate parent's rank: smaller is better (see [`candidates`]).
type Key<'a> = (Reverse<u64>, u32, Reverse<u32>, u32, u32, &'a str);

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
