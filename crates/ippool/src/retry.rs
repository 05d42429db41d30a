//! Retry policy for optimistic writes: a bounded total time, exponential backoff with full
//! jitter between attempts (whereabouts retries 100 times with no sleep at all, which turns
//! contention into a hot loop of GET + PATCH on the whole pool).

use std::time::Duration;

use tokio::time::Instant;

/// How long and how fast to retry conflicting or transiently failing writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time one store operation may take (whereabouts' `RequestTimeout` is 10 s).
    pub budget: Duration,
    /// The first backoff ceiling; doubled after every failed attempt.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(10),
            base: Duration::from_millis(4),
            cap: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The deadline of an operation starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.budget
    }

    /// The sleep before attempt `attempt + 1`, after an attempt that took `observed`: uniform in
    /// `[0, min(cap, max(base, observed) * 2^min(attempt, 3))]` ("full jitter": contenders spread
    /// out instead of colliding again in lockstep). Scaling by the observed attempt time keeps
    /// losers of a large, slow pool from hammering the API server; the growth is bounded so a
    /// writer that lost several times is not starved by fresh ones.
    pub fn backoff(&self, attempt: u32, observed: Duration) -> Duration {
        let ceiling = self
            .base
            .max(observed)
            .saturating_mul(1u32 << attempt.min(3))
            .min(self.cap)
            .as_micros();
        let ceiling = u64::try_from(ceiling).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=ceiling))
    }

    /// Sleep for the backoff of `attempt` (which started at `started`), but never past
    /// `deadline`. Returns `false` when the deadline has passed (give up).
    pub async fn wait(&self, attempt: u32, started: Instant, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let until = (now + self.backoff(attempt, now - started)).min(deadline);
        tokio::time::sleep_until(until).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        for attempt in 0..40 {
            let d = p.backoff(attempt, Duration::from_millis(attempt.into()));
            assert!(d <= p.cap, "{attempt}: {d:?}");
            if attempt == 0 {
                assert!(d <= p.base);
            }
            assert!(p.backoff(attempt, Duration::from_secs(5)) <= p.cap);
        }
    }
}
