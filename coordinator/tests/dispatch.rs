//! The dispatcher against a real `nats-server`: worker-mode assignments reach their agent's
//! work queue once, with what a worker needs; manual agents' tasks never do.

mod common;

use aicp_events::testing::NatsServer;
use aicp_events::work::WorkItem;
use anyhow::{ensure, Result};
use common::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::json;

async fn dispatcher_idle(app: &TestApp) -> Result<()> {
    ensure!(
        app.metrics_reach(100, &["aicp_dispatch_pending_events 0"])
            .await?,
        "the dispatcher did not finish"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_agents_get_one_work_message_and_manual_agents_none() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (status, _) = app
        .post(
            "/v1/agents",
            Some(json!({"agent_id": "human", "skills": ["art"], "mode": "manual"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);

    let id = app.submit("buyer-001", 2).await?;
    let (status, manual) = app
        .post("/v1/tasks", Some(json!({"description": "paint", "complexity": 1, "buyer_id": "b2", "required_skills": ["art"]})))
        .await?;
    assert_eq!(
        (status, manual["agent_name"].as_str()),
        (StatusCode::CREATED, Some("human"))
    );
    dispatcher_idle(&app).await?;

    let store =
        aicp_events::EventStore::new(server.client().await?, aicp_events::Namespace::default());
    let depths = store.work_queue_depths().await?;
    assert_eq!(depths.get("agent-1"), Some(&1), "{depths:?}");
    assert_eq!(
        depths.get("human"),
        None,
        "a manual agent's task is never dispatched"
    );

    let stream = store.jetstream().get_stream("AICP_WORK").await?;
    let message = stream
        .get_last_raw_message_by_subject("aicp.work.agent-1")
        .await?;
    ensure!(
        message.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(&format!("work:{id}:1")[..])
    );
    let item: WorkItem = serde_json::from_slice(&message.payload)?;
    assert_eq!(item.task_id.as_str(), id);
    assert_eq!(
        (item.assignment, item.price_sats, item.complexity),
        (1, 400_000, 2)
    );
    assert_eq!((item.success_rate_bp, item.executor), (9500, None));

    // The task finished without a worker: the work message is stale, and stays one.
    app.post(&format!("/tasks/{id}/complete"), None).await?;
    eventually(&app, &format!("/tasks/{id}"), |t| {
        t["status"] == "completed"
    })
    .await?;
    dispatcher_idle(&app).await?;
    assert_eq!(store.work_queue_depths().await?.get("agent-1"), Some(&1));
    app.shutdown().await
}
