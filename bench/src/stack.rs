//! The stack under test: the release coordinator and a worker, as processes, on a
//! nats-server of the benchmark's own (ephemeral port, temporary store).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The admin token of the benchmark's coordinators; every load request carries it.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef0123456789";

/// Issues a token for `principal` through the coordinator at `base`, as the admin.
pub async fn issue_token(base: &str, principal: &str) -> Result<String> {
    let response = admin_client(Some(Duration::from_secs(10)))?
        .post(format!("{base}/v1/tokens"))
        .json(&serde_json::json!({"principal": principal, "label": "benchmark"}))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    match body["token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_owned()),
        _ => bail!("issuing a token for {principal}: {status} {body}"),
    }
}

/// An HTTP client that sends [`ADMIN_TOKEN`] with every request, over at most one idle
/// connection (so `connections` clients really use that many TCP connections); each
/// response within `timeout`, if given (not for a stream).
pub fn admin_client(timeout: Option<Duration>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}"))?,
    );
    let builder = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(1);
    Ok(match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()?)
}
/// A running coordinator process.
pub struct Coordinator {
    /// Its base URL.
    pub base: String,
    child: Child,
}

impl Coordinator {
    /// Starts a coordinator on `data_dir` with `args` added, logging into `logs`, and
    /// waits until it is ready.
    pub async fn start(
        bin_dir: &Path,
        nats_url: &str,
        data_dir: &Path,
        logs: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(bin_dir.join("aicp-coordinator"))
            .args(["--nats-url", nats_url, "--listen", &listen])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--max-body-bytes", "65536", "--log-format", "json"])
            // The load generator is one admin client: rate limits would measure themselves.
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--rate-limit", "off", "--rate-limit-ip", "off"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs)?)
            .spawn()
            .with_context(|| format!("starting {}", bin_dir.join("aicp-coordinator").display()))?;
        let coordinator = Self {
            base: format!("http://{listen}"),
            child,
        };
        let http = admin_client(Some(Duration::from_secs(5)))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/ready", coordinator.base)).send().await {
                if r.status().is_success() {
                    return Ok(coordinator);
                }
            }
            if Instant::now() > deadline {
                coordinator.stop();
                bail!(
                    "the coordinator did not become ready; see its log {}",
                    logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its memory.
    pub fn memory(&self) -> Result<Memory> {
        memory(self.child.id())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGKILL: the benchmark does not measure shutdown).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Coordinator {
    // A run that fails half-way leaves no coordinator behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running coordinator and worker.
pub struct Stack {
    /// The coordinator's base URL.
    pub base: String,
    coordinator: Coordinator,
    worker: Child,
    data: tempfile::TempDir,
}

/// Peak and current resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmHWM: the peak.
    pub peak_mib: f64,
    /// VmRSS: now.
    pub now_mib: f64,
}

impl Stack {
    /// Starts the coordinator (seed agents) and one worker for every agent, simulating
    /// work of zero duration.
    pub async fn start(bin_dir: &Path, nats_url: &str) -> Result<Self> {
        Self::start_with(bin_dir, nats_url, &[], &[]).await
    }

    /// Starts them as [`Stack::start`] does, with `coordinator_args` and `worker_args`
    /// added (a prefix, the stream replicas).
    pub async fn start_with(
        bin_dir: &Path,
        nats_url: &str,
        coordinator_args: &[&str],
        worker_args: &[&str],
    ) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let coordinator = Coordinator::start(
            bin_dir,
            nats_url,
            &data.path().join("coordinator"),
            &data.path().join("coordinator.log"),
            coordinator_args,
        )
        .await?;
        let worker_token = issue_token(&coordinator.base, "worker:agent-1,agent-2,agent-3").await?;
        let worker = Command::new(bin_dir.join("aicp-worker"))
            .args([
                "--nats-url",
                nats_url,
                "--api",
                &coordinator.base,
                "--agents",
                "agent-1,agent-2,agent-3",
            ])
            .env("AICP_TOKEN", worker_token)
            .args([
                "--simulate-ms",
                "0",
                "--concurrency",
                "256",
                "--worker-id",
                "bench",
            ])
            .args(["--max-ack-pending", "10000", "--grace-ms", "1000"])
            .args(worker_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("worker.log"))?)
            .spawn()?;
        Ok(Self {
            base: coordinator.base.clone(),
            coordinator,
            worker,
            data,
        })
    }

    /// The coordinator's memory.
    pub fn coordinator_memory(&self) -> Result<Memory> {
        self.coordinator.memory()
    }

    /// The worker's memory.
    pub fn worker_memory(&self) -> Result<Memory> {
        memory(self.worker.id())
    }

    /// The processes, by name, with their ids.
    pub fn processes(&self) -> Vec<(String, u32)> {
        vec![
            ("coordinator".into(), self.coordinator.pid()),
            ("worker".into(), self.worker.id()),
        ]
    }

    /// The size of the coordinator's read model on disk, in MiB.
    pub fn read_model_mib(&self) -> f64 {
        dir_mib(&self.data.path().join("coordinator"))
    }

    /// Where the processes' logs are.
    pub fn logs(&self) -> PathBuf {
        self.data.path().to_owned()
    }

    /// Stops both (SIGKILL: the benchmark does not measure shutdown).
    pub fn stop(mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
        self.coordinator.stop();
    }
}

/// VmHWM and VmRSS of `pid`, from /proc.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    Ok(Memory {
        peak_mib: field("VmHWM:"),
        now_mib: field("VmRSS:"),
    })
}

/// The size of everything under `dir`, in MiB.
pub fn dir_mib(dir: &Path) -> f64 {
    dir_size(dir) as f64 / (1024.0 * 1024.0)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
