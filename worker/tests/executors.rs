//! The `exec` and `http` executors against real processes and a real local HTTP server.

use std::time::{Duration, Instant};

use aicp_events::event::ExecutorSettings;
use aicp_events::work::WorkItem;
use aicp_worker::executor::{execute, Outcome};
use anyhow::Result;

fn item(executor: ExecutorSettings) -> WorkItem {
    WorkItem {
        task_id: "t1".parse().expect("valid id"),
        assignment: 1,
        agent_id: "agent-1".parse().expect("valid id"),
        description: "Process payment".into(),
        complexity: 2,
        required_skills: Default::default(),
        price_sats: 400_000,
        deadline: None,
        success_rate_bp: 9500,
        executor: Some(executor),
    }
}

fn exec(script: &str, timeout_ms: u64) -> WorkItem {
    item(ExecutorSettings::Exec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        timeout_ms,
    })
}

const DEFAULT: ExecutorSettings = ExecutorSettings::Simulate {
    mean_duration_ms: 0,
};

#[tokio::test]
async fn exec_passes_the_task_on_stdin_and_reports_stdout_stderr_and_timeouts() {
    // The command reads the work item from stdin: echo back its description.
    let ok = exec(
        r#"python3 -c 'import json,sys; print("did: " + json.load(sys.stdin)["description"])'"#,
        10_000,
    );
    assert_eq!(
        execute(&ok, &DEFAULT, 0).await,
        Outcome::Completed("did: Process payment".into())
    );

    let fails = exec("cat >/dev/null; echo 'out of coffee' >&2; exit 1", 10_000);
    match execute(&fails, &DEFAULT, 0).await {
        Outcome::Failed(reason) => assert!(
            reason.contains("out of coffee") && reason.contains("exit status: 1"),
            "{reason}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }

    let started = Instant::now();
    let hangs = exec("sleep 30", 300);
    match execute(&hangs, &DEFAULT, 0).await {
        Outcome::Failed(reason) => assert!(reason.contains("timed out after 300 ms"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the hung command was not stopped"
    );

    let missing = item(ExecutorSettings::Exec {
        command: vec!["/no/such/program".into()],
        timeout_ms: 1000,
    });
    assert!(
        matches!(execute(&missing, &DEFAULT, 0).await, Outcome::Failed(r) if r.contains("cannot run"))
    );
}

#[tokio::test]
async fn http_reports_2xx_bodies_and_fails_on_errors_and_silence() -> Result<()> {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/ok",
            post(|body: String| async move {
                let item: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                format!("handled {}", item["task_id"].as_str().unwrap_or("?"))
            }),
        )
        .route(
            "/fail",
            post(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "agent crashed",
                )
            }),
        )
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = |path: &str, timeout_ms| {
        item(ExecutorSettings::Http {
            url: format!("{base}{path}"),
            timeout_ms,
        })
    };

    assert_eq!(
        execute(&http("/ok", 5000), &DEFAULT, 0).await,
        Outcome::Completed("handled t1".into())
    );
    match execute(&http("/fail", 5000), &DEFAULT, 0).await {
        Outcome::Failed(reason) => assert!(
            reason.contains("500") && reason.contains("agent crashed"),
            "{reason}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    match execute(&http("/hang", 300), &DEFAULT, 0).await {
        Outcome::Failed(reason) => {
            assert!(reason.contains("did not answer within 300 ms"), "{reason}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn simulate_draws_the_same_outcome_for_the_same_seed_and_follows_the_success_rate() {
    let mut outcomes = Vec::new();
    let mut completed = 0;
    for n in 0..1000 {
        let mut work = item(ExecutorSettings::Simulate {
            mean_duration_ms: 0,
        });
        work.task_id = format!("t{n}").parse().expect("valid id");
        work.success_rate_bp = 7000;
        let outcome = execute(&work, &DEFAULT, 42).await;
        assert_eq!(
            execute(&work, &DEFAULT, 42).await,
            outcome,
            "same seed, same draw"
        );
        if matches!(outcome, Outcome::Completed(_)) {
            completed += 1;
        }
        outcomes.push(outcome);
    }
    // 70% success, within a generous band for 1,000 draws.
    assert!(
        (620..=780).contains(&completed),
        "{completed} of 1000 succeeded at a 70% rate"
    );
}
