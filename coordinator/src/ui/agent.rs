//! The agent's page: its reputation and earnings, and its tasks; a manual agent completes
//! or fails them here.

use aicp_events::domain::task::TaskStatus;
use aicp_events::event::AgentMode;
use aicp_events::id::AgentId;
use aicp_projections::{PageRequest, TaskFilter};
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::layout::{multiplier, page as shell, percent_bp, sats};
use super::{auth_off, home_of, no_store};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use aicp_events::domain::access::Principal;

/// Tasks shown, newest first.
const SHOWN: usize = 50;

/// `GET /agent`.
pub async fn page(State(state): State<AppState>, caller: Option<Caller>) -> Response {
    let who = caller.map(|c| c.principal);
    let agent = match &who {
        Some(Principal::Agent(id)) => id.clone(),
        Some(other) => return Redirect::to(home_of(other)).into_response(),
        None => return Redirect::to("/sign-in").into_response(),
    };
    // An agent that is no longer registered (a wiped read model, another deployment):
    // forget it rather than trap the browser on an error.
    if matches!(state.model.agent(&agent), Ok(None)) {
        return super::sign_in::forget();
    }
    let after = state.notices.last();
    let parts = (|| Ok::<_, ApiError>((stats(&state, &agent)?, tasks(&state, &agent)?)))();
    let (stats, tasks) = match parts {
        Ok(parts) => parts,
        Err(e) => return e.into_response(),
    };
    let body = html! {
        div.grid {
            section.card.wide data-fragment="agent-stats" data-src="/ui/fragments/agent-stats" data-topics="agent,task,payment" {
                (stats)
            }
            section.card.wide data-fragment="agent-tasks" data-src="/ui/fragments/agent-tasks" data-topics="task,payment" {
                (tasks)
            }
        }
    };
    no_store(Html(
        shell(
            "Agent",
            who.as_ref(),
            auth_off(&state),
            Some(format!("?agent={agent}&after={after}")),
            body,
        )
        .into_string(),
    ))
}

/// Reputation, success rate, earnings, tasks done, status.
pub fn stats(state: &AppState, agent: &AgentId) -> Result<Markup, ApiError> {
    let a = state.agent(agent)?;
    let mode = match a.mode {
        AgentMode::Worker => "worker",
        AgentMode::Manual => "manual",
    };
    Ok(html! {
        h2 { (a.name) " " span.muted.small { "(" (a.agent_id) ", " (mode) ")" } }
        dl.stats {
            div { dt { "Reputation" } dd #agent-reputation { (multiplier(a.multiplier.get())) } }
            div { dt { "Success rate" } dd #agent-success { (percent_bp(a.rate_bp)) } }
            div { dt { "Earnings" } dd #agent-earnings { (sats(a.balance_sats)) } }
            div { dt { "Tasks done" } dd #agent-done { (a.tasks_completed) } }
            div { dt { "Failed" } dd #agent-failed { (a.tasks_failed) } }
            div { dt { "Status" } dd #agent-status {
                @if a.accepting { span.ok { "accepting" } } @else { span.muted { "paused" } }
                " · " (a.active_tasks) " in progress"
            } }
        }
    })
}

/// The agent's tasks, newest first; open ones of a manual agent get Complete and Fail.
pub fn tasks(state: &AppState, agent: &AgentId) -> Result<Markup, ApiError> {
    let a = state.agent(agent)?;
    let filter = TaskFilter {
        agent: Some(agent.clone()),
        ..TaskFilter::default()
    };
    let page = state.model.tasks(&filter, &PageRequest::first(SHOWN))?;
    let manual = a.mode == AgentMode::Manual;
    Ok(html! {
        h2 { "Your tasks" }
        @if !manual {
            p.muted.small { "Workers run this agent's tasks; they appear here as they are assigned, start and finish." }
        }
        table #agent-tasks {
            thead { tr { th { "Task" } th { "Buyer" } th { "Price" } th { "Status" } th { "Result" } } }
            tbody {
                @for v in &page.items {
                    @let t = &v.task;
                    @let open = matches!(t.status, TaskStatus::Assigned | TaskStatus::Running);
                    tr data-task-id=(t.task_id) {
                        td { code { (t.task_id) } br; span.small { (t.description) } }
                        td { (t.buyer_id) }
                        td.price { (t.price_sats.map(|p| sats(p as i64)).unwrap_or_else(|| "-".into())) }
                        td { span class=(format!("status {}", t.status)) { (t.status) } }
                        td {
                            @if manual && open {
                                div.finish {
                                    input.result type="text" placeholder="result or reason" aria-label=(format!("result of {}", t.task_id));
                                    button.complete.ok type="button" data-task-id=(t.task_id) { "Complete" }
                                    button.fail.danger type="button" data-task-id=(t.task_id) { "Fail" }
                                }
                            } @else {
                                span.small { (t.result.as_deref().or(t.reason.as_deref()).unwrap_or("")) }
                            }
                            span.row-error.error role="alert" {}
                        }
                    }
                }
            }
        }
        @if page.items.is_empty() {
            p.empty { "No tasks yet: tasks are assigned to you as buyers submit work you can do." }
        }
    })
}
