//! `/dashboard`: the marketplace at a glance, live, for admins: it shows every buyer's
//! most recent tasks and every agent's earnings.

use aicp_projections::{PageRequest, TaskFilter};
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{html, Markup};

use super::chart::{line_chart, Series};
use super::layout::{multiplier, page as shell, percent_bp, sats, thousands};
use super::{auth_off, home_of, no_store};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use aicp_events::domain::access::Principal;

/// Minutes the task and money charts cover.
const CHART_MINUTES: i64 = 30;

/// `GET /dashboard`.
pub async fn page(State(state): State<AppState>, caller: Option<Caller>) -> Response {
    let who = caller.map(|c| c.principal);
    match &who {
        Some(Principal::Admin) => {}
        Some(p @ (Principal::Buyer(_) | Principal::Agent(_))) => {
            return Redirect::to(home_of(p)).into_response()
        }
        // A worker's token has no page: say so rather than send it round in circles.
        Some(_) => {
            return (
                axum::http::StatusCode::FORBIDDEN,
                "the dashboard is for admins; sign out and sign in with an admin token",
            )
                .into_response()
        }
        None => return Redirect::to("/sign-in").into_response(),
    }
    // What the page shows is at least this new: the stream resumes after it.
    let after = state.notices.last();
    let parts = (|| {
        Ok::<_, ApiError>((
            counters(&state)?,
            agents(&state)?,
            recent(&state)?,
            charts(&state)?,
        ))
    })();
    let (counters, agents, recent, charts) = match parts {
        Ok(parts) => parts,
        Err(e) => return e.into_response(),
    };
    let (status, queue) = (status(&state).await, queue(&state).await);
    let body = html! {
        h1 { "Dashboard" }
        div.grid {
            section.card data-fragment="dash-status" data-src="/ui/fragments/dash-status" data-topics="task" { (status) }
            section.card data-fragment="dash-counters" data-src="/ui/fragments/dash-counters" data-topics="task,payment" { (counters) }
            section.card data-fragment="dash-queue" data-src="/ui/fragments/dash-queue" data-topics="task" { (queue) }
            section.card.wide data-fragment="dash-charts" data-src="/ui/fragments/dash-charts" data-topics="task,payment" { (charts) }
            section.card.wide data-fragment="dash-agents" data-src="/ui/fragments/dash-agents" data-topics="agent,task,payment" { (agents) }
            section.card.wide data-fragment="dash-recent" data-src="/ui/fragments/dash-recent" data-topics="task,payment" { (recent) }
        }
    };
    no_store(Html(
        shell(
            "Dashboard",
            who.as_ref(),
            auth_off(&state),
            Some(format!("?after={after}")),
            body,
        )
        .into_string(),
    ))
}

/// NATS, the stream, this coordinator's uptime, the workers heard from.
pub async fn status(state: &AppState) -> Markup {
    let connection = state.store.jetstream().client().connection_state();
    let connected = connection == async_nats::connection::State::Connected;
    let last = state.store.last_sequence().await.ok();
    let started = Utc::now().timestamp() - state.started_at.elapsed().as_secs() as i64;
    let workers = state.fleet.online();
    html! {
        h2 { "System" }
        dl.stats {
            div { dt { "NATS" } dd #nats-status {
                @if connected { span.ok { "connected" } } @else { span.bad { (connection.to_string()) } }
            } }
            div { dt { "Stream" } dd #stream-seq {
                (last.map(|l| thousands(l as i64)).unwrap_or_else(|| "?".into())) " events"
            } }
            div { dt { "Uptime" } dd #uptime data-started=(started) { (uptime(state.started_at.elapsed().as_secs())) } }
            div { dt { "Workers online" } dd #workers-online { (workers.len()) } }
        }
        @if !workers.is_empty() {
            p.small.muted { @for (i, w) in workers.iter().enumerate() {
                @if i > 0 { ", " } (w.worker_id) " (" (w.agents.join(" ")) ")"
            } }
        }
    }
}

/// `3725` seconds as `1h 2m 5s`.
fn uptime(secs: u64) -> String {
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

/// Task counters and the success rate.
pub fn counters(state: &AppState) -> Result<Markup, ApiError> {
    let c = state.model.counters()?;
    let decided = c.completed + c.failed;
    let rate = if decided == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", 100.0 * c.completed as f64 / decided as f64)
    };
    Ok(html! {
        h2 { "Tasks" }
        dl.stats {
            div { dt { "Submitted" } dd #count-submitted { (c.submitted) } }
            div { dt { "Completed" } dd #count-completed { (c.completed) } }
            div { dt { "Failed" } dd #count-failed { (c.failed) } }
            div { dt { "Success rate" } dd #success-rate { (rate) } }
            div { dt { "Cancelled" } dd #count-cancelled { (c.cancelled) } }
            div { dt { "Expired" } dd #count-expired { (c.expired) } }
            div { dt { "Settled" } dd #settled { (sats(c.settled_sats as i64)) } }
            div { dt { "Refunded" } dd #refunded-total { (sats(c.refunded_sats as i64)) } }
        }
    })
}

/// Work queued or in flight, per agent.
pub async fn queue(state: &AppState) -> Markup {
    let depths = state.store.work_queue_depths().await;
    html! {
        h2 { "Queue depth" }
        @match depths {
            Ok(depths) => {
                p.big #queue-depth { (depths.values().sum::<u64>()) }
                @if depths.is_empty() {
                    p.empty { "No work queued: tasks for worker agents appear here until a worker takes them." }
                } @else {
                    table #queue-by-agent {
                        thead { tr { th { "Agent" } th { "Queued or running" } } }
                        tbody { @for (agent, depth) in &depths { tr { td { (agent) } td { (depth) } } } }
                    }
                }
            }
            Err(e) => { p #queue-depth .error { "unavailable: " (e) } }
        }
    }
}

/// Every agent's record.
pub fn agents(state: &AppState) -> Result<Markup, ApiError> {
    let agents = state.all_agents()?;
    Ok(html! {
        h2 { "Agents" }
        table #dash-agents {
            thead { tr { th { "Agent" } th { "Success" } th { "Multiplier" } th { "Balance" } th { "In flight" } th { "Done" } th { "Status" } } }
            tbody {
                @for a in &agents {
                    tr data-agent-id=(a.agent_id) {
                        td { (a.name) }
                        td { (percent_bp(a.rate_bp)) }
                        td { (multiplier(a.multiplier.get())) }
                        td.price { (sats(a.balance_sats)) }
                        td { (a.active_tasks) }
                        td { (a.tasks_completed) }
                        td { @if a.accepting { span.ok { "accepting" } } @else { span.muted { "paused" } } }
                    }
                }
            }
        }
        @if agents.is_empty() { p.empty { "No agents yet: register one with POST /v1/agents." } }
    })
}

/// The ten newest tasks.
pub fn recent(state: &AppState) -> Result<Markup, ApiError> {
    let page = state
        .model
        .tasks(&TaskFilter::default(), &PageRequest::first(10))?;
    Ok(html! {
        h2 { "Recent tasks" }
        table #recent-tasks {
            thead { tr { th { "Task" } th { "Description" } th { "Status" } th { "Agent" } th { "Price" } } }
            tbody {
                @for v in &page.items {
                    tr data-task-id=(v.task.task_id) {
                        td { code { (v.task.task_id) } }
                        td { (v.task.description) }
                        td { span class=(format!("status {}", v.task.status)) { (v.task.status) } }
                        td { (v.task.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "-".into())) }
                        td.price { (v.task.price_sats.map(|p| sats(p as i64)).unwrap_or_else(|| "-".into())) }
                    }
                }
            }
        }
        @if page.items.is_empty() { p.empty { "No tasks yet: sign in as a buyer and submit one, or run `make demo`." } }
    })
}

/// Tasks per minute, satoshis settled per minute, and queue depth over time.
pub fn charts(state: &AppState) -> Result<Markup, ApiError> {
    let now_minute = Utc::now().timestamp().div_euclid(60) * 60;
    let from = now_minute - (CHART_MINUTES - 1) * 60;
    let series = state.model.series(from)?;
    let slots = CHART_MINUTES as usize;
    let mut submitted = vec![0u64; slots];
    let mut completed = vec![0u64; slots];
    let mut failed_ = vec![0u64; slots];
    let mut settled = vec![0u64; slots];
    for m in &series {
        let Ok(i) = usize::try_from((m.minute - from) / 60) else {
            continue;
        };
        if i < slots {
            submitted[i] = m.submitted;
            completed[i] = m.completed;
            failed_[i] = m.failed;
            settled[i] = m.settled_sats;
        }
    }
    let depth: Vec<u64> = state
        .fleet
        .depth_history()
        .iter()
        .map(|(_, d)| *d)
        .collect();
    let depth_total = depth.iter().sum();
    let submitted_total = submitted.iter().sum();
    let settled_total = settled.iter().sum();
    Ok(html! {
        h2 { "Last " (CHART_MINUTES) " minutes" }
        div.charts {
            (line_chart("chart-tasks", "Tasks per minute", slots, &[
                Series { label: "submitted", class: "s-submitted", values: submitted },
                Series { label: "completed", class: "s-completed", values: completed },
                Series { label: "failed", class: "s-failed", values: failed_ },
            ], submitted_total))
            (line_chart("chart-sats", "Satoshis settled per minute", slots, &[
                Series { label: "settled", class: "s-settled", values: settled },
            ], settled_total))
            (line_chart("chart-queue", "Queue depth (every 10 s)", depth.len().max(2), &[
                Series { label: "queued or running", class: "s-queue", values: depth },
            ], depth_total))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(125), "2m 5s");
        assert_eq!(uptime(3725), "1h 2m 5s");
    }
}
