//! The busiest api_keys of the last minutes: a space-saving counter (Metwally et al.) per
//! one-minute window, a few windows kept. Bounded whatever the traffic: at most
//! [`CAPACITY`] keys per window; a key that displaces the smallest one inherits its count,
//! so figures are exact while fewer keys than that are active, and over-estimate a newcomer's
//! share otherwise (never under-estimate a heavy hitter's).
//!
//! Fed once per authenticated request (one short lock of the worker's own shard, a scan of at
//! most `CAPACITY` slots), rotated by the status page's ticker; the shards are summed when read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::shard::{self, Padded, SHARDS};

/// Keys tracked per window.
pub(crate) const CAPACITY: usize = 32;
/// One-minute windows kept, the current one included.
pub(crate) const WINDOWS: usize = 5;

/// See the module docs.
#[derive(Default)]
pub(crate) struct TopKeys {
    /// One set of windows per thread slot: proxy workers never share the lock.
    shards: [Padded<Mutex<Windows>>; SHARDS],
}

#[derive(Default)]
struct Windows {
    current: SpaceSaving,
    past: VecDeque<SpaceSaving>,
}

#[derive(Default)]
struct SpaceSaving {
    slots: Vec<Slot>,
}

struct Slot {
    key: Arc<str>,
    user: Arc<str>,
    count: u64,
}

/// One api_key's requests over the kept windows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct KeyCount {
    pub(crate) key: Arc<str>,
    pub(crate) user: Arc<str>,
    pub(crate) requests: u64,
}

/// One user's requests over the kept windows (the sum of its keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct UserCount {
    pub(crate) user: Arc<str>,
    pub(crate) requests: u64,
}

impl SpaceSaving {
    fn add(&mut self, key: &Arc<str>, user: &Arc<str>) {
        if let Some(slot) = self.slots.iter_mut().find(|s| Arc::ptr_eq(&s.key, key) || s.key == *key) {
            slot.count += 1;
            return;
        }
        if self.slots.len() < CAPACITY {
            self.slots.push(Slot { key: key.clone(), user: user.clone(), count: 1 });
            return;
        }
        if let Some(min) = self.slots.iter_mut().min_by_key(|s| s.count) {
            (min.key, min.user) = (key.clone(), user.clone());
            min.count += 1;
        }
    }
}

impl TopKeys {
    /// Counts one request of `key` (as the access log shows it) by `user`.
    pub(crate) fn record(&self, user: &Arc<str>, key: &Arc<str>) {
        self.lock(shard::this_thread()).current.add(key, user);
    }

    /// Starts a new window, forgetting the oldest beyond [`WINDOWS`].
    pub(crate) fn rotate(&self) {
        for i in 0..SHARDS {
            let mut w = self.lock(i);
            let done = std::mem::take(&mut w.current);
            w.past.push_front(done);
            w.past.truncate(WINDOWS - 1);
        }
    }

    /// The `n` busiest keys and users over the kept windows, busiest first (ties by name).
    pub(crate) fn top(&self, n: usize) -> (Vec<KeyCount>, Vec<UserCount>) {
        let mut keys: HashMap<Arc<str>, KeyCount> = HashMap::new();
        for i in 0..SHARDS {
            let w = self.lock(i);
            for slot in std::iter::once(&w.current).chain(w.past.iter()).flat_map(|s| s.slots.iter()) {
                let entry = keys.entry(slot.key.clone()).or_insert_with(|| KeyCount {
                    key: slot.key.clone(),
                    user: slot.user.clone(),
                    requests: 0,
                });
                entry.requests += slot.count;
            }
        }
        let mut users: HashMap<Arc<str>, u64> = HashMap::new();
        for k in keys.values() {
            *users.entry(k.user.clone()).or_default() += k.requests;
        }
        let mut keys: Vec<KeyCount> = keys.into_values().collect();
        keys.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        keys.truncate(n);
        let mut users: Vec<UserCount> =
            users.into_iter().map(|(user, requests)| UserCount { user, requests }).collect();
        users.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.user.cmp(&b.user)));
        users.truncate(n);
        (keys, users)
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Windows> {
        self.shards[shard].0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn counts_are_exact_below_capacity_and_summed_over_windows() {
        let top = TopKeys::default();
        for _ in 0..5 {
            top.record(&a("alice"), &a("k1"));
        }
        top.record(&a("bob"), &a("k2"));
        top.rotate();
        top.record(&a("bob"), &a("k2"));
        top.record(&a("alice"), &a("k3"));
        let (keys, users) = top.top(10);
        let keys: Vec<(&str, u64)> = keys.iter().map(|k| (&*k.key, k.requests)).collect();
        assert_eq!(keys, [("k1", 5), ("k2", 2), ("k3", 1)]);
        let users: Vec<(&str, u64)> = users.iter().map(|u| (&*u.user, u.requests)).collect();
        assert_eq!(users, [("alice", 6), ("bob", 2)]);
    }

    #[test]
    fn bounded_and_heavy_hitters_survive_a_flood_of_one_off_keys() {
        let top = TopKeys::default();
        for i in 0..10_000 {
            if i % 4 == 0 {
                top.record(&a("heavy"), &a("hot"));
            }
            top.record(&a("noise"), &a(&format!("k{i}")));
        }
        assert_eq!(top.lock(shard::this_thread()).current.slots.len(), CAPACITY);
        let (keys, _) = top.top(1);
        assert_eq!(&*keys[0].key, "hot");
        assert!(keys[0].requests >= 2500, "{keys:?}");
    }

    #[test]
    fn workers_count_in_their_own_shards_and_are_read_together() {
        let top = Arc::new(TopKeys::default());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let top = top.clone();
                std::thread::spawn(move || (0..10).for_each(|_| top.record(&a("alice"), &a("k1"))))
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        let (keys, users) = top.top(5);
        assert_eq!((&*keys[0].key, keys[0].requests, keys.len()), ("k1", 30, 1));
        assert_eq!(users[0].requests, 30);
        top.rotate();
        assert_eq!(top.top(5).0[0].requests, 30, "rotated windows still count");
    }

    #[test]
    fn old_windows_are_forgotten() {
        let top = TopKeys::default();
        top.record(&a("u"), &a("old"));
        for _ in 0..WINDOWS {
            top.rotate();
        }
        top.record(&a("u"), &a("new"));
        let (keys, _) = top.top(10);
        assert_eq!(keys.len(), 1);
        assert_eq!(&*keys[0].key, "new");
    }
}
