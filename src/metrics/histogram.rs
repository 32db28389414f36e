//! A latency histogram every request writes: one set of atomic buckets per thread slot
//! ([`crate::shard`]), summed when scraped. prometheus-client's `Histogram` takes a write lock
//! on one shared value per observation, which both proxy workers contend for on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::shard::{self, Padded, SHARDS};

/// Cheap to clone: clones share the buckets (one is registered, one records).
#[derive(Clone, Debug)]
pub(crate) struct ShardedHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; the `+Inf` bucket follows them.
    bounds: Box<[f64]>,
    /// One row per thread slot, each on cache lines of its own: the observations per bucket
    /// (not cumulative, `bounds.len() + 1` of them), then the sum in nanoseconds.
    rows: Box<[Padded<[AtomicU64; LANES]>]>,
    /// Chunks of `LANES` per row.
    row_chunks: usize,
}

/// Counters per 128-byte chunk.
const LANES: usize = 16;

impl ShardedHistogram {
    pub(crate) fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let row_chunks = (bounds.len() + 2).div_ceil(LANES);
        let rows =
            (0..SHARDS * row_chunks).map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0)))).collect();
        ShardedHistogram(Arc::new(Inner { bounds, rows, row_chunks }))
    }

    pub(crate) fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self.0.bounds.partition_point(|bound| *bound < seconds);
        let row = shard::this_thread();
        self.0.cell(row, bucket).fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.0.cell(row, self.0.bounds.len() + 1).fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, [(upper bound, observations in that bucket)])`, the last bound
    /// `f64::MAX` (`+Inf`), as prometheus-client's encoder takes them.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &self.0;
        let mut buckets: Vec<(f64, u64)> =
            inner.bounds.iter().copied().chain([f64::MAX]).map(|bound| (bound, 0)).collect();
        let mut sum_nanos = 0u64;
        for row in 0..SHARDS {
            for (i, total) in buckets.iter_mut().enumerate() {
                total.1 += inner.cell(row, i).load(Ordering::Relaxed);
            }
            sum_nanos =
                sum_nanos.saturating_add(inner.cell(row, inner.bounds.len() + 1).load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum_nanos as f64 / 1e9, count, buckets)
    }
}

impl Inner {
    fn cell(&self, row: usize, i: usize) -> &AtomicU64 {
        &self.rows[row * self.row_chunks + i / LANES].0[i % LANES]
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_from_many_threads_land_in_their_buckets() {
        let histogram = ShardedHistogram::new([0.001, 0.01, 0.1]);
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let h = histogram.clone();
                std::thread::spawn(move || {
                    h.observe(Duration::from_micros(500));
                    h.observe(Duration::from_millis(10)); // on a bound: that bucket (le)
                    h.observe(Duration::from_secs(2));
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let (sum, count, buckets) = histogram.totals();
        assert_eq!(count, 36);
        assert_eq!(buckets, [(0.001, 12), (0.01, 12), (0.1, 0), (f64::MAX, 12)]);
        assert!((sum - 12.0 * 2.0105).abs() < 1e-9, "{sum}");
    }
}
