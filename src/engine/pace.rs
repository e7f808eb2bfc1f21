//! How many ranged connections an origin download uses: a rate probe.
//!
//! Owns: the bytes a download's connections have delivered, and the width (connections at once) that
//! segments.rs may run. Extra connections pay where the origin caps each one (S3, GCS, CDNs: four are
//! four times faster), and cost where this node is the limit: on loopback, 4 connections took 1.82 s of
//! CPU per GiB and 1.47 s against 1.40 s and 1.30 s for one, their pieces arriving out of order for the
//! one sha256 pass. Neither the share of time the connections wait on the socket nor a rate threshold
//! told the two apart on a node whose origin shares its cores (docs/benchmarks.md), so each download
//! measures it. After a first window of warming up, it runs at one width for a [`WINDOW`], tries one
//! more connection for the next, and keeps it only if the delivered rate rose by half of what a capped
//! origin would give ([`GAIN`]); otherwise it goes back one and stays there (a rise between none and
//! that is measured over one window more first). A resumed download's connections never wait for the
//! hash (segments.rs), so its windows measure the origin too. A trial that could not pass is not
//! run: when the rise it needs would take the download past the rate this daemon's whole-content hash
//! runs at (`storage::hash_rate`), which every byte waits for, the width stays.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long one width is measured: long enough that a request's round trip and a connection's start
/// are small in it, short enough that a capped origin reaches four connections within a second.
pub(super) const WINDOW: Duration = Duration::from_millis(400);
/// The share of the ideal rise in delivered rate that keeps the connection just added: going from `w`
/// connections to `w + 1` multiplies a capped origin's rate by `(w + 1) / w`, so the `w + 1`-th is kept
/// if the rate rose by at least half of `1 / w` (2→ 1.5×, 3 → 1.25×, 4 → 1.17×). On a node that is its
/// own limit the rate stays flat; the VM this is measured on moves a window's rate by up to ~25%, which
/// the first and most common decision (a second connection) must not mistake for a gain.
const GAIN: f64 = 0.5;

/// One download's probe, shared by its connections.
#[derive(Debug)]
pub(super) struct Pace {
    delivered: AtomicU64,
    /// Extra connections (beyond the first) holding a [`Lane`] right now.
    extras: AtomicU32,
    max: u32,
    probe: Mutex<Probe>,
}

#[derive(Debug)]
struct Probe {
    width: u32,
    settled: bool,
    /// Start of the window being measured: when, and the bytes delivered by then.
    mark: Option<(Instant, u64)>,
    /// The rate of the last window, at `width - 1` connections while a probe runs.
    base: Option<f64>,
    /// The first window is over. It is not measured: its rate is the start's (fresh buffers faulted in,
    /// the first pieces' writes), and against it any second connection looked like a gain.
    warm: bool,
    /// This width's window runs twice as long: its first half was neither a gain nor none.
    longer: bool,
}

impl Probe {
    /// The width after `bytes` were delivered by `now`: unchanged until a window is full, then one more
    /// while each added connection raised the rate enough ([`GAIN`]), or one less (and settled) once one
    /// did not.
    fn step(&mut self, now: Instant, bytes: u64, max: u32, hash_rate: Option<f64>) -> u32 {
        if self.settled {
            return self.width;
        }
        let Some((t0, b0)) = self.mark else {
            // The window starts with the first byte: the first request's wait is not a rate.
            if bytes > 0 {
                self.mark = Some((now, bytes));
            }
            return self.width;
        };
        let dt = now.saturating_duration_since(t0);
        if dt < WINDOW * (1 + u32::from(self.longer)) {
            return self.width;
        }
        let rate = bytes.saturating_sub(b0) as f64 / dt.as_secs_f64();
        if !std::mem::replace(&mut self.warm, true) {
            self.mark = Some((now, bytes));
            return self.width;
        }
        let hash_mb_per_s = hash_rate.map(|h| h / 1e6);
        tracing::debug!(width = self.width, mb_per_s = rate / 1e6, hash_mb_per_s, "origin connections probed");
        let need = 1.0 + GAIN / f64::from(self.width.saturating_sub(1).max(1));
        if let Some(base) = self.base.filter(|&base| rate < base * need) {
            // Between no gain and the gain asked for, one window cannot tell: a capped origin's bursts
            // and a new connection's start moved a second connection's window to 1.49x once (its
            // download then ran on one connection, 4x slower). Measured over one window more, once.
            if !std::mem::replace(&mut self.longer, true) && rate >= base * (1.0 + (need - 1.0) / 2.0) {
                return self.width;
            }
            self.width -= 1;
            self.settled = true;
            return self.width;
        }
        self.longer = false;
        self.base = Some(rate);
        // The next connection would have to lift the rate to this; past the hash's rate it cannot.
        let next_needs = rate * (1.0 + GAIN / f64::from(self.width));
        if self.width < max && hash_rate.is_none_or(|h| next_needs <= h) {
            self.width += 1;
        } else {
            self.settled = true;
        }
        self.mark = Some((now, bytes));
        self.width
    }
}

/// An extra connection's place in the width, given back when dropped.
pub(super) struct Lane<'a>(&'a Pace);

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        self.0.extras.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pace {
    /// A probe for a download that may use up to `max` connections.
    pub(super) fn new(max: u32) -> Pace {
        let probe = Probe { width: 1, settled: max <= 1, mark: None, base: None, warm: false, longer: false };
        let (delivered, extras) = (AtomicU64::new(0), AtomicU32::new(0));
        Pace { delivered, extras, max, probe: Mutex::new(probe) }
    }

    /// `n` more bytes of the object arrived, on any of the download's connections.
    pub(super) fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The probe, advanced to now.
    fn stepped(&self) -> MutexGuard<'_, Probe> {
        let bytes = self.delivered.load(Ordering::Relaxed);
        let mut p = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        p.step(Instant::now(), bytes, self.max, crate::storage::hash_rate());
        p
    }

    /// Connections the download may use now, the first one included; advances the probe.
    pub(super) fn width(&self) -> u32 {
        self.stepped().width
    }

    /// A place for one more extra connection, if the width has room for it.
    pub(super) fn join(&self) -> Option<Lane<'_>> {
        let width = self.width();
        let fits = |e: u32| (e + 1 < width).then_some(e + 1);
        self.extras.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).ok()?;
        Some(Lane(self))
    }

    /// Whether the extra connections now outnumber the width (one of them should leave).
    pub(super) fn over(&self) -> bool {
        self.extras.load(Ordering::Acquire) + 1 > self.width()
    }

    /// Whether the probe has settled on one connection: the download is best read on one, to its end.
    pub(super) fn alone(&self) -> bool {
        let p = self.stepped();
        p.settled && p.width == 1
    }

    /// Sets the width and stops the probe (for tests of the connections that follow it).
    #[cfg(test)]
    pub(super) fn settle_at(&self, width: u32) {
        let mut p = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        (p.width, p.settled) = (width, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rates` (bytes per second at each window's width) through a probe of at most `max`
    /// connections; returns the width after each window.
    fn widths(max: u32, rates: impl Fn(u32) -> f64) -> Vec<u32> {
        widths_hashing_at(None, max, rates)
    }

    /// [`widths`] on a daemon whose whole-content hash runs at `hash` bytes per second.
    fn widths_hashing_at(hash: Option<f64>, max: u32, rates: impl Fn(u32) -> f64) -> Vec<u32> {
        widths_of(hash, max, |w, _| rates(w))
    }

    /// The probe over nine windows, `window(width, i)` giving the i-th window's rate.
    fn widths_of(hash: Option<f64>, max: u32, window: impl Fn(u32, u32) -> f64) -> Vec<u32> {
        let mut p = Probe { width: 1, settled: max <= 1, mark: None, base: None, warm: false, longer: false };
        let (t0, mut bytes) = (Instant::now(), 1u64);
        let mut out = vec![p.step(t0, bytes, max, hash)];
        for i in 1..9u32 {
            let rate = window(p.width, i);
            bytes += (rate * WINDOW.as_secs_f64()) as u64;
            // Looked at mid-window too, as a connection taking a chunk would.
            p.step(t0 + WINDOW * (i - 1) + WINDOW / 2, bytes, max, hash);
            out.push(p.step(t0 + WINDOW * i, bytes, max, hash));
        }
        out
    }

    #[test]
    fn a_rise_between_none_and_the_one_asked_for_is_measured_over_a_window_more() {
        // A capped origin's second connection starts late in its first window (1.4x), then runs at
        // full rate: over both windows 1.7x, kept.
        let late = |w: u32, i: u32| if w == 2 && i == 3 { 14e6 } else { 10e6 * w as f64 };
        assert_eq!(widths_of(None, 4, late), [1, 1, 2, 2, 3, 4, 4, 4, 4]);
        // A node at its own limit, whose second connection's window happened to read 1.3x and then
        // 1.0x: 1.15x over both, given back after the longer window.
        let flat = |w: u32, i: u32| if w == 2 && i == 3 { 130e6 } else { 100e6 };
        assert_eq!(widths_of(None, 4, flat), [1, 1, 2, 2, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn no_connection_is_tried_where_the_rise_it_needs_would_outrun_the_hash() {
        // One connection delivers 800 MB/s and the hash runs at 1 GB/s: a second would have to reach
        // 1.2 GB/s to be kept, which the hash cannot take. No trial.
        assert_eq!(widths_hashing_at(Some(1e9), 4, |_| 800e6), [1; 9]);
        // The same node without a timed hash yet tries one, and goes back.
        assert_eq!(widths_hashing_at(None, 4, |_| 800e6), [1, 1, 2, 1, 1, 1, 1, 1, 1]);
        // A capped origin (10 MB/s a connection) is far below the hash: widened as before.
        assert_eq!(widths_hashing_at(Some(1e9), 4, |w| 10e6 * w as f64), [1, 1, 2, 3, 4, 4, 4, 4, 4]);
        // Widening stops where the next step's need passes the hash: 3 × 250 MB/s = 750; a fourth
        // would need 875 MB/s of a hash that runs at 850.
        assert_eq!(widths_hashing_at(Some(850e6), 4, |w| 250e6 * w as f64), [1, 1, 2, 3, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn a_capped_origin_is_widened_window_by_window_to_the_limit() {
        // 10 MB/s per connection.
        assert_eq!(widths(4, |w| 10e6 * w as f64), [1, 1, 2, 3, 4, 4, 4, 4, 4]);
    }

    #[test]
    fn a_node_that_is_its_own_limit_tries_one_more_connection_and_goes_back() {
        // The same rate (or less, from the extra work) at any width.
        assert_eq!(widths(4, |w| 800e6 - 50e6 * (w - 1) as f64), [1, 1, 2, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn widening_stops_where_the_rate_stops_rising() {
        // A link that two connections fill.
        assert_eq!(widths(4, |w| 10e6 * w.min(2) as f64), [1, 1, 2, 3, 2, 2, 2, 2, 2]);
        // A second connection that adds a fifth (noise on a node that is its own limit) is not kept.
        assert_eq!(widths(4, |w| if w == 1 { 100e6 } else { 120e6 }), [1, 1, 2, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn one_connection_allowed_is_never_widened() {
        assert_eq!(widths(1, |w| 10e6 * w as f64), [1; 9]);
    }

    #[test]
    fn extras_take_places_only_within_the_width_and_give_them_back() {
        let p = Pace::new(4);
        assert!(p.join().is_none(), "width 1: the first connection alone");
        p.settle_at(3);
        let (a, b) = (p.join(), p.join());
        assert!(a.is_some() && b.is_some() && p.join().is_none(), "two extras beside the first");
        assert!(!p.over());
        p.settle_at(2);
        assert!(p.over(), "one of them should leave");
        drop(a);
        assert!(!p.over());
        drop(b);
        assert_eq!(p.extras.load(Ordering::Acquire), 0);
    }
}
