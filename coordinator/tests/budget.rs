//! Prepaid balances and spending limits against a real `nats-server`: deposits, limits,
//! 402s that say which limit and by how much, refunds back into the balance, racing
//! replicas that cannot overspend, and reservations that lapse.

mod common;

use std::time::Duration;

use aicp_events::domain::access::Principal;
use aicp_events::id::{BuyerId, TaskId};
use aicp_events::testing::NatsServer;
use anyhow::{ensure, Result};
use common::{eventually, Api, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// What a complexity-1 task costs at agent-1 (2.0x), the best reputation at start.
const PRICE: u64 = 200_000;

async fn send(api: &Api, method: Method, path: &str, body: Value) -> Result<(StatusCode, Value)> {
    let response = api.request(method, path).json(&body).send().await?;
    Ok((response.status(), response.json().await?))
}

async fn deposit(api: &Api, buyer: &str, amount: u64) -> Result<Value> {
    let (status, body) = send(
        api,
        Method::POST,
        &format!("/v1/buyers/{buyer}/deposits"),
        json!({"amount_satoshis": amount, "reference": "test"}),
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "deposit: {status} {body}");
    Ok(body)
}

async fn submit(api: &Api, buyer: &str) -> Result<(StatusCode, Value)> {
    send(
        api,
        Method::POST,
        "/v1/tasks",
        json!({"description": "Summarise", "complexity": 1, "buyer_id": buyer}),
    )
    .await
}

async fn budget(api: &Api, buyer: &str) -> Result<Value> {
    let (status, body) = api.get(&format!("/v1/buyers/{buyer}")).await?;
    ensure!(status == StatusCode::OK, "buyer: {status} {body}");
    Ok(body["budget"].clone())
}

async fn invariants_hold(api: &Api) -> Result<()> {
    let (status, check) = api.get("/v1/read-model/check").await?;
    ensure!(status == StatusCode::OK, "check: {status} {check}");
    assert_eq!(check["invariants"]["failed"], json!([]), "{check}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_buyer_spends_its_balance_and_past_it_is_refused_with_402() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;

    // No budget: the buyer pays as before, and shows none.
    assert_eq!(submit(&app.api, "walk-in").await?.0, StatusCode::CREATED);
    assert_eq!(budget(&app.api, "walk-in").await?, Value::Null);

    let after = deposit(&app.api, "b1", 500_000).await?;
    assert_eq!(after["budget"]["balance_satoshis"], 500_000, "{after}");
    let (status, first) = submit(&app.api, "b1").await?;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["price_satoshis"], PRICE, "{first}");
    assert_eq!(submit(&app.api, "b1").await?.0, StatusCode::CREATED);

    let (status, refused) = submit(&app.api, "b1").await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    let error = &refused["error"];
    assert_eq!(error["code"], "insufficient_balance", "{refused}");
    assert_eq!(error["limit"], "balance");
    assert_eq!(error["needed_satoshis"], PRICE);
    assert_eq!(error["available_satoshis"], 100_000);
    assert_eq!(error["short_by_satoshis"], 100_000);
    let shown = budget(&app.api, "b1").await?;
    assert_eq!(shown["balance_satoshis"], 100_000, "{shown}");
    assert_eq!(shown["spent_total_satoshis"], 2 * PRICE, "{shown}");
    assert_eq!(shown["left_today_satoshis"], 100_000, "{shown}");

    // A cancelled task's refund goes back into the balance, and pays for the next one.
    let task = first["id"].as_str().unwrap_or_default();
    let (status, body) = app
        .api
        .post(&format!("/v1/tasks/{task}/cancel"), Some(json!({})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(&app.api, "/v1/buyers/b1", |b| {
        b["budget"]["balance_satoshis"] == 300_000
    })
    .await?;
    assert_eq!(submit(&app.api, "b1").await?.0, StatusCode::CREATED);
    invariants_hold(&app.api).await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_and_limits_refuse_bad_input_and_strangers_and_store_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (_, secret) = app.api.issue_token("buyer:b1").await?;
    let buyer = app.api.as_token(Some(&secret));
    let path = "/v1/buyers/b1/deposits";

    for (body, code) in [
        (json!({"amount_satoshis": 0}), "invalid_amount"),
        (json!({"amount_satoshis": -5}), "invalid_json"),
        (json!({"amount_satoshis": 1.5}), "invalid_json"),
        (json!({"amount_satoshis": "100"}), "invalid_json"),
        (json!({"amount": 100}), "invalid_json"),
        (
            json!({"amount_satoshis": 3_000_000_000_000_000u64}),
            "invalid_amount",
        ),
        (
            json!({"amount_satoshis": 1, "reference": "x".repeat(201)}),
            "invalid_reference",
        ),
    ] {
        let (status, answer) = send(&app.api, Method::POST, path, body.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    // A buyer cannot pay itself in; it sets its own limits, not another buyer's.
    let (status, answer) = send(&buyer, Method::POST, path, json!({"amount_satoshis": 5})).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = send(
        &buyer,
        Method::PUT,
        "/v1/buyers/b2/limits",
        json!({"daily_limit_satoshis": 5}),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) = send(
        &buyer,
        Method::PUT,
        "/v1/buyers/b1/limits",
        json!({"daily_limit_satoshis": -1}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = send(
        &app.api,
        Method::POST,
        "/v1/buyers/b.1/deposits",
        json!({"amount_satoshis": 5}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Nothing of that was stored: the buyer has no budget, and its tasks are not checked.
    assert_eq!(budget(&app.api, "b1").await?, Value::Null);
    let stored = app
        .state
        .store
        .read(&aicp_events::Aggregate::Buyer("b1".parse()?))
        .await?;
    assert!(stored.batches.is_empty(), "{:?}", stored.batches);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_and_total_limits_say_which_refused_and_by_how_much() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (_, secret) = app.api.issue_token("buyer:b1").await?;
    let buyer = app.api.as_token(Some(&secret));
    deposit(&app.api, "b1", 10_000_000).await?;

    let (status, set) = send(
        &buyer,
        Method::PUT,
        "/v1/buyers/b1/limits",
        json!({"daily_limit_satoshis": 300_000}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["budget"]["daily_limit_satoshis"], 300_000, "{set}");
    assert_eq!(set["budget"]["total_limit_satoshis"], Value::Null, "{set}");
    assert_eq!(submit(&buyer, "b1").await?.0, StatusCode::CREATED);
    let (status, refused) = submit(&buyer, "b1").await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["code"], "over_daily_limit", "{refused}");
    assert_eq!(refused["error"]["available_satoshis"], 100_000);
    assert_eq!(refused["error"]["short_by_satoshis"], 100_000);

    // The total limit replaces the daily one (PUT sets both; a missing one is no limit).
    let (status, set) = send(
        &buyer,
        Method::PUT,
        "/v1/buyers/b1/limits",
        json!({"total_limit_satoshis": 250_000}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{set}");
    let (status, refused) = submit(&buyer, "b1").await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["code"], "over_total_limit", "{refused}");
    assert_eq!(refused["error"]["limit"], "total");
    assert_eq!(refused["error"]["available_satoshis"], 50_000);
    assert_eq!(refused["error"]["short_by_satoshis"], 150_000);

    // A batch is checked item by item, in order, against the same budget.
    send(
        &buyer,
        Method::PUT,
        "/v1/buyers/b1/limits",
        json!({"total_limit_satoshis": 600_000}),
    )
    .await?;
    let item = json!({"description": "Batch", "complexity": 1, "buyer_id": "b1"});
    let (status, batch) = send(
        &buyer,
        Method::POST,
        "/v1/tasks/batch",
        json!({"tasks": [item.clone(), item.clone(), item]}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let codes: Vec<Value> = batch["items"]
        .as_array()
        .map(|items| items.iter().map(|i| i["status"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(codes, vec![json!(201), json!(201), json!(402)], "{batch}");
    assert_eq!(
        batch["items"][2]["error"]["short_by_satoshis"], PRICE,
        "{batch}"
    );
    let shown = budget(&buyer, "b1").await?;
    assert_eq!(shown["spent_total_satoshis"], 3 * PRICE, "{shown}");
    invariants_hold(&app.api).await?;
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_cannot_spend_the_same_satoshis_twice() -> Result<()> {
    let server = NatsServer::start()?;
    let a = TestApp::spawn(&server).await?;
    let b = TestApp::spawn(&server).await?;
    deposit(&a.api, "b1", 5 * PRICE).await?;
    eventually(&b.api, "/v1/buyers/b1", |v| {
        v["budget"]["balance_satoshis"] == 5 * PRICE
    })
    .await?;

    let racers = (0..12).map(|n| {
        let api = if n % 2 == 0 {
            a.api.clone()
        } else {
            b.api.clone()
        };
        async move { submit(&api, "b1").await }
    });
    let answers = futures::future::join_all(racers).await;
    let mut accepted = 0;
    for answer in answers {
        let (status, body) = answer?;
        match status {
            StatusCode::CREATED => accepted += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["error"]["code"], "insufficient_balance", "{body}")
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted, 5, "exactly what the deposit covers");
    for app in [&a, &b] {
        eventually(&app.api, "/v1/buyers/b1", |v| {
            v["budget"]["balance_satoshis"] == 0 && v["open_escrow_satoshis"] == 5 * PRICE
        })
        .await?;
        invariants_hold(&app.api).await?;
    }
    a.shutdown().await?;
    b.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_survive_a_restart_and_a_rebuild_and_a_keyed_deposit_counts_once() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let path = "/v1/buyers/b1/deposits";
    let body = json!({"amount_satoshis": 700_000, "reference": "invoice 7"});
    for _ in 0..2 {
        let response = app
            .api
            .request(Method::POST, path)
            .header("Idempotency-Key", "deposit-7")
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let other = app
        .api
        .request(Method::POST, path)
        .header("Idempotency-Key", "deposit-7")
        .json(&json!({"amount_satoshis": 1}))
        .send()
        .await?;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    assert_eq!(submit(&app.api, "b1").await?.0, StatusCode::CREATED);
    let before = budget(&app.api, "b1").await?;
    assert_eq!(before["deposited_satoshis"], 700_000, "{before}");
    assert_eq!(before["balance_satoshis"], 500_000, "{before}");

    let data = app.stop().await?;
    let restarted = TestApp::spawn_in(&server, data).await?;
    assert_eq!(budget(&restarted.api, "b1").await?, before);
    restarted.shutdown().await?;
    let rebuilt = TestApp::spawn(&server).await?;
    assert_eq!(budget(&rebuilt.api, "b1").await?, before);
    invariants_hold(&rebuilt.api).await?;
    rebuilt.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_deposits_required_a_buyer_without_one_is_refused() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn_with(&server, tempfile::tempdir()?, &["--require-deposit"]).await?;
    let (status, refused) = submit(&app.api, "newcomer").await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["available_satoshis"], 0, "{refused}");
    deposit(&app.api, "newcomer", PRICE).await?;
    assert_eq!(submit(&app.api, "newcomer").await?.0, StatusCode::CREATED);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_task_is_never_stored_lapses_back_into_the_balance() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn_with(
        &server,
        tempfile::tempdir()?,
        &["--reservation-lapse-ms", "300"],
    )
    .await?;
    deposit(&app.api, "b1", 500_000).await?;
    // What a coordinator that stopped between the reservation and the task leaves.
    let buyer: BuyerId = "b1".parse()?;
    let orphan = TaskId::generate();
    let answers = app
        .state
        .reserve(&buyer, &[(orphan.clone(), 300_000)], &Principal::Admin)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    assert!(answers.iter().all(Result::is_ok));
    let shown = budget(&app.api, "b1").await?;
    assert_eq!(shown["pending_satoshis"], 300_000, "{shown}");
    assert_eq!(shown["balance_satoshis"], 200_000, "{shown}");

    let released = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let shown = budget(&app.api, "b1").await?;
            if shown["balance_satoshis"] == 500_000 && shown["pending_satoshis"] == 0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    ensure!(released.is_ok(), "the reservation never lapsed");
    let reservation = app.state.model.reservation(&orphan)?;
    assert_eq!(
        reservation.map(|r| r.state),
        Some(aicp_projections::views::ReservationState::Released)
    );
    invariants_hold(&app.api).await?;
    app.shutdown().await
}
