//! Downloading one task's pieces from several parents at once.
//!
//! Each parent gets a subscription (what it has, and each piece as it lands there) and a worker that
//! repeatedly claims a missing piece that parent has and nobody is fetching: the lowest one while a client
//! streaming the task waits (so it gets pieces in order), the rarest among the parents otherwise; every
//! parent stays busy. A piece that fails goes back to
//! the pool for another parent; a parent that fails (dead, stalled, wrong crc) is dropped for this task
//! and reported, and the download fails only when no parent is left with pieces still missing.
//!
//! Parents may themselves be waiting on a source that died (peers that were all taking pieces from a
//! killed seed wait on each other forever), so a round in which no parent announces or delivers a new
//! piece for `stall` ends, and the conductor asks the scheduler again.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::budget::IngestBudget;
use crate::metrics::{self, Metrics};
use crate::storage::Task;
use crate::transfer::{Pool, SubEvent, TransferError};

/// Why a parent was dropped, for the scheduler's bad-parent report.
#[derive(Debug, Clone)]
pub struct ParentFailure {
    pub parent: SocketAddr,
    pub reason: String,
}

struct Shared {
    /// Pieces nobody is fetching and the task does not have.
    free: BTreeSet<u32>,
    /// What each parent has said it holds.
    have: Vec<HashSet<u32>>,
    failures: Vec<ParentFailure>,
    /// Last time any parent announced or delivered a piece we did not have.
    progressed: tokio::time::Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Outcome of a multi-parent download.
pub struct PeerDownload {
    pub complete: bool,
    /// Ended because no parent made progress for the stall bound.
    pub stalled: bool,
    pub bytes: u64,
    pub failures: Vec<ParentFailure>,
}

/// Fetches every missing piece of `task` from `parents` (whose geometry the task already has). Returns
/// when the task holds every piece, or when every parent has failed.
pub async fn download(
    pool: &Arc<Pool>,
    task: &Arc<Task>,
    parents: &[SocketAddr],
    per_parent: usize,
    stall: Duration,
    budget: &IngestBudget,
) -> PeerDownload {
    let missing: BTreeSet<u32> = match task.piece_count() {
        Some(n) => (0..n).filter(|&k| !task.has_piece(k)).collect(),
        None => BTreeSet::new(),
    };
    let shared = Arc::new(Mutex::new(Shared {
        free: missing,
        have: vec![HashSet::new(); parents.len()],
        failures: Vec::new(),
        progressed: Instant::now(),
    }));
    let wake = Arc::new(Notify::new());
    let round = Arc::new(Round {
        pool: pool.clone(),
        task: task.clone(),
        shared: shared.clone(),
        wake: wake.clone(),
        width: per_parent.max(1),
        budget: budget.clone(),
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, &p) in parents.iter().enumerate() {
        let (round, shared, wake) = (round.clone(), shared.clone(), wake.clone());
        // The parent's span sits inside the task's, so a parent's log lines name both.
        let span = tracing::debug_span!("parent", addr = %p);
        set.spawn(tracing::Instrument::instrument(
            async move {
                let r = parent_loop(&round, p, i).await;
                let mut s = lock(&shared);
                let bytes = match r {
                    Ok(b) => b,
                    Err(e) => {
                        s.failures.push(ParentFailure { parent: p, reason: e.to_string() });
                        0
                    }
                };
                drop(s);
                wake.notify_waiters();
                bytes
            },
            span,
        ));
    }
    let mut bytes = 0;
    let mut stalled = false;
    // Ends when every parent loop has returned (each returns when the task is whole or the parent failed),
    // or when no parent has progressed for `stall`.
    loop {
        let deadline = lock(&shared).progressed + stall;
        tokio::select! {
            r = set.join_next() => match r {
                Some(r) => {
                    bytes += r.unwrap_or(0);
                    if is_whole(task) {
                        // The other parents' loops see it at their next wake-up and report their last bytes;
                        // one that does not within a second is cut.
                        let rest = async {
                            while let Some(r) = set.join_next().await {
                                bytes += r.unwrap_or(0);
                            }
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
                        set.abort_all();
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if lock(&shared).progressed + stall <= Instant::now() {
                    stalled = true;
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
    let failures = std::mem::take(&mut lock(&shared).failures);
    PeerDownload { complete: is_whole(task), stalled, bytes, failures }
}

fn is_whole(task: &Task) -> bool {
    task.piece_count().is_some_and(|n| (0..n).all(|k| task.has_piece(k)))
}

/// What every parent worker of one round shares.
struct Round {
    pool: Arc<Pool>,
    task: Arc<Task>,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    /// Pieces requested from one parent at once.
    width: usize,
    budget: IngestBudget,
}

/// One parent: follow its subscription and fetch what it has, `width` pieces at a time.
async fn parent_loop(round: &Round, parent: SocketAddr, me: usize) -> Result<u64, TransferError> {
    let Round { pool, task, shared, wake, width, budget } = round;
    let width = *width;
    let mut sub = pool.subscribe(parent, task.id()).await?;
    let mut running = tokio::task::JoinSet::new();
    let mut sub_open = true;
    let mut bytes = 0u64;
    // Each turn handles one subscription event, one finished piece, or a wake-up; bounded by the pieces.
    loop {
        // Registered before looking for work, so a piece freed by another parent meanwhile wakes us.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        while running.len() < width {
            let Some(k) = claim(shared, me, task) else { break };
            let (pool, task, budget) = (pool.clone(), task.clone(), budget.clone());
            running.spawn(async move {
                // The piece's buffer counts against the daemon's memory budget until it is stored.
                let _held = budget.reserve(task.piece_length() as usize).await;
                let t0 = std::time::Instant::now();
                (k, pool.fetch_piece(parent, &task, k).await, t0.elapsed())
            });
        }
        if is_whole(task) {
            // Fetches that stored the last pieces may not have reported yet: their bytes count too.
            while let Some(done) = running.join_next().await {
                if let Ok(d) = done {
                    bytes += settle(shared, wake, task, me, d).unwrap_or(0);
                }
            }
            return Ok(bytes);
        }
        if running.is_empty() && !sub_open {
            // The parent will announce nothing more and has nothing we can use.
            return Ok(bytes);
        }
        tokio::select! {
            ev = sub.next(), if sub_open => match ev? {
                Some(SubEvent::Snapshot { content_length, pieces, .. }) => {
                    note_new(shared, task, &pieces);
                    if let (Some(len), None) = (content_length, task.content_length()) {
                        task.set_content_length(len).map_err(TransferError::Storage)?;
                        let mut s = lock(shared);
                        let n = task.piece_count().unwrap_or(0);
                        s.free = (0..n).filter(|&k| !task.has_piece(k)).collect();
                        drop(s);
                        wake.notify_waiters();
                    }
                    lock(shared).have[me].extend(pieces);
                }
                Some(SubEvent::Have(pieces)) => {
                    note_new(shared, task, &pieces);
                    lock(shared).have[me].extend(pieces);
                }
                Some(SubEvent::Ended { .. }) | None => sub_open = false,
            },
            done = running.join_next(), if !running.is_empty() => {
                if let Some(Ok(d)) = done {
                    bytes += settle(shared, wake, task, me, d)?;
                }
            }
            _ = notified => {}
        }
    }
}

type Fetched = (u32, Result<(), TransferError>, std::time::Duration);

/// Accounts for one finished fetch: its bytes, or the piece back in the pool. An error that condemns the
/// parent is returned.
fn settle(
    shared: &Mutex<Shared>,
    wake: &Notify,
    task: &Task,
    me: usize,
    (k, r, took): Fetched,
) -> Result<u64, TransferError> {
    match r {
        Ok(()) => {
            let n = task.piece_range(k).map_or(0, |(_, l)| l as u64);
            lock(shared).progressed = Instant::now();
            let m = metrics::global();
            Metrics::add(&m.bytes_from_peers, n);
            m.piece_downloaded(took);
            Ok(n)
        }
        Err(e) => {
            lock(shared).free.insert(k);
            wake.notify_waiters();
            if e.is_connection_error()
                || matches!(e, TransferError::CrcMismatch { .. } | TransferError::ParentBad { .. })
            {
                return Err(e);
            }
            // The parent refused this piece (not there yet, busy): drop it from what it has.
            lock(shared).have[me].remove(&k);
            Ok(0)
        }
    }
}

/// Records progress when a parent announces a piece the task still lacks.
fn note_new(shared: &Mutex<Shared>, task: &Task, pieces: &[u32]) {
    if pieces.iter().any(|&k| !task.has_piece(k)) {
        lock(shared).progressed = Instant::now();
    }
}

/// The piece to fetch next from this parent ([`pick`]), marked as taken.
fn claim(shared: &Mutex<Shared>, me: usize, task: &Task) -> Option<u32> {
    let wanted = task.wanted_piece();
    let mut s = lock(shared);
    let k = pick(&s.free, &s.have, me, wanted, |k| task.has_piece(k))?;
    s.free.remove(&k);
    Some(k)
}

/// Which free piece parent `me` should send. While a client streaming the task waits at piece `wanted`,
/// the lowest free piece from there on (then any lower one): the stream never starves. Otherwise
/// rarest-first: the piece the fewest of this round's parents hold, lowest first among equals, so that
/// pieces only one parent has are copied before that parent leaves or is dropped.
fn pick(
    free: &BTreeSet<u32>,
    have: &[HashSet<u32>],
    me: usize,
    wanted: Option<u32>,
    stored: impl Fn(u32) -> bool,
) -> Option<u32> {
    let mine = have.get(me)?;
    let usable = |k: &&u32| mine.contains(k) && !stored(**k);
    match wanted {
        Some(w) => free.range(w..).find(usable).or_else(|| free.range(..w).find(usable)).copied(),
        None => {
            free.iter().filter(usable).min_by_key(|&&k| (have.iter().filter(|h| h.contains(&k)).count(), k)).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> HashSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_waiting_reader_gets_pieces_in_order_and_otherwise_the_rarest_goes_first() {
        let free: BTreeSet<u32> = (0..8).collect();
        // Parent 0 holds 0..8; parent 1 holds 0..4; parent 2 holds 0..2 and 6.
        let have = vec![set(&[0, 1, 2, 3, 4, 5, 6, 7]), set(&[0, 1, 2, 3]), set(&[0, 1, 6])];
        let none = |_| false;
        assert_eq!(pick(&free, &have, 0, Some(0), none), Some(0), "a reader waits at 0");
        assert_eq!(pick(&free, &have, 0, Some(5), none), Some(5), "a reader waits at 5");
        assert_eq!(pick(&free, &have, 1, Some(5), none), Some(0), "parent 1 has nothing from 5 on");
        // No reader: pieces 4, 5 and 7 are held by parent 0 alone.
        assert_eq!(pick(&free, &have, 0, None, none), Some(4));
        assert_eq!(pick(&free, &have, 0, None, |k| k == 4), Some(5), "stored pieces are skipped");
        // Parent 2's rarest is 6 (two holders) before 0 and 1 (three).
        assert_eq!(pick(&free, &have, 2, None, none), Some(6));
        assert_eq!(pick(&free, &have, 3, None, none), None, "no such parent");
        assert_eq!(pick(&BTreeSet::new(), &have, 0, None, none), None);
    }
}
