//! The GCRA arithmetic, shared by the local limiter and mirrored by the Redis Lua script.

use std::time::Duration;

use super::Decision;
use crate::config::Rate;

/// One rate in integer time units (nanoseconds locally, microseconds in Redis).
///
/// `t` is the emission interval (`per / count`), `tau` the tolerance `t × (burst − 1)`: a
/// request at `now` conforms when `now ≥ TAT − tau`, and then moves TAT to `max(TAT, now) + t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    t: u64,
    tau: u64,
    burst: u32,
    /// Nanoseconds per time unit.
    unit_nanos: u64,
}

impl Gcra {
    /// `unit` is the length of one time unit (`Duration::from_nanos(1)` or `from_micros(1)`).
    pub(crate) fn new(rate: &Rate, unit: Duration) -> Self {
        let burst = rate.burst.max(1);
        let unit_nanos = super::nanos(unit).max(1);
        let t = (rate.per.as_nanos() / u128::from(rate.count.max(1)) / u128::from(unit_nanos)).max(1);
        let t = u64::try_from(t).unwrap_or(u64::MAX);
        Gcra { t, tau: t.saturating_mul(u64::from(burst - 1)), burst, unit_nanos }
    }

    pub(crate) fn interval(&self) -> u64 {
        self.t
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Decides one request at `now` against the stored `tat` (0 = never seen). Returns the
    /// decision and, when admitted, the new TAT to store (a refusal changes nothing).
    pub(crate) fn decide(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.max(now);
        let allow_at = tat - self.tau.min(tat);
        if now < allow_at {
            let refused = Decision {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_after: self.duration(tat - now),
                retry_after: Some(self.duration(allow_at - now)),
            };
            return (refused, None);
        }
        let new_tat = tat.saturating_add(self.t);
        let admitted = self.decision(true, self.remaining(new_tat, now), 0, new_tat - now);
        (admitted, Some(new_tat))
    }

    /// Requests still available at `now` once TAT is `tat` (≤ burst − 1 right after admitting).
    fn remaining(&self, tat: u64, now: u64) -> u64 {
        (now.saturating_add(self.tau).saturating_add(self.t).saturating_sub(tat)) / self.t
    }

    /// Builds a decision from the script's reply fields (in this Gcra's units).
    pub(crate) fn decision(
        &self,
        allowed: bool,
        remaining: u64,
        retry_after: u64,
        reset_after: u64,
    ) -> Decision {
        Decision {
            allowed,
            limit: self.burst,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.burst),
            reset_after: self.duration(reset_after),
            retry_after: (!allowed).then(|| self.duration(retry_after)),
        }
    }

    fn duration(&self, units: u64) -> Duration {
        Duration::from_nanos(units.saturating_mul(self.unit_nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);
    const SEC: u64 = 1_000_000_000;

    fn rate(count: u32, per: Duration, burst: u32) -> Rate {
        Rate { count, per, burst }
    }

    #[test]
    fn a_fresh_subject_gets_the_whole_burst() {
        let g = Gcra::new(&rate(60, Duration::from_secs(60), 60), NS);
        let mut tat = 0;
        let now = 5 * SEC;
        let mut admitted = 0;
        for i in 0..200 {
            let (d, new) = g.decide(tat, now);
            if let Some(new) = new {
                tat = new;
                admitted += 1;
                assert_eq!(d.remaining, 59 - i, "remaining after request {i}");
                assert_eq!(d.reset_after, Duration::from_secs(u64::from(i) + 1));
            } else {
                assert_eq!(d.remaining, 0);
                assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
                assert_eq!(d.reset_after, Duration::from_secs(60));
            }
        }
        assert_eq!(admitted, 60);
    }

    /// Same decisions, remaining counts and waits as governor's GCRA on random schedules.
    #[test]
    fn agrees_with_governor() {
        use governor::clock::{Clock as _, FakeRelativeClock};
        use governor::middleware::StateInformationMiddleware;
        use governor::{Quota, RateLimiter};
        use rand::{Rng, SeedableRng};
        use std::num::NonZeroU32;

        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (count, per_ms, burst) in
            [(60, 60_000, 60), (10, 1000, 3), (100, 60_000, 20), (1, 1000, 1), (7, 1000, 50)]
        {
            let rate = rate(count, Duration::from_millis(per_ms), burst);
            let ours = Gcra::new(&rate, NS);
            let quota = Quota::with_period(rate.emission_interval())
                .unwrap()
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let clock = FakeRelativeClock::default();
            let theirs = RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            let (mut tat, mut now) = (0, 0);
            for _ in 0..5000 {
                // Mostly bursts, sometimes pauses of up to two intervals.
                let step = if rng.random_bool(0.7) { 0 } else { rng.random_range(0..2 * ours.interval()) };
                clock.advance(Duration::from_nanos(step));
                now += step;
                let (decision, new_tat) = ours.decide(tat, now);
                tat = new_tat.unwrap_or(tat);
                match theirs.check() {
                    Ok(snapshot) => {
                        assert!(decision.allowed, "{rate:?} at {now}");
                        assert_eq!(
                            decision.remaining,
                            snapshot.remaining_burst_capacity(),
                            "{rate:?} at {now}"
                        );
                    }
                    Err(not_until) => {
                        assert!(!decision.allowed, "{rate:?} at {now}");
                        assert_eq!(decision.retry_after, Some(not_until.wait_time_from(clock.now())));
                    }
                }
            }
        }
    }
}
