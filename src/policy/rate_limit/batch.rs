//! Several limit checks (and the failed-auth lockout) decided together: one Redis round trip
//! for the whole request instead of one per check.
//!
//! # Semantics
//! A batch of `lockout: Option<IpAddr>` and `checks: [c1, c2, …]` decides exactly what this
//! sequence of single calls would, with one difference: every check reads the clock once, at
//! the same instant (the Redis server's `TIME`, or the local clock), instead of one reading
//! per call.
//!
//! ```text
//! if let Some(ip) = lockout {
//!     if let Some(left) = failed_auth.locked(ip).await { return locked out for `left` }
//! }
//! for c in checks {
//!     let d = limiter.check(c.scope, c.subject, &c.rate).await;
//!     record d;
//!     if !d.allowed { stop }      // later checks are neither made nor charged
//! }
//! ```
//!
//! - A locked-out IP charges nothing: no bucket is touched.
//! - Buckets are checked in the order given; each admitted check is charged (its TAT moves
//!   on) before the next is looked at; the first refusal stops the batch, so a later bucket is
//!   not charged when an earlier one refuses (the earlier ones that admitted stay charged, as
//!   with sequential calls).
//! - Keys are the ones the single calls use (`fgw:rl:{scope}:{subject}`, `fgw:lock:{ip}`), so
//!   instances running either API share the same state.
//! - When Redis does not answer (down, timeout, degraded), the whole batch is decided locally,
//!   exactly as every single call would be: the local lock table, then the local limiter.

use std::fmt;
use std::time::Duration;

use super::{Decision, Subject};
use crate::config::Rate;

/// One bucket to charge in a batch: the arguments of [`RateLimiter::check`](super::RateLimiter::check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitCheck<'a> {
    /// The bucket family, as in `check` (`"ip"`, `"key"`, a route's own scope…).
    pub scope: &'a str,
    pub subject: Subject<'a>,
    pub rate: Rate,
}

impl<'a> LimitCheck<'a> {
    pub fn new(scope: &'a str, subject: Subject<'a>, rate: Rate) -> Self {
        LimitCheck { scope, subject, rate }
    }
}

/// Decisions kept inline up to this many checks (a request makes two: per-IP and per-key).
const INLINE: usize = 4;

const UNUSED: Decision =
    Decision { allowed: true, limit: 0, remaining: 0, reset_after: Duration::ZERO, retry_after: None };

#[derive(Clone, Copy)]
struct Inline {
    len: usize,
    items: [Decision; INLINE],
}

/// The decisions made, in check order, without a heap allocation for small batches.
#[derive(Clone)]
enum Decisions {
    Inline(Inline),
    Heap(Vec<Decision>),
}

impl Decisions {
    fn with_capacity(n: usize) -> Self {
        if n <= INLINE {
            Decisions::Inline(Inline { len: 0, items: [UNUSED; INLINE] })
        } else {
            Decisions::Heap(Vec::with_capacity(n))
        }
    }

    fn push(&mut self, decision: Decision) {
        match self {
            Decisions::Inline(inline) if inline.len < INLINE => {
                inline.items[inline.len] = decision;
                inline.len += 1;
            }
            Decisions::Inline(inline) => {
                let mut heap = inline.items.to_vec();
                heap.push(decision);
                *self = Decisions::Heap(heap);
            }
            Decisions::Heap(heap) => heap.push(decision),
        }
    }

    fn as_slice(&self) -> &[Decision] {
        match self {
            Decisions::Inline(inline) => &inline.items[..inline.len],
            Decisions::Heap(heap) => heap,
        }
    }
}

/// What a batch decided: locked out (nothing charged), or one [`Decision`] per check made, in
/// order, ending at the first refusal (see the module docs).
#[derive(Clone)]
pub struct BatchOutcome {
    locked_out: Option<Duration>,
    decisions: Decisions,
}

impl BatchOutcome {
    pub(crate) fn locked(left: Duration) -> Self {
        BatchOutcome { locked_out: Some(left), decisions: Decisions::with_capacity(0) }
    }

    pub(crate) fn for_checks(n: usize) -> Self {
        BatchOutcome { locked_out: None, decisions: Decisions::with_capacity(n) }
    }

    /// Adds the next check's decision; returns whether the batch goes on (it was admitted).
    pub(crate) fn push(&mut self, decision: Decision) -> bool {
        self.decisions.push(decision);
        decision.allowed
    }

    /// `Some(time left)` when the IP was locked out after repeated failed authentication: the
    /// request is refused (429 with `Retry-After`) and no bucket was charged.
    pub fn locked_out(&self) -> Option<Duration> {
        self.locked_out
    }

    /// One decision per check made, in check order: all of them when every check admitted,
    /// else up to and including the refusing one; empty when locked out.
    pub fn decisions(&self) -> &[Decision] {
        self.decisions.as_slice()
    }

    /// The index (into `checks`) and decision of the check that refused the request.
    pub fn refused(&self) -> Option<(usize, Decision)> {
        let last = self.decisions().len().checked_sub(1)?;
        let decision = self.decisions()[last];
        (!decision.allowed).then_some((last, decision))
    }

    /// True when not locked out and every check admitted.
    pub fn admitted(&self) -> bool {
        self.locked_out.is_none() && self.refused().is_none()
    }

    /// The decision to echo in `RateLimit-*` headers: the [`Decision::tighter`] of all made
    /// (the refusal, when one refused); `None` when locked out or no check was given.
    pub fn tightest(&self) -> Option<Decision> {
        self.decisions().iter().copied().reduce(Decision::tighter)
    }
}

impl fmt::Debug for BatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchOutcome")
            .field("locked_out", &self.locked_out)
            .field("decisions", &self.decisions())
            .finish()
    }
}

impl PartialEq for BatchOutcome {
    fn eq(&self, other: &Self) -> bool {
        self.locked_out == other.locked_out && self.decisions() == other.decisions()
    }
}

impl Eq for BatchOutcome {}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, remaining: u32) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            reset_after: Duration::from_secs(1),
            retry_after: (!allowed).then_some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn outcome_reports_refusal_and_tightest() {
        let mut outcome = BatchOutcome::for_checks(2);
        assert!(outcome.admitted());
        assert_eq!(outcome.tightest(), None);
        assert!(outcome.push(decision(true, 5)));
        assert!(outcome.push(decision(true, 2)));
        assert!(outcome.admitted());
        assert_eq!(outcome.refused(), None);
        assert_eq!(outcome.tightest(), Some(decision(true, 2)));
        assert!(!outcome.push(decision(false, 0)));
        assert!(!outcome.admitted());
        assert_eq!(outcome.refused(), Some((2, decision(false, 0))));
        assert_eq!(outcome.tightest(), Some(decision(false, 0)));
        assert_eq!(outcome.decisions().len(), 3);
    }

    #[test]
    fn many_checks_spill_to_the_heap_in_order() {
        for n in [0, 1, INLINE, INLINE + 1, 3 * INLINE] {
            // Built for fewer than it receives: it must still keep all, in order.
            let mut outcome = BatchOutcome::for_checks(n.min(2));
            for i in 0..n {
                outcome.push(decision(true, i as u32));
            }
            let remaining: Vec<u32> = outcome.decisions().iter().map(|d| d.remaining).collect();
            assert_eq!(remaining, (0..n as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn locked_out_has_no_decisions() {
        let outcome = BatchOutcome::locked(Duration::from_secs(9));
        assert_eq!(outcome.locked_out(), Some(Duration::from_secs(9)));
        assert!(!outcome.admitted());
        assert!(outcome.decisions().is_empty());
        assert_eq!(outcome.refused(), None);
        assert_eq!(outcome.tightest(), None);
    }
}
