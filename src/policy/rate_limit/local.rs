//! The in-process limiter: one bounded table of GCRA buckets per (scope, rate).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::batch::{BatchOutcome, LimitCheck};
use super::buckets::BucketTable;
use super::gcra::Gcra;
use super::{nanos, Clock, Decision, MonotonicClock, Subject};
use crate::config::Rate;

/// One (scope, rate): its arithmetic and its buckets.
struct Table {
    gcra: Gcra,
    buckets: BucketTable,
}

/// scope → the tables of the rates used with it (usually one). Scopes come from the config
/// (`"ip"`, `"key"`, `"route:…"`), never from a client, so a fast hasher serves.
type Tables = HashMap<Box<str>, Vec<(Rate, Arc<Table>)>, foldhash::fast::RandomState>;

/// Default bound on subjects remembered per (scope, rate) table.
pub(super) const DEFAULT_MAX_SUBJECTS: u64 = 200_000;

/// GCRA limits kept in this process (see the module docs for burst semantics).
///
/// Memory is bounded twice: a subject whose bucket has refilled completely is forgotten when
/// its shard is swept (forgetting it changes nothing), and each (scope, rate) table holds at
/// most about `max_subjects` subjects. At that bound a new subject is decided as a fresh one
/// without being remembered, so a flood of new subjects cannot push out the busy ones (it is
/// logged once). A check is one uncontended lock of a shard and one hash lookup.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    max_subjects: u64,
    tables: ArcSwap<Tables>,
    /// Serialises the rare creation of a table (copy-on-write of `tables`).
    adding: Mutex<()>,
}

impl LocalLimiter {
    /// Real clock, [`DEFAULT_MAX_SUBJECTS`] per table.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(MonotonicClock::new()), DEFAULT_MAX_SUBJECTS)
    }

    /// A limiter reading `clock` (a [`ManualClock`](super::ManualClock) in tests).
    pub fn with_clock(clock: Arc<dyn Clock>, max_subjects: u64) -> Self {
        LocalLimiter { clock, max_subjects, tables: ArcSwap::default(), adding: Mutex::new(()) }
    }

    /// Counts one request and decides it. Never fails, never blocks on I/O.
    pub fn check(&self, scope: &str, subject: Subject<'_>, rate: &Rate) -> Decision {
        self.check_at(scope, subject, rate, nanos(self.clock.now()))
    }

    /// Decides `checks` in order at one clock reading, stopping at the first refusal (see
    /// [`batch`](super::batch) for the exact semantics). No I/O.
    pub fn check_batch(&self, checks: &[LimitCheck<'_>]) -> BatchOutcome {
        let mut outcome = BatchOutcome::for_checks(checks.len());
        if checks.is_empty() {
            return outcome;
        }
        let now = nanos(self.clock.now());
        for c in checks {
            if !outcome.push(self.check_at(c.scope, c.subject, &c.rate, now)) {
                break;
            }
        }
        outcome
    }

    fn check_at(&self, scope: &str, subject: Subject<'_>, rate: &Rate, now: u64) -> Decision {
        // Borrowed from the loaded table set: cloning the table's `Arc` would write its
        // reference count, one cache line every worker's checks share.
        let tables = self.tables.load();
        let added;
        let table = match find(&tables, scope, rate) {
            Some(table) => table,
            None => {
                added = self.add_table(scope, rate);
                &added
            }
        };
        table.buckets.decide(subject, &table.gcra, now)
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Subjects currently remembered across all tables (for metrics and tests).
    pub fn subject_count(&self) -> u64 {
        let tables = self.tables.load();
        tables.values().flatten().map(|(_, t)| t.buckets.len() as u64).sum()
    }

    /// Forgets every full bucket now (shards otherwise sweep themselves when they would grow).
    pub fn sweep(&self) {
        let now = nanos(self.clock.now());
        self.tables.load().values().flatten().for_each(|(_, t)| t.buckets.sweep(now));
    }

    /// The table of (`scope`, `rate`), created unless a concurrent check just did.
    fn add_table(&self, scope: &str, rate: &Rate) -> Arc<Table> {
        let _guard = self.adding.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.tables.load_full();
        if let Some(table) = find(&current, scope, rate) {
            return table.clone();
        }
        let gcra = Gcra::new(rate, Duration::from_nanos(1));
        let table = Arc::new(Table { gcra, buckets: BucketTable::new(self.max_subjects) });
        let mut next = (*current).clone();
        next.entry(scope.into()).or_default().push((*rate, table.clone()));
        self.tables.store(Arc::new(next));
        table
    }
}

fn find<'t>(tables: &'t Tables, scope: &str, rate: &Rate) -> Option<&'t Arc<Table>> {
    tables.get(scope)?.iter().find(|(r, _)| r == rate).map(|(_, t)| t)
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter").field("max_subjects", &self.max_subjects).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limit::ManualClock;
    use std::net::IpAddr;

    fn per_min(count: u32) -> Rate {
        Rate { count, per: Duration::from_secs(60), burst: count }
    }

    fn limiter() -> (Arc<ManualClock>, LocalLimiter) {
        let clock = Arc::new(ManualClock::new());
        (clock.clone(), LocalLimiter::with_clock(clock, 1000))
    }

    #[test]
    fn sixty_per_minute_admits_exactly_sixty_of_two_hundred() {
        let (clock, limiter) = limiter();
        clock.advance(Duration::from_secs(1000));
        let rate = per_min(60);
        let decisions: Vec<Decision> =
            (0..200).map(|_| limiter.check("key", Subject::Key("k1"), &rate)).collect();
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 60);
        assert!(decisions[..60].iter().all(|d| d.allowed));
        assert_eq!((decisions[0].limit, decisions[0].remaining, decisions[0].reset_secs()), (60, 59, 1));
        assert_eq!((decisions[59].remaining, decisions[59].reset_secs()), (0, 60));
        let refused = decisions[60];
        assert_eq!((refused.remaining, refused.retry_after_secs(), refused.reset_secs()), (0, Some(1), 60));
    }

    #[test]
    fn refills_one_per_interval_then_fully() {
        let (clock, limiter) = limiter();
        let rate = per_min(60);
        let check = || limiter.check("key", Subject::Key("k"), &rate);
        while check().allowed {}
        clock.advance(Duration::from_millis(2500));
        assert!(check().allowed);
        assert!(check().allowed);
        let refused = check();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
        clock.advance(Duration::from_secs(60));
        let admitted: usize = (0..100).map(|_| check()).filter(|d| d.allowed).count();
        assert_eq!(admitted, 60);
    }

    #[test]
    fn explicit_burst_smooths_the_average() {
        let (clock, limiter) = limiter();
        let rate = Rate { count: 100, per: Duration::from_secs(60), burst: 20 };
        let admitted = (0..100).filter(|_| limiter.check("ip", Subject::Key("x"), &rate).allowed).count();
        assert_eq!(admitted, 20);
        clock.advance(Duration::from_millis(600));
        let d = limiter.check("ip", Subject::Key("x"), &rate);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (20, 0));
    }

    #[test]
    fn scopes_subjects_and_rates_are_separate() {
        let (_clock, limiter) = limiter();
        let one = Rate { count: 1, per: Duration::from_secs(60), burst: 1 };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check("ip", Subject::Ip(ip), &one).allowed);
        assert!(!limiter.check("ip", Subject::Ip(ip), &one).allowed);
        // IPv4-mapped is the same subject.
        assert!(!limiter.check("ip", Subject::Ip("::ffff:192.0.2.1".parse().unwrap()), &one).allowed);
        assert!(limiter.check("route:/api/method/login", Subject::Ip(ip), &one).allowed);
        assert!(limiter.check("ip", Subject::Ip("192.0.2.2".parse().unwrap()), &one).allowed);
        // A key that spells an address is not that address.
        assert!(limiter.check("ip", Subject::Key("192.0.2.1"), &one).allowed);
        assert!(limiter.check("ip", Subject::Ip(ip), &per_min(5)).allowed);
    }

    #[test]
    fn batch_equals_sequential_checks() {
        let (clock_a, a) = limiter();
        let (clock_b, b) = limiter();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let (ip_rate, key_rate) = (per_min(7), per_min(3));
        let checks = [
            LimitCheck::new("ip", Subject::Ip(ip), ip_rate),
            LimitCheck::new("key", Subject::Key("k"), key_rate),
        ];
        for round in 0..40 {
            if round % 9 == 8 {
                clock_a.advance(Duration::from_millis(15_000));
                clock_b.advance(Duration::from_millis(15_000));
            }
            let batch = a.check_batch(&checks);
            let mut sequential = BatchOutcome::for_checks(2);
            for c in &checks {
                if !sequential.push(b.check(c.scope, c.subject, &c.rate)) {
                    break;
                }
            }
            assert_eq!(batch, sequential, "round {round}");
        }
    }

    #[test]
    fn batch_stops_at_the_first_refusal_and_charges_nothing_after_it() {
        let (_clock, limiter) = limiter();
        let one = Rate { count: 1, per: Duration::from_secs(60), burst: 1 };
        let checks = [
            LimitCheck::new("a", Subject::Key("x"), one),
            LimitCheck::new("b", Subject::Key("x"), one),
            LimitCheck::new("c", Subject::Key("x"), one),
        ];
        // Use up "b" alone: the next batch admits "a", is refused by "b", never reaches "c".
        assert!(limiter.check("b", Subject::Key("x"), &one).allowed);
        let outcome = limiter.check_batch(&checks);
        assert_eq!(outcome.decisions().len(), 2);
        assert_eq!(outcome.refused().map(|(i, _)| i), Some(1));
        assert!(!limiter.check("a", Subject::Key("x"), &one).allowed, "a was charged");
        assert!(limiter.check("c", Subject::Key("x"), &one).allowed, "c must not have been charged");
        assert!(limiter.check_batch(&[]).admitted());
    }

    #[test]
    fn memory_stays_bounded_and_busy_subjects_keep_their_buckets() {
        let clock = Arc::new(ManualClock::new());
        // 32 shards of 4: at most 128 subjects remembered.
        let limiter = LocalLimiter::with_clock(clock.clone(), 100);
        let rate = per_min(10);
        let busy = Subject::Key("busy");
        for _ in 0..10 {
            assert!(limiter.check("ip", busy, &rate).allowed);
        }
        // A flood of new subjects, none of whose buckets refills meanwhile.
        for i in 0..5000u32 {
            assert!(limiter.check("ip", Subject::Ip(IpAddr::from(i.to_be_bytes())), &rate).allowed);
        }
        let remembered = limiter.subject_count();
        assert!((100..=128).contains(&remembered), "{remembered}");
        assert!(!limiter.check("ip", busy, &rate).allowed, "the flood reset a busy subject");
        // Once their buckets have refilled, the subjects are forgotten.
        clock.advance(Duration::from_secs(61));
        limiter.sweep();
        assert_eq!(limiter.subject_count(), 0);
        assert!(limiter.check("ip", busy, &rate).allowed);
    }

    #[test]
    fn a_shard_forgets_full_buckets_before_it_grows() {
        let clock = Arc::new(ManualClock::new());
        let limiter = LocalLimiter::with_clock(clock.clone(), 1_000_000);
        let rate = per_min(60);
        // Waves of 2,000 one-off subjects, each wave after the previous one's buckets refilled:
        // the table holds about one wave, not all of them.
        for wave in 0..10u32 {
            for i in 0..2000u32 {
                limiter.check("ip", Subject::Ip(IpAddr::from((wave << 16 | i).to_be_bytes())), &rate);
            }
            clock.advance(Duration::from_secs(2));
        }
        let remembered = limiter.subject_count();
        assert!(remembered < 2 * 2000 + 2000, "{remembered} subjects held after 10 waves of 2,000");
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let (_clock, limiter) = limiter();
        let limiter = Arc::new(limiter);
        let rate = per_min(500);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = limiter.clone();
                    s.spawn(move || {
                        (0..400).filter(|_| limiter.check("key", Subject::Key("hot"), &rate).allowed).count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 500);
    }
}
