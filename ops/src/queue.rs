//! `aicp queue-depth`: work waiting and in flight per agent, as the autoscaler sees it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use aicp_events::EventStore;
use futures::TryStreamExt;
use serde_json::json;

use crate::error::OpsError;
use crate::output;

/// Prints each agent's queue: messages on its work subject, and its consumer's pending,
/// in-flight (delivered, not acked) and redelivered counts.
pub async fn command(store: &EventStore, as_json: bool) -> Result<ExitCode, OpsError> {
    let depths = store.work_queue_depths().await?;
    let stream = store.stream(&store.namespace().work_stream()).await?;
    let consumers: Vec<_> = stream
        .consumers()
        .try_collect()
        .await
        .map_err(|e| OpsError::jetstream("consumer list", e))?;
    let mut rows: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (agent, depth) in &depths {
        rows.insert(
            agent.clone(),
            json!({"agent": agent, "queued": depth, "consumer": null}),
        );
    }
    for c in consumers {
        let Some(agent) = c.name.strip_prefix("worker-") else {
            continue;
        };
        let row = rows
            .entry(agent.to_owned())
            .or_insert_with(|| json!({"agent": agent, "queued": 0}));
        row["consumer"] = json!(c.name);
        row["pending"] = json!(c.num_pending);
        row["in_flight"] = json!(c.num_ack_pending);
        row["redelivered"] = json!(c.num_redelivered);
        row["waiting_pulls"] = json!(c.num_waiting);
    }
    let rows: Vec<serde_json::Value> = rows.into_values().collect();
    if as_json {
        output::json(&json!(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no work queued and no worker consumers yet");
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            [
                "agent",
                "queued",
                "pending",
                "in_flight",
                "redelivered",
                "waiting_pulls",
                "consumer",
            ]
            .iter()
            .map(|k| crate::api::text(&r[*k]))
            .collect()
        })
        .collect();
    output::table(
        &[
            "AGENT",
            "QUEUED",
            "PENDING",
            "IN FLIGHT",
            "REDELIVERED",
            "WAITING PULLS",
            "CONSUMER",
        ],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}
