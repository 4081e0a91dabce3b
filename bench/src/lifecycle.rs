//! Watching tasks settle: the coordinator's live event stream says when each task's money
//! was released or refunded in the projection, which ends its lifecycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Settlement times by task id, filled from the event stream.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    at: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Settled {
    /// How many tasks have settled.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// When `task` settled, if it has.
    pub fn get(&self, task: &str) -> Option<Instant> {
        self.lock().get(task).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Follows `/v1/events/stream` until the returned handle is aborted, reconnecting with
/// `Last-Event-ID` whenever the stream drops (it does when a client lags).
pub fn watch(base: &str) -> (Settled, tokio::task::JoinHandle<()>) {
    let settled = Settled::default();
    let (into, url) = (settled.clone(), format!("{base}/v1/events/stream"));
    let handle = tokio::spawn(async move {
        let Ok(client) = crate::stack::admin_client(None) else {
            return;
        };
        let mut last: Option<String> = None;
        loop {
            let mut request = client.get(&url);
            if let Some(id) = &last {
                request = request.header("Last-Event-ID", id);
            }
            if let Ok(mut response) = request.send().await {
                let mut buffer = String::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let frame: String = buffer.drain(..end + 2).collect();
                        if let Some(id) = record(&into, &frame) {
                            last = Some(id);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (settled, handle)
}

/// Notes a settlement frame; returns the frame's id.
fn record(settled: &Settled, frame: &str) -> Option<String> {
    let mut id = None;
    let mut data = None;
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = serde_json::from_str::<Value>(v.trim()).ok();
        }
    }
    if let Some(data) = data {
        // In the outcome's own task message; on a payment subject for older tasks.
        let settles = (data["kind"] == "task" || data["kind"] == "payment")
            && data["types"].as_array().is_some_and(|types| {
                types
                    .iter()
                    .any(|t| t == "EscrowReleased" || t == "EscrowRefunded")
            });
        if let (true, Some(task)) = (settles, data["id"].as_str()) {
            settled
                .lock()
                .entry(task.to_owned())
                .or_insert_with(Instant::now);
        }
    }
    id
}
