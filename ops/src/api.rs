//! `aicp tasks ...` and `aicp agents ...`: scripting against a coordinator's REST API.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{AgentsCommand, SubmitArgs, TasksCommand};
use crate::error::OpsError;
use crate::output;

/// A client of one coordinator's REST API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8000`), sending `token`
    /// (`Authorization: Bearer`) with every request.
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, OpsError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OpsError::Usage(format!(
                "--api {base:?}: expected a URL like http://127.0.0.1:8000"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    OpsError::Usage("--token / AICP_TOKEN holds characters a header cannot".into())
                })?;
            // Never printed by reqwest's Debug either.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| OpsError::Usage(format!("HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, the body as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, OpsError> {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await.map(|(_, body)| body)
    }

    /// `POST path` with a JSON body: the status and the answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), OpsError> {
        self.post_keyed(path, body, None).await
    }

    /// `POST path` with a JSON body and, if given, an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<(u16, Value), OpsError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), OpsError> {
        let response = request.send().await.map_err(|e| OpsError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| OpsError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = body["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            return Err(OpsError::Api { status, message });
        }
        Ok((status, body))
    }
}

/// The error and its causes on one line: reqwest's own message alone says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `aicp tasks ...`.
pub async fn tasks(
    client: &Client,
    command: TasksCommand,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    match command {
        TasksCommand::Submit(args) => {
            let (_, task) = client
                .post_keyed(
                    "/v1/tasks",
                    &submit_body(&args),
                    args.idempotency_key.as_deref(),
                )
                .await?;
            let Some(seconds) = args.wait else {
                print_tasks(std::slice::from_ref(&task), as_json, true);
                return Ok(ExitCode::SUCCESS);
            };
            let id = task["id"].as_str().unwrap_or_default().to_owned();
            let task = wait_settled(client, &id, Duration::from_secs(seconds)).await?;
            print_tasks(std::slice::from_ref(&task), as_json, true);
            if !is_settled(&task) {
                eprintln!("task {id} has not settled within {seconds}s");
                return Ok(ExitCode::from(1));
            }
        }
        TasksCommand::Batch {
            file,
            idempotency_key,
        } => return batch(client, &file, idempotency_key.as_deref(), as_json).await,
        TasksCommand::Show { task_id } => {
            let task = client
                .get(&format!("/v1/tasks/{}", encode(&task_id)))
                .await?;
            print_tasks(std::slice::from_ref(&task), as_json, true);
        }
        TasksCommand::List {
            buyer,
            agent,
            status,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in [("buyer", buyer), ("agent", agent), ("status", status)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let page = client
                .get(&format!("/v1/tasks?{}", query.join("&")))
                .await?;
            let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
            print_tasks(&tasks, as_json, false);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Most tasks one batch request holds (the coordinator's limit).
const BATCH: usize = 1000;

/// `aicp tasks batch`: the file's tasks, a thousand per request, one line per answer.
async fn batch(
    client: &Client,
    file: &std::path::Path,
    key: Option<&str>,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let input = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| OpsError::Usage(format!("reading {}: {e}", file.display())))?;
    let tasks =
        parse_tasks(&input).map_err(|e| OpsError::Usage(format!("{}: {e}", file.display())))?;
    if tasks.is_empty() {
        return Err(OpsError::Usage(format!("{}: no tasks", file.display())));
    }
    let mut items = Vec::with_capacity(tasks.len());
    for (n, chunk) in tasks.chunks(BATCH).enumerate() {
        let key = key.map(|k| format!("{k}/{n}"));
        let (_, answer) = client
            .post_keyed(
                "/v1/tasks/batch",
                &json!({ "tasks": chunk }),
                key.as_deref(),
            )
            .await?;
        for mut item in answer["items"].as_array().cloned().unwrap_or_default() {
            // Numbered through the whole file, not per request.
            let index = item["index"].as_u64().unwrap_or(0) + (n * BATCH) as u64;
            item["index"] = json!(index);
            items.push(item);
        }
    }
    let refused = items.iter().filter(|i| i["task"].is_null()).count();
    if as_json {
        output::json(
            &json!({"accepted": items.len() - refused, "refused": refused, "items": items}),
        );
    } else {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| {
                let outcome = match i["task"]["id"].as_str() {
                    Some(id) => format!(
                        "{id} -> {} for {}",
                        text(&i["task"]["agent_name"]),
                        text(&i["task"]["price_satoshis"])
                    ),
                    None => format!(
                        "{}: {}",
                        text(&i["error"]["code"]),
                        text(&i["error"]["message"])
                    ),
                };
                vec![text(&i["index"]), text(&i["status"]), outcome]
            })
            .collect();
        output::table(&["ITEM", "STATUS", "TASK OR ERROR"], &rows);
        println!("{} accepted, {refused} refused", items.len() - refused);
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Tasks from a JSON array, or from JSON lines (blank lines skipped).
fn parse_tasks(text: &str) -> Result<Vec<Value>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| format!("not a JSON array of tasks: {e}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))
        })
        .collect()
}

/// Whether a task's money has settled: released to its agent or refunded to its buyer.
fn is_settled(task: &Value) -> bool {
    matches!(task["payment"].as_str(), Some("released" | "refunded"))
}

/// Polls a task until it settles or `limit` passes; the task as last seen.
async fn wait_settled(client: &Client, id: &str, limit: Duration) -> Result<Value, OpsError> {
    let deadline = tokio::time::Instant::now() + limit;
    let path = format!("/v1/tasks/{}", encode(id));
    loop {
        let task = client.get(&path).await?;
        if is_settled(&task) || tokio::time::Instant::now() >= deadline {
            return Ok(task);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn submit_body(args: &SubmitArgs) -> Value {
    // Without --buyer the coordinator takes the caller's own id (a buyer's token).
    json!({
        "buyer_id": args.buyer,
        "description": args.description,
        "complexity": args.complexity,
        "required_skills": args.skills,
        "max_price_satoshis": args.max_price,
        "deadline": args.deadline,
    })
}

/// Prints tasks as JSON, or one table row each (`detail` adds result and reason).
pub fn print_tasks(tasks: &[Value], as_json: bool, detail: bool) {
    if as_json {
        output::json(&if detail && tasks.len() == 1 {
            tasks[0].clone()
        } else {
            json!(tasks)
        });
        return;
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                text(&t["id"]),
                text(&t["status"]),
                text(&t["buyer_id"]),
                text(&t["agent_name"]),
                text(&t["price_satoshis"]),
                text(&t["payment"]),
                text(&t["created_at"]),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "STATUS",
            "BUYER",
            "AGENT",
            "PRICE SAT",
            "PAYMENT",
            "CREATED",
        ],
        &rows,
    );
    if detail {
        for t in tasks {
            println!("description: {}", text(&t["description"]));
            if !t["result"].is_null() {
                println!("result: {}", text(&t["result"]));
            }
            if !t["reason"].is_null() {
                println!("reason: {}", text(&t["reason"]));
            }
        }
    }
}

/// Runs `aicp agents ...`.
pub async fn agents(
    client: &Client,
    command: AgentsCommand,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let agents = match command {
        AgentsCommand::List => {
            let page = client.get("/v1/agents?limit=500").await?;
            page["agents"].as_array().cloned().unwrap_or_default()
        }
        AgentsCommand::Register {
            id,
            name,
            skills,
            mode,
        } => {
            let body = json!({"agent_id": id, "name": name, "skills": skills, "mode": mode});
            let (_, agent) = client.post("/v1/agents", &body).await?;
            vec![agent]
        }
    };
    if as_json {
        output::json(&json!(agents));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                text(&a["name"]),
                text(&a["display_name"]),
                text(&a["mode"]),
                format!("{:.1}%", a["success_rate"].as_f64().unwrap_or(0.0) * 100.0),
                format!("{:.2}x", a["reputation_multiplier"].as_f64().unwrap_or(0.0)),
                text(&a["balance_satoshis"]),
                text(&a["active_tasks"]),
                text(&a["tasks_completed"]),
                text(&a["tasks_failed"]),
            ]
        })
        .collect();
    output::table(
        &[
            "AGENT",
            "NAME",
            "MODE",
            "SUCCESS",
            "MULTIPLIER",
            "BALANCE SAT",
            "ACTIVE",
            "DONE",
            "FAILED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as plain text: strings unquoted, null as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment or query value (ids are safe already; free text is not).
pub fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
