//! Who may do what, over HTTP against a real server: every route for every kind of caller.
//! Every forbidden call is 401 or 403 and appends nothing to the stream; every allowed call
//! succeeds; the events record who caused them.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aicp_events::domain::access::Principal;
use aicp_events::id::TaskId;
use aicp_events::testing::NatsServer;
use aicp_events::Aggregate;
use anyhow::{ensure, Context, Result};
use common::{eventually, Api, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The callers of the matrix, by name.
const CALLERS: [&str; 8] = [
    "anonymous",
    "admin",
    "buyer-1",
    "buyer-2",
    "agent-1",
    "agent-2",
    "worker-1",
    "worker-2",
];

/// What a route needs made fresh for each allowed call (a write changes what it touches).
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// The shared task of buyer-001, assigned to agent-1 and left open.
    Open,
    /// A new task of buyer-001, assigned to agent-1.
    Fresh,
    /// A failed task of buyer-001.
    Failed,
    /// Nothing.
    Nothing,
}

struct Route {
    method: Method,
    /// `{task}` is replaced by the target task, `{token}` by a token id, `{n}` by a counter.
    path: &'static str,
    body: Option<Value>,
    target: Target,
    /// Who may; `*` is every authenticated caller, `public` everyone.
    allowed: &'static [&'static str],
}

fn route(
    method: Method,
    path: &'static str,
    body: Option<Value>,
    target: Target,
    allowed: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        body,
        target,
        allowed,
    }
}

fn routes() -> Vec<Route> {
    use Method as M;
    use Target::*;
    const ALL: &[&str] = &["*"];
    const PUBLIC: &[&str] = &["public"];
    const ADMIN: &[&str] = &["admin"];
    let submit = json!({"description": "d", "complexity": 1, "buyer_id": "buyer-001", "required_skills": ["matrix"]});
    vec![
        route(M::GET, "/health", None, Nothing, PUBLIC),
        route(M::GET, "/ready", None, Nothing, PUBLIC),
        route(M::GET, "/metrics", None, Nothing, PUBLIC),
        route(M::GET, "/openapi.json", None, Nothing, PUBLIC),
        route(M::GET, "/docs", None, Nothing, PUBLIC),
        route(M::GET, "/agents", None, Nothing, ALL),
        route(M::GET, "/v1/agents", None, Nothing, ALL),
        route(M::GET, "/v1/agents/agent-1", None, Nothing, ALL),
        route(M::GET, "/v1/quote?complexity=1", None, Nothing, ALL),
        route(M::GET, "/v1/whoami", None, Nothing, ALL),
        // A buyer's or agent's list without a filter is its own.
        route(
            M::GET,
            "/tasks",
            None,
            Nothing,
            &["admin", "buyer-1", "buyer-2", "agent-1", "agent-2"],
        ),
        route(
            M::GET,
            "/v1/tasks?buyer=buyer-001",
            None,
            Nothing,
            &["admin", "buyer-1"],
        ),
        route(
            M::GET,
            "/v1/tasks?agent=agent-1",
            None,
            Nothing,
            &["admin", "buyer-1", "buyer-2", "agent-1", "worker-1"],
        ),
        route(
            M::GET,
            "/tasks/{task}",
            None,
            Open,
            &["admin", "buyer-1", "agent-1", "worker-1"],
        ),
        route(
            M::GET,
            "/v1/tasks/{task}",
            None,
            Open,
            &["admin", "buyer-1", "agent-1", "worker-1"],
        ),
        route(
            M::POST,
            "/tasks/submit",
            Some(submit.clone()),
            Nothing,
            &["admin", "buyer-1"],
        ),
        route(
            M::POST,
            "/v1/tasks",
            Some(submit),
            Nothing,
            &["admin", "buyer-1"],
        ),
        route(
            M::POST,
            "/v1/tasks/{task}/complete",
            Some(json!({"success": true, "result": "ok"})),
            Fresh,
            &["admin", "agent-1", "worker-1"],
        ),
        route(
            M::POST,
            "/tasks/{task}/complete?success=false",
            None,
            Fresh,
            &["admin", "agent-1", "worker-1"],
        ),
        route(
            M::POST,
            "/v1/tasks/{task}/cancel",
            Some(json!({})),
            Fresh,
            &["admin", "buyer-1"],
        ),
        route(
            M::POST,
            "/v1/tasks/{task}/retry",
            None,
            Failed,
            &["admin", "buyer-1"],
        ),
        route(
            M::POST,
            "/v1/agents",
            Some(json!({"agent_id": "new-{n}"})),
            Nothing,
            ADMIN,
        ),
        route(
            M::PATCH,
            "/v1/agents/agent-1",
            Some(json!({"accepting": true})),
            Nothing,
            &["admin", "agent-1"],
        ),
        route(
            M::PATCH,
            "/v1/agents/agent-1",
            Some(json!({"executor": {"kind": "simulate", "mean_duration_ms": 1}})),
            Nothing,
            ADMIN,
        ),
        route(M::GET, "/v1/buyers", None, Nothing, ADMIN),
        route(
            M::GET,
            "/v1/buyers/buyer-001",
            None,
            Nothing,
            &["admin", "buyer-1"],
        ),
        route(
            M::GET,
            "/v1/ledger/buyer:buyer-001",
            None,
            Nothing,
            &["admin", "buyer-1"],
        ),
        route(
            M::GET,
            "/v1/ledger/agent:agent-1",
            None,
            Nothing,
            &["admin", "agent-1"],
        ),
        route(M::GET, "/v1/ledger/escrow", None, Nothing, ADMIN),
        route(M::GET, "/v1/dead-letters", None, Nothing, ADMIN),
        route(M::GET, "/v1/read-model/check", None, Nothing, ADMIN),
        route(M::GET, "/v1/tokens", None, Nothing, ADMIN),
        route(M::GET, "/v1/tokens/{token}", None, Nothing, ADMIN),
        route(
            M::POST,
            "/v1/tokens",
            Some(json!({"principal": "buyer:buyer-009"})),
            Nothing,
            ADMIN,
        ),
        route(
            M::POST,
            "/v1/tokens/{token}/revoke",
            Some(json!({})),
            Nothing,
            ADMIN,
        ),
    ]
}

fn allows(route: &Route, caller: &str) -> bool {
    route.allowed.contains(&"public")
        || (caller != "anonymous" && route.allowed.contains(&"*"))
        || route.allowed.contains(&caller)
}

/// The matrix's world: one client per caller, and the tasks and tokens routes work on.
struct World {
    app: TestApp,
    clients: BTreeMap<&'static str, Api>,
    open_task: String,
    failed_task: String,
    /// A buyer token's id, for the token routes to read and revoke.
    token_id: String,
    counter: usize,
}

impl World {
    async fn new(server: &NatsServer) -> Result<Self> {
        let app = TestApp::spawn(server).await?;
        // Only agent-1 has the skill: every task of the matrix is agent-1's.
        let (status, body) = app
            .request(Method::PATCH, "/v1/agents/agent-1")
            .json(&json!({"skills": ["matrix"]}))
            .send()
            .await
            .map(|r| (r.status(), r))?;
        ensure!(status == StatusCode::OK, "{:?}", body.text().await);
        let mut clients = BTreeMap::new();
        clients.insert("anonymous", app.as_token(None));
        clients.insert("admin", app.api.clone());
        for (name, principal) in [
            ("buyer-1", "buyer:buyer-001"),
            ("buyer-2", "buyer:buyer-002"),
            ("agent-1", "agent:agent-1"),
            ("agent-2", "agent:agent-2"),
            ("worker-1", "worker:agent-1"),
            ("worker-2", "worker:agent-2,agent-3"),
        ] {
            let (_, token) = app.issue_token(principal).await?;
            clients.insert(name, app.as_token(Some(&token)));
        }
        let mut world = Self {
            app,
            clients,
            open_task: String::new(),
            failed_task: String::new(),
            token_id: String::new(),
            counter: 0,
        };
        world.token_id = world.app.issue_token("buyer:buyer-008").await?.0;
        world.open_task = world.task().await?;
        world.failed_task = world.task().await?;
        let (status, body) = world
            .app
            .post(
                &format!("/v1/tasks/{}/complete", world.failed_task),
                Some(json!({"success": false})),
            )
            .await?;
        ensure!(status == StatusCode::OK, "{body}");
        Ok(world)
    }

    /// A new task of buyer-001, assigned to agent-1, its escrow held.
    async fn task(&self) -> Result<String> {
        let (status, body) = self
            .app
            .post(
                "/v1/tasks",
                Some(json!({"description": "matrix", "complexity": 1, "buyer_id": "buyer-001", "required_skills": ["matrix"]})),
            )
            .await?;
        ensure!(status == StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().context("an id")?.to_owned();
        ensure!(body["agent_name"] == "agent-1", "{body}");
        eventually(&self.app, &format!("/v1/tasks/{id}"), |t| {
            t["payment"] == "held"
        })
        .await?;
        Ok(id)
    }

    async fn call(
        &mut self,
        route: &Route,
        caller: &str,
        fresh: bool,
    ) -> Result<(StatusCode, Value)> {
        self.counter += 1;
        let task = match (route.target, fresh) {
            (Target::Fresh, true) => self.task().await?,
            (Target::Failed, _) => self.failed_task.clone(),
            _ => self.open_task.clone(),
        };
        let path = route
            .path
            .replace("{task}", &task)
            .replace("{token}", &self.token_id);
        let client = &self.clients[caller];
        let mut request = client.request(route.method.clone(), &path);
        if let Some(body) = &route.body {
            let body = body.to_string().replace("{n}", &self.counter.to_string());
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

/// Waits until the stream's last sequence has not moved for half a second.
async fn quiet(app: &TestApp) -> Result<u64> {
    let mut last = app.state.store.last_sequence().await?;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = app.state.store.last_sequence().await?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_whom_it_must_and_a_refusal_writes_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let mut world = World::new(&server).await?;
    let routes = routes();

    // Every forbidden call, on a quiet stream: 401 without a token, 403 with the wrong one,
    // in the one error shape, and not one message appended.
    let before = quiet(&world.app).await?;
    let mut refused = 0;
    for route in &routes {
        for caller in CALLERS {
            if allows(route, caller) {
                continue;
            }
            let (status, body) = world.call(route, caller, false).await?;
            let want = if caller == "anonymous" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(
                status, want,
                "{caller} {} {}: {body}",
                route.method, route.path
            );
            assert!(body["error"]["code"].is_string(), "{body}");
            refused += 1;
        }
    }
    assert_eq!(
        quiet(&world.app).await?,
        before,
        "a refused call appended to the stream"
    );
    assert!(
        refused > 100,
        "{refused} refusals: the matrix is smaller than it should be"
    );

    // Every allowed call succeeds.
    for route in &routes {
        for caller in CALLERS.iter().filter(|c| allows(route, c)) {
            let (status, body) = world.call(route, caller, true).await?;
            assert!(
                status.is_success(),
                "{caller} {} {}: {status} {body}",
                route.method,
                route.path
            );
        }
    }

    // A bad or malformed token is refused everywhere, public pages aside.
    let wrong = world.app.as_token(Some("aicp_nobody-issued-this-one"));
    let (status, body) = wrong.get("/v1/agents").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    let basic = world
        .app
        .as_token(None)
        .request(Method::GET, "/v1/agents")
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await?;
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert!(basic.headers().contains_key("www-authenticate"));
    world.app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_record_the_principal_that_caused_them() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (_, buyer) = app.issue_token("buyer:buyer-001").await?;
    let (_, worker) = app.issue_token("worker:agent-1").await?;
    let (status, task) = app
        .as_token(Some(&buyer))
        .post(
            "/v1/tasks",
            Some(json!({"description": "d", "complexity": 2})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    // A buyer's own submission needs no buyer_id.
    assert_eq!(task["buyer_id"], "buyer-001");
    let id: TaskId = task["id"].as_str().context("id")?.parse()?;
    let (status, body) = app
        .as_token(Some(&worker))
        .post(
            &format!("/v1/tasks/{id}/complete"),
            Some(json!({"success": true})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(&app, &format!("/v1/tasks/{id}"), |t| {
        t["payment"] == "released"
    })
    .await?;

    let task_events = app.state.store.read(&Aggregate::Task(id.clone())).await?;
    let by: Vec<(String, Option<Principal>)> = task_events
        .events()
        .map(|e| (e.event.event_type().to_owned(), e.principal.clone()))
        .collect();
    assert_eq!(
        by,
        vec![
            ("TaskSubmitted".into(), Some("buyer:buyer-001".parse()?)),
            ("TaskAssigned".into(), Some("buyer:buyer-001".parse()?)),
            // What follows from each step is the coordinator's, in the step's message.
            ("EscrowHeld".into(), Some(Principal::Coordinator)),
            ("TaskCompleted".into(), Some("worker:agent-1".parse()?)),
            ("EscrowReleased".into(), Some(Principal::Coordinator)),
            ("AgentOutcomeCounted".into(), Some(Principal::Coordinator)),
        ]
    );
    let money = app.state.store.read(&Aggregate::Payment(id)).await?;
    assert_eq!(money.events().count(), 0, "nothing left to repair");
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_second_on_every_replica() -> Result<()> {
    let server = NatsServer::start()?;
    let first = TestApp::spawn(&server).await?;
    let second = TestApp::spawn(&server).await?;
    let (token_id, token) = first.issue_token("buyer:buyer-001").await?;
    // Issued through one replica, accepted by both.
    for app in [&first, &second] {
        let caller = app.as_token(Some(&token));
        let mut accepted = false;
        for _ in 0..20 {
            if caller.get("/v1/whoami").await?.0 == StatusCode::OK {
                accepted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(accepted, "the new token is never accepted by {}", app.base);
    }

    // A live event stream opened with the token, on the other replica.
    let mut stream = second
        .as_token(Some(&token))
        .request(Method::GET, "/v1/events/stream")
        .send()
        .await?;
    assert_eq!(stream.status(), StatusCode::OK);
    let revoked_at = Instant::now();
    let (status, body) = first
        .post(
            &format!("/v1/tokens/{token_id}/revoke"),
            Some(json!({"reason": "lost"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], false);
    for app in [&first, &second] {
        let caller = app.as_token(Some(&token));
        loop {
            let (status, body) = caller.get("/v1/tasks").await?;
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(body["error"]["code"], "token_revoked");
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "{} still accepts the revoked token after {:?}",
                app.base,
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // The open stream ends too (it is read until it closes; hello and keep-alives aside).
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked token's event stream is still open"
    );
    // Revoking again changes nothing; the list shows who revoked it and why.
    let before = first.state.store.last_sequence().await?;
    let (status, _) = second
        .post(&format!("/v1/tokens/{token_id}/revoke"), Some(json!({})))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.state.store.last_sequence().await?, before);
    let listed = first.get(&format!("/v1/tokens/{token_id}")).await?.1;
    assert_eq!(listed["revoked_by"], "admin");
    assert_eq!(listed["revoke_reason"], "lost");
    assert!(
        listed.get("hash").is_none() && listed.get("token").is_none(),
        "{listed}"
    );
    second.shutdown().await?;
    first.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_limit_gets_429_and_others_are_unaffected() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn_with(
        &server,
        tempfile::tempdir()?,
        &["--rate-limit", "2/s,10", "--rate-limit-ip", "1000/s"],
    )
    .await?;
    let (_, greedy) = app.issue_token("buyer:buyer-001").await?;
    let (_, patient) = app.issue_token("buyer:buyer-002").await?;
    let greedy = app.as_token(Some(&greedy));
    let patient = app.as_token(Some(&patient));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..15 {
        let response = greedy.request(Method::GET, "/v1/tasks").send().await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: Value = response.json().await?;
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // The burst, and at most a token or two refilled while it ran.
    assert!((10..=12).contains(&ok), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    // Another principal from the same address is not held back.
    for _ in 0..5 {
        assert_eq!(patient.get("/v1/tasks").await?.0, StatusCode::OK);
    }
    // Workers have no per-principal budget (a pool shares one token, two calls per task).
    let (_, worker) = app.issue_token("worker").await?;
    let worker = app.as_token(Some(&worker));
    for _ in 0..15 {
        assert_eq!(worker.get("/v1/whoami").await?.0, StatusCode::OK);
    }
    // After Retry-After, the greedy one may go on.
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
    assert_eq!(greedy.get("/v1/tasks").await?.0, StatusCode::OK);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_holds_back_token_guessing() -> Result<()> {
    let server = NatsServer::start()?;
    let app =
        TestApp::spawn_with(&server, tempfile::tempdir()?, &["--rate-limit-ip", "1/s,5"]).await?;
    let guesser = app.as_token(Some("aicp_guess"));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(guesser.get("/v1/agents").await?.0);
    }
    // The burst of 5 is the address's (the test's own start-up call took one of it): some
    // guesses are answered, then none is looked at.
    let answered = statuses
        .iter()
        .take_while(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!((3..=5).contains(&answered), "{statuses:?}");
    assert!(
        statuses[answered..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_checks_the_caller_like_every_route_before_its_404() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let (status, body) = app.as_token(None).get("/v1/nope").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "no_route", "{body}");
    // A bad token is refused wherever it is sent, so that probing paths tells nothing.
    let (status, body) = app.as_token(Some("aicp_guess")).get("/v1/nope").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The same for a method a route does not serve.
    let anonymous = app
        .as_token(None)
        .request(Method::DELETE, "/v1/tasks")
        .send()
        .await?;
    assert_eq!(anonymous.status(), StatusCode::METHOD_NOT_ALLOWED);
    let guessing = app
        .as_token(Some("aicp_guess"))
        .request(Method::DELETE, "/v1/tasks")
        .send()
        .await?;
    assert_eq!(guessing.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_security_headers_and_cors_allows_only_the_listed_origins() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn_with(
        &server,
        tempfile::tempdir()?,
        &["--cors-origins", "https://ui.example"],
    )
    .await?;
    for path in ["/sign-in", "/docs", "/v1/agents", "/nope"] {
        let response = app.request(Method::GET, path).send().await?;
        let headers = response.headers();
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{path}"
        );
        assert_eq!(
            headers.get("x-frame-options").map(|v| v.as_bytes()),
            Some(&b"DENY"[..]),
            "{path}"
        );
    }
    let preflight = |origin: &'static str| {
        app.request(Method::OPTIONS, "/v1/tasks")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let listed = preflight("https://ui.example").await?;
    assert_eq!(
        listed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://ui.example"[..])
    );
    let allowed_headers = listed
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let other = preflight("https://evil.example").await?;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A write authenticated by the UI's cookie is refused from another site's page (a
    // forged form post), accepted from the coordinator's own pages and listed origins.
    let (_, agent_token) = app.issue_token("agent:agent-1").await?;
    let host = app.base.trim_start_matches("http://").to_owned();
    let cookie_write = |origin: String| {
        app.as_token(None)
            .request(Method::PATCH, "/v1/agents/agent-1")
            .header("cookie", format!("aicp_token={agent_token}"))
            .header("origin", origin)
            .json(&json!({"accepting": true}))
            .send()
    };
    let before = app.state.store.last_sequence().await?;
    let forged = cookie_write("https://evil.example".into()).await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let body: Value = forged.json().await?;
    assert_eq!(body["error"]["code"], "cross_site");
    assert_eq!(app.state.store.last_sequence().await?, before);
    assert_eq!(
        cookie_write(format!("http://{host}")).await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        cookie_write("https://ui.example".into()).await?.status(),
        StatusCode::OK
    );
    // A bearer token is no cookie a foreign page could ride on.
    let bearer = app
        .as_token(Some(&agent_token))
        .request(Method::PATCH, "/v1/agents/agent-1")
        .header("origin", "https://evil.example")
        .json(&json!({"accepting": true}))
        .send()
        .await?;
    assert_eq!(bearer.status(), StatusCode::OK);
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_an_agent_runs_is_shown_to_admins_and_the_agent_alone() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let exec = json!({"kind": "exec", "command": ["agent", "--key", "s3cret"], "timeout_ms": 1000});
    let (status, _) = app
        .request(Method::PATCH, "/v1/agents/agent-1")
        .json(&json!({"executor": exec}))
        .send()
        .await
        .map(|r| (r.status(), ()))?;
    assert_eq!(status, StatusCode::OK);
    let (_, own) = app.issue_token("agent:agent-1").await?;
    let (_, buyer) = app.issue_token("buyer:buyer-001").await?;
    for (token, shown) in [(None, true), (Some(own), true), (Some(buyer), false)] {
        let client = match &token {
            Some(t) => app.as_token(Some(t)),
            None => app.api.clone(),
        };
        for path in ["/v1/agents/agent-1", "/v1/agents", "/agents"] {
            let body = client.get(path).await?.1;
            let agent = if path == "/v1/agents/agent-1" {
                body.clone()
            } else {
                body["agents"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["name"] == "agent-1").cloned())
                    .context("agent-1 listed")?
            };
            assert_eq!(agent["executor"] == exec, shown, "{path}: {agent}");
        }
    }
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authentication_is_refused_off_loopback() -> Result<()> {
    let server = NatsServer::start()?;
    let data = tempfile::tempdir()?;
    let config = <aicp_coordinator::Config as clap::Parser>::try_parse_from([
        "aicp-coordinator",
        "--nats-url",
        &server.url(),
        "--listen",
        "0.0.0.0:0",
        "--auth",
        "none",
        "--data-dir",
        &data.path().display().to_string(),
    ])?;
    let error = match aicp_coordinator::App::build(config).await {
        Ok(_) => anyhow::bail!("--auth none started on 0.0.0.0"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("loopback"), "{error}");

    // On loopback it starts, and an API call without a token acts as the admin.
    let app = TestApp::spawn_with(&server, data, &["--auth", "none"]).await?;
    let me = app.as_token(None).get("/v1/whoami").await?.1;
    assert_eq!(
        (me["principal"].as_str(), me["auth"].as_str()),
        (Some("admin"), Some("none"))
    );
    app.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_is_refused_at_start() -> Result<()> {
    let parsed = <aicp_coordinator::Config as clap::Parser>::try_parse_from([
        "aicp-coordinator",
        "--admin-token",
        "hunter2",
    ]);
    let error = parsed
        .err()
        .context("a 7-character admin token was accepted")?;
    assert!(error.to_string().contains("at least 32"), "{error}");
    Ok(())
}

/// Starts the coordinator binary without an admin token; its stderr and stdout go to `log`.
fn start_binary(
    server: &NatsServer,
    data: &std::path::Path,
    log: &std::path::Path,
) -> Result<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = std::fs::File::create(log)?;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_aicp-coordinator"))
        .args([
            "--nats-url",
            &server.url(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(data)
        // Everything, requests included, so that a token in the log would show.
        .env("RUST_LOG", "debug,tower_http=trace")
        .env_remove("AICP_ADMIN_TOKEN")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// A token in `text`: `aicp_` and 43 characters of URL-safe base64 (not a module path).
fn token_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| {
            w.strip_prefix("aicp_").is_some_and(|rest| {
                rest.len() == 43
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        })
        .map(str::to_owned)
}

/// Waits until `log` shows the first admin token or the coordinator is ready without one.
async fn first_admin_token(base: &str, log: &std::path::Path) -> Result<Option<String>> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(token) = token_in(&text) {
            return Ok(Some(token));
        }
        let ready = http.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK)
            && text.contains("coordinator listening")
        {
            // Ready, and the managers (which issue it) have had their chance.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Ok(token_in(&text));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the coordinator did not start: {}",
        std::fs::read_to_string(log)?
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_an_admin_token_once_and_no_log_shows_a_token() -> Result<()> {
    let server = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("first.log");
    let (mut child, base) = start_binary(&server, &dir.path().join("data"), &log)?;
    let token = first_admin_token(&base, &log)
        .await?
        .context("the first start printed no admin token")?;
    let admin = common::client_with(Some(&token));
    let me: Value = admin
        .get(format!("{base}/v1/whoami"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["principal"], "admin", "{me}");
    let issued: Value = admin
        .post(format!("{base}/v1/tokens"))
        .json(&json!({"principal": "buyer:buyer-001"}))
        .send()
        .await?
        .json()
        .await?;
    let buyer_token = issued["token"].as_str().context("a token")?.to_owned();
    let buyer = common::client_with(Some(&buyer_token));
    assert_eq!(
        buyer.get(format!("{base}/v1/tasks")).send().await?.status(),
        StatusCode::OK
    );
    let wrong = common::client_with(Some("aicp_a-wrong-token-in-the-log?"));
    assert_eq!(
        wrong.get(format!("{base}/v1/tasks")).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    child.kill()?;
    child.wait()?;

    // The log shows the admin token once (the banner) and no other token at all.
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(text.matches(&token).count(), 1, "{text}");
    for secret in [buyer_token.as_str(), "aicp_a-wrong-token-in-the-log?"] {
        assert!(!text.contains(secret), "a token is in the log:\n{text}");
    }

    // A second start finds a token issued and prints none.
    let log = dir.path().join("second.log");
    let (mut child, base) = start_binary(&server, &dir.path().join("data"), &log)?;
    assert_eq!(first_admin_token(&base, &log).await?, None);
    let me: Value = admin
        .get(format!("{base}/v1/whoami"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        me["principal"], "admin",
        "the first token still works: {me}"
    );
    child.kill()?;
    child.wait()?;
    Ok(())
}
