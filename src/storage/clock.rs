//! The store's time base: milliseconds since the Unix epoch for access stamps and the TTL of GC.
//!
//! The wall clock is read once, at first use, and then advanced by the monotonic clock. A step of the wall
//! clock while the daemon runs (an NTP correction, a machine that booted with a wrong RTC, someone's
//! `date -s`) therefore neither ages a task just read past its TTL (a forward step) nor stamps a read in
//! the past, to look old once the clock is corrected (a backward step): in both cases GC would evict live
//! tasks. Steps take effect at the next start, where stamps from another time base look older or newer
//! than they are; a stamp in the future counts as age zero. The monotonic clock does not advance while the
//! machine is suspended, so a suspend only delays evictions, never hastens them.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, immune to wall-clock steps during this process's life.
pub fn now_ms() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, wall) = *ANCHOR.get_or_init(|| (Instant::now(), wall_ms(SystemTime::now())));
    since(wall, at.elapsed())
}

fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn since(anchor_ms: u64, elapsed: Duration) -> u64 {
    anchor_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_with_the_monotonic_clock_only() {
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(20));
        let b = now_ms();
        assert!(b >= a + 20 && b < a + 5_000, "{a} {b}");
        assert_eq!(since(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
    }
}
