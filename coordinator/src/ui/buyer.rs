//! The buyer's page: the task form with a live quote, the agents, the buyer's tasks and
//! money.

use aicp_events::domain::task::TaskStatus;
use aicp_events::id::BuyerId;
use aicp_projections::views::TaskView;
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

/// Tasks shown on the page, newest first.
const SHOWN: usize = 50;

/// `GET /buyer`.
pub async fn page(State(state): State<AppState>, caller: Option<Caller>) -> Response {
    let who = caller.map(|c| c.principal);
    let buyer = match &who {
        Some(Principal::Buyer(id)) => id.clone(),
        Some(other) => return Redirect::to(home_of(other)).into_response(),
        None => return Redirect::to("/sign-in").into_response(),
    };
    // What the page shows is at least this new: the stream resumes after it.
    let after = state.notices.last();
    let parts = (|| {
        Ok::<_, ApiError>((
            summary(&state, &buyer)?,
            agents(&state)?,
            tasks(&state, &buyer)?,
        ))
    })();
    let (summary, agents, tasks) = match parts {
        Ok(parts) => parts,
        Err(e) => return e.into_response(),
    };
    let quote = match state.quote(1, &[], None, None) {
        Ok(choice) => format!(
            "{} · {} · {}",
            choice.agent_id,
            multiplier(choice.multiplier.get()),
            sats(choice.price_sats as i64)
        ),
        Err(e) => e.message,
    };
    let body = html! {
        div.grid {
            section.card {
                h2 { "New task" }
                form #task-form novalidate data-buyer=(buyer) {
                    label for="description" { "What should the agent do?" }
                    textarea #description name="description" rows="3" maxlength="4096"
                        placeholder="e.g. Process payment" aria-describedby="task-form-error" {}
                    label for="complexity" { "Complexity " output #complexity-value for="complexity" { "1" } " of 10" }
                    input #complexity name="complexity" type="range" min="1" max="10" step="1" value="1";
                    div.row {
                        div {
                            label for="skills" { "Skills (optional)" }
                            input #skills name="skills" placeholder="comma-separated";
                        }
                        div {
                            label for="max-price" { "Price cap, sat (optional)" }
                            input #max-price name="max_price" type="number" min="1" step="1" inputmode="numeric";
                        }
                    }
                    label for="deadline" { "Deadline (optional)" }
                    input #deadline name="deadline" type="datetime-local";
                    p.quote aria-live="polite" { "Quote: " span #quote { (quote) } }
                    p #task-form-error .error role="alert" hidden {}
                    button #submit-task .primary type="submit" { "Submit task" }
                }
            }
            section.card data-fragment="buyer-summary" data-src="/ui/fragments/buyer-summary" data-topics="task,payment,buyer" {
                (summary)
            }
            section.card data-fragment="agents" data-src="/ui/fragments/agents" data-topics="agent,task" {
                (agents)
            }
            section.card.wide data-fragment="buyer-tasks" data-src="/ui/fragments/buyer-tasks" data-topics="task,payment" {
                (tasks)
            }
        }
    };
    no_store(Html(
        shell(
            "Buyer",
            who.as_ref(),
            auth_off(&state),
            Some(format!("?buyer={buyer}&after={after}")),
            body,
        )
        .into_string(),
    ))
}

/// The buyer's spend, open escrow and refunds, and its balance and limits if prepaid.
pub fn summary(state: &AppState, buyer: &BuyerId) -> Result<Markup, ApiError> {
    let view = state.model.buyer(buyer)?;
    let budget = view.as_ref().and_then(|b| b.budget.clone());
    let today = chrono::Utc::now().date_naive();
    let limit = |limit: Option<u64>| match limit {
        Some(sats_limit) => sats(sats_limit as i64),
        None => "none".to_owned(),
    };
    let (submitted, spent, open, refunded) = view
        .map(|b| {
            (
                b.tasks_submitted,
                b.spent_sats,
                b.open_escrow_sats,
                b.refunded_sats,
            )
        })
        .unwrap_or_default();
    Ok(html! {
        h2 { "Your money" }
        dl.stats {
            div { dt { "Spent" } dd #spend { (sats(spent as i64)) } }
            div { dt { "In escrow" } dd #open-escrow { (sats(open as i64)) } }
            div { dt { "Refunded" } dd #refunded { (sats(refunded as i64)) } }
            div { dt { "Tasks" } dd #task-count { (submitted) } }
        }
        @if let Some(budget) = budget {
            h2 { "Your budget" }
            dl.stats #budget {
                div { dt { "Balance" } dd #balance { (sats(budget.balance_sats() as i64)) } }
                div { dt { "Daily limit" } dd #daily-limit { (limit(budget.limits.daily_sats)) } }
                div { dt { "Total limit" } dd #total-limit { (limit(budget.limits.total_sats)) } }
                div { dt { "Spent today" } dd #spent-today { (sats(budget.spent_on(today) as i64)) } }
                div { dt { "Left to spend" } dd #left-today { (sats(budget.available_sats(today) as i64)) } }
            }
        } @else {
            p.small.muted #no-budget { "No prepaid balance: your tasks are not checked against one. An admin deposits with POST /v1/buyers/" (buyer) "/deposits." }
        }
    })
}

/// The agents a task can go to, with what decides the choice and the price.
pub fn agents(state: &AppState) -> Result<Markup, ApiError> {
    let agents = state.all_agents()?;
    Ok(html! {
        h2 { "Agents" }
        @if agents.is_empty() {
            p.empty { "No agents are registered yet: register one with POST /v1/agents." }
        } @else {
            table #agents {
                thead { tr { th { "Agent" } th { "Success" } th { "Multiplier" } th { "Load" } } }
                tbody {
                    @for a in &agents {
                        tr data-agent-id=(a.agent_id) {
                            td {
                                (a.name)
                                @if !a.accepting { " " span.badge.muted { "paused" } }
                                @if !a.skills.is_empty() {
                                    br; span.small.muted { (a.skills.iter().cloned().collect::<Vec<_>>().join(", ")) }
                                }
                            }
                            td { (percent_bp(a.rate_bp)) }
                            td { (multiplier(a.multiplier.get())) }
                            td { (a.active_tasks) }
                        }
                    }
                }
            }
        }
    })
}

/// The buyer's tasks, newest first, with a cancel button where cancelling is allowed.
pub fn tasks(state: &AppState, buyer: &BuyerId) -> Result<Markup, ApiError> {
    let filter = TaskFilter {
        buyer: Some(buyer.clone()),
        ..TaskFilter::default()
    };
    let page = state.model.tasks(&filter, &PageRequest::first(SHOWN))?;
    Ok(html! {
        h2 { "Your tasks" }
        table #buyer-tasks {
            thead { tr { th { "Task" } th { "Agent" } th { "Price" } th { "Status" } th { "Result" } th {} } }
            tbody {
                @for view in &page.items { (task_row(view)) }
            }
        }
        @if page.items.is_empty() {
            p.empty { "No tasks yet: describe one above and submit it." }
        }
    })
}

fn task_row(view: &TaskView) -> Markup {
    let t = &view.task;
    let cancellable = matches!(t.status, TaskStatus::Submitted | TaskStatus::Assigned);
    html! {
        tr data-task-id=(t.task_id) {
            td { code { (t.task_id) } br; span.small { (t.description) } }
            td { (t.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "-".into())) }
            td.price { (t.price_sats.map(|p| sats(p as i64)).unwrap_or_else(|| "-".into())) }
            td { span class=(format!("status {}", t.status)) { (t.status) }
                @if let Some(payment) = view.payment { br; span.small.muted { (payment) } } }
            td.small { (t.result.as_deref().or(t.reason.as_deref()).unwrap_or("")) }
            td {
                @if cancellable {
                    button.cancel type="button" data-task-id=(t.task_id) { "Cancel" }
                }
                span.row-error.error role="alert" {}
            }
        }
    }
}
