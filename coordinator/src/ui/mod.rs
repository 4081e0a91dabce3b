//! The marketplace pages and the dashboard, served by the coordinator itself.
//!
//! Pages are rendered on the server (maud). Their live parts are fragments: a section
//! names the fragment URL it came from and the kinds of events that change it; the page's
//! script follows `/v1/events/stream` and re-fetches a fragment when such an event
//! arrives. No polling, no reloads. Forms post JSON to the same `/v1` API as any client
//! and show errors next to the field. The script and stylesheet are compiled in.

mod agent;
mod buyer;
mod chart;
mod dashboard;
mod layout;
mod sign_in;

use aicp_events::domain::access::Principal;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use crate::auth::{AuthMode, Caller};
use crate::error::ApiError;
use crate::state::AppState;

/// The page a principal works on: admins the dashboard, buyers and agents their own.
pub fn home_of(principal: &Principal) -> &'static str {
    match principal {
        Principal::Buyer(_) => "/buyer",
        Principal::Agent(_) => "/agent",
        _ => "/dashboard",
    }
}

/// Whether the UI says that authentication is off (`--auth none`).
fn auth_off(state: &AppState) -> bool {
    state.auth.mode == AuthMode::None
}

/// The UI's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sign-in", get(sign_in::page).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/buyer", get(buyer::page))
        .route("/agent", get(agent::page))
        .route("/dashboard", get(dashboard::page))
        .route("/ui/fragments/{name}", get(fragment))
        .route("/assets/app.css", get(stylesheet))
        .route("/assets/app.js", get(script))
}

/// Where `GET /` sends a browser: its page, or the sign-in page.
pub fn home_for(caller: Option<&Caller>) -> Redirect {
    match caller {
        Some(caller) => Redirect::to(home_of(&caller.principal)),
        None => Redirect::to("/sign-in"),
    }
}

/// `GET /ui/fragments/{name}`: one live part of a page, as HTML.
async fn fragment(
    State(state): State<AppState>,
    caller: Option<Caller>,
    Path(name): Path<String>,
) -> Response {
    let who = caller.map(|c| c.principal);
    let admin = who == Some(Principal::Admin);
    let markup: Result<Markup, ApiError> = match (name.as_str(), &who) {
        ("buyer-summary", Some(Principal::Buyer(id))) => buyer::summary(&state, id),
        ("buyer-tasks", Some(Principal::Buyer(id))) => buyer::tasks(&state, id),
        ("agents", Some(_)) => buyer::agents(&state),
        ("agent-stats", Some(Principal::Agent(id))) => agent::stats(&state, id),
        ("agent-tasks", Some(Principal::Agent(id))) => agent::tasks(&state, id),
        ("dash-status", _) if admin => Ok(dashboard::status(&state).await),
        ("dash-counters", _) if admin => dashboard::counters(&state),
        ("dash-queue", _) if admin => Ok(dashboard::queue(&state).await),
        ("dash-agents", _) if admin => dashboard::agents(&state),
        ("dash-recent", _) if admin => dashboard::recent(&state),
        ("dash-charts", _) if admin => dashboard::charts(&state),
        (
            "agents" | "buyer-summary" | "buyer-tasks" | "agent-stats" | "agent-tasks"
            | "dash-status" | "dash-counters" | "dash-queue" | "dash-agents" | "dash-recent"
            | "dash-charts",
            None,
        ) => return (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
        (
            "buyer-summary" | "buyer-tasks" | "agent-stats" | "agent-tasks" | "dash-status"
            | "dash-counters" | "dash-queue" | "dash-agents" | "dash-recent" | "dash-charts",
            Some(_),
        ) => return (StatusCode::FORBIDDEN, "not yours to see").into_response(),
        _ => return (StatusCode::NOT_FOUND, "no such fragment").into_response(),
    };
    match markup {
        Ok(markup) => no_store(Html(markup.into_string())),
        Err(e) => e.into_response(),
    }
}

/// A page or fragment that must not be cached: it is live.
fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/app.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/app.js"),
    )
        .into_response()
}
