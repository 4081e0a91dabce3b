//! A real `nats-server -js` for tests: ephemeral port, temporary store, killed on drop.
//!
//! Tests never touch the shared server on 4222; each starts its own so that tests run in
//! parallel and can kill and restart their server. The binary is `NATS_SERVER_BIN` if
//! set, else `nats-server` on the PATH.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::store::EventStore;
use crate::subject::Namespace;

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server` with JetStream, owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Unique per instance, so readiness is judged on our server, not one that took the port.
    name: String,
    port: u16,
    /// The HTTP monitoring port (`-m`), when asked for.
    monitor_port: Option<u16>,
    /// More arguments, e.g. `--user` and `--pass`.
    extra_args: Vec<String>,
    store: TempDir,
    bin: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free port with an empty store and waits until it answers.
    ///
    /// Blocks for the few milliseconds the server takes to start; call it from tests only.
    pub fn start() -> io::Result<Self> {
        Self::start_with(false, &[])
    }

    /// Starts a server as [`NatsServer::start`] does with `args` added, e.g. `["--user",
    /// "u", "--pass", "p"]` for one that requires credentials.
    pub fn start_with_args(args: &[&str]) -> io::Result<Self> {
        Self::start_with(false, args)
    }

    /// Starts a server as [`NatsServer::start`] does, also serving its HTTP monitoring
    /// endpoints (`/varz`, `/jsz`...) on another free port.
    pub fn start_with_monitoring() -> io::Result<Self> {
        Self::start_with(true, &[])
    }

    fn start_with(monitoring: bool, args: &[&str]) -> io::Result<Self> {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        // Fail with a clear message here, not a timeout later, if the binary is missing.
        Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run {} ({e}); install Debian's nats-server or set NATS_SERVER_BIN",
                        bin.display()
                    ),
                )
            })?;
        let store = tempfile::Builder::new().prefix("aicp-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            name: format!("aicp-test-{}", uuid::Uuid::new_v4().simple()),
            port: 0,
            monitor_port: None,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            store,
            bin,
        };
        let mut last_error = None;
        // Another process can take the free port between our probe and the server's bind.
        for _ in 0..5 {
            server.port = free_port()?;
            if monitoring {
                server.monitor_port = Some(free_port()?);
            }
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoints, if the server was started
    /// with them.
    pub fn monitoring_url(&self) -> Option<String> {
        self.monitor_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// The server's name (`-n`), unique per instance: how a cluster names its leaders.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory, kept across restarts.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// A client connected to this server.
    pub async fn client(&self) -> io::Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .map_err(io::Error::other)
    }

    /// An event store on this server in `namespace`, with its streams provisioned.
    pub async fn event_store(&self, namespace: Namespace) -> io::Result<EventStore> {
        let store = EventStore::new(self.client().await?, namespace);
        store.provision().await.map_err(io::Error::other)?;
        Ok(store)
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) -> io::Result<()> {
        match self.child.take() {
            Some(supervisor) => stop(supervisor),
            None => Ok(()),
        }
    }

    /// Stops the server with SIGTERM, as an operator would: it flushes its store and says
    /// goodbye to its cluster. Waits for it to exit.
    pub fn terminate(&mut self) -> io::Result<()> {
        let Some(mut supervisor) = self.child.take() else {
            return Ok(());
        };
        if let Some(stdin) = supervisor.stdin.as_mut() {
            // The supervisor's reader sends SIGTERM; closing stdin afterwards kills -9
            // whatever is left.
            let _ = stdin.write_all(b"term\n").and_then(|()| stdin.flush());
        }
        // A server that does not stop within the grace is killed -9 (stdin closed).
        let deadline = Instant::now() + TERMINATE_GRACE;
        while supervisor.try_wait()?.is_none() {
            if Instant::now() > deadline {
                stop(supervisor)?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server did not stop on SIGTERM; killed it",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(supervisor)
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let deadline = Instant::now() + START_TIMEOUT;
        // The old process's socket may linger a moment; retry the bind until the deadline.
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = self.store.path().join("nats-server.log");
        let mut child = Command::new("sh")
            .args(["-c", SUPERVISE, "sh"])
            .arg(&self.bin)
            .args([
                "-n",
                &self.name,
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(
                self.monitor_port
                    .map(|port| vec!["-m".to_owned(), port.to_string()])
                    .unwrap_or_default(),
            )
            .args(&self.extra_args)
            .args(["-js", "-sd"])
            .arg(self.store.path())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        match wait_until_ready(&mut child, &self.name, self.port) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = stop(child);
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = tail.lines().collect();
                let tail = &lines[lines.len().saturating_sub(5)..];
                Err(io::Error::other(format!(
                    "nats-server on port {} did not become ready: {e}; log: {}",
                    self.port,
                    tail.join(" | ")
                )))
            }
        }
    }
}

/// How long a server gets to stop on SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(30);

/// Runs the server (`"$@"`) under `sh`, which SIGKILLs it as soon as its stdin closes: when
/// we close it on purpose, and also when the test process dies without running `Drop`
/// (a SIGKILL, an abort, a CI timeout), so no server outlives its test. The shell exits
/// when the server does. Background jobs read /dev/null unless told otherwise, hence fd 3.
/// A line `term` on stdin sends SIGTERM instead: a graceful stop.
const SUPERVISE: &str = r#"exec 3<&0; "$@" </dev/null & pid=$!; (while read -r line <&3; do [ "$line" = term ] && kill -TERM $pid; done; kill -9 $pid 2>/dev/null) & wait $pid"#;

/// Closes the supervisor's stdin (so it kills the server) and waits for it to exit.
fn stop(mut supervisor: Child) -> io::Result<()> {
    drop(supervisor.stdin.take());
    supervisor.wait()?;
    Ok(())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A port free on loopback now (another process may take it before it is bound).
pub(super) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until our server (by name) sends its `INFO` line announcing JetStream.
fn wait_until_ready(child: &mut Child, name: &str, port: u16) -> io::Result<()> {
    let ours = format!("\"server_name\":\"{name}\"");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("exited with {status}")));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut line = String::new();
            let read = BufReader::new(stream.try_clone()?).read_line(&mut line);
            let ready = line.starts_with("INFO ")
                && line.contains(&ours)
                && line.contains("\"jetstream\":true");
            if read.is_ok() && ready {
                // Say goodbye politely so the server does not log a parse error.
                let mut stream = stream;
                let _ = stream.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
                let _ = stream.read(&mut [0u8; 64]);
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
