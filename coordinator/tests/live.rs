//! The live event stream (`GET /v1/events/stream`) over a real server: filtered per buyer
//! and agent, and a reconnect with `Last-Event-ID` resumes without missing or repeating.

mod common;

use std::time::Duration;

use aicp_events::testing::NatsServer;
use anyhow::{bail, Context, Result};
use common::{Api, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One server-sent event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// An open event stream.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// Opens the stream as `api`'s token.
    async fn open(api: &Api, query: &str, last_event_id: Option<u64>) -> Result<Self> {
        let mut request = api
            .http
            .get(format!("{}/v1/events/stream{query}", api.base));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await?;
        if response.status() != StatusCode::OK {
            bail!("stream answered {}", response.status());
        }
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next event, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Result<Option<SseEvent>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut comment_only = true;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().parse()?);
                        comment_only = false;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                        comment_only = false;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(v.trim())?;
                        comment_only = false;
                    }
                }
                if comment_only {
                    continue; // a keep-alive
                }
                return Ok(Some(event));
            }
            match tokio::time::timeout(wait, self.response.chunk()).await {
                Err(_) => return Ok(None),
                Ok(chunk) => match chunk? {
                    Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes)?),
                    None => bail!("the stream ended"),
                },
            }
        }
    }

    /// Every event that arrives until none has for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await? {
            events.push(event);
        }
        Ok(events)
    }
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_audience_sees_its_own_and_a_reconnect_resumes_exactly() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    let quiet = Duration::from_millis(700);
    let mut all = EventStream::open(&app.api, "", None).await?;
    let hello = all.next(quiet).await?.context("a hello event")?;
    assert_eq!(hello.event, "hello");
    // The buyer follows with its own token and no filter: what it sees is decided by who it is.
    let (_, buyer_token) = app.issue_token("buyer:buyer-001").await?;
    let buyer = app.as_token(Some(&buyer_token));
    let mut mine = EventStream::open(&buyer, "", None).await?;
    mine.next(quiet).await?.context("hello")?;
    let (_, agent_token) = app.issue_token("agent:agent-1").await?;
    let mut agent1 = EventStream::open(&app.as_token(Some(&agent_token)), "", None).await?;
    agent1.next(quiet).await?.context("hello")?;

    let t1 = app.submit("buyer-001", 2).await?;
    let t2 = app.submit("buyer-002", 2).await?;
    let everything = all.drain(quiet).await?;
    let seen = mine.drain(quiet).await?;
    // The buyer sees its own task's events and agent records, never buyer-002's task.
    assert!(seen
        .iter()
        .any(|e| e.event == "task" && e.data["id"] == t1.as_str()));
    assert!(seen.iter().all(|e| e.data["id"] != t2.as_str()), "{seen:?}");
    assert!(seen
        .iter()
        .all(|e| e.event != "task" || e.data["task"]["buyer_id"] == "buyer-001"));
    // The dashboard sees both; ids rise.
    assert!(everything.iter().any(|e| e.data["id"] == t2.as_str()));
    let all_ids = ids(&everything);
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]), "{all_ids:?}");
    // agent-1 (best reputation) got both tasks.
    let agent_seen = agent1.drain(quiet).await?;
    assert!(agent_seen.iter().any(|e| e.data["id"] == t2.as_str()));
    assert!(agent_seen
        .iter()
        .all(|e| e.event != "agent" || e.data["id"] == "agent-1"));

    // The buyer goes away; meanwhile its task completes and settles.
    let last = *ids(&seen).last().context("an id")?;
    drop(mine);
    let (status, body) = app
        .post(
            &format!("/v1/tasks/{t1}/complete"),
            Some(json!({"success": true})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let missed_everything = all.drain(quiet).await?;
    let expected: Vec<u64> = missed_everything
        .iter()
        .filter(|e| {
            e.event == "agent"
                || (e.data["task"]["buyer_id"] == "buyer-001" && e.id.is_some_and(|id| id > last))
        })
        .filter_map(|e| e.id)
        .collect();
    assert!(
        missed_everything.iter().any(|e| e.event == "task"
            && e.data["types"]
                == json!(["TaskCompleted", "EscrowReleased", "AgentOutcomeCounted"])),
        "the release happened while the buyer was away"
    );
    let mut back = EventStream::open(&buyer, "", Some(last)).await?;
    let resumed = back.drain(quiet).await?;
    assert_eq!(
        ids(&resumed),
        expected,
        "exactly what was missed, once each"
    );
    assert!(resumed.iter().all(|e| e.event != "hello"));

    // Nobody follows another's stream, or anyone's without a token.
    let url = format!("{}/v1/events/stream", app.base);
    let other = buyer
        .http
        .get(format!("{url}?buyer=buyer-002"))
        .send()
        .await?;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let anonymous = reqwest::Client::new().get(&url).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Bad requests.
    let http = app.http.clone();
    let url = format!("{}/v1/events/stream", app.base);
    let bad_id = http
        .get(&url)
        .header("Last-Event-ID", "soon")
        .send()
        .await?;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
    let unknown = http.get(format!("{url}?agent=nobody")).send().await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let both = http
        .get(format!("{url}?agent=agent-1&buyer=b"))
        .send()
        .await?;
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);

    // The server shuts down promptly even with streams open.
    let stopping = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(
        stopping.is_ok(),
        "shutdown waited on the open event streams"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_longer_than_retained_is_told_to_resync() -> Result<()> {
    let server = NatsServer::start()?;
    let app = TestApp::spawn(&server).await?;
    app.submit("buyer-001", 2).await?;
    // A restarted coordinator retains nothing from before it started.
    let data = app.stop().await?;
    let app = TestApp::spawn_in(&server, data).await?;
    let mut stream = EventStream::open(&app.api, "", Some(1)).await?;
    let first = stream
        .next(Duration::from_secs(2))
        .await?
        .context("an event")?;
    assert_eq!(first.event, "resync");
    assert!(first.id.is_some_and(|id| id > 1));
    app.shutdown().await
}
