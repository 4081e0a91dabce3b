//! CPU time from /proc: what a run cost each process and the whole machine, so a rate can
//! be set beside what the cores could carry at most.

use std::path::Path;

use anyhow::{Context, Result};

/// Linux reports CPU times in USER_HZ, which is 100 on every platform it runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user and system, every thread) that `pid` has used so far.
pub fn process_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; the fields after its
    // last ')' never do. utime and stime are fields 14 and 15 of the whole line.
    let (_, rest) = stat
        .rsplit_once(')')
        .context("/proc/<pid>/stat has no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Result<f64> {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .with_context(|| format!("/proc/{pid}/stat field {}", index + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// CPU seconds the whole machine has spent busy (everything but idle and iowait).
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let times: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = times
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / TICKS_PER_SECOND)
}

/// The pid of the `nats-server` listening on `port`, found by its command line.
pub fn nats_server_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(cmdline) =
                std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
            else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"nats-server"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
        })
}

/// The processes of a run by name, and the CPU each and the machine have used.
#[derive(Debug, Clone)]
pub struct Meter {
    processes: Vec<(String, u32)>,
}

/// CPU seconds used up to one moment.
#[derive(Debug, Clone)]
pub struct Reading {
    processes: Vec<(String, f64)>,
    machine: f64,
    at: std::time::Instant,
}

/// CPU seconds used over an interval.
#[derive(Debug, Clone)]
pub struct Usage {
    /// By process, in the meter's order.
    pub processes: Vec<(String, f64)>,
    /// The whole machine, every process included.
    pub machine: f64,
    /// The interval's length, wall clock.
    pub seconds: f64,
}

impl Meter {
    /// Meters these processes.
    pub fn new(processes: Vec<(String, u32)>) -> Self {
        Self { processes }
    }

    /// Reads every process and the machine now; a process that has gone reads 0.
    pub fn read(&self) -> Result<Reading> {
        Ok(Reading {
            processes: self
                .processes
                .iter()
                .map(|(name, pid)| (name.clone(), process_seconds(*pid).unwrap_or(0.0)))
                .collect(),
            machine: machine_busy_seconds()?,
            at: std::time::Instant::now(),
        })
    }
}

impl Reading {
    /// The CPU used between `earlier` and this reading.
    pub fn since(&self, earlier: &Reading) -> Usage {
        Usage {
            processes: self
                .processes
                .iter()
                .zip(&earlier.processes)
                .map(|((name, now), (_, then))| (name.clone(), now - then))
                .collect(),
            machine: self.machine - earlier.machine,
            seconds: self.at.duration_since(earlier.at).as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_time_and_so_does_the_machine() -> Result<()> {
        let me = std::process::id();
        let (before, machine_before) = (process_seconds(me)?, machine_busy_seconds()?);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_seconds(me)? - before >= 0.1);
        assert!(machine_busy_seconds()? - machine_before >= 0.1);
        Ok(())
    }
}
