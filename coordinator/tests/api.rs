//! The coordinator over HTTP, against a real `nats-server`, on port 0.

mod common;

use aicp_events::testing::NatsServer;
use anyhow::Result;
use common::{eventually, money_moves, submission_to_agent_1, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototype_stories_work_through_http() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    assert_eq!(
        app.get("/").await?.1,
        json!({"service": "AICP Coordinator", "status": "running"})
    );
    assert_eq!(app.get("/health").await?.1, json!({"status": "healthy"}));
    let agents = app.get("/agents").await?.1;
    assert_eq!(agents["agents"][0]["name"], "agent-1");
    assert_eq!(agents["agents"][0]["reputation_multiplier"], 2.0);
    assert_eq!(agents["agents"][0]["success_rate"], 0.95);

    // Story 1: a buyer submits; the best agent is chosen and priced.
    let (status, submitted) = app
        .post(
            "/tasks/submit",
            Some(
                json!({"description": "Process payment", "complexity": 2, "buyer_id": "buyer-001"}),
            ),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    assert_eq!(submitted["agent_name"], "agent-1");
    assert_eq!(submitted["price_satoshis"], 400_000);
    assert_eq!(submitted["status"], "assigned");
    let id = submitted["task_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 8);

    let (status, task) = app.get(&format!("/tasks/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["description"], "Process payment");
    assert_eq!(task["buyer_id"], "buyer-001");
    let listed = app.get("/tasks").await?.1;
    assert_eq!(listed["count"], 1);
    eventually(&app, "/v1/buyers/buyer-001", |b| {
        b["open_escrow_satoshis"] == 400_000
    })
    .await?;

    // Story 2: the agent completes it; it is paid, the escrow is empty again.
    let (status, done) = app
        .post(&format!("/tasks/{id}/complete?success=true"), None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["payment"], "released",
        "the answer waits for the payment"
    );
    let agent = app.agent("agent-1").await?;
    assert_eq!(agent["balance_satoshis"], 400_000);
    let buyer = app.get("/v1/buyers/buyer-001").await?.1;
    assert_eq!(
        (
            buyer["open_escrow_satoshis"].clone(),
            buyer["spent_satoshis"].clone()
        ),
        (json!(0), json!(400_000))
    );
    let escrow = app.get("/v1/ledger/escrow").await?.1;
    assert_eq!(escrow["balance_satoshis"], 0);
    assert_eq!(
        escrow["entries"].as_array().map(Vec::len),
        Some(2),
        "held, then released"
    );
    let ledger = app.get("/v1/ledger/agent:agent-1").await?.1;
    assert_eq!(ledger["entries"][0]["amount_satoshis"], 400_000);

    // The outcome counts toward agent-1's reputation (20 + 1 outcomes, all good).
    eventually(&app, "/v1/agents/agent-1", |a| {
        a["tasks_completed"] == 1 && a["success_rate_bp"] == 9523
    })
    .await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_paid_once_however_often_it_is_completed() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    let id = app.submit("buyer-001", 2).await?;
    let (first, _) = app
        .post(
            &format!("/tasks/{id}/complete"),
            Some(json!({"success": true, "result": "ok"})),
        )
        .await?;
    assert_eq!(first, StatusCode::OK);
    let (second, body) = app
        .post(
            &format!("/tasks/{id}/complete"),
            Some(json!({"success": true})),
        )
        .await?;
    assert_eq!(second, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "invalid_state");

    // 20 concurrent completions of one task: exactly one wins.
    let id = app.submit("buyer-002", 1).await?;
    let mut requests = Vec::new();
    for n in 0..20 {
        let (http, url) = (
            app.http.clone(),
            format!("{}/tasks/{id}/complete", app.base),
        );
        requests.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"success": true, "result": format!("try {n}")}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await??);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((ok, conflicts), (1, 19), "{statuses:?}");

    // agent-1 was paid for each task once: 400,000 + 200,000.
    eventually(&app, "/v1/agents/agent-1", |a| {
        a["balance_satoshis"] == 600_000 && a["active_tasks"] == 0
    })
    .await?;
    let escrow = app.get("/v1/ledger/escrow").await?.1;
    assert_eq!(escrow["balance_satoshis"], 0);
    // The stream itself holds each task's money moving exactly twice: held, released.
    let store =
        aicp_events::EventStore::new(server.client().await?, aicp_events::Namespace::default());
    assert_eq!(
        money_moves(&store, &id.parse()?).await?,
        ["EscrowHeld", "EscrowReleased"]
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_cancels_before_the_task_runs_and_is_refunded() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let id = app.submit("buyer-001", 2).await?;

    let (status, body) = app
        .post(
            &format!("/v1/tasks/{id}/cancel"),
            Some(json!({"buyer_id": "mallory"})),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post(
            &format!("/v1/tasks/{id}/cancel"),
            Some(json!({"buyer_id": "buyer-001", "reason": "changed my mind"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");

    let buyer = eventually(&app, "/v1/buyers/buyer-001", |b| {
        b["refunded_satoshis"] == 400_000
    })
    .await?;
    assert_eq!(buyer["open_escrow_satoshis"], 0);
    assert_eq!(
        app.get("/v1/ledger/buyer:buyer-001").await?.1["balance_satoshis"],
        0
    );
    let (status, _) = app.post(&format!("/tasks/{id}/complete"), None).await?;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a cancelled task cannot be completed"
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_is_retried_once_as_a_new_task() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let open = app.submit("buyer-001", 2).await?;
    let (status, body) = app.post(&format!("/v1/tasks/{open}/retry"), None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_retryable");
    let (status, _) = app.post("/v1/tasks/nope/retry", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = app
        .post(
            &format!("/v1/tasks/{open}/complete"),
            Some(json!({"success": false, "result": "broke"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, retry) = app.post(&format!("/v1/tasks/{open}/retry"), None).await?;
    assert_eq!(status, StatusCode::CREATED, "{retry}");
    assert_eq!(retry["id"], format!("{open}-retry"));
    assert_eq!(retry["retry_of"], open.as_str());
    assert_eq!(retry["status"], "assigned");
    assert_eq!(retry["buyer_id"], "buyer-001");
    assert_eq!(retry["complexity"], 2);
    let (status, again) = app.post(&format!("/v1/tasks/{open}/retry"), None).await?;
    assert_eq!(status, StatusCode::OK, "the same retry, not a second one");
    assert_eq!(again["id"], retry["id"]);

    // A retry that fails is retried as -retry2.
    let first = format!("{open}-retry");
    app.post(
        &format!("/v1/tasks/{first}/complete"),
        Some(json!({"success": false, "result": "broke again"})),
    )
    .await?;
    let (status, second) = app.post(&format!("/v1/tasks/{first}/retry"), None).await?;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["id"], format!("{open}-retry2"));
    // Money: the two failures were refunded, the open retry is held, each at the price
    // it was given when submitted (the agent's record changed in between).
    let price = |t: &serde_json::Value| t["price_satoshis"].as_u64().unwrap_or_default();
    let (refunded, held) = (400_000 + price(&retry), price(&second));
    eventually(&app, "/v1/buyers/buyer-001", |b| {
        b["refunded_satoshis"] == refunded && b["open_escrow_satoshis"] == held
    })
    .await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_one_error_shape_and_writes_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let submit = |body: Value| app.post("/tasks/submit", Some(body));

    let cases = [
        (
            json!({"description": "", "complexity": 2, "buyer_id": "b"}),
            StatusCode::BAD_REQUEST,
            "invalid_description",
        ),
        (
            json!({"description": "x".repeat(4097), "complexity": 2, "buyer_id": "b"}),
            StatusCode::BAD_REQUEST,
            "invalid_description",
        ),
        (
            json!({"description": "x", "complexity": 0, "buyer_id": "b"}),
            StatusCode::BAD_REQUEST,
            "invalid_complexity",
        ),
        (
            json!({"description": "x", "complexity": 11, "buyer_id": "b"}),
            StatusCode::BAD_REQUEST,
            "invalid_complexity",
        ),
        (
            json!({"description": "x", "complexity": 2, "buyer_id": "a.b"}),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            // Only a buyer's own submission may leave its buyer out.
            json!({"description": "x", "complexity": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_buyer",
        ),
        (
            json!({"description": "x", "complexity": 2, "buyer_id": "b", "required_skills": ["telepathy"]}),
            StatusCode::CONFLICT,
            "no_eligible_agent",
        ),
    ];
    for (body, status, code) in cases {
        let (got, error) = submit(body.clone()).await?;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    let raw = app
        .http
        .post(format!("{}/tasks/submit", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let huge = json!({"description": "x".repeat(1 << 20), "complexity": 2, "buyer_id": "b"});
    // On a connection of its own: the server answers 413 before reading the whole body and
    // closes that connection, which a pooled client would otherwise reuse for the next call.
    let (status, error) = app
        .as_token(Some(common::ADMIN_TOKEN))
        .post("/tasks/submit", Some(huge))
        .await?;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );

    assert_eq!(app.get("/tasks/deadbeef").await?.0, StatusCode::NOT_FOUND);
    let (status, body) = app.get("/tasks/%FF").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path"))
    );
    assert_eq!(
        app.get("/tasks/dead.beef").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/agents/agent-9").await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post("/tasks/deadbeef/complete", None).await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/tasks?status=done").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/tasks?limit=0").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/tasks?cursor=zz").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.get("/v1/ledger/bank").await?.0, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/nope").await?.0, StatusCode::NOT_FOUND);

    // Nothing was written by any of it.
    assert_eq!(app.get("/tasks").await?.1["count"], 0);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_agents_and_lists_follow_the_rules() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    let quote = app.get("/v1/quote?complexity=2").await?.1;
    assert_eq!(
        (quote["agent_name"].clone(), quote["price_satoshis"].clone()),
        (json!("agent-1"), json!(400_000))
    );
    let capped = app
        .get("/v1/quote?complexity=2&max_price_satoshis=250000")
        .await?
        .1;
    assert_eq!(capped["agent_name"], "agent-3");

    let (status, agent) = app
        .post(
            "/v1/agents",
            Some(json!({"agent_id": "translator", "skills": ["NLP"], "mode": "manual"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    assert_eq!(
        (
            agent["mode"].clone(),
            agent["reputation_multiplier"].clone()
        ),
        (json!("manual"), json!(1.0))
    );
    assert_eq!(
        app.post("/v1/agents", Some(json!({"agent_id": "translator"})))
            .await?
            .0,
        StatusCode::CONFLICT
    );
    let skilled = app.get("/v1/quote?complexity=1&skills=nlp").await?.1;
    assert_eq!(skilled["agent_name"], "translator");

    let response = app
        .http
        .patch(format!("{}/v1/agents/agent-1", app.base))
        .json(&json!({"accepting": false}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/quote?complexity=2").await?.1["agent_name"],
        "agent-2"
    );

    for n in 0..5 {
        app.submit(if n % 2 == 0 { "even" } else { "odd" }, 1)
            .await?;
    }
    let page = app.get("/v1/tasks?limit=2").await?.1;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    let next = app
        .get(&format!("/v1/tasks?limit=10&cursor={cursor}"))
        .await?
        .1;
    assert_eq!(next["tasks"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        app.get("/v1/tasks?buyer=odd").await?.1["tasks"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        app.get("/v1/tasks?agent=agent-2&status=assigned").await?.1["tasks"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_deadline_expires_and_is_refunded() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let deadline = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (status, task) = app
        .post("/v1/tasks", Some(json!({"description": "soon", "complexity": 1, "buyer_id": "b1", "deadline": deadline})))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = app
        .post("/v1/tasks", Some(json!({"description": "too late", "complexity": 1, "buyer_id": "b1", "deadline": "2020-01-01T00:00:00Z"})))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let expired = eventually(&app, &format!("/tasks/{id}"), |t| {
        t["payment"] == "refunded"
    })
    .await?;
    assert_eq!(expired["status"], "expired");
    let buyer = app.get("/v1/buyers/b1").await?.1;
    assert_eq!(
        (
            buyer["open_escrow_satoshis"].clone(),
            buyer["refunded_satoshis"].clone()
        ),
        (json!(0), json!(200_000))
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_describe_the_coordinator() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let id = app.submit("buyer-001", 2).await?;
    app.post(&format!("/tasks/{id}/complete"), None).await?;
    app.get("/tasks/deadbeef").await?;
    // Settlement is done once the outcome is on the agent's record; nothing appends after.
    eventually(&app, "/v1/agents/agent-1", |a| a["success_rate_bp"] == 9523).await?;

    let ready = app.get("/ready").await?;
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
    let text = app.metrics().await?;
    for expected in [
        r#"aicp_http_request_duration_seconds_count{method="POST",route="/tasks/submit",status="200"} 1"#,
        r#"aicp_http_request_duration_seconds_count{method="GET",route="/tasks/{id}",status="404"} 1"#,
        r#"aicp_events_appended_total{outcome="ok"}"#,
        "aicp_projection_applied_sequence ",
        "aicp_projection_lag_events ",
        "aicp_settlement_pending_events ",
        "aicp_settlement_steps_total ",
        // The task was dispatched to agent-1's queue; no worker ran to take it.
        r#"aicp_queue_depth{agent="agent-1"} 1"#,
        r#"aicp_queue_depth{agent="agent-2"} 0"#,
        "aicp_work_dispatched_total 1",
        "aicp_dispatch_pending_events ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The read model has applied the whole stream, so the lag is zero.
    let lag = text
        .lines()
        .find(|l| l.starts_with("aicp_projection_lag_events "))
        .unwrap_or_default();
    assert_eq!(lag, "aicp_projection_lag_events 0");
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_methods_refuse_what_they_did_not_hand_out() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let delete = app
        .http
        .delete(format!("{}/health", app.base))
        .send()
        .await?;
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = delete.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed");
    for path in ["/v1/agents?cursor=a.b", "/v1/buyers?cursor=%20"] {
        let (status, body) = app.get(path).await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_cursor")),
            "{path}"
        );
    }
    let empty = app
        .http
        .patch(format!("{}/v1/agents/agent-1", app.base))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let entry = app.get("/v1/ledger/agent:agent-1").await?.1;
    assert_eq!(entry["account"], "agent:agent-1");
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_carry_executor_settings() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let http = json!({"kind": "http", "url": "http://127.0.0.1:9000/run", "timeout_ms": 30000});
    let (status, agent) = app
        .post(
            "/v1/agents",
            Some(json!({"agent_id": "remote", "skills": ["nlp"], "executor": http})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    assert_eq!(agent["executor"], http);

    let exec = json!({"kind": "exec", "command": ["python3", "agent.py"], "timeout_ms": 5000});
    let response = app
        .http
        .patch(format!("{}/v1/agents/remote", app.base))
        .json(&json!({"executor": exec}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.agent("remote").await?["executor"], exec);
    assert_eq!(
        app.agent("agent-1").await?["executor"],
        Value::Null,
        "seed agents use the workers' default"
    );

    for bad in [
        json!({"kind": "exec", "command": [], "timeout_ms": 5000}),
        json!({"kind": "http", "url": "ftp://x", "timeout_ms": 5000}),
        json!({"kind": "http", "url": "http://x", "timeout_ms": 0}),
    ] {
        let (status, body) = app
            .post(
                "/v1/agents",
                Some(json!({"agent_id": "other", "executor": bad})),
            )
            .await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_executor")),
            "{bad}"
        );
    }
    let (status, _) = app
        .post(
            "/v1/agents",
            Some(json!({"agent_id": "other", "executor": {"kind": "magic"}})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_a_write_on_the_same_replica_sees_it_with_the_same_fields() -> Result<()>
{
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    for n in 0..50 {
        let buyer = format!("ryw-{}", n % 3);
        let (status, posted) = app
            .post(
                "/v1/tasks",
                Some(json!({"description": "x", "complexity": 1 + n % 10, "buyer_id": buyer})),
            )
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{posted}");
        let id = posted["id"].as_str().unwrap_or_default().to_owned();
        // The answer came on the append's acknowledgement; the read waits for it here.
        let (status, got) = app.get(&format!("/v1/tasks/{id}")).await?;
        assert_eq!(status, StatusCode::OK, "{got}");
        let mut got = got;
        let mut posted = posted;
        // Escrow is held by the settlement manager, which may have run in between.
        got["payment"] = json!(null);
        posted["payment"] = json!(null);
        assert_eq!(got, posted, "the answer is the task the read model shows");
        let (_, listed) = app.get(&format!("/v1/tasks?buyer={buyer}&limit=1")).await?;
        assert_eq!(listed["tasks"][0]["id"], json!(id), "{listed}");
    }
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_the_coordinator_is_not_ready_and_writes_get_503() -> Result<()> {
    let mut server = NatsServer::start()?;
    let app = TestApp::spawn_with(&server, tempfile::tempdir()?, &[]).await?;
    server.kill()?;
    let (status, body) = app.get("/ready").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    let (status, body) = app
        .post(
            "/tasks/submit",
            Some(json!({"description": "x", "complexity": 1, "buyer_id": "b1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Reads keep working from the read model.
    assert_eq!(app.get("/agents").await?.0, StatusCode::OK);

    server.restart()?;
    eventually(&app, "/ready", |r| r["status"] == "ready").await?;
    app.submit("b1", 1).await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn_with(
        &server,
        tempfile::tempdir()?,
        &["--cors-origins", "http://ui.example"],
    )
    .await?;
    let preflight = |origin: &'static str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/tasks/submit", app.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("http://ui.example").await?;
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://ui.example")
    );
    let refused = preflight("http://evil.example").await?;
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_that_is_taken_is_never_confused_with_the_new_task() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let taken = app.submit("alice", 2).await?;
    let events = |id: &aicp_events::id::TaskId| submission_to_agent_1(id, "bob", 1);
    let ids = [taken.parse()?, "b0b0b0b0".parse()?];
    let (id, decided) = app
        .state
        .store_submission(ids, events)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    assert_eq!(id.as_str(), "b0b0b0b0", "the taken id was skipped");
    assert_eq!(decided.view.task.buyer_id.as_str(), "bob");
    assert_eq!(
        app.get(&format!("/tasks/{taken}")).await?.1["buyer_id"],
        "alice"
    );
    assert_eq!(app.get("/tasks/b0b0b0b0").await?.1["buyer_id"], "bob");
    app.shutdown().await
}

#[tokio::test]
async fn health_check_mode_exits_0_for_a_healthy_coordinator_and_1_otherwise() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let check = |listen: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_aicp-coordinator"))
            .args(["--listen", &listen, "--health-check"])
            .output()
            .await
    };
    let listen = app.base.trim_start_matches("http://").to_owned();
    let healthy = check(listen).await?;
    assert_eq!(healthy.status.code(), Some(0), "{healthy:?}");

    // Listening on every address is checked on loopback, as in the container image.
    let port = app.base.rsplit(':').next().unwrap_or_default().to_owned();
    let any = check(format!("0.0.0.0:{port}")).await?;
    assert_eq!(any.status.code(), Some(0), "{any:?}");

    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let nobody = check(free.to_string()).await?;
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no coordinator answers"));
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_start_and_outcome_in_one_call_stored_as_one_message() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let id = app.submit("buyer-001", 2).await?;
    let path = format!("/v1/tasks/{id}/complete");
    // Half a start is refused, and stores nothing.
    let (status, body) = app
        .post(&path, Some(json!({"success": true, "assignment": 1})))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_start");
    // An assignment this replica has not seen: ask again later.
    let (status, body) = app
        .post(
            &path,
            Some(json!({"success": true, "assignment": 2, "worker_id": "w1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_yet");

    let (status, done) = app
        .post(
            &path,
            Some(json!({"success": true, "result": "ok", "assignment": 1, "worker_id": "w1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["payment"], "released");
    // Two messages in all: the submission, and the report with everything it settles.
    let store =
        aicp_events::EventStore::new(server.client().await?, aicp_events::Namespace::default());
    let stored = store
        .read(&aicp_events::Aggregate::Task(id.parse()?))
        .await?;
    let messages: Vec<Vec<&str>> = stored
        .batches
        .iter()
        .map(|b| b.events.iter().map(|e| e.event.event_type()).collect())
        .collect();
    assert_eq!(
        messages,
        [
            vec!["TaskSubmitted", "TaskAssigned", "EscrowHeld"],
            vec![
                "TaskStarted",
                "TaskCompleted",
                "EscrowReleased",
                "AgentOutcomeCounted"
            ],
        ]
    );
    let started_by: Vec<_> = stored
        .events()
        .filter_map(|e| match &e.event {
            aicp_events::Event::TaskStarted(s) => Some(s.worker_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started_by, ["w1"]);
    eventually(&app, "/v1/agents/agent-1", |a| a["tasks_completed"] == 1).await?;
    // The same report again (a redelivery) finds the work done.
    let (status, body) = app
        .post(
            &path,
            Some(json!({"success": true, "assignment": 1, "worker_id": "w2"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_running");
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stored_in_the_older_layout_is_still_held_paid_and_counted() -> Result<()> {
    use aicp_events::{Aggregate, Expected};

    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    // As a coordinator before escrow rode with the submission wrote it: no escrow.
    let id: aicp_events::id::TaskId = "old00001".parse()?;
    app.state
        .store
        .append(
            &Aggregate::Task(id.clone()),
            &submission_to_agent_1(&id, "buyer-001", 2),
            Expected::NEW,
            None,
        )
        .await?;
    // The settlement manager holds its escrow on the payment subject, as it used to.
    eventually(&app, &format!("/v1/tasks/{id}"), |t| t["payment"] == "held").await?;
    let (status, done) = app
        .post(
            &format!("/v1/tasks/{id}/complete"),
            Some(json!({"success": true})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["payment"], "released");
    eventually(&app, "/v1/agents/agent-1", |a| {
        a["tasks_completed"] == 1 && a["balance_satoshis"] == 400_000
    })
    .await?;
    let store =
        aicp_events::EventStore::new(server.client().await?, aicp_events::Namespace::default());
    assert_eq!(
        money_moves(&store, &id).await?,
        ["EscrowHeld", "EscrowReleased"]
    );
    let (_, check) = app.get("/v1/read-model/check").await?;
    assert_eq!(check["invariants"]["failed"], json!([]), "{check}");
    app.shutdown().await
}
