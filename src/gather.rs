//! How many bytes a receiving socket gathers before it wakes its reader (`SO_RCVLOWAT`).
//!
//! Over a shaped 4 Gbit link a cold 1 GiB download woke for every ~86 KiB the link delivered: 12,000
//! `epoll_wait`s, context switches and `recvfrom`s per GiB, against 2,500 on loopback where the data
//! comes faster than the reader. Each wake-up costs CPU. A reader that knows how many bytes are still
//! to come (a body's Content-Length, a piece payload's length) tells the kernel to wake it only once a
//! few milliseconds' worth of them, at the rate they have been arriving, are queued.
//!
//! The kernel never holds back bytes that nothing will follow: a mark is set only while at least that
//! many bytes (and a margin for TLS framing) are still due, and is back at 1 before the socket is read
//! for anything else. But a mark also holds back bytes that *something* will follow, for as long as the
//! sender takes to send the rest of the mark: a sender that pauses (an origin or a parent between
//! bursts) leaves what it sent unread, and a parent's payload read could time out as stalled while its
//! bytes sat in the socket. The kernel is meant to wake the reader when the receive window is nearly
//! closed, yet `examples/relay_floor.rs` (blocking reads under these marks) woke only at its 60 s read
//! timeout on some runs. So a read that waits [`GUARD`] with a mark set gives the mark up for the rest
//! of its body or payload ([`Gather::give_up`]), and the metrics count it
//! (`shoal_receive_marks_given_up_total`).
//!
//! Owns: the mark and the rate it is chosen from. Never: reads the socket. Called by: engine (origin
//! bodies) and transfer (piece payloads from parents).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// At most this many bytes gathered per wake-up.
const MOST: usize = 512 << 10;
/// A mark under this is not worth a system call: the kernel's default (1) stays.
const LEAST: usize = 64 << 10;
/// Bytes worth gathering: what arrives in this long at the rate so far. Short beside every idle or
/// stall timeout on these reads (seconds), so a sender that slows down suddenly still wakes its
/// reader long before it would look stalled.
const SPAN: Duration = Duration::from_millis(4);
/// A span's own rate is used once it has delivered this many bytes; before, the last span's.
const MEASURED_AFTER: u64 = 1 << 20;
/// Bytes a TLS layer may hold, decrypted or not, beyond what the reader counted: the mark stays this
/// far under what is due.
const SLACK: u64 = 64 << 10;

/// How long a read may wait with a mark set before the mark is given up: six spans, so a sender that
/// merely slowed down a little still fills the mark first.
pub const GUARD: Duration = Duration::from_millis(25);

/// The mark on one socket, and the rate its reads have been delivering.
#[derive(Debug)]
pub struct Gather {
    set: usize,
    since: Instant,
    got: u64,
    /// Bytes per second over the last span that was measured; 0 before one was.
    last_rate: f64,
    /// A read waited [`GUARD`] on the mark: no mark again until the next body or payload.
    given_up: bool,
    /// The largest mark set so far (tests check that one was).
    #[cfg(test)]
    pub(crate) highest: usize,
}

impl Default for Gather {
    fn default() -> Self {
        Gather::new()
    }
}

impl Gather {
    pub fn new() -> Gather {
        Gather {
            set: 1,
            since: Instant::now(),
            got: 0,
            last_rate: 0.0,
            given_up: false,
            #[cfg(test)]
            highest: 1,
        }
    }

    /// A new body or payload begins: its rate is measured afresh.
    pub fn begin(&mut self) {
        self.since = Instant::now();
        self.got = 0;
        self.given_up = false;
    }

    /// How long the next read may wait before [`Gather::give_up`]: `None` while no mark is set, when
    /// only the caller's own timeouts apply.
    pub fn guard(&self) -> Option<Duration> {
        (self.set > 1).then_some(GUARD)
    }

    /// A read waited [`GUARD`] with a mark set: the mark goes back to 1 for the rest of this body or
    /// payload, and the metrics count it. False as for [`Gather::end`].
    pub fn give_up(&mut self, fd: Option<BorrowedFd<'_>>) -> bool {
        self.given_up = true;
        crate::metrics::Metrics::add(&crate::metrics::global().receive_marks_given_up, 1);
        if self.set != 1 {
            self.apply(fd, 1);
        }
        self.set == 1
    }

    /// Before a read that may wait on `fd`, with `due` bytes certain to arrive on it still.
    pub fn before_read(&mut self, fd: Option<BorrowedFd<'_>>, due: u64) {
        let want = self.want(due);
        if want != self.set {
            self.apply(fd, want);
        }
    }

    /// `n` bytes were read.
    pub fn read(&mut self, n: usize) {
        self.got += n as u64;
    }

    /// The body or payload ended: the socket's next read (a head, a frame) must wake at once. False if
    /// the mark could not be put back; the caller must then close the connection rather than reuse it.
    pub fn end(&mut self, fd: Option<BorrowedFd<'_>>) -> bool {
        if self.got >= MEASURED_AFTER {
            self.last_rate = self.rate();
        }
        self.given_up = false;
        if self.set != 1 {
            self.apply(fd, 1);
        }
        self.set == 1
    }

    fn rate(&self) -> f64 {
        self.got as f64 / self.since.elapsed().as_secs_f64().max(1e-3)
    }

    /// The mark for a read with `due` bytes still to come: a power of two (a wandering rate does not
    /// set it on every read), or 1.
    fn want(&self, due: u64) -> usize {
        if self.given_up {
            return 1;
        }
        let rate = if self.got >= MEASURED_AFTER { self.rate() } else { self.last_rate };
        let worth = (rate * SPAN.as_secs_f64()).min(MOST as f64) as u64;
        let worth = worth.min(due.saturating_sub(SLACK));
        if worth < LEAST as u64 {
            1
        } else {
            1 << worth.ilog2()
        }
    }

    fn apply(&mut self, fd: Option<BorrowedFd<'_>>, mark: usize) {
        let Some(fd) = fd else { return };
        let v = mark as libc::c_int;
        // SAFETY: `fd` is borrowed from a live socket for the length of the call; the option value is
        // a local c_int and the length passed is its size. The kernel keeps nothing of either.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // A socket that refuses the option keeps the mark it had: reads wake as they did.
        if r == 0 {
            self.set = mark;
            #[cfg(test)]
            {
                self.highest = self.highest.max(mark);
            }
        }
    }
}

/// The mark a socket has now (tests check that a mark was set and put back).
#[cfg(test)]
pub(crate) fn mark_of(fd: BorrowedFd<'_>) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is borrowed from a live socket for the call; the kernel writes at most `len` bytes
    // into the local `v` and the new length into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(SO_RCVLOWAT): {}", std::io::Error::last_os_error());
    v as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A gather that has read `got` bytes over the last `ms` milliseconds.
    fn after(got: u64, ms: u64) -> Gather {
        let mut g = Gather::new();
        g.since = Instant::now().checked_sub(Duration::from_millis(ms)).unwrap_or_else(Instant::now);
        g.got = got;
        g
    }

    #[test]
    fn no_mark_before_a_rate_is_known_and_none_when_little_is_due() {
        assert_eq!(Gather::new().want(1 << 30), 1, "nothing measured yet");
        assert_eq!(after(512 << 10, 1).want(1 << 30), 1, "under a MiB is not a rate yet");
        // 800 MB/s: 4 ms of it is past the cap.
        let fast = after(8 << 20, 10);
        assert_eq!(fast.want(1 << 30), MOST);
        assert_eq!(fast.want(300 << 10), 128 << 10, "under what is due, less the TLS slack");
        assert_eq!(fast.want(100 << 10), 1, "too little due for a mark worth setting");
        // 10 MB/s: 40 KB in 4 ms is not worth a system call.
        assert_eq!(after(10 << 20, 1000).want(1 << 30), 1);
    }

    #[test]
    fn a_mark_given_up_stays_off_until_the_next_body() {
        use std::os::fd::AsFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = || Some(sock.as_fd());
        let mut g = after(8 << 20, 10);
        assert_eq!(g.guard(), None, "no mark set yet, so only the caller's timeouts apply");
        g.before_read(fd(), 1 << 30);
        assert_eq!((mark_of(sock.as_fd()), g.guard()), (MOST, Some(GUARD)));
        assert!(g.give_up(fd()));
        assert_eq!((mark_of(sock.as_fd()), g.guard()), (1, None));
        g.before_read(fd(), 1 << 30);
        assert_eq!(mark_of(sock.as_fd()), 1, "no mark again within this body");
        g.begin();
        g.read(8 << 20);
        g.before_read(fd(), 1 << 30);
        assert_eq!(mark_of(sock.as_fd()), MOST, "the next body may set one");
        assert!(g.give_up(fd()) && g.end(fd()));
        g.begin();
        g.read(8 << 20);
        g.before_read(fd(), 1 << 30);
        assert_eq!(mark_of(sock.as_fd()), MOST, "and after a body that ended");
    }

    #[test]
    fn a_new_span_starts_from_the_last_spans_rate() {
        let mut g = after(8 << 20, 10);
        assert!(g.end(None), "no mark was set, so there is none to put back");
        g.begin();
        assert_eq!(g.got, 0);
        assert_eq!(g.want(4 << 20), MOST, "the last payload's rate carries over");
    }

    proptest! {
        #[test]
        fn a_mark_is_one_or_a_power_of_two_no_larger_than_is_due(
            got in 0u64..(1 << 34), ms in 0u64..100_000, due in 0u64..(1 << 34),
        ) {
            let m = after(got, ms).want(due);
            prop_assert!(m == 1 || (m.is_power_of_two() && (LEAST..=MOST).contains(&m)));
            prop_assert!(m == 1 || m as u64 + SLACK <= due);
        }
    }
}
