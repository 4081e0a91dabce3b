//! Executors: how a worker does an agent's work.
//!
//! - `simulate`: built in; takes about the configured time and succeeds as often as the
//!   agent's success rate says, drawn from a seeded generator so tests can repeat it.
//! - `exec`: runs a command with the work item as JSON on stdin; exit 0 and its stdout is
//!   the result; anything else (a non-zero exit, a timeout) is a failure with the tail of
//!   stderr as the reason.
//! - `http`: POSTs the work item as JSON; a 2xx body is the result, anything else (another
//!   status, no answer in time) a failure.

use std::process::Stdio;
use std::time::Duration;

use aicp_events::event::ExecutorSettings;
use aicp_events::work::WorkItem;
use tokio::io::AsyncWriteExt;

/// Longest result or reason kept, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the agent's result.
    Completed(String),
    /// Not done; why.
    Failed(String),
}

/// Executes `item` with its own executor settings, or `default` if it has none.
pub async fn execute(item: &WorkItem, default: &ExecutorSettings, seed: u64) -> Outcome {
    match item.executor.as_ref().unwrap_or(default) {
        ExecutorSettings::Simulate { mean_duration_ms } => {
            simulate(item, *mean_duration_ms, seed).await
        }
        ExecutorSettings::Exec {
            command,
            timeout_ms,
        } => exec(item, command, *timeout_ms).await,
        ExecutorSettings::Http { url, timeout_ms } => http(item, url, *timeout_ms).await,
    }
}

/// SplitMix64: tiny, seedable, and good enough to draw durations and coin flips.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number drawn from the seed, the task and its assignment: the same inputs always draw
/// the same, so a test can predict outcomes and a redelivery repeats its draw.
fn draw(seed: u64, item: &WorkItem) -> u64 {
    let mut x = splitmix(seed ^ u64::from(item.assignment));
    for byte in item.task_id.as_str().bytes() {
        x = splitmix(x ^ u64::from(byte));
    }
    x
}

async fn simulate(item: &WorkItem, mean_duration_ms: u64, seed: u64) -> Outcome {
    let x = draw(seed, item);
    if mean_duration_ms > 0 {
        // Uniform between half and one and a half times the mean.
        let jitter = (x >> 32) % mean_duration_ms.saturating_add(1).max(1);
        tokio::time::sleep(Duration::from_millis(
            (mean_duration_ms / 2).saturating_add(jitter),
        ))
        .await;
    }
    if x % 10_000 < u64::from(item.success_rate_bp) {
        Outcome::Completed(format!("simulated result for {}", item.task_id))
    } else {
        Outcome::Failed("simulated failure".to_owned())
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_TEXT);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

async fn exec(item: &WorkItem, command: &[String], timeout_ms: u64) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::Failed("exec executor has no command".to_owned());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("cannot run {program}: {e}")),
    };
    let input = serde_json::to_vec(item).unwrap_or_default();
    let stdin = child.stdin.take();
    // Feed stdin while collecting the output, all under the timeout: a command that does
    // not read its input, or fills stdout first, cannot block the worker.
    let run = async move {
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that does not read its input is its own business.
                let _ = stdin.write_all(&input).await;
            }
        };
        let ((), output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
        Ok(Ok(output)) if output.status.success() => Outcome::Completed(tail(&output.stdout)),
        Ok(Ok(output)) => {
            let stderr = tail(&output.stderr);
            Outcome::Failed(format!("{program} exited with {}: {stderr}", output.status))
        }
        Ok(Err(e)) => Outcome::Failed(format!("{program} failed: {e}")),
        // Dropping the child kills it (kill_on_drop).
        Err(_) => Outcome::Failed(format!("{program} timed out after {timeout_ms} ms")),
    }
}

async fn http(item: &WorkItem, url: &str, timeout_ms: u64) -> Outcome {
    let client = reqwest::Client::new();
    let sent = client
        .post(url)
        .timeout(Duration::from_millis(timeout_ms))
        .json(item)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_timeout() => {
            return Outcome::Failed(format!("{url} did not answer within {timeout_ms} ms"))
        }
        Err(e) => return Outcome::Failed(format!("{url}: {e}")),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => tail(&body),
        Err(e) => return Outcome::Failed(format!("{url}: reading the answer failed: {e}")),
    };
    if status.is_success() {
        Outcome::Completed(body)
    } else {
        Outcome::Failed(format!("{url} answered {status}: {body}"))
    }
}
