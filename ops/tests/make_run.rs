//! `make run`'s script, run as a user runs it: it starts NATS (none answers at the given
//! URL), the coordinator and three workers; a task submitted with curl completes; Ctrl-C
//! (SIGINT to its process group, as a terminal sends it) stops every process it started;
//! a second run finds the data of the first.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn curl(args: &[&str]) -> Result<String> {
    let output = Command::new("curl")
        .args(["-fsS", "--max-time", "5"])
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Starts `run-local.sh` in a process group of its own.
fn start(data: &Path, nats_port: u16, listen: &str, log: &Path) -> Result<Child> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let log = std::fs::File::create(log)?;
    // A terminal's shell starts `make run` with Ctrl-C at its default action; a CI runner may
    // start the tests with SIGINT ignored, which bash would then not let the script trap.
    // (`env --default-signal` is GNU coreutils 8.31 or later, as on Debian.)
    Ok(Command::new("env")
        .args(["--default-signal=INT,QUIT", "bash"])
        .arg(root.join("ops/scripts/run-local.sh"))
        .env("NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("AICP_DATA", data)
        .env("AICP_LISTEN", listen)
        .env("AICP_PROFILE", "debug")
        .env("SIMULATE_MS", "100")
        .env_remove("AICP_PREFIX")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?)
}

fn wait_ready(child: &mut Child, listen: &str, log: &Path) -> Result<()> {
    // The first run may build the binaries.
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "run-local.sh exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        if log_text.contains("AICP is running")
            && curl(&[&format!("http://{listen}/ready")]).is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "not ready in time:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// The pids of `parent`'s children.
fn children(parent: u32) -> Result<Vec<u32>> {
    let output = Command::new("pgrep")
        .args(["-P", &parent.to_string()])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited; only its parent's wait is missing.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.split_whitespace()
        .nth(2)
        .is_some_and(|state| state != "Z")
}

/// Sends `signal` to the script's process group (it leads its own group).
fn signal_group(child: &Child, signal: Signal) -> Result<()> {
    let pgid = Pid::from_raw(i32::try_from(child.id())?);
    Ok(killpg(pgid, signal)?)
}

/// Kills the script's group and everything `started`, after a failure.
fn kill_all(mut child: Child, started: &[u32]) {
    let _ = signal_group(&child, Signal::SIGKILL);
    for pid in started {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// The command lines of those of `pids` still alive, to say which one hangs.
fn running(pids: &[u32]) -> String {
    let alive: Vec<String> = pids
        .iter()
        .filter(|pid| alive(**pid))
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid} {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            )
        })
        .collect();
    if alive.is_empty() {
        "none of its children".into()
    } else {
        alive.join("; ")
    }
}

/// What the script is doing (its state, the kernel function it waits in) and its children,
/// to say where it hangs.
fn script_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.split_whitespace().nth(2).unwrap_or("?").to_owned();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let children = children(pid).unwrap_or_default();
    format!(
        "state {state}, waiting in {wchan}; its children: {}",
        running(&children)
    )
}

/// Sends SIGINT to the script's process group, as Ctrl-C in a terminal does, and waits for
/// every process it started to be gone.
fn interrupt(child: &mut Child, started: &[u32]) -> Result<()> {
    signal_group(child, Signal::SIGINT)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "run-local.sh did not stop after SIGINT; still running: {}; the script: {}",
            running(started),
            script_state(child.id())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|pid| alive(*pid)) {
        ensure!(
            Instant::now() < deadline,
            "processes left behind: {}",
            running(started)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs the script, `check`s the running stack, stops it with Ctrl-C; on any failure
/// kills what it started and shows the script's output.
fn run_once<T>(
    data: &Path,
    nats_port: u16,
    listen: &str,
    log: &Path,
    check: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut child = start(data, nats_port, listen, log)?;
    let mut started = Vec::new();
    let outcome = (|| {
        wait_ready(&mut child, listen, log)?;
        started = children(child.id())?;
        // nats-server (when the script started it), the coordinator and three workers.
        ensure!(
            started.len() >= 4,
            "expected the stack's processes, found {started:?}"
        );
        let value = check()?;
        interrupt(&mut child, &started)?;
        Ok(value)
    })();
    outcome.map_err(|e: anyhow::Error| {
        kill_all(child, &started);
        anyhow::anyhow!(
            "{e}\nrun-local.sh said:\n{}\nnats-server.log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(data.join("nats-server.log")).unwrap_or_default()
        )
    })
}

#[test]
fn make_run_starts_everything_completes_a_task_and_ctrl_c_leaves_nothing_behind() -> Result<()> {
    let data = tempfile::tempdir()?;
    let (nats_port, http_port) = (free_port()?, free_port()?);
    let listen = format!("127.0.0.1:{http_port}");
    let log = data.path().join("run.log");

    let tokens = data.path().join("tokens");
    let id = run_once(data.path(), nats_port, &listen, &log, || {
        // As the banner says: the buyer's token, which the script issued.
        let buyer = format!(
            "authorization: Bearer {}",
            std::fs::read_to_string(tokens.join("buyer-001"))?.trim()
        );
        let without_token = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{listen}/v1/tasks"))
            .output()?;
        ensure!(without_token.stdout == b"401", "no token, no tasks");
        let submitted = curl(&[
            "-X",
            "POST",
            &format!("http://{listen}/tasks/submit"),
            "-H",
            "content-type: application/json",
            "-H",
            &buyer,
            "-d",
            r#"{"description": "Process payment", "complexity": 2}"#,
        ])?;
        let submitted: Value = serde_json::from_str(&submitted)?;
        let id = submitted["task_id"]
            .as_str()
            .context("a task id")?
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task: Value = serde_json::from_str(&curl(&[
                "-H",
                &buyer,
                &format!("http://{listen}/v1/tasks/{id}"),
            ])?)?;
            if task["payment"] == "released" || task["payment"] == "refunded" {
                ensure!(
                    matches!(task["status"].as_str(), Some("completed" | "failed")),
                    "{task}"
                );
                return Ok(id);
            }
            ensure!(Instant::now() < deadline, "task never finished: {task}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })?;
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("starting nats-server -js"), "{text}");
    assert!(text.contains("stopping"), "{text}");

    // A second run in a row finds the first one's data, and the same admin token.
    let log = data.path().join("run2.log");
    run_once(data.path(), nats_port, &listen, &log, || {
        let admin = format!(
            "authorization: Bearer {}",
            std::fs::read_to_string(data.path().join("admin-token"))?.trim()
        );
        let task: Value = serde_json::from_str(&curl(&[
            "-H",
            &admin,
            &format!("http://{listen}/v1/tasks/{id}"),
        ])?)?;
        ensure!(task["id"] == id.as_str(), "{task}");
        Ok(())
    })
}
