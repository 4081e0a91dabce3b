//! Worker settings: command-line flags with environment-variable fallbacks.

use std::time::Duration;

use aicp_events::credentials::NatsCredentials;
use aicp_events::event::ExecutorSettings;

/// The worker's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aicp-worker",
    version,
    args_override_self = true,
    about = "AICP agent worker: pulls tasks from AICP_WORK, executes them, reports the outcome"
)]
pub struct Config {
    /// NATS server URL, or several seed servers of a cluster separated by commas.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How to authenticate to NATS.
    #[command(flatten)]
    pub nats_credentials: NatsCredentials,
    /// The coordinator's API, through which tasks are started and reported.
    #[arg(long, env = "AICP_API", default_value = "http://127.0.0.1:8000")]
    pub api: String,
    /// A worker token (`aicp tokens issue worker:<agent>,<agent>`, or `worker` for every
    /// agent); not needed when the coordinator runs with `--auth none`.
    #[arg(long, env = "AICP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Prefix of stream names and subjects (as the coordinator's).
    #[arg(long, env = "AICP_PREFIX", default_value = "")]
    pub prefix: String,
    /// Replicas of each stream (3 on a clustered JetStream), applied when this process
    /// provisions the streams; without it a new stream gets 1 and an existing one keeps its own.
    #[arg(long, env = "AICP_STREAM_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: Option<u8>,
    /// Agents this worker serves, comma-separated (e.g. agent-1,agent-2), or `all`: every
    /// agent that has work, as its queue appears.
    #[arg(long, env = "AICP_AGENTS", value_delimiter = ',', required = true)]
    pub agents: Vec<String>,
    /// Tasks executed at the same time.
    #[arg(long, env = "AICP_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Default executor, for agents without executor settings: `simulate`.
    #[arg(long, env = "AICP_EXECUTOR", default_value = "simulate")]
    pub executor: String,
    /// The simulator's mean task duration, in milliseconds.
    #[arg(long, env = "AICP_SIMULATE_MS", default_value_t = 500)]
    pub simulate_ms: u64,
    /// Seed of the simulator's draws (the same seed draws the same outcomes).
    #[arg(long, env = "AICP_SEED", default_value_t = 0)]
    pub seed: u64,
    /// How long a pulled task may go without an ack before it is redelivered, in ms.
    /// Long work sends progress acks, so this bounds how soon a crash is noticed.
    #[arg(long, env = "AICP_ACK_WAIT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub ack_wait_ms: u64,
    /// Deliveries of one work message; the last one fails its task with `max-deliveries`
    /// instead of running it again (so at least 2: one attempt, then the verdict).
    #[arg(long, env = "AICP_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..))]
    pub max_deliver: i64,
    /// Work messages pulled but not yet acked, per agent, across all its workers.
    #[arg(long, env = "AICP_MAX_ACK_PENDING", default_value_t = 1000)]
    pub max_ack_pending: i64,
    /// On SIGTERM, how long in-flight tasks get to finish before they are handed back.
    #[arg(long, env = "AICP_GRACE_MS", default_value_t = 20_000)]
    pub grace_ms: u64,
    /// Work that ends sooner than this (ms) is reported in one call, start and outcome
    /// together; longer work reports its start when this passes, so buyers see it running
    /// and a task cancelled or reassigned meanwhile is dropped. 0: always report the start
    /// before executing.
    #[arg(long, env = "AICP_REPORT_START_AFTER_MS", default_value_t = 1000)]
    pub report_start_after_ms: u64,
    /// This worker's name in TaskStarted events (default: host and process id).
    #[arg(long, env = "AICP_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl Config {
    /// The executor for agents without settings of their own.
    pub fn default_executor(&self) -> anyhow::Result<ExecutorSettings> {
        match self.executor.as_str() {
            "simulate" => Ok(ExecutorSettings::Simulate {
                mean_duration_ms: self.simulate_ms,
            }),
            other => anyhow::bail!(
                "unknown default executor {other:?}: only simulate can be a default (exec and http are per agent)"
            ),
        }
    }

    /// [`Config::ack_wait_ms`] as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }

    /// [`Config::report_start_after_ms`] as a duration.
    pub fn report_start_after(&self) -> Duration {
        Duration::from_millis(self.report_start_after_ms)
    }

    /// [`Config::grace_ms`] as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// The worker's id.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
            format!("{}:{}", host.trim(), std::process::id())
        })
    }
}
