//! `GET /v1/events/stream`: live updates over Server-Sent Events.
//!
//! Each event is one stream message the read model has just applied (so a page that reads
//! the API on an event sees the change), with the stream sequence as its SSE id. A client
//! that reconnects sends `Last-Event-ID` and gets exactly what it missed, from the notices
//! the projector retains; if it was away too long it gets `resync` and should reload its
//! data. What a caller sees follows who it is: a buyer its own tasks and the agents; an
//! agent its own tasks and itself; a worker the tasks of the agents it serves; an admin
//! everything (or, with `?buyer=` or `?agent=`, what that buyer or agent sees).

use std::convert::Infallible;
use std::time::Duration;

use aicp_events::domain::access::{Principal, WorkerScope};
use aicp_events::id::{AgentId, BuyerId, TokenId};
use aicp_events::Aggregate;
use aicp_projections::notices::Notice;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::Caller;
use crate::commands::parse_id;
use crate::error::ApiError;
use crate::state::AppState;

/// Who the stream is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Everything (the dashboard).
    All,
    /// A buyer: its tasks and their money, and the agents.
    Buyer(BuyerId),
    /// An agent: the tasks assigned to it and its own record.
    Agent(AgentId),
    /// A worker: the tasks of the agents it serves, and those agents.
    Worker(WorkerScope),
}

impl Audience {
    /// What `caller` may follow, narrowed by the query's `buyer` or `agent`: 403 for
    /// another buyer's or agent's stream.
    fn of(
        caller: &Caller,
        buyer: Option<BuyerId>,
        agent: Option<AgentId>,
    ) -> Result<Self, ApiError> {
        let wanted = match (buyer, agent) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_filter",
                    "pass buyer or agent, not both",
                ))
            }
            (Some(buyer), None) => Some(Audience::Buyer(buyer)),
            (None, Some(agent)) => Some(Audience::Agent(agent)),
            (None, None) => None,
        };
        let own = match &caller.principal {
            Principal::Admin => return Ok(wanted.unwrap_or(Audience::All)),
            Principal::Buyer(id) => Audience::Buyer(id.clone()),
            Principal::Agent(id) => Audience::Agent(id.clone()),
            Principal::Worker(scope) => Audience::Worker(scope.clone()),
            Principal::Coordinator => {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "coordinator may not follow the stream",
                ))
            }
        };
        match wanted {
            None => Ok(own),
            Some(w) if w == own => Ok(own),
            Some(Audience::Agent(agent)) if caller.principal.acts_for_agent(&agent) => {
                Ok(Audience::Agent(agent))
            }
            Some(_) => Err(ApiError::forbidden(
                "forbidden",
                format!("{} may follow only its own events", caller.principal),
            )),
        }
    }

    fn sees_agent(&self, agent: &AgentId) -> bool {
        match self {
            Audience::All | Audience::Buyer(_) => true,
            Audience::Agent(own) => own == agent,
            Audience::Worker(scope) => scope.serves(agent),
        }
    }
}

/// The stream's query string.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    buyer: Option<String>,
    agent: Option<String>,
    /// Like `Last-Event-ID`, for clients that cannot set headers.
    after: Option<u64>,
}

/// `GET /v1/events/stream?buyer=|agent=`.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let buyer: Option<BuyerId> = query.buyer.as_deref().map(parse_id).transpose()?;
    let agent: Option<AgentId> = query.agent.as_deref().map(parse_id).transpose()?;
    if let Some(agent) = &agent {
        state.agent(agent)?;
    }
    let audience = Audience::of(&caller, buyer, agent)?;
    let after = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a stream sequence (a number)",
                    )
                })?,
        ),
        None => query.after,
    };

    let (tx, mut rx) = mpsc::channel::<Event>(256);
    tokio::spawn(feed(state, audience, caller.token_id, after, tx));
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Sends the audience's events to `tx` until the client goes, the server closes, the
/// caller's token is revoked, or the client falls so far behind that it must reconnect
/// (and resume by its last id).
async fn feed(
    state: AppState,
    audience: Audience,
    token: Option<TokenId>,
    after: Option<u64>,
    tx: mpsc::Sender<Event>,
) {
    let mut closing = state.closing.clone();
    let subscription = match state.notices.subscribe(after) {
        Ok(subscription) => subscription,
        Err(too_old) => {
            // Resume from now, after telling the client to reload what it shows.
            let Ok(subscription) = state.notices.subscribe(None) else {
                return;
            };
            let event = Event::default()
                .id(subscription.last.to_string())
                .event("resync")
                .data(json!({"reason": too_old.to_string()}).to_string());
            if !deliver(&tx, &mut closing, event).await {
                return;
            }
            subscription
        }
    };
    if after.is_none() {
        // Gives the client an id to resume from even if nothing happens before it drops.
        let hello = Event::default()
            .id(subscription.last.to_string())
            .event("hello")
            .data(json!({"sequence": subscription.last}).to_string());
        if !deliver(&tx, &mut closing, hello).await {
            return;
        }
    }
    for notice in &subscription.backlog {
        if let Some(event) = event_for(&state, &audience, notice) {
            if !deliver(&tx, &mut closing, event).await {
                return;
            }
        }
    }
    let mut live = subscription.live;
    loop {
        let notice = tokio::select! {
            notice = live.recv() => notice,
            _ = closing.wait_for(|c| *c) => return,
            () = tx.closed() => return,
        };
        let notice = match notice {
            Ok(notice) => notice,
            // Too slow to keep up: end the stream; the browser reconnects with its last id.
            Err(broadcast::error::RecvError::Lagged(_))
            | Err(broadcast::error::RecvError::Closed) => return,
        };
        // The token the stream was opened with was revoked: its reconnect is refused.
        if let (Some(Aggregate::Token(id)), Some(own)) = (&notice.aggregate, &token) {
            let revoked = !matches!(state.model.token(own), Ok(Some(t)) if t.revoked_at.is_none());
            if id == own && revoked {
                return;
            }
        }
        if let Some(event) = event_for(&state, &audience, &notice) {
            if !deliver(&tx, &mut closing, event).await {
                return;
            }
        }
    }
}

/// Sends one event unless the client has gone or the server is closing; false: stop.
/// (A client that stops reading fills the channel: the send must not outlive shutdown.)
async fn deliver(
    tx: &mpsc::Sender<Event>,
    closing: &mut watch::Receiver<bool>,
    event: Event,
) -> bool {
    tokio::select! {
        sent = tx.send(event) => sent.is_ok(),
        _ = closing.wait_for(|c| *c) => false,
    }
}

/// The SSE event for `notice`, if the audience may see it.
fn event_for(state: &AppState, audience: &Audience, notice: &Notice) -> Option<Event> {
    let (kind, id, task) = match &notice.aggregate {
        Some(aggregate @ (Aggregate::Task(task_id) | Aggregate::Payment(task_id))) => {
            let view = state.model.task(task_id).ok().flatten();
            let visible = match (audience, &view) {
                (Audience::All, _) => true,
                (Audience::Buyer(buyer), Some(v)) => &v.task.buyer_id == buyer,
                (Audience::Agent(agent), Some(v)) => v.task.agent_id.as_ref() == Some(agent),
                (Audience::Worker(scope), Some(v)) => {
                    v.task.agent_id.as_ref().is_some_and(|a| scope.serves(a))
                }
                _ => false,
            };
            if !visible {
                return None;
            }
            let task = view.map(|v| {
                json!({
                    "status": v.task.status,
                    "buyer_id": v.task.buyer_id,
                    "agent_id": v.task.agent_id,
                    "payment": v.payment,
                })
            });
            (aggregate.kind(), task_id.to_string(), task)
        }
        Some(Aggregate::Agent(agent_id)) => {
            if !audience.sees_agent(agent_id) {
                return None;
            }
            ("agent", agent_id.to_string(), None)
        }
        // A budget is its buyer's and the admin's business.
        Some(Aggregate::Buyer(buyer_id)) => match audience {
            Audience::All => ("buyer", buyer_id.to_string(), None),
            Audience::Buyer(own) if own == buyer_id => ("buyer", buyer_id.to_string(), None),
            _ => return None,
        },
        // Tokens are the admin's business alone.
        Some(Aggregate::Token(token_id)) if *audience == Audience::All => {
            ("token", token_id.to_string(), None)
        }
        Some(Aggregate::Token(_)) => return None,
        None if *audience == Audience::All => ("other", String::new(), None),
        None => return None,
    };
    let data = json!({
        "sequence": notice.sequence,
        "kind": kind,
        "id": id,
        "types": notice.types,
        "task": task,
    });
    Some(
        Event::default()
            .id(notice.sequence.to_string())
            .event(kind)
            .data(data.to_string()),
    )
}
