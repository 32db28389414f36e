//! The last minutes of traffic, one sample per second: a ticker reads the cumulative request
//! counters ([`Totals`]) and keeps the differences in a ring. Nothing runs per request.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::metrics::Totals;

/// Samples kept: five minutes at one per second.
pub(crate) const SAMPLES: usize = 300;

/// What happened during one tick: the change of the cumulative [`Totals`].
pub(crate) type Sample = Totals;

impl Sample {
    fn between(before: &Totals, now: &Totals) -> Sample {
        Sample {
            requests: now.requests.saturating_sub(before.requests),
            client_errors: now.client_errors.saturating_sub(before.client_errors),
            server_errors: now.server_errors.saturating_sub(before.server_errors),
            upstream_responses: now.upstream_responses.saturating_sub(before.upstream_responses),
            upstream_micros: now.upstream_micros.saturating_sub(before.upstream_micros),
            upstream_errors: now.upstream_errors.saturating_sub(before.upstream_errors),
        }
    }

    fn add(&mut self, o: &Sample) {
        self.requests += o.requests;
        self.client_errors += o.client_errors;
        self.server_errors += o.server_errors;
        self.upstream_responses += o.upstream_responses;
        self.upstream_micros += o.upstream_micros;
        self.upstream_errors += o.upstream_errors;
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct History {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    last: Option<Totals>,
    samples: VecDeque<Sample>,
}

impl History {
    /// Records the counters' values now; the first call only sets the baseline.
    pub(crate) fn tick(&self, now: Totals) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = ring.last.replace(now) {
            ring.samples.push_back(Sample::between(&before, &now));
            if ring.samples.len() > SAMPLES {
                ring.samples.pop_front();
            }
        }
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).samples.iter().copied().collect()
    }
}

/// The sum of the last `n` samples (fewer when fewer exist) and how many were summed.
pub(crate) fn sum_last(samples: &[Sample], n: usize) -> (Sample, usize) {
    let from = samples.len().saturating_sub(n);
    let mut sum = Sample::default();
    for s in &samples[from..] {
        sum.add(s);
    }
    (sum, samples.len() - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, server_errors: u64) -> Totals {
        Totals { requests, server_errors, ..Totals::default() }
    }

    #[test]
    fn keeps_differences_and_is_bounded() {
        let h = History::default();
        h.tick(totals(10, 0));
        assert!(h.samples().is_empty());
        h.tick(totals(15, 1));
        h.tick(totals(15, 1));
        let s = h.samples();
        assert_eq!((s[0].requests, s[0].server_errors, s[1].requests), (5, 1, 0));
        for i in 0..(SAMPLES as u64 + 50) {
            h.tick(totals(20 + i, 1));
        }
        assert_eq!(h.samples().len(), SAMPLES);
        let (sum, n) = sum_last(&h.samples(), 60);
        assert_eq!((sum.requests, n), (60, 60));
    }
}
