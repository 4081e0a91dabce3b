//! Prometheus metrics at `GET /metrics`.
//!
//! Request latencies and appends are counted as they happen; the projection's lag, the
//! settlement manager's backlog and the stream's position are read when scraped, so they
//! are never stale.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::ApiError;
use crate::state::AppState;

/// The coordinator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    /// Events this process appended, by outcome.
    pub appends: IntCounterVec,
    applied: IntGauge,
    stream_last: IntGauge,
    lag: IntGauge,
    manager_pending: IntGauge,
    events_applied: IntGauge,
    events_rejected: IntGauge,
    poison: IntGauge,
    /// Settlement steps taken by this process.
    pub settlement_steps: IntCounter,
    queue_depth: IntGaugeVec,
    /// Work messages this process put on the work queues.
    pub dispatched: IntCounter,
    dispatch_pending: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("aicp".into()), None)?;
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route", "status"],
        )?;
        let appends = IntCounterVec::new(
            Opts::new(
                "events_appended_total",
                "Appends to AICP_EVENTS by this process, by outcome",
            ),
            &["outcome"],
        )?;
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let metrics = Self {
            requests,
            appends,
            applied: gauge(
                "projection_applied_sequence",
                "Last stream sequence the read model applied",
            )?,
            stream_last: gauge("stream_last_sequence", "Last sequence of AICP_EVENTS")?,
            lag: gauge(
                "projection_lag_events",
                "Messages of AICP_EVENTS the read model has not applied",
            )?,
            manager_pending: gauge(
                "settlement_pending_events",
                "Task events the settlement manager has not finished (pending + unacknowledged)",
            )?,
            events_applied: gauge("projection_events_applied", "Events the read model applied")?,
            events_rejected: gauge(
                "projection_events_rejected",
                "Events the domain rules refused",
            )?,
            poison: gauge(
                "projection_poison_messages",
                "Messages that could not be decoded",
            )?,
            settlement_steps: IntCounter::new(
                "settlement_steps_total",
                "Payment and reputation steps appended",
            )?,
            dispatched: IntCounter::new(
                "work_dispatched_total",
                "Work messages put on agents' queues",
            )?,
            dispatch_pending: IntGauge::new(
                "dispatch_pending_events",
                "Task events the dispatcher has not finished (pending + unacknowledged)",
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "queue_depth",
                    "Work pending or in flight per agent (what KEDA scales workers on)",
                ),
                &["agent"],
            )?,
            registry,
        };
        metrics
            .registry
            .register(Box::new(metrics.requests.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.appends.clone()))?;
        for gauge in [
            &metrics.applied,
            &metrics.stream_last,
            &metrics.lag,
            &metrics.manager_pending,
            &metrics.events_applied,
            &metrics.events_rejected,
            &metrics.poison,
        ] {
            metrics.registry.register(Box::new(gauge.clone()))?;
        }
        metrics
            .registry
            .register(Box::new(metrics.settlement_steps.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.queue_depth.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.dispatched.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.dispatch_pending.clone()))?;
        Ok(metrics)
    }
}

/// Times every request, labelled by its route pattern (not the raw path, which would make
/// one series per task id).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = &state.metrics;
    let applied = state.progress.applied();
    m.applied.set(as_i64(applied));
    // While disconnected, serve what is known now rather than wait for timeouts.
    let connected = state.store.jetstream().client().connection_state()
        == async_nats::connection::State::Connected;
    if !connected {
        return encode(m);
    }
    if let Ok(last) = state.store.last_sequence().await {
        m.stream_last.set(as_i64(last));
        m.lag.set(as_i64(last.saturating_sub(applied)));
    }
    // Settlement and dispatch share one consumer; both gauges keep their names.
    if let Ok(pending) =
        crate::task_consumer::pending(&state, aicp_events::consumers::PROCESS).await
    {
        m.manager_pending.set(as_i64(pending));
        m.dispatch_pending.set(as_i64(pending));
    }
    if let Ok(depths) = state.store.work_queue_depths().await {
        for agent in state.all_agents()? {
            let depth = depths.get(agent.agent_id.as_str()).copied().unwrap_or(0);
            m.queue_depth
                .with_label_values(&[agent.agent_id.as_str()])
                .set(as_i64(depth));
        }
    }
    let counters = state.model.counters()?;
    m.events_applied.set(as_i64(counters.events_applied));
    m.events_rejected.set(as_i64(counters.events_rejected));
    m.poison.set(as_i64(counters.poison));
    encode(m)
}

fn encode(m: &Metrics) -> Result<Response, ApiError> {
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut body)
        .map_err(ApiError::internal)?;
    Ok(([("content-type", "text/plain; version=0.0.4")], body).into_response())
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
