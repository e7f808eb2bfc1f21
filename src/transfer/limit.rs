//! Upload pacing and measurement: a token bucket for the byte-rate limit, and a coarse meter of recent
//! upload throughput that a scheduler reads to prefer idle parents.

use std::time::{Duration, Instant};

/// Byte-rate limiter. Senders reserve before sending and sleep for the returned debt, so the long-run
/// rate never exceeds `rate` while a burst of up to `burst` bytes goes out at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes per second (at least 1), bursts of `burst` bytes.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket { rate: rate.max(1) as f64, burst, tokens: burst, last: now }
    }

    /// Takes `n` tokens, going into debt if needed, and returns how long the caller must wait before
    /// sending them. Debt rather than refusal keeps large sends from starving behind small ones.
    pub fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Bytes per second over roughly the last second or two.
#[derive(Debug)]
pub struct RateMeter {
    start: Instant,
    bytes: u64,
    last_rate: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

impl RateMeter {
    pub fn new(now: Instant) -> Self {
        RateMeter { start: now, bytes: 0, last_rate: 0 }
    }

    pub fn record(&mut self, n: u64, now: Instant) {
        self.roll(now);
        self.bytes += n;
    }

    pub fn rate(&mut self, now: Instant) -> u64 {
        self.roll(now);
        let dt = now.saturating_duration_since(self.start);
        if dt < WINDOW / 4 {
            return self.last_rate;
        }
        // Mixes the finished window with the current partial one so a stopped upload decays within ~2 s.
        let current = (self.bytes as f64 / dt.as_secs_f64()) as u64;
        let w = dt.as_secs_f64() / WINDOW.as_secs_f64();
        ((1.0 - w) * self.last_rate as f64 + w * current as f64) as u64
    }

    fn roll(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.start);
        if dt >= WINDOW {
            // A window longer than two means nothing was recorded for a while: the old rate is stale.
            self.last_rate = if dt >= 2 * WINDOW { 0 } else { (self.bytes as f64 / dt.as_secs_f64()) as u64 };
            self.start = now;
            self.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        let w = b.reserve(1000, t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        // After paying the debt, savings are capped at the burst.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(500, t2), Duration::ZERO);
        assert!(b.reserve(1, t2) > Duration::ZERO);
    }

    #[test]
    fn meter_reports_and_decays() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        m.record(1000, t0);
        m.record(1000, t0 + Duration::from_millis(500));
        let r = m.rate(t0 + Duration::from_millis(1000));
        assert!((1900..=2100).contains(&r), "{r}");
        assert_eq!(m.rate(t0 + Duration::from_secs(5)), 0);
    }
}
