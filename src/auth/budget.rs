//! The verification budget: how hard the gateway may lean on Frappe for credentials it has
//! never seen. Every cache miss costs Frappe a whoami call (a key lookup, a row read and a
//! Fernet decryption), so a client spraying random keys could otherwise turn the gateway into
//! an amplifier against the site it protects.
//!
//! Two limits, both checked before a verification calls Frappe:
//! - `frappe.max_verify_concurrency` (default 16): verifications in flight at once. A
//!   verification that finds every permit taken is refused at once; it never queues, so a
//!   flood cannot build a backlog that outlives it.
//! - `frappe.max_verify_rate` (default `"50/sec"`): verifications started, one GCRA bucket
//!   for the whole process (the burst is the rate's burst, by default its count).
//!
//! A refusal is [`OverBudget`]; the store turns it into a 503 for that request only. Cached
//! credentials never reach the budget, and requests sharing one verification share one permit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Rate;
use crate::policy::{Clock, LocalLimiter, MonotonicClock, Subject};

/// The limiter scope of the one global bucket.
const SCOPE: &str = "frappe-verify";
/// How often, at most, a summary of refusals is logged at warn level (the access log has
/// every refused request; this line is for operators watching the application log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a verification was not started. Messages name the setting, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("{limit} verifications already in flight (frappe.max_verify_concurrency)")]
    Concurrency { limit: usize },
    #[error("more than {rate} verifications started (frappe.max_verify_rate)")]
    Rate { rate: Rate, retry_after: Duration },
}

impl OverBudget {
    /// When a client may try again: one second for a full pipe (calls take milliseconds),
    /// the bucket's own wait (at least one second) for the rate.
    pub fn retry_after(&self) -> Duration {
        match self {
            OverBudget::Concurrency { .. } => Duration::from_secs(1),
            OverBudget::Rate { retry_after, .. } => (*retry_after).max(Duration::from_secs(1)),
        }
    }
}

/// Permits for calls to Frappe on behalf of unknown credentials.
pub struct VerifyBudget {
    permits: Semaphore,
    concurrency: usize,
    rate: Rate,
    limiter: LocalLimiter,
    refused: AtomicU64,
    /// When the last refusal summary was logged, and how many refusals it covered.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl std::fmt::Debug for VerifyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyBudget")
            .field("concurrency", &self.concurrency)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl VerifyBudget {
    /// At most `concurrency` verifications at once (clamped to at least 1) and `rate` started.
    pub fn new(concurrency: usize, rate: Rate) -> Self {
        Self::with_clock(concurrency, rate, Arc::new(MonotonicClock::new()))
    }

    /// Like [`VerifyBudget::new`] on another clock (a `ManualClock` in tests).
    pub fn with_clock(concurrency: usize, rate: Rate, clock: Arc<dyn Clock>) -> Self {
        let concurrency = concurrency.clamp(1, Semaphore::MAX_PERMITS);
        VerifyBudget {
            permits: Semaphore::new(concurrency),
            concurrency,
            rate,
            // One subject only: the table bound does not matter.
            limiter: LocalLimiter::with_clock(clock, 16),
            refused: AtomicU64::new(0),
            warned: Mutex::new((None, 0)),
        }
    }

    /// A permit for one verification, held until its calls to Frappe are done; or why not.
    /// Never waits. The permit is taken before the rate token, so a call refused for
    /// concurrency does not spend the rate.
    pub fn try_start(&self) -> Result<SemaphorePermit<'_>, OverBudget> {
        let result = self.try_acquire();
        if let Err(over) = &result {
            self.note_refusal(over);
        }
        result
    }

    /// Verifications refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn try_acquire(&self) -> Result<SemaphorePermit<'_>, OverBudget> {
        let permit =
            self.permits.try_acquire().map_err(|_| OverBudget::Concurrency { limit: self.concurrency })?;
        let decision = self.limiter.check(SCOPE, Subject::Key("whoami"), &self.rate);
        if !decision.allowed {
            let retry_after = decision.retry_after.unwrap_or(Duration::from_secs(1));
            return Err(OverBudget::Rate { rate: self.rate, retry_after });
        }
        Ok(permit)
    }

    /// Counts a refusal; logs a summary at most every [`WARN_EVERY`] so a flood of random keys
    /// cannot flood the application log too.
    fn note_refusal(&self, over: &OverBudget) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let due = warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            let since_last = total - warned.1;
            *warned = (Some(Instant::now()), total);
            tracing::warn!(
                reason = %over,
                refused = since_last,
                refused_total = total,
                "verification budget exhausted: unknown credentials get 503 until Frappe calls free up"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ManualClock;

    fn rate(count: u32, per: Duration, burst: u32) -> Rate {
        Rate { count, per, burst }
    }

    #[test]
    fn concurrency_is_bounded_and_permits_come_back() {
        let budget = VerifyBudget::new(2, rate(1000, Duration::from_secs(1), 1000));
        let a = budget.try_start().unwrap();
        let _b = budget.try_start().unwrap();
        assert_eq!(budget.try_start().unwrap_err(), OverBudget::Concurrency { limit: 2 });
        drop(a);
        assert!(budget.try_start().is_ok(), "a finished verification frees its permit");
        assert_eq!(budget.refused(), 1);
    }

    #[test]
    fn rate_allows_the_burst_then_one_per_interval() {
        let clock = Arc::new(ManualClock::new());
        let budget = VerifyBudget::with_clock(100, rate(4, Duration::from_secs(1), 4), clock.clone());
        for _ in 0..4 {
            drop(budget.try_start().unwrap());
        }
        let over = budget.try_start().unwrap_err();
        assert!(matches!(over, OverBudget::Rate { .. }), "{over:?}");
        assert_eq!(over.retry_after(), Duration::from_secs(1), "Retry-After is at least 1 s");
        clock.advance(Duration::from_millis(250));
        drop(budget.try_start().expect("one more after one interval"));
        assert!(budget.try_start().is_err());
    }

    #[test]
    fn a_refusal_for_concurrency_does_not_spend_the_rate() {
        let clock = Arc::new(ManualClock::new());
        let budget = VerifyBudget::with_clock(1, rate(2, Duration::from_secs(1), 2), clock);
        let held = budget.try_start().unwrap();
        for _ in 0..10 {
            assert!(matches!(budget.try_start(), Err(OverBudget::Concurrency { .. })));
        }
        drop(held);
        drop(budget.try_start().expect("the second token is still there"));
        assert!(matches!(budget.try_start(), Err(OverBudget::Rate { .. })));
    }

    #[test]
    fn slow_rates_ask_for_a_longer_wait() {
        let clock = Arc::new(ManualClock::new());
        let budget = VerifyBudget::with_clock(10, rate(1, Duration::from_secs(60), 1), clock);
        drop(budget.try_start().unwrap());
        assert_eq!(budget.try_start().unwrap_err().retry_after(), Duration::from_secs(60));
    }
}
