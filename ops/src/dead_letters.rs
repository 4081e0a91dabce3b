//! `aicp dead-letters list | retry`: what could not be processed, and a second chance for
//! tasks that ran out of deliveries.

use std::process::ExitCode;

use serde_json::json;

use crate::api::{self, Client};
use crate::error::OpsError;
use crate::output;

/// Prints the poison messages and the tasks failed by exhausted deliveries.
pub async fn list(client: &Client, as_json: bool) -> Result<ExitCode, OpsError> {
    let letters = client.get("/v1/dead-letters?limit=500").await?;
    if as_json {
        output::json(&letters);
        return Ok(ExitCode::SUCCESS);
    }
    let poison = letters["poison"].as_array().cloned().unwrap_or_default();
    let failed = letters["failed_tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!("undecodable messages ({}):", poison.len());
    if !poison.is_empty() {
        let rows: Vec<Vec<String>> = poison
            .iter()
            .map(|p| {
                vec![
                    api::text(&p["sequence"]),
                    api::text(&p["subject"]),
                    api::text(&p["payload_bytes"]),
                    api::text(&p["error"]),
                ]
            })
            .collect();
        output::table(&["SEQUENCE", "SUBJECT", "BYTES", "ERROR"], &rows);
        println!("  (inspect one with `aicp events export --from-seq N --to-seq N`)");
    }
    println!("\ntasks failed by exhausted deliveries ({}):", failed.len());
    if !failed.is_empty() {
        api::print_tasks(&failed, false, false);
        println!("  (submit one again with `aicp dead-letters retry <id>`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Submits a failed task again as a new task.
pub async fn retry(client: &Client, task_id: &str, as_json: bool) -> Result<ExitCode, OpsError> {
    let path = format!("/v1/tasks/{}/retry", api::encode(task_id));
    let (status, task) = client.post(&path, &json!({})).await?;
    if as_json {
        output::json(&task);
    } else {
        let verb = if status == 200 {
            "was already retried as"
        } else {
            "retried as"
        };
        println!(
            "{task_id} {verb} {} (assigned to {}, {} sat)",
            api::text(&task["id"]),
            api::text(&task["agent_name"]),
            api::text(&task["price_satoshis"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
