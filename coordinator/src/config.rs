//! Configuration: command-line flags, each with an environment-variable fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aicp_events::credentials::NatsCredentials;
use aicp_events::token::TokenSecret;
use axum::http::HeaderName;

use crate::auth::AuthMode;
use crate::limits::RateSetting;
use aicp_events::domain::assign::Policy;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The coordinator's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aicp-coordinator",
    version,
    args_override_self = true,
    about = "AICP coordinator: REST API, process managers and read models"
)]
pub struct Config {
    /// NATS server URL, or several seed servers of a cluster separated by commas.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How to authenticate to NATS.
    #[command(flatten)]
    pub nats_credentials: NatsCredentials,
    /// Address the HTTP API listens on (port 0 picks a free one).
    #[arg(long, env = "AICP_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Directory of this replica's read models (redb).
    #[arg(long, env = "AICP_DATA_DIR", default_value = ".data/coordinator")]
    pub data_dir: PathBuf,
    /// redb's page cache for the read model, in MiB (the coordinator's memory grows with it).
    #[arg(long, env = "AICP_CACHE_MIB", default_value_t = aicp_projections::DEFAULT_CACHE_MIB)]
    pub cache_mib: u64,
    /// Prefix of stream names and subjects, to share a server between deployments.
    #[arg(long, env = "AICP_PREFIX", default_value = "")]
    pub prefix: String,
    /// Replicas of each stream (3 on a clustered JetStream), applied when this process
    /// provisions the streams; without it a new stream gets 1 and an existing one keeps its own.
    #[arg(long, env = "AICP_STREAM_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: Option<u8>,
    /// Default assignment policy: best-reputation, round-robin or least-loaded.
    #[arg(long, env = "AICP_POLICY", default_value = "best-reputation")]
    pub policy: Policy,
    /// Do not register the seed agents agent-1..3 on first start.
    #[arg(long, env = "AICP_NO_SEED_AGENTS")]
    pub no_seed_agents: bool,
    /// How long a read waits for this replica's acknowledged writes to show (and an agent
    /// or token write before answering 202).
    #[arg(long, env = "AICP_WRITE_WAIT_MS", default_value_t = 2000)]
    pub write_wait_ms: u64,
    /// Every buyer pays from a prepaid balance: a buyer that has deposited nothing is
    /// refused (402). Without it only buyers with a deposit or a limit are.
    #[arg(long, env = "AICP_REQUIRE_DEPOSIT")]
    pub require_deposit: bool,
    /// A reservation whose task is still not stored after this long goes back to its
    /// buyer's balance (its coordinator stopped between the two writes).
    #[arg(long, env = "AICP_RESERVATION_LAPSE_MS", default_value_t = 300_000)]
    pub reservation_lapse_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "AICP_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest body of a batch submission (`POST /v1/tasks/batch`), in bytes.
    #[arg(long, env = "AICP_MAX_BATCH_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    /// How callers authenticate: `token` (the default) or `none` (only on a loopback
    /// --listen address: every API call is the admin, the UI is whoever it says).
    #[arg(long, env = "AICP_AUTH", value_enum, default_value = "token")]
    pub auth: AuthMode,
    /// An admin token of your choice (at least 32 characters), accepted by its hash and
    /// never written to the stream; without it the first start issues one and prints it once.
    #[arg(long, env = "AICP_ADMIN_TOKEN", hide_env_values = true, value_parser = configured_token)]
    pub admin_token: Option<TokenSecret>,
    /// A worker token (for every agent) of your choice, at least 32 characters, accepted by
    /// its hash like --admin-token: how a deployment gives its workers a token before any
    /// admin has issued one. Per-agent worker tokens are issued with `aicp tokens issue`.
    #[arg(long, env = "AICP_WORKER_TOKEN", hide_env_values = true, value_parser = configured_token)]
    pub worker_token: Option<TokenSecret>,
    /// Requests per principal (workers excepted): `N/s` or `N/s,burst`, or `off`.
    #[arg(long, env = "AICP_RATE_LIMIT", default_value = "100/s,200")]
    pub rate_limit: RateSetting,
    /// Requests per client IP: `N/s` or `N/s,burst`, or `off`.
    #[arg(long, env = "AICP_RATE_LIMIT_IP", default_value = "200/s,400")]
    pub rate_limit_ip: RateSetting,
    /// The header a trusted reverse proxy writes the client's address to (such as
    /// `X-Forwarded-For`; its last entry is used); without it the peer address is the client.
    #[arg(long, env = "AICP_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<HeaderName>,
    /// A request (other than the live event stream) taking longer is answered 408.
    #[arg(long, env = "AICP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Origins allowed by CORS, comma-separated; `*` allows any.
    #[arg(
        long,
        env = "AICP_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:8000,http://127.0.0.1:8000"
    )]
    pub cors_origins: Vec<String>,
    /// Do not start: ask the coordinator listening on --listen for `GET /health` and exit 0
    /// if it answers 200, 1 otherwise (a container HEALTHCHECK).
    #[arg(long)]
    pub health_check: bool,
    /// Log format.
    #[arg(long, env = "AICP_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// Shortest token accepted from configuration: it must be as hard to guess as ours.
pub const MIN_CONFIGURED_TOKEN_CHARS: usize = 32;

fn configured_token(raw: &str) -> Result<TokenSecret, String> {
    let token = TokenSecret::from_text(raw);
    if token.expose().chars().count() < MIN_CONFIGURED_TOKEN_CHARS {
        return Err(format!(
            "a configured token must be at least {MIN_CONFIGURED_TOKEN_CHARS} characters (random ones; `openssl rand -base64 32` makes one)"
        ));
    }
    Ok(token)
}

impl Config {
    /// [`Config::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Config::write_wait_ms`] as a duration.
    pub fn write_wait(&self) -> Duration {
        Duration::from_millis(self.write_wait_ms)
    }
}
