//! Reporting to the coordinator: a worker starts and finishes tasks through the
//! coordinator's API with its worker token, and never writes events itself. The coordinator
//! checks that the token serves the task's agent (403 otherwise), decides from the task's
//! state, and records the event with the worker as its principal.

use std::time::Duration;

use aicp_events::domain::access::Principal;
use aicp_events::work::WorkItem;
use serde_json::{json, Value};

use crate::executor::Outcome;

/// How long one request to the coordinator may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the coordinator did not take a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The task finished, was cancelled, expired or was assigned again: the work message
    /// is stale and there is nothing to do.
    #[error("stale work: {0}")]
    Stale(String),
    /// The coordinator has not seen the task's assignment yet (a replica that lags).
    #[error("not visible yet: {0}")]
    NotYet(String),
    /// The token may not do this (missing, revoked, or serving other agents).
    #[error("refused ({status}): {message}")]
    Refused {
        /// 401 or 403.
        status: u16,
        /// The coordinator's reason.
        message: String,
    },
    /// The coordinator will not take this report as it is (400, 413): asking again
    /// would not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The coordinator could not be reached, or failed, or is busy (429): ask again.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// The most of a result or failure reason sent to the coordinator: its JSON must fit the
/// coordinator's body limit (64 KiB by default) even when every character is escaped.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;

/// `text` cut to at most [`MAX_REPORT_BYTES`] bytes, on a character boundary.
fn capped(text: &str) -> String {
    if text.len() <= MAX_REPORT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_REPORT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut at {MAX_REPORT_BYTES} bytes]", &text[..end])
}

/// Who the worker's token is, as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's principal.
    pub principal: Principal,
    /// Whether the coordinator checks tokens at all (`--auth none` does not).
    pub authenticated: bool,
}

/// A client of the coordinator's API, sending the worker's token.
#[derive(Debug, Clone)]
pub struct Coordinator {
    base: String,
    http: reqwest::Client,
}

impl Coordinator {
    /// A client of the API at `base`, with `token` (if any) on every request.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--api {base:?}: expected the coordinator's URL, like http://aicp-coordinator:8000"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    anyhow::anyhow!("--token / AICP_TOKEN holds characters a header cannot")
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self { base, http })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/whoami`: who the token is.
    pub async fn whoami(&self) -> Result<Identity, ReportError> {
        let response = self
            .http
            .get(format!("{}/v1/whoami", self.base))
            .send()
            .await
            .map_err(|e| ReportError::Unavailable(e.to_string()))?;
        let me = answer(response).await?;
        let principal = me["principal"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ReportError::Unavailable(format!("unexpected whoami answer {me}")))?;
        Ok(Identity {
            principal,
            authenticated: me["auth"] != "none",
        })
    }

    /// `POST /v1/tasks/{id}/start` for the assignment `item` names.
    pub async fn start(&self, item: &WorkItem, worker_id: &str) -> Result<(), ReportError> {
        let body = json!({"assignment": item.assignment, "worker_id": worker_id});
        self.post(&format!("/v1/tasks/{}/start", item.task_id), &body)
            .await
    }

    /// `POST /v1/tasks/{id}/complete` with the outcome: completed with its result, or
    /// failed with its reason; with `started_by`, also that this worker started the
    /// assignment `item` names (one call for both, when its start was not reported).
    pub async fn finish(
        &self,
        item: &WorkItem,
        outcome: &Outcome,
        started_by: Option<&str>,
    ) -> Result<(), ReportError> {
        let mut body = match outcome {
            Outcome::Completed(result) => json!({"success": true, "result": capped(result)}),
            Outcome::Failed(reason) => json!({"success": false, "result": capped(reason)}),
        };
        if let Some(worker_id) = started_by {
            body["assignment"] = json!(item.assignment);
            body["worker_id"] = json!(worker_id);
        }
        self.post(&format!("/v1/tasks/{}/complete", item.task_id), &body)
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(), ReportError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| ReportError::Unavailable(e.to_string()))?;
        answer(response).await.map(|_| ())
    }
}

/// The answer's JSON, or what its error means for the work message.
async fn answer(response: reqwest::Response) -> Result<Value, ReportError> {
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| ReportError::Unavailable(e.to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    Err(match (status, code) {
        (409, "not_yet") | (404, "unknown_task") => ReportError::NotYet(message),
        // Others kept changing the task: ask again, the report still stands.
        (409, "busy") => ReportError::Unavailable(message),
        (409, _) => ReportError::Stale(message),
        (401 | 403, _) => ReportError::Refused { status, message },
        (400 | 413 | 415 | 422, _) => ReportError::Rejected(message),
        _ => ReportError::Unavailable(format!("{status}: {message}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reports_are_cut_on_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let long = "é".repeat(MAX_REPORT_BYTES);
        let cut = capped(&long);
        assert!(cut.len() <= MAX_REPORT_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("[cut at {MAX_REPORT_BYTES} bytes]")));
    }
}
