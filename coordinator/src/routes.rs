//! HTTP: the prototype's paths and JSON shapes, and the richer `/v1` API.
//!
//! Handlers only translate: JSON in, a command or a query, JSON out. Writes answer 200
//! (or 201) once this replica's read model shows them, or 202 with the stream sequence if
//! it did not within the configured wait.

use std::time::Duration;

use aicp_events::domain::access::{Action, Principal};
use aicp_events::domain::assign::Policy;
use aicp_events::domain::ledger::{Account, EscrowState, InvalidAccount};
use aicp_events::domain::task::TaskStatus;
use aicp_events::event::{AgentMode, AgentUpdated, ExecutorSettings};
use aicp_events::id::{AgentId, BuyerId, TaskId};
use aicp_events::work::MAX_DELIVERIES;
use aicp_projections::views::{AgentView, BuyerView, LedgerEntry, TaskView};
use aicp_projections::{PageRequest, TaskFilter};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::commands::{parse_id, Decided, Started, SubmitTask, Written};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest page a list returns.
pub const MAX_LIMIT: usize = 500;
/// Page size when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// How long a completion waits for its payment to show before answering anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

type ApiResult = Result<Response, ApiError>;

/// Every route of the API, with the middleware that needs the matched route, and without
/// authentication: `app::service` wraps it in the middleware every request passes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/agents", get(seed_agents))
        .route("/tasks", get(seed_tasks))
        .route("/tasks/submit", post(seed_submit))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/complete", post(complete))
        .route("/v1/tasks", get(list_tasks).post(submit))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/start", post(start))
        .route("/v1/tasks/{id}/complete", post(complete))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/retry", post(retry))
        .route("/v1/agents", get(list_agents).post(register_agent))
        .route("/v1/agents/{id}", get(get_agent).patch(update_agent))
        .route("/v1/quote", get(quote))
        .route("/v1/buyers", get(list_buyers))
        .route("/v1/buyers/{id}", get(get_buyer))
        .route("/v1/ledger/{account}", get(ledger))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/read-model/check", get(read_model_check))
        .merge(crate::batch::router(state.max_batch_body))
        .merge(crate::tokens::router())
        .merge(crate::budget::router())
        .merge(crate::ui::router())
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(crate::docs::openapi))
        .route("/docs", get(crate::docs::docs))
        // Every write may carry an Idempotency-Key.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::keyed,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::freshness::reads_see_writes,
        ))
        // Every route above must answer within the request timeout; the live stream,
        // added after, lasts as long as its client stays.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::deadline,
        ))
        .route("/v1/events/stream", get(crate::live::stream))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such path; see /docs")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `GET /`: a browser goes to its page (or signs in); an API client gets the prototype's
/// service document.
async fn root(caller: Option<Caller>, headers: axum::http::HeaderMap) -> Response {
    let browser = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if browser {
        return crate::ui::home_for(caller.as_ref()).into_response();
    }
    Json(json!({"service": "AICP Coordinator", "status": "running"})).into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "healthy"}))
}

/// Ready once NATS answers and the read model has caught up with the stream as it was at
/// start-up; a load balancer sends no traffic to a replica still rebuilding.
async fn ready(State(state): State<AppState>) -> ApiResult {
    // Answer at once while disconnected rather than wait for a request to time out.
    let connection = state.store.jetstream().client().connection_state();
    if connection != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable(format!(
            "NATS is not connected ({connection})"
        )));
    }
    if !state.progress.is_running() {
        return Err(ApiError::unavailable("the read model has stopped"));
    }
    let applied = state.progress.applied();
    let last = state.store.last_sequence().await?;
    if applied < state.ready_at {
        return Err(ApiError::unavailable(format!(
            "read model is catching up: {applied} of {} applied",
            state.ready_at
        )));
    }
    Ok(
        Json(json!({"status": "ready", "applied_sequence": applied, "stream_sequence": last}))
            .into_response(),
    )
}

// ---------------------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------------------

/// A task as JSON: the prototype's fields first, then ours.
#[derive(Debug, Serialize)]
pub struct TaskJson {
    id: TaskId,
    description: String,
    agent_name: Option<AgentId>,
    price_satoshis: Option<u64>,
    status: TaskStatus,
    buyer_id: String,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    result: Option<String>,
    reason: Option<String>,
    complexity: u8,
    required_skills: Vec<String>,
    max_price_satoshis: Option<u64>,
    deadline: Option<DateTime<Utc>>,
    policy: Policy,
    multiplier: Option<f64>,
    payment: Option<EscrowState>,
    updated_at: DateTime<Utc>,
    sequence: u64,
}

impl From<TaskView> for TaskJson {
    fn from(v: TaskView) -> Self {
        let t = v.task;
        Self {
            id: t.task_id,
            description: t.description,
            agent_name: t.agent_id,
            price_satoshis: t.price_sats,
            status: t.status,
            buyer_id: t.buyer_id.to_string(),
            created_at: v.created_at,
            completed_at: v.finished_at,
            result: t.result,
            reason: t.reason,
            complexity: t.complexity.get(),
            required_skills: t.required_skills.into_iter().collect(),
            max_price_satoshis: t.max_price_sats,
            deadline: t.deadline,
            policy: t.policy,
            // Shown as a number for people; prices are computed from the integer thousandths.
            multiplier: t.multiplier.map(|m| f64::from(m.get()) / 1000.0),
            payment: v.payment,
            updated_at: v.updated_at,
            sequence: v.last_sequence,
        }
    }
}

/// An agent as JSON: the prototype's fields first, then ours.
#[derive(Debug, Serialize)]
pub struct AgentJson {
    name: AgentId,
    success_rate: f64,
    reputation_multiplier: f64,
    balance_satoshis: i64,
    display_name: String,
    skills: Vec<String>,
    mode: AgentMode,
    accepting: bool,
    executor: Option<ExecutorSettings>,
    active_tasks: u32,
    tasks_completed: u64,
    tasks_failed: u64,
    multiplier_milli: u32,
    success_rate_bp: u32,
}

impl AgentJson {
    /// As `caller` may see it: how an agent's tasks are run (a command line, a URL that may
    /// hold credentials) is for admins and the agent itself.
    fn for_caller(mut self, caller: &Caller) -> Self {
        let own = caller.principal == Principal::Agent(self.name.clone());
        if !(own || caller.principal == Principal::Admin) {
            self.executor = None;
        }
        self
    }
}

impl From<AgentView> for AgentJson {
    fn from(a: AgentView) -> Self {
        Self {
            name: a.agent_id,
            success_rate: f64::from(a.rate_bp) / 10_000.0,
            reputation_multiplier: f64::from(a.multiplier.get()) / 1000.0,
            balance_satoshis: a.balance_sats,
            display_name: a.name,
            skills: a.skills.into_iter().collect(),
            mode: a.mode,
            accepting: a.accepting,
            executor: a.executor,
            active_tasks: a.active_tasks,
            tasks_completed: a.tasks_completed,
            tasks_failed: a.tasks_failed,
            multiplier_milli: a.multiplier.get(),
            success_rate_bp: a.rate_bp,
        }
    }
}

/// A buyer's money as JSON.
#[derive(Debug, Serialize)]
pub struct BuyerJson {
    buyer_id: String,
    tasks_submitted: u64,
    spent_satoshis: u64,
    open_escrow_satoshis: u64,
    refunded_satoshis: u64,
    /// `null` unless the buyer pays from a prepaid balance.
    budget: Option<crate::budget::BudgetJson>,
}

impl From<BuyerView> for BuyerJson {
    fn from(b: BuyerView) -> Self {
        let today = Utc::now().date_naive();
        Self {
            buyer_id: b.buyer_id.to_string(),
            tasks_submitted: b.tasks_submitted,
            spent_satoshis: b.spent_sats,
            open_escrow_satoshis: b.open_escrow_sats,
            refunded_satoshis: b.refunded_sats,
            budget: b
                .budget
                .as_ref()
                .map(|budget| crate::budget::BudgetJson::of(budget, b.pending_sats, today)),
        }
    }
}

/// One ledger entry as JSON.
#[derive(Debug, Serialize)]
pub struct LedgerEntryJson {
    sequence: u64,
    task_id: TaskId,
    account: Account,
    counterparty: Account,
    amount_satoshis: i64,
    balance_satoshis: i64,
    at: DateTime<Utc>,
}

impl From<LedgerEntry> for LedgerEntryJson {
    fn from(e: LedgerEntry) -> Self {
        Self {
            sequence: e.sequence,
            task_id: e.task_id,
            account: e.account,
            counterparty: e.counterparty,
            amount_satoshis: e.amount_sats,
            balance_satoshis: e.balance_sats,
            at: e.at,
        }
    }
}

/// 200 with `body` if the write is visible, else 202 with its sequence.
fn written(written: Written, ok: StatusCode, body: serde_json::Value) -> Response {
    if written.visible {
        (ok, Json(body)).into_response()
    } else {
        let mut body = body;
        body["sequence"] = json!(written.sequence);
        body["note"] = json!("accepted; not yet visible on this replica");
        (StatusCode::ACCEPTED, Json(body)).into_response()
    }
}

// ---------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct SubmitBody {
    description: String,
    #[serde(default = "one")]
    complexity: i64,
    /// Defaults to the caller when a buyer submits.
    buyer_id: Option<String>,
    #[serde(default)]
    required_skills: Vec<String>,
    max_price_satoshis: Option<u64>,
    deadline: Option<DateTime<Utc>>,
    policy: Option<Policy>,
}

fn one() -> i64 {
    1
}

impl SubmitBody {
    /// The command, once the caller may submit for its buyer.
    pub(crate) fn authorized(self, caller: &Caller) -> Result<SubmitTask, ApiError> {
        let buyer_id: BuyerId = match (&self.buyer_id, &caller.principal) {
            (Some(id), _) => parse_id(id)?,
            (None, Principal::Buyer(own)) => own.clone(),
            (None, _) => {
                return Err(ApiError::bad_request(
                    "invalid_buyer",
                    "buyer_id is required (it defaults to the caller only for buyers)",
                ))
            }
        };
        caller.may(Action::SubmitTask { buyer: &buyer_id })?;
        Ok(self.into_command(buyer_id))
    }

    fn into_command(self, buyer_id: BuyerId) -> SubmitTask {
        let b = self;
        SubmitTask {
            buyer_id: buyer_id.to_string(),
            description: b.description,
            complexity: b.complexity,
            required_skills: b.required_skills,
            max_price_sats: b.max_price_satoshis,
            deadline: b.deadline,
            policy: b.policy,
        }
    }
}

/// `POST /tasks/submit`: the prototype's answer, `{task_id, agent_name, price_satoshis, status}`.
async fn seed_submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let done = state
        .submit(body.authorized(&caller)?, &caller.principal)
        .await?;
    let body = json!({
        "task_id": done.task_id,
        "agent_name": done.choice.agent_id,
        "price_satoshis": done.choice.price_sats,
        "status": "assigned",
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `POST /v1/tasks`: 201 with the whole task.
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let done = state
        .submit(body.authorized(&caller)?, &caller.principal)
        .await?;
    Ok((StatusCode::CREATED, Json(TaskJson::from(done.decided.view))).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    buyer: Option<String>,
    agent: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// A page request from query parameters: at most [`MAX_LIMIT`] items.
pub fn page(cursor: Option<String>, limit: Option<usize>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    Ok(PageRequest { cursor, limit })
}

/// Lists in id order page on the last id shown: a cursor that is no id was not ours.
fn id_cursor<T: std::str::FromStr>(cursor: &Option<String>) -> Result<(), ApiError> {
    match cursor {
        Some(c) if c.parse::<T>().is_err() => Err(ApiError::bad_request(
            "invalid_cursor",
            format!("invalid cursor {c:?}: pass the next_cursor of the previous page"),
        )),
        _ => Ok(()),
    }
}

fn task_page(
    state: &AppState,
    caller: &Caller,
    q: ListQuery,
) -> Result<(Vec<TaskJson>, Option<String>), ApiError> {
    let mut buyer: Option<BuyerId> = q.buyer.as_deref().map(parse_id).transpose()?;
    let mut agent: Option<AgentId> = q.agent.as_deref().map(parse_id).transpose()?;
    // A buyer or an agent without a filter means "mine".
    match &caller.principal {
        Principal::Buyer(own) if buyer.is_none() => buyer = Some(own.clone()),
        Principal::Agent(own) if agent.is_none() && buyer.is_none() => agent = Some(own.clone()),
        _ => {}
    }
    caller.may(Action::ListTasks {
        buyer: buyer.as_ref(),
        agent: agent.as_ref(),
    })?;
    let filter = TaskFilter {
        buyer,
        agent,
        status: q
            .status
            .as_deref()
            .map(|s| {
                s.parse::<TaskStatus>()
                    .map_err(|e| ApiError::bad_request("invalid_status", e))
            })
            .transpose()?,
    };
    let page = state.model.tasks(&filter, &page(q.cursor, q.limit)?)?;
    Ok((
        page.items.into_iter().map(TaskJson::from).collect(),
        page.next_cursor,
    ))
}

/// `GET /tasks`: the prototype's `{tasks, count}`, newest first.
async fn seed_tasks(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let (tasks, next_cursor) = task_page(&state, &caller, q)?;
    Ok(
        Json(json!({"count": tasks.len(), "tasks": tasks, "next_cursor": next_cursor}))
            .into_response(),
    )
}

/// `GET /v1/tasks`: filtered and paged.
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let (tasks, next_cursor) = task_page(&state, &caller, q)?;
    Ok(Json(json!({"tasks": tasks, "next_cursor": next_cursor})).into_response())
}

async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let id: TaskId = parse_id(&id)?;
    let view = state.fresh_task(&id).await?;
    caller.may(Action::ReadTask {
        buyer: &view.task.buyer_id,
        agent: view.task.agent_id.as_ref(),
    })?;
    Ok(Json(TaskJson::from(view)).into_response())
}

#[derive(Debug, Deserialize, Default)]
struct CompleteQuery {
    success: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct CompleteBody {
    success: Option<bool>,
    #[serde(default)]
    result: String,
    /// With `worker_id`: the worker ran this assignment, and had not reported its start.
    assignment: Option<u32>,
    worker_id: Option<String>,
}

/// `POST /tasks/{id}/complete`: `?success=true|false` or a JSON body `{success, result}`
/// (both default to success, as in the prototype). Answers once the payment shows.
async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<CompleteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let Query(query) = query?;
    let body = body?;
    // The prototype's clients send either nothing (`?success=true`) or a JSON body.
    let body: CompleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let success = body.success.or(query.success).unwrap_or(true);
    let started = match (body.assignment, body.worker_id) {
        (Some(assignment), Some(worker_id)) => Some(Started {
            assignment,
            worker_id,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_start",
                "assignment and worker_id come together, or not at all",
            ))
        }
    };
    let done = state
        .finish(&id, success, body.result, started, &caller.principal)
        .await?;
    if matches!(caller.principal, Principal::Worker(_)) {
        // A worker goes on with its next task; the settlement is not its business.
        return Ok(Json(json!({"id": id})).into_response());
    }
    finished(&state, done).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    assignment: u32,
    worker_id: String,
}

/// `POST /v1/tasks/{id}/start`: a worker begins (or, after a redelivery, begins again)
/// the assignment its work message names.
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let Json(body) = body?;
    let done = state
        .start(&id, body.assignment, body.worker_id, &caller.principal)
        .await?;
    Ok(Json(json!({"id": id, "status": done.view.task.status})).into_response())
}

/// The answer to a command that finished a task: the task with its payment or refund.
/// That moved in the command's own message, except for a task whose escrow the settlement
/// manager holds (one written before escrow rode with the submission): for that one, wait
/// (bounded) until its money has moved; else the task as the command decided it.
async fn finished(state: &AppState, done: Decided) -> ApiResult {
    if done.view.payment.is_some_and(|p| p != EscrowState::Held) {
        return Ok(Json(TaskJson::from(done.view)).into_response());
    }
    let task_id = done.view.task.task_id.clone();
    let settled = state
        .wait_until(SETTLE_WAIT, || {
            matches!(state.model.task(&task_id), Ok(Some(v)) if v.last_sequence >= done.sequence && v.payment.is_some_and(|p| p != EscrowState::Held))
        })
        .await;
    let view = match state.model.task(&task_id)? {
        Some(view) if settled => view,
        _ => done.view,
    };
    Ok(Json(TaskJson::from(view)).into_response())
}

#[derive(Debug, Deserialize)]
struct CancelBody {
    /// Defaults to the task's buyer.
    buyer_id: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<CancelBody>, JsonRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let Json(body) = body?;
    let done = state
        .cancel(
            &id,
            body.buyer_id.as_deref(),
            body.reason,
            &caller.principal,
        )
        .await?;
    finished(&state, done).await
}

/// `POST /v1/tasks/{id}/retry`: a failed or expired task submitted again as a new task;
/// 201 with the new task, or 200 with the retry made earlier.
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let retried = state.retry(&id, &caller.principal).await?;
    let (status, view) = match retried.created {
        Some(done) => (StatusCode::CREATED, Some(done.view)),
        None => (
            StatusCode::OK,
            state.fresh_task(&retried.task_id).await.ok(),
        ),
    };
    let mut body = match view {
        Some(view) => json!(TaskJson::from(view)),
        None => json!({"id": retried.task_id}),
    };
    body["retry_of"] = json!(id);
    Ok((status, Json(body)).into_response())
}

// ---------------------------------------------------------------------------------------
// Agents, quotes, buyers, ledger
// ---------------------------------------------------------------------------------------

/// `GET /agents`: the prototype's `{agents}`, every agent.
async fn seed_agents(State(state): State<AppState>, caller: Caller) -> ApiResult {
    caller.may(Action::BrowseAgents)?;
    let agents: Vec<AgentJson> = state
        .all_agents()?
        .into_iter()
        .map(|a| AgentJson::from(a).for_caller(&caller))
        .collect();
    Ok(Json(json!({"agents": agents})).into_response())
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult {
    caller.may(Action::BrowseAgents)?;
    let Query(q) = q?;
    id_cursor::<AgentId>(&q.cursor)?;
    let page = state.model.agents(&page(q.cursor, q.limit)?)?;
    let agents: Vec<AgentJson> = page
        .items
        .into_iter()
        .map(|a| AgentJson::from(a).for_caller(&caller))
        .collect();
    Ok(Json(json!({"agents": agents, "next_cursor": page.next_cursor})).into_response())
}

async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.may(Action::BrowseAgents)?;
    let Path(id) = path?;
    let id: AgentId = parse_id(&id)?;
    Ok(Json(AgentJson::from(state.agent(&id)?).for_caller(&caller)).into_response())
}

#[derive(Debug, Deserialize)]
struct RegisterBody {
    agent_id: String,
    name: Option<String>,
    #[serde(default)]
    skills: Vec<String>,
    #[serde(default)]
    mode: AgentMode,
    executor: Option<ExecutorSettings>,
}

async fn register_agent(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<RegisterBody>, JsonRejection>,
) -> ApiResult {
    caller.may(Action::RegisterAgent)?;
    let Json(body) = body?;
    let done = state
        .register_agent(
            &body.agent_id,
            body.name,
            &body.skills,
            body.mode,
            body.executor,
            &caller.principal,
        )
        .await?;
    let id: AgentId = parse_id(&body.agent_id)?;
    let body = if done.visible {
        json!(AgentJson::from(state.agent(&id)?))
    } else {
        json!({"name": id})
    };
    Ok(written(done, StatusCode::CREATED, body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    skills: Option<Vec<String>>,
    mode: Option<AgentMode>,
    accepting: Option<bool>,
    executor: Option<ExecutorSettings>,
}

async fn update_agent(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let Json(body) = body?;
    let agent_id: AgentId = parse_id(&id)?;
    caller.may(Action::UpdateAgent {
        agent: &agent_id,
        operational: body.mode.is_some() || body.executor.is_some(),
    })?;
    if body.name.is_none()
        && body.skills.is_none()
        && body.mode.is_none()
        && body.accepting.is_none()
        && body.executor.is_none()
    {
        return Err(ApiError::bad_request(
            "empty_update",
            "nothing to change: give name, skills, mode or accepting",
        ));
    }
    let update = AgentUpdated {
        agent_id: agent_id.clone(),
        name: body.name,
        skills: body
            .skills
            .as_deref()
            .map(crate::commands::parse_skills)
            .transpose()?,
        mode: body.mode,
        accepting: body.accepting,
        executor: body.executor,
    };
    let done = state.update_agent(&id, update, &caller.principal).await?;
    let body = if done.visible {
        json!(AgentJson::from(state.agent(&agent_id)?))
    } else {
        json!({"name": agent_id})
    };
    Ok(written(done, StatusCode::OK, body))
}

#[derive(Debug, Deserialize)]
struct QuoteQuery {
    complexity: i64,
    /// Comma-separated.
    skills: Option<String>,
    max_price_satoshis: Option<u64>,
    policy: Option<Policy>,
}

/// `GET /v1/quote`: the agent a task would get now, and its price.
async fn quote(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<QuoteQuery>, QueryRejection>,
) -> ApiResult {
    caller.may(Action::BrowseAgents)?;
    let Query(q) = q?;
    let skills: Vec<String> = q
        .skills
        .as_deref()
        .map(|s| {
            s.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let choice = state.quote(q.complexity, &skills, q.max_price_satoshis, q.policy)?;
    Ok(Json(json!({
        "agent_name": choice.agent_id,
        "price_satoshis": choice.price_sats,
        "multiplier": f64::from(choice.multiplier.get()) / 1000.0,
        "multiplier_milli": choice.multiplier.get(),
        "complexity": q.complexity,
        "policy": q.policy.unwrap_or(state.policy),
    }))
    .into_response())
}

async fn list_buyers(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult {
    caller.may(Action::ListBuyers)?;
    let Query(q) = q?;
    id_cursor::<aicp_events::id::BuyerId>(&q.cursor)?;
    let page = state.model.buyers(&page(q.cursor, q.limit)?)?;
    let buyers: Vec<BuyerJson> = page.items.into_iter().map(BuyerJson::from).collect();
    Ok(Json(json!({"buyers": buyers, "next_cursor": page.next_cursor})).into_response())
}

async fn get_buyer(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = path?;
    let id = parse_id(&id)?;
    caller.may(Action::ReadBuyer { buyer: &id })?;
    let buyer = state
        .model
        .buyer(&id)?
        .unwrap_or_else(|| BuyerView::new(id));
    Ok(Json(BuyerJson::from(buyer)).into_response())
}

/// `GET /v1/ledger/{account}`: `escrow`, `buyer:<id>` or `agent:<id>`, newest first.
async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult {
    let Path(account) = path?;
    let Query(q) = q?;
    let account: Account = account
        .parse()
        .map_err(|e: InvalidAccount| ApiError::bad_request("invalid_account", e.to_string()))?;
    caller.may(Action::ReadLedger { account: &account })?;
    let balance = state.model.balance(&account)?;
    let page = state.model.ledger(&account, &page(q.cursor, q.limit)?)?;
    let entries: Vec<LedgerEntryJson> = page.items.into_iter().map(LedgerEntryJson::from).collect();
    Ok(Json(json!({
        "account": account.to_string(),
        "balance_satoshis": balance,
        "entries": entries,
        "next_cursor": page.next_cursor,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    limit: Option<usize>,
}

/// Failed tasks examined at most for one dead-letter answer, so that a marketplace with
/// millions of failures answers in bounded time.
const DEAD_LETTER_SCAN: usize = 10_000;

/// `GET /v1/dead-letters`: messages the projection could not decode, and tasks failed
/// because their work message ran out of deliveries; newest first, at most `limit` each.
async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> ApiResult {
    caller.may(Action::Operate)?;
    let Query(q) = q?;
    let request = page(None, q.limit)?;
    let poison: Vec<serde_json::Value> = state
        .model
        .poison(&request)?
        .items
        .into_iter()
        .map(|p| {
            json!({
                "sequence": p.sequence,
                "subject": p.subject,
                "error": p.error,
                "payload_bytes": p.payload.len(),
            })
        })
        .collect();
    let filter = TaskFilter {
        status: Some(TaskStatus::Failed),
        ..TaskFilter::default()
    };
    let (mut failed, mut scanned, mut cursor) = (Vec::new(), 0, None);
    while failed.len() < request.limit && scanned < DEAD_LETTER_SCAN {
        let batch = state.model.tasks(
            &filter,
            &PageRequest {
                cursor,
                limit: MAX_LIMIT,
            },
        )?;
        scanned += batch.items.len();
        failed.extend(
            batch
                .items
                .into_iter()
                .filter(|t| t.task.reason.as_deref() == Some(MAX_DELIVERIES))
                .map(TaskJson::from),
        );
        cursor = batch.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    failed.truncate(request.limit);
    Ok(Json(json!({"poison": poison, "failed_tasks": failed})).into_response())
}

/// `GET /v1/read-model/check`: this replica's read model at one checkpoint: each tree's
/// digest and the money invariants. `aicp verify --live` compares the digests with a
/// rebuild from the stream. Applying new events waits while it runs (a full scan).
async fn read_model_check(State(state): State<AppState>, caller: Caller) -> ApiResult {
    caller.may(Action::Operate)?;
    let model = state.model.clone();
    let checked = tokio::task::spawn_blocking(move || {
        model.consistent(|m| {
            Ok::<_, aicp_projections::ProjectionError>((
                m.last_sequence()?,
                m.digest()?,
                aicp_projections::invariants::check(m)?,
            ))
        })
    })
    .await
    .map_err(ApiError::internal)??;
    let (sequence, digests, invariants) = checked;
    let trees: Vec<serde_json::Value> = digests
        .iter()
        .map(
            |d| json!({"table": d.table, "records": d.records, "hash": format!("{:016x}", d.hash)}),
        )
        .collect();
    Ok(Json(json!({
        "sequence": sequence,
        "trees": trees,
        "invariants": invariants,
    }))
    .into_response())
}
