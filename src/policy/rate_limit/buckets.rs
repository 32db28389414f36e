//! One (scope, rate)'s GCRA buckets in memory: a subject's theoretical arrival time (TAT) in a
//! few sharded hash maps of plain integers.
//!
//! Why not a general cache: a bucket is one `u64`, and a bucket whose TAT has passed is full,
//! the same as a subject never seen, so it can be forgotten at any time. That makes the
//! bookkeeping a cache does per entry (recency, frequency, expiry queues, an allocation per
//! key) unnecessary here: an entry is 24 bytes in a map, and a sweep of the full buckets is
//! the whole eviction policy. A check is one uncontended lock of one of [`SHARDS`] shards.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use super::gcra::Gcra;
use super::{Decision, Subject};

/// Shards per table: enough that two workers rarely meet on one lock.
const SHARDS: usize = 32;
/// Nanoseconds between two sweeps of one shard that is at its bound: a flood of new subjects
/// cannot make every check scan the shard.
const SWEEP_GAP: u64 = 100_000_000;

/// The map key of a subject: an IP address exactly (IPv4 as its IPv6-mapped form), an api_key
/// as a 128-bit keyed hash (two SipHash-1-3 of it under one process-random key; a collision between two
/// keys is as likely as guessing a 128-bit secret). Keys are not stored: a bucket holds no
/// credential material.
type BucketKey = (u64, u64);

/// The buckets of one (scope, rate): at most `max_subjects` subjects with a partly used bucket.
pub(super) struct BucketTable {
    shards: Box<[Shard]>,
    per_shard: usize,
    /// Set once the bound has turned a subject away, so that the warning is logged once.
    warned_full: AtomicBool,
}

#[repr(align(64))]
struct Shard(Mutex<Buckets>);

#[derive(Default)]
struct Buckets {
    tat: HashMap<BucketKey, u64>,
    /// Clock nanoseconds of the last sweep that found the shard at its bound.
    swept_at: u64,
}

impl BucketTable {
    pub(super) fn new(max_subjects: u64) -> Self {
        let per_shard = usize::try_from(max_subjects.div_ceil(SHARDS as u64)).unwrap_or(usize::MAX).max(1);
        BucketTable {
            shards: (0..SHARDS).map(|_| Shard(Mutex::default())).collect(),
            per_shard,
            warned_full: AtomicBool::new(false),
        }
    }

    /// Counts one request of `subject` at `now` and decides it (exact under concurrency: the
    /// shard stays locked from read to write).
    pub(super) fn decide(&self, subject: Subject<'_>, gcra: &Gcra, now: u64) -> Decision {
        let key = bucket_key(subject);
        let mut buckets = self.shard(key);
        if let Some(tat) = buckets.tat.get_mut(&key) {
            let (decision, new_tat) = gcra.decide(*tat, now);
            *tat = new_tat.unwrap_or(*tat);
            return decision;
        }
        let (decision, new_tat) = gcra.decide(0, now);
        if let Some(new_tat) = new_tat {
            if buckets.make_room(self.per_shard, now) {
                buckets.tat.insert(key, new_tat);
            } else {
                self.warn_full();
            }
        }
        decision
    }

    /// Subjects with a bucket held (full buckets not yet swept included).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).tat.len()).sum()
    }

    /// Forgets every full bucket now (they are otherwise swept when a shard would grow).
    pub(super) fn sweep(&self, now: u64) {
        self.shards.iter().for_each(|s| lock(&s.0).sweep(now));
    }

    fn shard(&self, key: BucketKey) -> MutexGuard<'_, Buckets> {
        // The high bits of the first word: random for keys, the address's upper half for IPs
        // (only the spread over locks depends on it, never a decision).
        let mixed = (key.0 ^ key.1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        lock(&self.shards[(mixed >> 59) as usize % SHARDS].0)
    }

    fn warn_full(&self) {
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                subjects = self.per_shard * SHARDS,
                "rate-limit table full: subjects beyond it are not counted until buckets refill"
            );
        }
    }
}

impl Buckets {
    /// Whether a new subject may be added: below the bound, or once a sweep (at most every
    /// [`SWEEP_GAP`]) has freed room. A sweep also runs before the map would reallocate, so
    /// full buckets are dropped rather than grown into.
    fn make_room(&mut self, bound: usize, now: u64) -> bool {
        let len = self.tat.len();
        let at_bound = len >= bound;
        if (at_bound || len == self.tat.capacity()) && now.saturating_sub(self.swept_at) >= SWEEP_GAP {
            self.sweep(now);
        }
        self.tat.len() < bound
    }

    fn sweep(&mut self, now: u64) {
        self.swept_at = now;
        self.tat.retain(|_, tat| *tat > now);
        if self.tat.capacity() > 64 && self.tat.len() < self.tat.capacity() / 4 {
            self.tat.shrink_to_fit();
        }
    }
}

fn lock(shard: &Mutex<Buckets>) -> MutexGuard<'_, Buckets> {
    // Nothing in a shard can be left half-updated by a panic: the map stays valid.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bucket_key(subject: Subject<'_>) -> BucketKey {
    match subject {
        Subject::Ip(ip) => {
            // An IPv4-mapped IPv6 address is already the mapped form of its IPv4.
            let v6 = match super::limited_address(ip) {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let bits = u128::from(v6);
            ((bits >> 64) as u64, bits as u64)
        }
        Subject::Key(key) => {
            static HASHER: OnceLock<RandomState> = OnceLock::new();
            let hasher = HASHER.get_or_init(RandomState::new);
            (hasher.hash_one(key), hasher.hash_one((1u8, key)))
        }
    }
}
