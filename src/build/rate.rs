//! `--max-upload-rate`: parsing the flag and the token bucket that paces image delivery. Pure:
//! the caller passes the clock's readings and sleeps for the delays it is given.

use std::time::{Duration, Instant};

/// Parses a rate in bytes per second: `10M`, `10MB/s`, `512K`, `1.5G`, `8MiB`, or a plain number
/// of bytes. K, M and G are decimal (`10M` = 10,000,000 bytes/s, as network speeds are quoted);
/// Ki, Mi and Gi are binary. A trailing `B`, `/s` or `ps` is allowed.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{text}` is not an upload rate; write bytes per second like `10M` (10,000,000), \
             `512K`, `8MiB` or `1000000`"
        )
    };
    let t = text.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    let t = t
        .strip_suffix('B')
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let rate = (value * multiplier).round();
    if !rate.is_finite() || rate < 1.0 || rate > u64::MAX as f64 / 2.0 {
        return Err(format!("{}: it must be at least 1 byte per second", bad()));
    }
    Ok(rate as u64)
}

/// A token bucket shared by every host of a run: sending `n` bytes takes `n` tokens, tokens come
/// back at `rate` per second up to `burst`. A sender that finds too few goes into debt and is told
/// how long to wait, so concurrent senders queue behind each other and the sum of what they send
/// stays at `rate` (after the first burst).
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u64,
    burst: u64,
    /// Tokens in nano-bytes (bytes × 10⁹), negative while in debt: integer arithmetic keeps the
    /// pacing exact.
    tokens: i128,
    last: Option<Instant>,
}

const NANOS: i128 = 1_000_000_000;

impl RateLimit {
    /// A limit of `rate` bytes per second; the bucket holds a tenth of a second's worth (at least
    /// 64 KiB), so a pause does not let a long burst through.
    pub fn new(rate: u64) -> RateLimit {
        let burst = (rate / 10).max(64 << 10);
        RateLimit {
            rate,
            burst,
            tokens: burst as i128 * NANOS,
            last: None,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `bytes` at `now`; returns how long to wait before sending them.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos() as i128;
            self.tokens =
                (self.tokens + elapsed * self.rate as i128).min(self.burst as i128 * NANOS);
        }
        self.last = Some(now.max(self.last.unwrap_or(now)));
        self.tokens -= bytes as i128 * NANOS;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Debt of d nano-bytes is paid back in d / rate nanoseconds.
        let wait = (-self.tokens) / self.rate as i128;
        Duration::from_nanos(wait.min(u64::MAX as i128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_a_user_writes_them() {
        for (text, rate) in [
            ("10M", 10_000_000),
            ("10MB/s", 10_000_000),
            ("10mbps", 10_000_000),
            ("512K", 512_000),
            ("1.5G", 1_500_000_000),
            ("8MiB", 8 << 20),
            ("64Ki", 64 << 10),
            ("1000000", 1_000_000),
        ] {
            assert_eq!(parse_rate(text), Ok(rate), "{text}");
        }
        for text in ["", "fast", "10X", "0", "-5M", "1..2M"] {
            let err = parse_rate(text).expect_err(text);
            assert!(err.contains("is not an upload rate"), "{err}");
        }
    }

    #[test]
    fn the_limit_paces_bytes_to_its_rate_across_senders() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 1 MB/s: the bucket holds 100 KB.
        let mut limit = RateLimit::new(1_000_000);
        assert_eq!(limit.take(100_000, at(0)), Duration::ZERO, "the burst");
        // Two hosts each want 1 MB at once: the first waits 1 s, the second 2 s.
        assert_eq!(limit.take(1_000_000, at(0)), Duration::from_secs(1));
        assert_eq!(limit.take(1_000_000, at(0)), Duration::from_secs(2));
        // Half a second later the debt is 1.5 MB: 500 KB more waits 2 s from then.
        assert_eq!(limit.take(500_000, at(500)), Duration::from_secs(2));
        // After a long pause only the burst is free, never the whole pause's worth.
        assert_eq!(limit.take(0, at(60_000)), Duration::ZERO);
        assert_eq!(limit.take(100_000, at(60_000)), Duration::ZERO);
        assert_eq!(limit.take(1_000, at(60_000)), Duration::from_millis(1));
        // Over any span, bytes taken ≤ rate × (span + waits) + burst: 10 MB in 1 KB pieces ends
        // 10 s (less the burst) after it started.
        let mut limit = RateLimit::new(1_000_000);
        let mut wait = Duration::ZERO;
        for _ in 0..10_000 {
            wait = limit.take(1_000, at(0));
        }
        assert_eq!(wait, Duration::from_millis(9_900));
    }
}
