//! The figures of a run, as a table for people and JSON for tools.

use serde::Serialize;

use crate::latency::Percentiles;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`/s`, `MiB`).
    pub unit: String,
    /// Latency percentiles, where it is a rate of requests.
    pub latency: Option<Percentiles>,
    /// How many operations the figure is over.
    pub samples: u64,
    /// The raw JetStream figure it compares with, and the ratio to it.
    pub raw: Option<(String, f64)>,
    /// The target, as written in the issue, for the reader.
    pub target: Option<String>,
}

impl Figure {
    /// A throughput figure.
    pub fn rate(name: &str, value: f64, samples: u64) -> Self {
        Self {
            name: name.to_owned(),
            value,
            unit: "/s".into(),
            latency: None,
            samples,
            raw: None,
            target: None,
        }
    }

    /// Any other figure, in `unit`.
    pub fn measure(name: &str, value: f64, unit: &str, samples: u64) -> Self {
        Self {
            unit: unit.to_owned(),
            ..Self::rate(name, value, samples)
        }
    }

    /// With latency percentiles.
    pub fn with_latency(mut self, latency: Percentiles) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Compared with a raw JetStream figure.
    pub fn against(mut self, raw: &Figure) -> Self {
        self.raw = Some((raw.name.clone(), raw.value));
        self
    }

    /// With its target.
    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.to_owned());
        self
    }

    /// The ratio to its raw counterpart.
    pub fn ratio(&self) -> Option<f64> {
        self.raw
            .as_ref()
            .and_then(|(_, raw)| (*raw > 0.0).then(|| self.value / raw))
    }
}

/// Prints the figures as an aligned table.
pub fn print_table(figures: &[Figure]) {
    println!(
        "{:<56} {:>17} {:>9} {:>9} {:>9} {:>8}  target",
        "figure", "value", "p50 ms", "p99 ms", "p99.9 ms", "vs raw"
    );
    for f in figures {
        let (p50, p99, p999) = match f.latency {
            Some(l) => (
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p99_ms),
                format!("{:.2}", l.p999_ms),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let ratio = f
            .ratio()
            .map(|r| format!("{:.0}%", r * 100.0))
            .unwrap_or_else(|| "-".into());
        // Small figures (cores, milliseconds) need their decimals; rates and sizes do not.
        let value = if f.value.abs() < 100.0 {
            format!("{:.2}", f.value)
        } else {
            format!("{:.0}", f.value)
        };
        println!(
            "{:<56} {:>11} {:<5} {:>9} {:>9} {:>9} {:>8}  {}",
            f.name,
            value,
            f.unit,
            p50,
            p99,
            p999,
            ratio,
            f.target.as_deref().unwrap_or("")
        );
    }
}
