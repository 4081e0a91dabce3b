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

use std::fmt;

use aicp_events::id::{AgentId, BuyerId};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use crate::error::ApiError;
use crate::state::AppState;

/// The cookie that remembers who signed in on this browser.
const COOKIE: &str = "aicp_who";

/// Who is using the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A buyer, by id.
    Buyer(BuyerId),
    /// An agent, by id.
    Agent(AgentId),
}

impl Principal {
    /// `buyer` or `agent`.
    pub fn role(&self) -> &'static str {
        match self {
            Principal::Buyer(_) => "buyer",
            Principal::Agent(_) => "agent",
        }
    }

    /// The id.
    pub fn id(&self) -> &str {
        match self {
            Principal::Buyer(id) => id.as_str(),
            Principal::Agent(id) => id.as_str(),
        }
    }

    /// Parses `buyer:<id>` or `agent:<id>`.
    fn parse(raw: &str) -> Option<Self> {
        match raw.split_once(':')? {
            ("buyer", id) => id.parse().ok().map(Principal::Buyer),
            ("agent", id) => id.parse().ok().map(Principal::Agent),
            _ => None,
        }
    }

    /// The page this principal works on.
    fn home(&self) -> &'static str {
        match self {
            Principal::Buyer(_) => "/buyer",
            Principal::Agent(_) => "/agent",
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role(), self.id())
    }
}

/// The principal signed in on this browser, from its cookie.
pub fn signed_in(headers: &HeaderMap) -> Option<Principal> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| Principal::parse(value))
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
pub fn home_for(headers: &HeaderMap) -> Redirect {
    match signed_in(headers) {
        Some(who) => Redirect::to(who.home()),
        None => Redirect::to("/sign-in"),
    }
}

/// `GET /ui/fragments/{name}`: one live part of a page, as HTML.
async fn fragment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let who = signed_in(&headers);
    let markup: Result<Markup, ApiError> = match (name.as_str(), &who) {
        ("buyer-summary", Some(Principal::Buyer(id))) => buyer::summary(&state, id),
        ("buyer-tasks", Some(Principal::Buyer(id))) => buyer::tasks(&state, id),
        ("agents", _) => buyer::agents(&state),
        ("agent-stats", Some(Principal::Agent(id))) => agent::stats(&state, id),
        ("agent-tasks", Some(Principal::Agent(id))) => agent::tasks(&state, id),
        ("dash-status", _) => Ok(dashboard::status(&state).await),
        ("dash-counters", _) => dashboard::counters(&state),
        ("dash-queue", _) => Ok(dashboard::queue(&state).await),
        ("dash-agents", _) => dashboard::agents(&state),
        ("dash-recent", _) => dashboard::recent(&state),
        ("dash-charts", _) => dashboard::charts(&state),
        ("buyer-summary" | "buyer-tasks" | "agent-stats" | "agent-tasks", _) => {
            return (StatusCode::UNAUTHORIZED, "sign in first").into_response()
        }
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
