//! Progress of a long read on standard error: a line redrawn in place on a terminal,
//! a plain line every few seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Reports how far a read from `from` to `to` has got.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    from: u64,
    to: u64,
    started: Instant,
    drawn: Instant,
    terminal: bool,
    enabled: bool,
}

impl Progress {
    /// A report for sequences `from..=to`; silent when not `enabled`.
    pub fn new(label: &'static str, from: u64, to: u64, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            label,
            from,
            to,
            started: now,
            drawn: now,
            terminal: std::io::stderr().is_terminal(),
            enabled,
        }
    }

    /// Notes that `sequence` is done; draws if it is time to.
    pub fn update(&mut self, sequence: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.enabled && self.drawn.elapsed() >= every {
            self.drawn = Instant::now();
            self.draw(sequence, false);
        }
    }

    /// Draws the final figures.
    pub fn finish(&mut self, sequence: u64) {
        if self.enabled {
            self.draw(sequence, true);
        }
    }

    fn draw(&self, sequence: u64, last: bool) {
        let done = sequence.saturating_sub(self.from.saturating_sub(1));
        let total = self.to.saturating_sub(self.from.saturating_sub(1)).max(1);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        let line = format!(
            "{}: {done}/{total} messages ({:.1}%), {rate:.0} messages/s, {}",
            self.label,
            100.0 * done as f64 / total as f64,
            if last {
                format!("done in {secs:.1}s")
            } else {
                format!("ETA {eta:.0}s")
            }
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}
