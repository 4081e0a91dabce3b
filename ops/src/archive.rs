//! `aicp events tail | export | import`: the events stream as JSON lines, for people and
//! for backup and restore.
//!
//! An export line is one stream message: its sequence, subject (without the namespace
//! prefix, so it can be restored under another), `Nats-Msg-Id`, content type, raw payload
//! (base64) and the decoded events. Import publishes the raw payloads again, each with
//! `Nats-Expected-Last-Sequence`, so the restored stream has the same messages at the same
//! sequences, and a retried publish can never store a message twice.

use std::collections::VecDeque;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use aicp_events::codec::DecodeError;
use aicp_events::store::CONTENT_TYPE_HEADER;
use aicp_events::{Aggregate, Envelope, EventStore, Namespace};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::EventFilter;
use crate::error::OpsError;
use crate::feed::{Feed, RawMessage};
use crate::output;

/// Publishes awaiting their acknowledgement during an import.
const IMPORT_WINDOW: usize = 256;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLine {
    /// Stream sequence.
    pub sequence: u64,
    /// Subject without the namespace prefix, e.g. `aicp.evt.task.8fb44756`.
    pub subject: String,
    /// When the stream stored it.
    pub stored_at: DateTime<Utc>,
    /// The `Nats-Msg-Id` it was published with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Its content type header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The raw payload, base64.
    pub payload: String,
    /// The events, decoded (absent for an undecodable message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<serde_json::Value>>,
    /// Why the payload could not be decoded, for a poison message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExportLine {
    /// The export line of a stored message, with its events as `message.decode()` gave them.
    pub fn new(
        namespace: &Namespace,
        message: &RawMessage,
        decoded: &Result<Vec<Envelope>, DecodeError>,
    ) -> Self {
        let (events, error) = match decoded {
            Ok(events) => (Some(events.iter().map(|e| e.to_json()).collect()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            sequence: message.sequence,
            subject: relative_subject(namespace, &message.subject).to_owned(),
            stored_at: message.stored_at,
            msg_id: message.msg_id().map(str::to_owned),
            content_type: message.content_type().map(str::to_owned),
            payload: base64::engine::general_purpose::STANDARD.encode(&message.payload),
            events,
            error,
        }
    }
}

/// `subject` without the namespace's prefix.
fn relative_subject<'a>(namespace: &Namespace, subject: &'a str) -> &'a str {
    match namespace.prefix() {
        Some(prefix) => subject
            .strip_prefix(prefix)
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject),
        None => subject,
    }
}

/// `subject` under the namespace's prefix.
fn absolute_subject(namespace: &Namespace, subject: &str) -> String {
    match namespace.prefix() {
        Some(prefix) => format!("{prefix}.{subject}"),
        None => subject.to_owned(),
    }
}

/// A compiled [`EventFilter`].
struct Filter {
    subject: Option<String>,
    types: Vec<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Filter {
    fn new(namespace: &Namespace, filter: &EventFilter) -> Result<Self, OpsError> {
        let subject = match filter.aggregate.as_deref() {
            None => None,
            Some(kind @ ("task" | "agent" | "payment")) => Some(namespace.kind_wildcard(kind)),
            Some(one) => {
                let aggregate = parse_aggregate(one)?;
                Some(namespace.aggregate_subject(&aggregate))
            }
        };
        Ok(Self {
            subject,
            types: filter.types.clone(),
            since: filter.since,
            until: filter.until,
        })
    }

    fn matches(&self, message: &RawMessage, decoded: &Result<Vec<Envelope>, DecodeError>) -> bool {
        if self.since.is_some_and(|since| message.stored_at < since)
            || self.until.is_some_and(|until| message.stored_at >= until)
        {
            return false;
        }
        if self.types.is_empty() {
            return true;
        }
        decoded.as_ref().is_ok_and(|events| {
            events
                .iter()
                .any(|e| self.types.iter().any(|t| t == e.event.event_type()))
        })
    }
}

/// `task:<id>`, `agent:<id>` or `payment:<id>`.
fn parse_aggregate(raw: &str) -> Result<Aggregate, OpsError> {
    let usage = || {
        OpsError::Usage(format!(
            "--aggregate {raw:?}: expected task, agent, payment, or one aggregate as task:<id>, agent:<id>, payment:<id>"
        ))
    };
    let (kind, id) = raw.split_once(':').ok_or_else(usage)?;
    let bad_id = |e: aicp_events::id::IdError| OpsError::Usage(format!("--aggregate {raw:?}: {e}"));
    Ok(match kind {
        "task" => Aggregate::Task(id.parse().map_err(bad_id)?),
        "agent" => Aggregate::Agent(id.parse().map_err(bad_id)?),
        "payment" => Aggregate::Payment(id.parse().map_err(bad_id)?),
        _ => return Err(usage()),
    })
}

/// `aicp events tail`: the matching messages among the last `count`, then new ones if
/// `follow`.
pub async fn tail(
    store: &EventStore,
    filter: &EventFilter,
    count: u64,
    follow: bool,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let namespace = store.namespace().clone();
    let compiled = Filter::new(&namespace, filter)?;
    let last = store.last_sequence().await?;
    let from = filter
        .from_seq
        .unwrap_or_else(|| last.saturating_sub(count.saturating_sub(1)).max(1));
    let mut feed = Feed::open(store, from, filter.to_seq, compiled.subject.clone(), follow).await?;
    let mut out = std::io::stdout().lock();
    while let Some(message) = feed.next().await? {
        let decoded = message.decode();
        if !compiled.matches(&message, &decoded) {
            continue;
        }
        let line = ExportLine::new(&namespace, &message, &decoded);
        let written = if as_json {
            let mut value = json!(line);
            if let Some(map) = value.as_object_mut() {
                map.remove("payload");
            }
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{}", human(&line))
        };
        // A closed pipe (`aicp events tail | head`) ends the command quietly.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One message as text: sequence, time, subject, then each event's type and data.
fn human(line: &ExportLine) -> String {
    let head = format!(
        "#{:<7} {} {}",
        line.sequence,
        line.stored_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        line.subject
    );
    match (&line.events, &line.error) {
        (Some(events), _) => {
            let events: Vec<String> = events
                .iter()
                .map(|e| {
                    format!(
                        "  {} {}",
                        e["event_type"].as_str().unwrap_or("?"),
                        e["data"]
                    )
                })
                .collect();
            format!("{head}\n{}", events.join("\n"))
        }
        (None, error) => format!(
            "{head}\n  UNDECODABLE: {}",
            error.as_deref().unwrap_or("unknown")
        ),
    }
}

/// `aicp events export`: the matching messages as JSON lines, to `output` or stdout.
pub async fn export(
    store: &EventStore,
    filter: &EventFilter,
    output: Option<&Path>,
) -> Result<ExitCode, OpsError> {
    let namespace = store.namespace().clone();
    let compiled = Filter::new(&namespace, filter)?;
    let mut feed = Feed::open(
        store,
        filter.from_seq.unwrap_or(1),
        filter.to_seq,
        compiled.subject.clone(),
        false,
    )
    .await?;
    let (mut writer, path): (Box<dyn Write>, &Path) = match output {
        Some(path) => (
            Box::new(std::fs::File::create(path).map_err(|e| OpsError::io(path, e))?),
            path,
        ),
        None => (Box::new(std::io::stdout().lock()), Path::new("stdout")),
    };
    let mut writer = BufWriter::new(&mut writer);
    let mut written = 0u64;
    while let Some(message) = feed.next().await? {
        let decoded = message.decode();
        if !compiled.matches(&message, &decoded) {
            continue;
        }
        let line = serde_json::to_string(&ExportLine::new(&namespace, &message, &decoded))
            .map_err(|e| OpsError::Usage(format!("encoding sequence {}: {e}", message.sequence)))?;
        writeln!(writer, "{line}").map_err(|e| OpsError::io(path, e))?;
        written += 1;
    }
    writer.flush().map_err(|e| OpsError::io(path, e))?;
    if output.is_some() {
        eprintln!("exported {written} messages to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `aicp events import`: appends an unfiltered export to an empty events stream.
pub async fn import(
    store: &EventStore,
    input: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let path = input.unwrap_or(Path::new("stdin"));
    let reader: Box<dyn BufRead> = match input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| OpsError::io(path, e))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut stream = store.events_stream().await?;
    let info = stream
        .info()
        .await
        .map_err(|e| OpsError::jetstream("stream info", e))?;
    if info.state.last_sequence > 0 {
        return Err(OpsError::Usage(format!(
            "stream {} is not empty (its last sequence is {}): import restores into an empty stream; create one under another --prefix",
            info.config.name, info.state.last_sequence
        )));
    }
    let namespace = store.namespace().clone();
    let js = store.jetstream().clone();
    let mut in_flight: VecDeque<(u64, async_nats::jetstream::context::PublishAckFuture)> =
        VecDeque::new();
    let mut expected = 1u64;
    for (number, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| OpsError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: ExportLine = serde_json::from_str(&line).map_err(|e| {
            OpsError::Usage(format!(
                "{} line {}: not an export line: {e}",
                path.display(),
                number + 1
            ))
        })?;
        if record.sequence != expected {
            return Err(OpsError::Usage(format!(
                "{} line {}: sequence {} where {expected} was expected; only a whole, unfiltered export can be restored (nothing after sequence {} was imported)",
                path.display(),
                number + 1,
                record.sequence,
                expected - 1
            )));
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(record.payload.as_bytes())
            .map_err(|e| {
                OpsError::Usage(format!(
                    "{} line {}: payload: {e}",
                    path.display(),
                    number + 1
                ))
            })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Sequence",
            (expected - 1).to_string().as_str(),
        );
        if let Some(id) = &record.msg_id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        if let Some(content_type) = &record.content_type {
            headers.insert(CONTENT_TYPE_HEADER, content_type.as_str());
        }
        let ack = js
            .publish_with_headers(
                absolute_subject(&namespace, &record.subject),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| OpsError::jetstream("publish", e))?;
        in_flight.push_back((expected, ack));
        if in_flight.len() >= IMPORT_WINDOW {
            settle(&mut in_flight, 1).await?;
        }
        expected += 1;
    }
    settle(&mut in_flight, usize::MAX).await?;
    let imported = expected - 1;
    if as_json {
        output::json(&json!({"imported": imported, "stream": info.config.name}));
    } else {
        println!("imported {imported} messages into {}", info.config.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for up to `count` of the oldest publishes; each must have landed at its sequence.
async fn settle(
    in_flight: &mut VecDeque<(u64, async_nats::jetstream::context::PublishAckFuture)>,
    count: usize,
) -> Result<(), OpsError> {
    for _ in 0..count {
        let Some((sequence, ack)) = in_flight.pop_front() else {
            return Ok(());
        };
        let ack = ack.await.map_err(|e| {
            OpsError::Usage(format!(
                "sequence {sequence} was not stored: {e} (the stream was written to during the import?)"
            ))
        })?;
        if ack.duplicate || ack.sequence != sequence {
            return Err(OpsError::Usage(format!(
                "sequence {sequence} was stored as {}{}: the export repeats a message id within the stream's duplicate window",
                ack.sequence,
                if ack.duplicate { " (a duplicate)" } else { "" }
            )));
        }
    }
    Ok(())
}
