//! Counters every request adds to, one row of atomics per thread slot ([`crate::shard`]),
//! summed when scraped: prometheus-client's `Counter` is one shared atomic, whose cache line
//! both proxy workers would pull back and forth on every request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::Labels;
use crate::shard::{self, Padded, SHARDS};

/// `N` counters; each thread slot adds to a row of its own, on cache lines of its own.
#[derive(Debug)]
pub(crate) struct ShardedCounters<const N: usize> {
    rows: [Padded<[AtomicU64; N]>; SHARDS],
}

impl<const N: usize> ShardedCounters<N> {
    pub(crate) fn new() -> Self {
        ShardedCounters { rows: std::array::from_fn(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0)))) }
    }

    pub(crate) fn add(&self, i: usize, n: u64) {
        self.rows[shard::this_thread()].0[i].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(&self, i: usize) {
        self.add(i, 1);
    }

    /// Counter `i`, summed over the rows.
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.rows.iter().map(|row| row.0[i].load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }
}

/// A counter family written from [`ShardedCounters`] at scrape time: `series[i]`'s labels
/// carry counter `i`. Registered in the registry as a collector, so it is exposed exactly as a
/// `Family<Labels, Counter>` of the same name would be.
#[derive(Debug)]
pub(crate) struct CounterFamily<const N: usize> {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) series: Vec<Labels>,
    pub(crate) counters: Arc<ShardedCounters<N>>,
}

impl<const N: usize> Collector for CounterFamily<N> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (i, labels) in self.series.iter().enumerate() {
            ConstCounter::new(self.counters.get(i)).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_are_summed() {
        let counters = Arc::new(ShardedCounters::<3>::new());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    c.inc(0);
                    c.add(2, 5);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!((counters.get(0), counters.get(1), counters.get(2)), (12, 0, 60));
    }
}
