//! `/openapi.json` and `/docs` against the running coordinator: the document names every
//! route and only routes that exist, and its `Task` matches a real task.

mod common;

use std::collections::BTreeSet;

use aicp_events::testing::NatsServer;
use anyhow::{Context, Result};
use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every (method, path) the router in `src/routes.rs` serves. A new route must be added
/// here and to `src/openapi.json`, or `the_document_names_exactly_the_routes` fails.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/agents"),
    ("GET", "/tasks"),
    ("POST", "/tasks/submit"),
    ("GET", "/tasks/{id}"),
    ("POST", "/tasks/{id}/complete"),
    ("GET", "/v1/tasks"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/tasks/batch"),
    ("GET", "/v1/tasks/{id}"),
    ("POST", "/v1/tasks/{id}/start"),
    ("POST", "/v1/tasks/{id}/complete"),
    ("POST", "/v1/tasks/{id}/cancel"),
    ("POST", "/v1/tasks/{id}/retry"),
    ("GET", "/v1/agents"),
    ("POST", "/v1/agents"),
    ("GET", "/v1/agents/{id}"),
    ("PATCH", "/v1/agents/{id}"),
    ("GET", "/v1/quote"),
    ("GET", "/v1/buyers"),
    ("GET", "/v1/buyers/{id}"),
    ("POST", "/v1/buyers/{id}/deposits"),
    ("PUT", "/v1/buyers/{id}/limits"),
    ("GET", "/v1/ledger/{account}"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/v1/read-model/check"),
    ("GET", "/v1/events/stream"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens/{id}"),
    ("POST", "/v1/tokens/{id}/revoke"),
    ("GET", "/v1/whoami"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "patch", "delete", "head", "options", "trace",
];

/// The document as the coordinator serves it.
async fn document(app: &TestApp) -> Result<Value> {
    let response = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .context("no content-type")?
        .to_str()?
        .to_owned();
    assert_eq!(content_type, "application/json");
    Ok(response.json().await?)
}

/// Every (METHOD, path) the document describes.
fn documented(doc: &Value) -> Result<BTreeSet<(String, String)>> {
    let paths = doc["paths"].as_object().context("no paths")?;
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().context("a path item is not an object")?;
        for method in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    Ok(out)
}

/// A concrete path for a documented template: `agent-1` for agents, `escrow` for the
/// ledger, `deadbeef` for tasks and anything else.
fn concrete(path: &str) -> String {
    let id = if path.starts_with("/v1/agents/") {
        "agent-1"
    } else {
        "deadbeef"
    };
    path.replace("{account}", "escrow").replace("{id}", id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_reaches_a_route() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let doc = document(&app).await?;
    let version = doc["openapi"].as_str().context("no openapi version")?;
    assert!(version.starts_with("3.1."), "{version}");
    assert!(doc["info"]["title"].is_string());

    let operations = documented(&doc)?;
    assert!(!operations.is_empty());
    for (method, path) in &operations {
        let operation = &doc["paths"][path][method.to_lowercase()];
        for field in ["operationId", "summary", "description"] {
            assert!(
                operation[field].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no {field}"
            );
        }
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );

        let url = format!("{}{}", app.base, concrete(path));
        let mut request = app
            .http
            .request(Method::from_bytes(method.as_bytes())?, url);
        if method == "POST" || method == "PATCH" {
            request = request.json(&json!({}));
        }
        let Some((status, body)) = answer(request).await? else {
            continue; // an event stream: routed and answering; its body never ends
        };
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        if status == StatusCode::NOT_FOUND {
            let error: Value = serde_json::from_str(&body)
                .with_context(|| format!("{method} {path}: 404 {body}"))?;
            assert_ne!(
                error["error"]["code"], "no_route",
                "{method} {path} is documented but not routed"
            );
        }
    }
    app.shutdown().await
}

/// Sends `request`: its status and body, or `None` for an event stream (whose body never
/// ends).
async fn answer(request: reqwest::RequestBuilder) -> Result<Option<(StatusCode, String)>> {
    let response = request.send().await?;
    let streaming = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return Ok(None);
    }
    let status = response.status();
    Ok(Some((status, response.text().await?)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_names_exactly_the_routes() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let documented = documented(&document(&app).await?)?;
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists a route twice");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without documentation: {undocumented:?}; documented but not in ROUTES: {unrouted:?}"
    );

    // And every route listed here is served: no 404 `no_route`, no 405.
    for (method, path) in ROUTES {
        let url = format!("{}{}", app.base, concrete(path));
        let request = app
            .http
            .request(Method::from_bytes(method.as_bytes())?, url);
        let Some((status, body)) = answer(request).await? else {
            continue;
        };
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            status != StatusCode::NOT_FOUND || !body.contains("\"no_route\""),
            "{method} {path} is not routed: {body}"
        );
    }
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_shows_every_documented_path() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let doc = document(&app).await?;

    let response = app.http.get(format!("{}/docs", app.base)).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .context("no content-type")?
        .to_str()?
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await?;
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "the page needs no JavaScript");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page fetches nothing"
    );
    for (method, path) in documented(&doc)? {
        assert!(
            html.contains(&format!("<code>{path}</code>")),
            "/docs lacks {path}"
        );
        let operation_id = doc["paths"][&path][method.to_lowercase()]["operationId"]
            .as_str()
            .context("no operationId")?;
        assert!(
            html.contains(&format!("id=\"op-{operation_id}\"")),
            "/docs lacks {method} {path}"
        );
    }
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_task_is_the_served_task() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let doc = document(&app).await?;

    let (status, submitted) = app
        .post(
            "/tasks/submit",
            Some(json!({"description": "x", "complexity": 2, "buyer_id": "b1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    let id = submitted["task_id"].as_str().context("no task_id")?;
    let (status, task) = app.get(&format!("/tasks/{id}")).await?;
    assert_eq!(status, StatusCode::OK, "{task}");

    let served: BTreeSet<&str> = task
        .as_object()
        .context("a task is an object")?
        .keys()
        .map(String::as_str)
        .collect();
    let schema = &doc["components"]["schemas"]["Task"];
    let documented: BTreeSet<&str> = schema["properties"]
        .as_object()
        .context("Task has no properties")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, served, "documented Task vs GET /tasks/{{id}}");
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .context("Task has no required list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, served, "every field of a task is always present");

    // The prototype's submit answer matches its schema too.
    let seed: BTreeSet<&str> = doc["components"]["schemas"]["SeedSubmitted"]["properties"]
        .as_object()
        .context("SeedSubmitted has no properties")?
        .keys()
        .map(String::as_str)
        .collect();
    let answered: BTreeSet<&str> = submitted
        .as_object()
        .context("an object")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(seed, answered);
    app.shutdown().await
}
