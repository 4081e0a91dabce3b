//! The command line: every command, its flags and an example, with environment fallbacks.

use std::path::PathBuf;

use aicp_events::credentials::NatsCredentials;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

/// The `aicp` command line.
#[derive(Debug, Parser)]
#[command(
    name = "aicp",
    version,
    about = "AICP operator CLI: streams, replay, verify, events, queues, dead letters",
    after_help = "Examples:\n  aicp streams status\n  aicp replay --out /tmp/rebuilt\n  aicp verify --data-dir .data/coordinator\n  aicp events tail --follow\n  aicp tasks submit --buyer buyer-001 --description 'Process payment' --complexity 2"
)]
pub struct Cli {
    /// Connection settings and output format.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// NATS server URL, or several seed servers of a cluster separated by commas.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// How to authenticate to NATS (flags before the command, or the environment).
    #[command(flatten)]
    pub nats_credentials: NatsCredentials,
    /// Prefix of stream names and subjects (as the coordinator's --prefix).
    #[arg(long, global = true, env = "AICP_PREFIX", default_value = "")]
    pub prefix: String,
    /// Base URL of a coordinator's REST API, for tasks, agents and dead letters.
    #[arg(
        long,
        global = true,
        env = "AICP_API",
        default_value = "http://127.0.0.1:8000"
    )]
    pub api: String,
    /// API token for --api (an admin's for most commands; `aicp tokens issue` makes others).
    #[arg(long, global = true, env = "AICP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print data as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, update and inspect the streams and consumers.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Rebuild every read model from the stream into a fresh directory.
    #[command(
        after_help = "Examples:\n  aicp replay --out /tmp/rebuilt\n  # with the coordinator stopped, replace its read models:\n  aicp replay --out .data/coordinator.new --swap .data/coordinator"
    )]
    Replay(ReplayArgs),
    /// Compare a read model with one rebuilt from the stream, and check the invariants.
    #[command(
        after_help = "Exit code 0 when everything agrees, 1 when something does not.\n\nExamples:\n  # a stopped coordinator's directory: differing keys are shown\n  aicp verify --data-dir .data/coordinator\n  aicp verify --data-dir .data/coordinator --rebuilt /tmp/rebuilt\n  # a running coordinator, through its API: trees and invariants\n  aicp --api http://127.0.0.1:8000 verify --live"
    )]
    Verify(VerifyArgs),
    /// Print, export and import events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Work waiting and in flight per agent.
    #[command(
        name = "queue-depth",
        after_help = "Example:\n  aicp queue-depth --json"
    )]
    QueueDepth,
    /// Messages the projections could not decode, and tasks failed by exhausted deliveries.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Submit, show and list tasks through the REST API.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// List and register agents through the REST API.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Issue, list and revoke API tokens (admin), and see who a token is.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Drive simulated buyers against the REST API so the dashboard moves.
    #[command(after_help = "Example:\n  aicp demo --buyers 5 --rate 2 --duration 60")]
    Demo(DemoArgs),
}

/// `aicp streams ...`
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create the streams and the coordinator's consumers, or update them; safe to repeat.
    #[command(
        after_help = "Examples:\n  aicp streams init\n  aicp streams init --replicas 3 --agents agent-1,agent-2"
    )]
    Init(InitArgs),
    /// Message counts, bytes, sequences and consumers of each stream.
    #[command(after_help = "Example:\n  aicp streams status --json")]
    Status,
}

/// `aicp streams init`
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replicas of each stream (3 on a clustered JetStream). Without it a new stream gets 1
    /// and an existing stream keeps its own.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
    /// Also create the worker consumers of these agents (with the workers' defaults), so
    /// a queue-depth scaler finds them before the first worker starts.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
}

/// `aicp replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Directory to build the read models in; it must not hold a read model already.
    #[arg(long)]
    pub out: PathBuf,
    /// First stream sequence to apply (default 1). Resumes a directory replayed before.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last stream sequence to apply (default: the stream's last when the replay starts).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// After the replay, move the rebuilt directory into place of this stopped
    /// coordinator's data directory; the old one is kept beside it as `<dir>.old-<time>`.
    #[arg(long)]
    pub swap: Option<PathBuf>,
    /// Skip compacting the rebuilt file: a quicker rebuild (compaction was a quarter of it
    /// at 1,000,000 tasks), a larger file (see BENCHMARKS.md).
    #[arg(long)]
    pub no_compact: bool,
}

/// `aicp verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The read model to check: a stopped coordinator's data directory.
    #[arg(long, env = "AICP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Check the read model of the running coordinator at --api instead (digests and
    /// invariants; differing keys need --data-dir).
    #[arg(long, conflicts_with_all = ["data_dir", "rebuilt"])]
    pub live: bool,
    /// A read model rebuilt by `aicp replay` to compare with; by default one is rebuilt
    /// in a temporary directory up to the checked model's sequence.
    #[arg(long)]
    pub rebuilt: Option<PathBuf>,
    /// Differing keys to show per tree.
    #[arg(long, default_value_t = 5)]
    pub max_keys: usize,
}

/// Which events to print or export.
#[derive(Debug, Clone, Default, Args)]
pub struct EventFilter {
    /// Only this aggregate kind (`task`, `agent`, `payment`) or one aggregate (`task:8fb44756`).
    #[arg(long)]
    pub aggregate: Option<String>,
    /// Only messages holding an event of these types (e.g. TaskFailed,EscrowReleased).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only messages stored at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only messages stored before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// First stream sequence.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last stream sequence.
    #[arg(long)]
    pub to_seq: Option<u64>,
}

/// `aicp events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the last events, and with --follow the new ones as they come.
    #[command(
        after_help = "Examples:\n  aicp events tail -n 50\n  aicp events tail --follow --type TaskFailed --json"
    )]
    Tail {
        /// How many of the last messages to print.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: u64,
        /// Keep printing new messages until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// Which events.
        #[command(flatten)]
        filter: EventFilter,
    },
    /// Write stream messages as JSON lines, with their raw payload so they can be imported.
    #[command(
        after_help = "Examples:\n  aicp events export --output backup.jsonl\n  aicp events export --aggregate task:8fb44756"
    )]
    Export {
        /// File to write (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Which events.
        #[command(flatten)]
        filter: EventFilter,
    },
    /// Append an unfiltered export to an empty events stream, at the same sequences.
    #[command(
        after_help = "Examples:\n  aicp --prefix restored streams init\n  aicp --prefix restored events import --input backup.jsonl"
    )]
    Import {
        /// File to read (default: standard input).
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
}

/// `aicp dead-letters ...`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Undecodable messages and tasks failed by exhausted deliveries.
    #[command(after_help = "Example:\n  aicp dead-letters list --json")]
    List,
    /// Submit a failed task again as a new task (through the coordinator).
    #[command(after_help = "Example:\n  aicp dead-letters retry 8fb44756")]
    Retry {
        /// The failed task.
        task_id: String,
    },
}

/// `aicp tasks ...`
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Submit a task; prints it with its agent and price.
    #[command(
        after_help = "Examples:\n  aicp tasks submit --buyer buyer-001 --description 'Process payment' --complexity 2 --skills payments\n  aicp tasks submit --buyer buyer-001 --description 'smoke test' --complexity 1 --wait 60"
    )]
    Submit(SubmitArgs),
    /// Submit many tasks from a file of JSON lines (or a JSON array), each as `POST
    /// /v1/tasks` takes it, 1,000 per request; prints each task's answer, exit 1 if any
    /// was refused.
    #[command(
        after_help = "Examples:\n  aicp tasks batch --file tasks.jsonl --idempotency-key import-2026-12-07\n  printf '%s\\n' '{\"description\": \"a\", \"buyer_id\": \"buyer-001\"}' | aicp tasks batch --file -"
    )]
    Batch {
        /// The tasks: a JSON array, or one JSON object per line; `-` for standard input.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Makes the import safe to run again: request `n` is sent with `<key>/<n>`, so a
        /// second run answers the tasks the first stored instead of submitting them twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// One task.
    #[command(after_help = "Example:\n  aicp tasks show 8fb44756")]
    Show {
        /// The task's id.
        task_id: String,
    },
    /// Tasks, newest first.
    #[command(
        after_help = "Example:\n  aicp tasks list --buyer buyer-001 --status completed --limit 10"
    )]
    List {
        /// Only this buyer's.
        #[arg(long)]
        buyer: Option<String>,
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only tasks in this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `aicp tasks submit`
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Who pays (default: the buyer whose token is used).
    #[arg(long)]
    pub buyer: Option<String>,
    /// What is to be done.
    #[arg(long)]
    pub description: String,
    /// 1 to 10.
    #[arg(long)]
    pub complexity: i64,
    /// Skills the agent must have, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub skills: Vec<String>,
    /// The most the buyer will pay, in satoshis.
    #[arg(long)]
    pub max_price: Option<u64>,
    /// When the task expires (RFC 3339).
    #[arg(long)]
    pub deadline: Option<DateTime<Utc>>,
    /// Sent as the `Idempotency-Key`: running the same command again answers the task
    /// the first run stored instead of submitting another.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Then wait up to this many seconds for its money to settle (released to the agent
    /// or refunded) and print it again; exit 1 if it has not by then.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
}

/// `aicp agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Every agent with its record.
    #[command(after_help = "Example:\n  aicp agents list --json")]
    List,
    /// Register an agent.
    #[command(
        after_help = "Example:\n  aicp agents register --id agent-4 --name 'Translator' --skills translation --mode worker"
    )]
    Register {
        /// The agent's id.
        #[arg(long)]
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// What it can do, comma-separated.
        #[arg(long, value_delimiter = ',')]
        skills: Vec<String>,
        /// `worker` (executed by aicp-worker) or `manual` (completed through the API).
        #[arg(long, default_value = "worker")]
        mode: String,
    },
}

/// `aicp tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token; prints its secret once (only its hash is kept).
    #[command(
        after_help = "Principals: admin, buyer:<id>, agent:<id>, worker (every agent), worker:<agent>,<agent>.\n\nExamples:\n  aicp tokens issue buyer:buyer-001 --label 'buyer-001 laptop'\n  aicp tokens issue worker:agent-1,agent-2 --label 'pool a' --json"
    )]
    Issue {
        /// Who the token acts as.
        principal: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Every token, revoked ones too (never their secrets).
    #[command(after_help = "Example:\n  aicp tokens list --json")]
    List,
    /// Revoke a token: every coordinator refuses it from then on.
    #[command(
        after_help = "Example:\n  aicp tokens revoke t-3fa9c1e0b2d4a6f8 --reason 'laptop lost'"
    )]
    Revoke {
        /// The token's id (not its secret).
        token_id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Who --token / AICP_TOKEN is.
    Whoami,
}

/// `aicp demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated buyers.
    #[arg(long, default_value_t = 5)]
    pub buyers: u32,
    /// Tasks submitted per second, all buyers together.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Share of tasks a buyer cancels right after submitting (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    pub cancel_share: f64,
}
