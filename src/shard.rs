//! Per-thread shards for state every request writes (access-log lines, latency histograms):
//! each proxy worker is one thread per core, so giving each thread its own slot means two
//! workers never write the same lock or cache line on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots per sharded value: more than the proxy workers of a typical host, so each worker has
/// one to itself; further threads (tests running many gateways) share.
pub(crate) const SHARDS: usize = 8;

/// The calling thread's slot, `0..SHARDS`: threads take slots in the order they first ask.
pub(crate) fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SLOT.with(|slot| *slot)
}

/// A value on a cache line (pair) of its own, so that neighbouring shards do not share one.
#[repr(align(128))]
#[derive(Default, Debug)]
pub(crate) struct Padded<T>(pub(crate) T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot() {
        let mine = this_thread();
        assert!(mine < SHARDS);
        assert_eq!(this_thread(), mine);
        let other = std::thread::spawn(|| (this_thread(), this_thread())).join().unwrap();
        assert!(other.0 < SHARDS && other.0 == other.1);
    }
}
