//! `Idempotency-Key` on writes and `POST /v1/tasks/batch`, against a real `nats-server`:
//! retries get the first answer across restarts, rebuilds and replicas; a key reused for
//! another request is 409; a batch answers per item and stores only what it accepts.

mod common;

use aicp_events::testing::NatsServer;
use anyhow::{ensure, Result};
use common::{Api, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sends `body` to `path` with `Idempotency-Key: key`.
async fn keyed(
    api: &Api,
    method: Method,
    path: &str,
    key: &str,
    body: &Value,
) -> Result<(StatusCode, Value)> {
    let response = api
        .request(method, path)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    Ok((response.status(), response.json().await?))
}

/// How many tasks the marketplace holds.
async fn task_count(api: &Api) -> Result<usize> {
    let (status, page) = api.get("/v1/tasks?limit=500").await?;
    ensure!(status == StatusCode::OK, "list: {status} {page}");
    Ok(page["tasks"].as_array().map_or(0, Vec::len))
}

/// The read model's money and ledger invariants all hold.
async fn invariants_hold(api: &Api) -> Result<()> {
    let (status, check) = api.get("/v1/read-model/check").await?;
    ensure!(status == StatusCode::OK, "check: {status} {check}");
    let invariants = &check["invariants"];
    assert_eq!(invariants["failed"], json!([]), "{invariants}");
    Ok(())
}

fn order(description: &str) -> Value {
    json!({"description": description, "complexity": 2, "buyer_id": "buyer-001"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_gets_the_first_answer_after_a_restart_and_a_rebuild() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    let (status, first) = keyed(
        &app,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Ship it"),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = keyed(
        &app,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Ship it"),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again, first, "a retry gets the first answer");

    // The same key with another request is refused, and stores nothing.
    let (status, refused) = keyed(
        &app,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Something else"),
    )
    .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    // Nor may it name another route.
    let path = format!(
        "/v1/tasks/{}/cancel",
        first["id"].as_str().unwrap_or_default()
    );
    let (status, refused) = keyed(&app, Method::POST, &path, "order-1", &json!({})).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    // A key that is not one is 400.
    for bad in ["k".repeat(256), "tab\tkey".to_owned()] {
        let (status, refused) = keyed(&app, Method::POST, "/v1/tasks", &bad, &order("x")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_idempotency_key");
    }
    // Keys are each caller's own: a buyer's "order-1" is another request.
    let (_, secret) = app.issue_token("buyer:buyer-001").await?;
    let buyer = app.as_token(Some(&secret));
    let (status, theirs) = keyed(
        &buyer,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Ship it"),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(task_count(&app).await?, 2);

    // The keys are in the events: a restarted coordinator, and one that rebuilds its
    // read model from the stream, answer the retry as the first was answered, even though
    // the task has changed since.
    let (status, cancelled) = app.post(&path, Some(json!({}))).await?;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let data = app.stop().await?;
    let app = TestApp::spawn_in(&server, data).await?;
    let (status, again) = keyed(
        &app,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Ship it"),
    )
    .await?;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    app.shutdown().await?;
    let rebuilt = TestApp::spawn(&server).await?;
    let (status, again) = keyed(
        &rebuilt,
        Method::POST,
        "/v1/tasks",
        "order-1",
        &order("Ship it"),
    )
    .await?;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    assert_eq!(task_count(&rebuilt).await?, 2);
    invariants_hold(&rebuilt).await?;
    rebuilt.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_racing_on_two_replicas_store_one_task() -> Result<()> {
    let server = NatsServer::start()?;
    let a = TestApp::spawn(&server).await?;
    let b = TestApp::spawn(&server).await?;

    let mut racing = Vec::new();
    for n in 0..8 {
        let api = if n % 2 == 0 {
            a.api.clone()
        } else {
            b.api.clone()
        };
        racing.push(tokio::spawn(async move {
            keyed(
                &api,
                Method::POST,
                "/v1/tasks",
                "once",
                &order("Exactly once"),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for answer in racing {
        let (status, body) = answer.await??;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry names the one task: {ids:?}");
    let listed = common::eventually(&a, "/v1/tasks", |page| {
        page["tasks"].as_array().is_some_and(|t| !t.is_empty())
    })
    .await?;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(task_count(&b).await?, 1);

    // Cancels of the task racing with one key: one cancellation, one refund, and every
    // racer answered with it (nats-server 2.9 answers the losers as duplicates; newer
    // servers refuse them on the sequence, and the store finds the key's message).
    let path = format!("/v1/tasks/{}/cancel", ids[0].as_str().unwrap_or_default());
    let mut racing = Vec::new();
    for n in 0..6 {
        let api = if n % 2 == 0 {
            a.api.clone()
        } else {
            b.api.clone()
        };
        let path = path.clone();
        racing.push(tokio::spawn(async move {
            keyed(&api, Method::POST, &path, "cancel-once", &json!({})).await
        }));
    }
    let mut answers = Vec::new();
    for answer in racing {
        let (status, body) = answer.await??;
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.push(body);
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["status"], "cancelled");
    let task: aicp_events::id::TaskId = ids[0].as_str().unwrap_or_default().parse()?;
    let moves = common::money_moves(&a.state.store, &task).await?;
    assert_eq!(moves, ["EscrowHeld", "EscrowRefunded"]);
    invariants_hold(&a).await?;
    b.shutdown().await?;
    a.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_agent_and_token_writes_answer_their_retries_once() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    // An agent registered twice with one key: the second gets the first's answer rather
    // than "agent exists".
    let agent = json!({"agent_id": "agent-k", "skills": ["ocr"], "mode": "manual"});
    let (status, first) = keyed(&app, Method::POST, "/v1/agents", "reg-1", &agent).await?;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = keyed(&app, Method::POST, "/v1/agents", "reg-1", &agent).await?;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    let (status, plain) = app.post("/v1/agents", Some(agent.clone())).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{plain}");
    // A profile change retried: one change, answered twice alike.
    let pause = json!({"accepting": false});
    let (status, first) =
        keyed(&app, Method::PATCH, "/v1/agents/agent-k", "pause-1", &pause).await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) =
        keyed(&app, Method::PATCH, "/v1/agents/agent-k", "pause-1", &pause).await?;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    let stored = app
        .state
        .store
        .read(&aicp_events::Aggregate::Agent("agent-k".parse()?))
        .await?;
    assert_eq!(stored.batches.len(), 2, "registered, then paused once");

    // A cancellation retried: the task as the first cancel left it, one refund.
    let id = app.submit("buyer-001", 2).await?;
    let path = format!("/v1/tasks/{id}/cancel");
    let reason = json!({"reason": "changed my mind"});
    let (status, first) = keyed(&app, Method::POST, &path, "cancel-1", &reason).await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "cancelled");
    let (status, again) = keyed(&app, Method::POST, &path, "cancel-1", &reason).await?;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    let task: aicp_events::id::TaskId = id.parse()?;
    let moves = common::money_moves(&app.state.store, &task).await?;
    assert_eq!(moves, ["EscrowHeld", "EscrowRefunded"]);

    // A token issued twice: one token, its secret shown to the first request only.
    let body = json!({"principal": "buyer:buyer-002", "label": "ci"});
    let (status, first) = keyed(&app, Method::POST, "/v1/tokens", "tok-1", &body).await?;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(first["token"].is_string());
    let (status, again) = keyed(&app, Method::POST, "/v1/tokens", "tok-1", &body).await?;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["token_id"], first["token_id"]);
    assert_eq!(again["token"], Value::Null);
    let (_, tokens) = app.get("/v1/tokens").await?;
    let labelled = tokens["tokens"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|t| t["label"] == "ci").count());
    assert_eq!(labelled, 1, "{tokens}");
    // The issue's key is not a revocation's: refused, and the token stays valid.
    let token_id = first["token_id"].as_str().unwrap_or_default();
    let revoke = format!("/v1/tokens/{token_id}/revoke");
    let (status, refused) = keyed(&app, Method::POST, &revoke, "tok-1", &json!({})).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (_, shown) = app.get(&format!("/v1/tokens/{token_id}")).await?;
    assert_eq!(shown["revoked_at"], Value::Null, "{shown}");
    invariants_hold(&app).await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_item_and_stores_only_what_it_accepts() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (_, secret) = app.issue_token("buyer:buyer-001").await?;
    let buyer = app.as_token(Some(&secret));

    let tasks = json!({"tasks": [
        {"description": "one", "complexity": 2, "policy": "round-robin"},
        {"description": "", "complexity": 2},
        {"description": "two", "complexity": 11},
        {"description": "three", "complexity": 3, "policy": "round-robin"},
        {"description": "for another buyer", "buyer_id": "buyer-002"},
        {"description": "four", "required_skills": ["no-one-has-this"]},
        "not a task",
        {"description": "five", "complexity": 1, "policy": "round-robin"},
    ]});
    let (status, answer) = buyer.post("/v1/tasks/batch", Some(tasks.clone())).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["refused"].as_u64()),
        (Some(3), Some(5))
    );
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    let codes: Vec<(u64, String)> = items
        .iter()
        .map(|i| {
            let code = i["error"]["code"].as_str().unwrap_or("accepted").to_owned();
            (i["status"].as_u64().unwrap_or(0), code)
        })
        .collect();
    let expected = [
        (201, "accepted"),
        (400, "invalid_description"),
        (400, "invalid_complexity"),
        (201, "accepted"),
        (403, "forbidden"),
        (409, "no_eligible_agent"),
        (400, "invalid_json"),
        (201, "accepted"),
    ];
    for (n, ((status, code), (want_status, want_code))) in codes.iter().zip(expected).enumerate() {
        assert_eq!(*status, want_status, "item {n}: {}", items[n]);
        assert_eq!(code, want_code, "item {n}: {}", items[n]);
    }
    // Assigned in order, as one request after another: round-robin moves on per item.
    let agents: Vec<&Value> = [0, 3, 7]
        .iter()
        .map(|&i| &items[i]["task"]["agent_name"])
        .collect();
    assert!(
        agents[0] != agents[1] && agents[1] != agents[2],
        "{agents:?}"
    );
    assert_eq!(items[3]["task"]["buyer_id"], "buyer-001");
    assert_eq!(task_count(&app).await?, 3);

    // Bad batches are refused whole, and store nothing.
    let too_many: Vec<Value> = (0..1001)
        .map(|n| json!({"description": format!("t{n}")}))
        .collect();
    for (body, code) in [
        (json!({"tasks": too_many}), "batch_too_large"),
        (json!({"tasks": []}), "empty_batch"),
        (json!({"tasks": "none"}), "invalid_json"),
    ] {
        let (status, refused) = buyer.post("/v1/tasks/batch", Some(body)).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        assert_eq!(refused["error"]["code"], code);
    }
    assert_eq!(task_count(&app).await?, 3);

    // With a key: the retry answers the stored items as they were, decides the refused
    // ones again, stores nothing new; another batch under the key is 409.
    let (status, first) = keyed(&buyer, Method::POST, "/v1/tasks/batch", "batch-1", &tasks).await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(task_count(&app).await?, 6);
    let (status, again) = keyed(&buyer, Method::POST, "/v1/tasks/batch", "batch-1", &tasks).await?;
    assert_eq!((status, &again), (StatusCode::OK, &first));
    assert_eq!(task_count(&app).await?, 6);
    let other = json!({"tasks": [{"description": "other"}]});
    let (status, refused) =
        keyed(&buyer, Method::POST, "/v1/tasks/batch", "batch-1", &other).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(task_count(&app).await?, 6);
    invariants_hold(&app).await?;

    // A thousand in one request, all accepted, each a task of its own.
    let thousand: Vec<Value> = (0..1000)
        .map(|n| json!({"description": format!("bulk {n}"), "complexity": 1 + n % 10}))
        .collect();
    let (status, answer) = buyer
        .post("/v1/tasks/batch", Some(json!({"tasks": thousand})))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["accepted"], 1000, "{}", answer["items"][0]);
    let mut ids: Vec<&str> = answer["items"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["task"]["id"].as_str()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    let (_, buyer_view) = app.get("/v1/buyers/buyer-001").await?;
    assert_eq!(buyer_view["tasks_submitted"], 1006, "{buyer_view}");
    invariants_hold(&app).await?;
    app.shutdown().await
}
