//! Latency distributions: microseconds recorded, percentiles reported in milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency distribution.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

/// Its percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// Empty; records 1 µs to 10 minutes at 3 significant figures.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        let histogram =
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid");
        Self { histogram }
    }

    /// Records one latency (clamped into range).
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.histogram.record(micros);
    }

    /// Adds another distribution.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// p50, p99, p99.9.
    pub fn percentiles(&self) -> Percentiles {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
        }
    }
}
