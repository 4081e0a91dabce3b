//! `aicp streams init | status`: provisioning and a look at both streams and their consumers.

use std::process::ExitCode;

use aicp_events::consumers::{self, WorkerConsumerSettings};
use aicp_events::id::AgentId;
use aicp_events::store::{StoreError, StreamSettings};
use aicp_events::EventStore;
use futures::TryStreamExt;
use serde_json::json;

use crate::cli::InitArgs;
use crate::error::OpsError;
use crate::output;

/// Creates or updates the streams, the coordinator's consumers and the named agents'
/// worker consumers.
pub async fn init(
    store: &EventStore,
    args: &InitArgs,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let agents = args
        .agents
        .iter()
        .map(|a| a.parse::<AgentId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OpsError::Usage(e.to_string()))?;
    let store = store
        .clone()
        .with_settings(StreamSettings::with_replicas(args.replicas));
    let mut done = Vec::new();
    for (stream, outcome) in store.provision().await? {
        done.push(json!({"kind": "stream", "name": stream, "outcome": format!("{outcome:?}").to_lowercase()}));
    }
    let namespace = store.namespace().clone();
    let events = store.events_stream().await?;
    for consumer in consumers::COORDINATOR_CONSUMERS {
        consumers::bind(&events, &namespace, consumer)
            .await
            .map_err(|e| OpsError::jetstream(e.action, e.source))?;
        done.push(json!({"kind": "consumer", "name": consumer.name, "outcome": "ready"}));
    }
    let work = store.stream(&namespace.work_stream()).await?;
    for agent in &agents {
        let config =
            consumers::worker_consumer_config(&namespace, agent, WorkerConsumerSettings::default());
        work.create_consumer(config)
            .await
            .map_err(|e| OpsError::jetstream("consumer create", e))?;
        done.push(json!({"kind": "consumer", "name": consumers::worker_consumer_name(agent), "outcome": "ready"}));
    }
    if as_json {
        output::json(&json!(done));
    } else {
        for item in &done {
            println!(
                "{} {}: {}",
                item["kind"].as_str().unwrap_or_default(),
                item["name"].as_str().unwrap_or_default(),
                item["outcome"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints each stream's counts and sequences and each consumer's backlog. A missing stream
/// is reported and makes the exit code 1.
pub async fn status(store: &EventStore, as_json: bool) -> Result<ExitCode, OpsError> {
    let namespace = store.namespace();
    let mut report = Vec::new();
    let mut missing = Vec::new();
    for name in [namespace.events_stream(), namespace.work_stream()] {
        let mut stream = match store.stream(&name).await {
            Ok(stream) => stream,
            Err(StoreError::StreamNotFound { stream }) => {
                missing.push(stream);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let state = stream
            .info()
            .await
            .map_err(|e| OpsError::jetstream("stream info", e))?
            .state
            .clone();
        let consumers: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| OpsError::jetstream("consumer list", e))?;
        let mut consumers: Vec<serde_json::Value> = consumers
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "redelivered": c.num_redelivered,
                    "waiting_pulls": c.num_waiting,
                    "delivered_seq": c.delivered.stream_sequence,
                    "ack_floor_seq": c.ack_floor.stream_sequence,
                })
            })
            .collect();
        consumers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        report.push(json!({
            "stream": name,
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_sequence,
            "last_seq": state.last_sequence,
            "last_at": (state.last_sequence > 0).then_some(state.last_timestamp),
            "consumers": consumers,
        }));
    }
    if as_json {
        output::json(&json!({"streams": report, "missing": missing}));
    } else {
        for stream in &report {
            println!(
                "{}: {} messages, {} bytes, sequences {}..{}{}",
                stream["stream"].as_str().unwrap_or_default(),
                stream["messages"],
                stream["bytes"],
                stream["first_seq"],
                stream["last_seq"],
                stream["last_at"]
                    .as_str()
                    .map(|at| format!(", last at {at}"))
                    .unwrap_or_default()
            );
            let rows: Vec<Vec<String>> = stream["consumers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    [
                        "name",
                        "pending",
                        "ack_pending",
                        "redelivered",
                        "waiting_pulls",
                        "delivered_seq",
                    ]
                    .iter()
                    .map(|k| match &c[*k] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
                })
                .collect();
            if rows.is_empty() {
                println!("  no consumers\n");
            } else {
                output::table(
                    &[
                        "  CONSUMER",
                        "PENDING",
                        "ACK PENDING",
                        "REDELIVERED",
                        "WAITING PULLS",
                        "DELIVERED SEQ",
                    ],
                    &rows
                        .into_iter()
                        .map(|mut r| {
                            r[0] = format!("  {}", r[0]);
                            r
                        })
                        .collect::<Vec<_>>(),
                );
                println!();
            }
        }
        for stream in &missing {
            println!("{stream}: does not exist (run `aicp streams init`)");
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
