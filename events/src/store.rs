//! The JetStream event store: provisioning, append with optimistic concurrency and
//! de-duplication, reading one aggregate, and subscribing to the whole stream.
//!
//! `AICP_EVENTS` is the system of record. Each aggregate has its own subject, so:
//! - an append carries `Nats-Expected-Last-Subject-Sequence`: two writers that read the
//!   same state cannot both append; the loser gets [`AppendError::Conflict`] and re-reads;
//! - an append that a retry could repeat carries a deterministic `Nats-Msg-Id`, and the
//!   stream's duplicate window stores it once (the retry gets the first sequence back).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::codec::{self, DecodeError, EncodeError};
use crate::credentials::{self, NatsCredentials};
use crate::envelope::Envelope;
use crate::subject::{Aggregate, Namespace};
use crate::work::{WorkItem, WORK_CONTENT_TYPE};

/// How long reading one aggregate may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The header naming the payload's format.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure to talk to JetStream, other than an append's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server did not answer.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        source: async_nats::ConnectError,
    },
    /// The NATS URL, or one URL of a comma-separated list of them, does not parse.
    #[error("invalid NATS URL {url:?}: {reason} (expected nats://host:port, or several separated by commas)")]
    InvalidUrl {
        /// The URL that does not parse, without its secrets.
        url: String,
        /// Why.
        reason: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stream is missing: it has not been provisioned on this server.
    #[error("stream {stream} does not exist (provision the streams first: `aicp streams init`)")]
    StreamNotFound {
        /// The missing stream.
        stream: String,
    },
    /// A request did not complete in time (the server is down or overloaded).
    #[error("JetStream {op} timed out after {after:?}")]
    TimedOut {
        /// What was being done.
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// A JetStream request failed.
    #[error("JetStream {op} failed: {source}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        source: BoxError,
    },
}

/// The servers of `url`: one URL, or several separated by commas (blanks around them
/// ignored). async-nats parses a string as a single URL, so a list fails there with
/// "invalid port number"; each one is parsed here instead, and the one that fails is named.
pub fn server_list(url: &str) -> Result<Vec<async_nats::ServerAddr>, StoreError> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| StoreError::InvalidUrl {
                    url: credentials::redact(u),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: "no server given".to_owned(),
        });
    }
    Ok(servers)
}

/// `url`, a comma-separated list of URLs, with each one's secrets hidden.
fn redact_list(url: &str) -> String {
    url.split(',')
        .map(|u| credentials::redact(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

impl StoreError {
    fn jetstream(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::JetStream {
            op,
            source: source.into(),
        }
    }
}

/// Why an append was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone appended to the aggregate since the caller read it: re-read and decide again.
    #[error(
        "conflict on {subject}: expected last sequence {expected}, but the aggregate has moved on"
    )]
    Conflict {
        /// The aggregate's subject.
        subject: String,
        /// The sequence the caller expected.
        expected: u64,
    },
    /// An event of the batch belongs to another aggregate than the one appended to.
    #[error("{event} belongs to {belongs_to}, not {aggregate}")]
    WrongAggregate {
        /// The aggregate appended to.
        aggregate: Aggregate,
        /// The stray event's type.
        event: &'static str,
        /// The aggregate it belongs to.
        belongs_to: Aggregate,
    },
    /// The batch could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A work item could not be encoded.
    #[error("could not encode work item: {0}")]
    Work(String),
    /// The batch is larger than the server's maximum message size.
    #[error("event batch of {bytes} bytes is larger than the server accepts")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
    },
    /// No stream captures the subject: the streams have not been provisioned.
    #[error("no stream stores {subject} (provision the streams first: `aicp streams init`)")]
    StreamNotFound {
        /// The subject.
        subject: String,
    },
    /// The publish failed or its acknowledgement did not arrive; the event may or may not be
    /// stored, so retry with the same `Nats-Msg-Id` or re-read before deciding again.
    #[error("append to {subject} failed: {source}")]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error.
        source: jetstream::context::PublishError,
    },
}

/// What the stream must hold before an append is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Append whatever the aggregate holds (only for facts that cannot conflict).
    Any,
    /// The aggregate's last message must have this stream sequence; 0 means it must have none.
    Sequence(u64),
}

impl Expected {
    /// The aggregate must not exist yet.
    pub const NEW: Expected = Expected::Sequence(0);
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream sequence of the message.
    pub sequence: u64,
    /// True if the stream already had a message with this `Nats-Msg-Id`: nothing new was
    /// stored and `sequence` is the first one's.
    pub duplicate: bool,
}

/// One message of the stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// The events, in the order they were appended.
    pub events: Vec<Envelope>,
}

/// A message of the stream that is not a valid event batch.
#[derive(Debug, thiserror::Error)]
#[error("poison message {sequence} on {subject}: {error}")]
pub struct PoisonMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Why it could not be decoded.
    pub error: DecodeError,
    /// The raw payload, to keep aside for inspection.
    pub payload: Bytes,
}

/// An item a subscription could not deliver as events.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// One message was undecodable; the subscription goes on with the next.
    #[error(transparent)]
    Poison(Box<PoisonMessage>),
    /// The consumer failed (the client recreates ordered consumers, so this is rare).
    #[error("reading the events stream failed: {0}")]
    Consumer(BoxError),
}

/// Everything stored for one aggregate.
#[derive(Debug, Default)]
pub struct AggregateEvents {
    /// The decodable messages, oldest first.
    pub batches: Vec<StoredBatch>,
    /// The messages that could not be decoded.
    pub poison: Vec<PoisonMessage>,
    /// The sequence of the aggregate's last message (0 if none): the next append's
    /// expected sequence.
    pub last_sequence: u64,
}

impl AggregateEvents {
    /// Every event of the aggregate, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Envelope> {
        self.batches.iter().flat_map(|b| b.events.iter())
    }

    /// Adds the aggregate's next message, fetched by a message get: a batch,
    /// or a poison message set aside.
    fn push(&mut self, message: &jetstream::message::StreamMessage) {
        self.last_sequence = message.sequence;
        match decode(
            message.sequence,
            message.subject.to_string(),
            Some(&message.headers),
            &message.payload,
        ) {
            Ok(batch) => self.batches.push(batch),
            Err(poison) => self.poison.push(poison),
        }
    }
}

/// A live feed of the stream's messages, in stream order.
pub type EventSubscription = Pin<Box<dyn Stream<Item = Result<StoredBatch, ReadError>> + Send>>;

/// How the streams are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// How long the stream remembers a `Nats-Msg-Id` to drop a retry. Longer protects
    /// later retries but costs server memory per message.
    pub duplicate_window: Duration,
    /// Replicas of each stream (1 on a single server, 3 in a cluster). `None` creates a
    /// stream with 1 and leaves an existing stream's replicas as an operator set them, so a
    /// process started without the setting never shrinks a clustered stream.
    pub replicas: Option<usize>,
}

impl StreamSettings {
    /// The default settings with `replicas`, as a process's `--stream-replicas` gives them.
    pub fn with_replicas(replicas: Option<u8>) -> Self {
        Self {
            replicas: replicas.map(usize::from),
            ..Self::default()
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(120),
            replicas: None,
        }
    }
}

/// What provisioning did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with another configuration and was updated.
    Updated,
    /// The stream was already as configured.
    Unchanged,
}

/// The event store of one namespace on one NATS server.
#[derive(Debug, Clone)]
pub struct EventStore {
    js: jetstream::Context,
    namespace: Namespace,
    settings: StreamSettings,
}

impl EventStore {
    /// Wraps a connected client.
    pub fn new(client: async_nats::Client, namespace: Namespace) -> Self {
        Self {
            js: jetstream::new(client),
            namespace,
            settings: StreamSettings::default(),
        }
    }

    /// Connects to `url`. The client reconnects on its own after a server restart.
    pub async fn connect(url: &str, namespace: Namespace) -> Result<Self, StoreError> {
        Self::connect_with(url, namespace, &NatsCredentials::default()).await
    }

    /// Connects to `url` with `credentials`. `url` may list several seed servers of a
    /// cluster separated by commas, as every NATS client accepts. Errors show the URLs
    /// without their secrets.
    pub async fn connect_with(
        url: &str,
        namespace: Namespace,
        credentials: &NatsCredentials,
    ) -> Result<Self, StoreError> {
        let servers = server_list(url)?;
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        let options =
            credentials
                .apply(options)
                .await
                .map_err(|source| StoreError::Credentials {
                    path: credentials
                        .nats_creds
                        .clone()
                        .or_else(|| credentials.nats_nkey.clone())
                        .unwrap_or_default(),
                    source,
                })?;
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_list(url),
                source,
            })?;
        Ok(Self::new(client, namespace))
    }

    /// Uses `settings` when provisioning.
    pub fn with_settings(mut self, settings: StreamSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The namespace the store works in.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The JetStream context, for the parts (consumers, work queue) built on top.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The configuration `AICP_EVENTS` should have.
    pub fn events_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.namespace.events_stream(),
            description: Some("AICP events: the system of record".to_owned()),
            subjects: vec![self.namespace.events_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            // Facts are never removed: a replay from sequence 1 must see all of them.
            deny_delete: true,
            deny_purge: true,
            duplicate_window: self.settings.duplicate_window,
            num_replicas: self.settings.replicas.unwrap_or(1),
            // Lets readers fetch single messages by subject from any replica.
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The configuration `AICP_WORK` should have.
    pub fn work_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.namespace.work_stream(),
            description: Some("AICP work queue: one message per task assignment".to_owned()),
            subjects: vec![self.namespace.work_wildcard()],
            // A message is removed once a worker acks it.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: self.settings.duplicate_window,
            num_replicas: self.settings.replicas.unwrap_or(1),
            ..Default::default()
        }
    }

    /// Creates the streams, or updates them to the wanted configuration; safe to repeat.
    pub async fn provision(&self) -> Result<Vec<(String, Provisioned)>, StoreError> {
        let mut outcomes = Vec::new();
        for config in [self.events_stream_config(), self.work_stream_config()] {
            let name = config.name.clone();
            let outcome = self.provision_stream(config).await?;
            tracing::info!(stream = %name, ?outcome, "stream provisioned");
            outcomes.push((name, outcome));
        }
        Ok(outcomes)
    }

    async fn provision_stream(&self, wanted: stream::Config) -> Result<Provisioned, StoreError> {
        match self.js.get_stream(&wanted.name).await {
            Ok(existing) => {
                // Only the settings we manage change; whatever an operator set on the
                // others (limits, placement, ...) is kept.
                let have = &existing.cached_info().config;
                let merged =
                    with_managed_settings(have.clone(), &wanted, self.settings.replicas.is_some());
                if merged == *have {
                    return Ok(Provisioned::Unchanged);
                }
                self.js
                    .update_stream(&merged)
                    .await
                    .map_err(|e| StoreError::jetstream("stream update", e))?;
                Ok(Provisioned::Updated)
            }
            Err(e) if is_stream_not_found(&e) => {
                self.js
                    .create_stream(wanted)
                    .await
                    .map_err(|e| StoreError::jetstream("stream create", e))?;
                Ok(Provisioned::Created)
            }
            Err(e) => Err(StoreError::jetstream("stream lookup", e)),
        }
    }

    /// Appends `events` to `aggregate` as one message, atomically.
    ///
    /// `expected` guards against concurrent writers; `msg_id`, when given, makes a retry of
    /// the same append a no-op that returns the first sequence: within the duplicate window
    /// always, and at any time when `expected` is a sequence.
    pub async fn append(
        &self,
        aggregate: &Aggregate,
        events: &[Envelope],
        expected: Expected,
        msg_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        if let Some(stray) = events
            .iter()
            .find(|e| !aggregate.admits(&e.event.aggregate()))
        {
            return Err(AppendError::WrongAggregate {
                aggregate: aggregate.clone(),
                event: stray.event.event_type(),
                belongs_to: stray.event.aggregate(),
            });
        }
        let subject = self.namespace.aggregate_subject(aggregate);
        let payload = codec::encode_batch(events)?;
        let published = self
            .publish(subject, codec::CONTENT_TYPE, payload, expected, msg_id)
            .await;
        match published {
            Err(AppendError::Conflict { subject, expected }) => match msg_id {
                Some(id) => self.find_retried_append(subject, expected, id).await,
                None => Err(AppendError::Conflict { subject, expected }),
            },
            other => other,
        }
    }

    /// Puts one work item on its agent's queue in `AICP_WORK`, de-duplicated by task and
    /// assignment.
    pub async fn dispatch(&self, item: &WorkItem) -> Result<Appended, AppendError> {
        let subject = self.namespace.work_subject(&item.agent_id);
        let payload = serde_json::to_vec(item).map_err(|e| AppendError::Work(e.to_string()))?;
        self.publish(
            subject,
            WORK_CONTENT_TYPE,
            payload,
            Expected::Any,
            Some(&item.msg_id()),
        )
        .await
    }

    /// Publishes one message and waits for the stream to store it.
    async fn publish(
        &self,
        subject: String,
        content_type: &str,
        payload: Vec<u8>,
        expected: Expected,
        msg_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let size = payload.len();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, content_type);
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .headers(headers);
        if let Expected::Sequence(seq) = expected {
            publish = publish.expected_last_subject_sequence(seq);
        }
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        let map_err = |source: jetstream::context::PublishError| match (source.kind(), expected) {
            // Only a publish with an expected sequence can get this answer.
            (PublishErrorKind::WrongLastSequence, Expected::Sequence(expected)) => {
                AppendError::Conflict {
                    subject: subject.clone(),
                    expected,
                }
            }
            (PublishErrorKind::StreamNotFound, _) => AppendError::StreamNotFound {
                subject: subject.clone(),
            },
            (PublishErrorKind::MaxPayloadExceeded, _) => AppendError::TooLarge { bytes: size },
            _ => AppendError::Publish {
                subject: subject.clone(),
                source,
            },
        };
        let published = match self.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        published.map_err(map_err).map(|ack| Appended {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// After a conflict on an append with a `Nats-Msg-Id`: was the conflict our own earlier
    /// attempt? nats-server 2.9 answers such a retry with the first sequence (duplicate
    /// check first), newer servers with a conflict (expected sequence first). An append
    /// that expected `expected` can only have landed as the aggregate's very next message,
    /// so that one message tells: if it carries our id, the retry is a duplicate.
    async fn find_retried_append(
        &self,
        subject: String,
        expected: u64,
        msg_id: &str,
    ) -> Result<Appended, AppendError> {
        let stream = self
            .js
            .get_stream_no_info(self.namespace.events_stream())
            .await;
        let next = match stream {
            Ok(stream) => {
                stream
                    .raw_message_builder()
                    .sequence(expected.saturating_add(1))
                    .next_by_subject(subject.clone())
                    .send()
                    .await
            }
            Err(e) => {
                tracing::debug!("cannot look for a retried append on {subject}: {e}");
                return Err(AppendError::Conflict { subject, expected });
            }
        };
        match next {
            Ok(message) if message_id(&message.headers) == Some(msg_id) => Ok(Appended {
                sequence: message.sequence,
                duplicate: true,
            }),
            Ok(_) => Err(AppendError::Conflict { subject, expected }),
            Err(e) => {
                // The caller re-reads after a conflict, which is safe whatever happened.
                tracing::debug!("cannot look for a retried append on {subject}: {e}");
                Err(AppendError::Conflict { subject, expected })
            }
        }
    }

    /// Reads every message of one aggregate, oldest first, from the stream's leader: one
    /// message get per message and one that finds no more. In a cluster a consumer or a
    /// direct get may be served by a replica that still lags; the leader holds every
    /// acknowledged append, so whoever reads after an append (its own or a rival's) sees
    /// it. Undecodable messages are returned aside, not as an error, so the caller decides
    /// what a poison event means.
    pub async fn read(&self, aggregate: &Aggregate) -> Result<AggregateEvents, StoreError> {
        let subject = self.namespace.aggregate_subject(aggregate);
        let stream = self.events_stream().await?;
        let read = async {
            let mut out = AggregateEvents::default();
            loop {
                // The message get API, unlike the direct get, is answered by the leader.
                let next = stream
                    .get_first_raw_message_by_subject(subject.as_str(), out.last_sequence + 1)
                    .await;
                let message = match next {
                    Ok(message) => message,
                    Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                        return Ok(out)
                    }
                    Err(e) => return Err(StoreError::jetstream("message get", e)),
                };
                out.push(&message);
            }
        };
        // Without a bound, a read started while the server is down would wait for it.
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .unwrap_or(Err(StoreError::TimedOut {
                op: "aggregate read",
                after: READ_TIMEOUT,
            }))
    }

    /// Follows the whole events stream from `from_sequence` (1 is the beginning), live.
    ///
    /// An undecodable message is yielded as [`ReadError::Poison`] and the feed goes on.
    pub async fn subscribe(&self, from_sequence: u64) -> Result<EventSubscription, StoreError> {
        let stream = self.events_stream().await?;
        let deliver_policy = if from_sequence <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from_sequence,
            }
        };
        let messages = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::jetstream("consumer create", e))?
            .messages()
            .await
            .map_err(|e| StoreError::jetstream("consumer messages", e))?;
        Ok(Box::pin(messages.map(|message| {
            let message = message.map_err(|e| ReadError::Consumer(e.into()))?;
            match decode_message(&message) {
                Ok(Ok(batch)) => Ok(batch),
                Ok(Err(poison)) => Err(ReadError::Poison(Box::new(poison))),
                Err(e) => Err(ReadError::Consumer(e.into())),
            }
        })))
    }

    /// Completes once the connection to NATS has dropped and come back. Consumers that
    /// lived on a server that restarted are gone; followers re-subscribe at this signal
    /// instead of waiting for missed heartbeats to tell them (about 15 s).
    pub async fn reconnected(&self) {
        // Count connections rather than watch the state: an outage shorter than the poll
        // interval is still seen.
        let statistics = self.js.client().statistics();
        let connects = || {
            statistics
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = connects();
        while connects() == before {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The events stream's last sequence: 0 when empty. A projection that has applied
    /// this sequence has caught up.
    pub async fn last_sequence(&self) -> Result<u64, StoreError> {
        let mut stream = self.events_stream().await?;
        let info = stream
            .info()
            .await
            .map_err(|e| StoreError::jetstream("stream info", e))?;
        Ok(info.state.last_sequence)
    }

    /// Work waiting or in flight per agent: the messages on each `aicp.work.<agent>`
    /// subject. In a work-queue stream a message stays until a worker acks it, so this is
    /// a consumer's `num_pending + num_ack_pending`: the figure KEDA scales workers on.
    pub async fn work_queue_depths(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let stream = self.stream(&self.namespace.work_stream()).await?;
        let mut subjects = stream
            .info_with_subjects(self.namespace.work_wildcard())
            .await
            .map_err(|e| StoreError::jetstream("stream info", e))?;
        let prefix = self.namespace.work_wildcard();
        let prefix = prefix.trim_end_matches('>');
        let mut depths = BTreeMap::new();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(|e| StoreError::jetstream("stream info", e))?;
            if let Some(agent) = subject.strip_prefix(prefix) {
                depths.insert(agent.to_owned(), count as u64);
            }
        }
        Ok(depths)
    }

    /// The events stream, or [`StoreError::StreamNotFound`] if it was never provisioned.
    pub async fn events_stream(&self) -> Result<stream::Stream, StoreError> {
        self.stream(&self.namespace.events_stream()).await
    }

    /// A stream by name, or [`StoreError::StreamNotFound`].
    pub async fn stream(&self, name: &str) -> Result<stream::Stream, StoreError> {
        match self.js.get_stream(name).await {
            Ok(stream) => Ok(stream),
            Err(e) if is_stream_not_found(&e) => Err(StoreError::StreamNotFound {
                stream: name.to_owned(),
            }),
            Err(e) => Err(StoreError::jetstream("stream lookup", e)),
        }
    }
}

/// Decodes one stream message; the outer error is a malformed delivery (no stream
/// metadata), the inner one a payload that is not a valid event batch.
fn decode_message(
    message: &jetstream::Message,
) -> Result<Result<StoredBatch, PoisonMessage>, StoreError> {
    let sequence = message
        .info()
        .map_err(|e| StoreError::jetstream("message info", e))?
        .stream_sequence;
    Ok(decode(
        sequence,
        message.subject.to_string(),
        message.headers.as_ref(),
        &message.payload,
    ))
}

/// Decodes the stored message `sequence` on `subject`: its event batch, or the poison
/// message it is.
// A poison message is a result the callers keep, not an error to pass up: its size is fine.
#[allow(clippy::result_large_err)]
fn decode(
    sequence: u64,
    subject: String,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<StoredBatch, PoisonMessage> {
    let content_type = headers
        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
        .map(|v| v.as_str());
    match codec::decode_batch(content_type, payload) {
        Ok(events) => Ok(StoredBatch {
            sequence,
            subject,
            events,
        }),
        Err(error) => Err(PoisonMessage {
            sequence,
            subject,
            error,
            payload: payload.clone(),
        }),
    }
}

/// The `Nats-Msg-Id` header of a stored message, if it has one.
fn message_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("Nats-Msg-Id").map(|v| v.as_str())
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// `base` with the settings AICP manages taken from `wanted`.
fn with_managed_settings(
    base: stream::Config,
    wanted: &stream::Config,
    manage_replicas: bool,
) -> stream::Config {
    let num_replicas = if manage_replicas {
        wanted.num_replicas
    } else {
        base.num_replicas
    };
    stream::Config {
        subjects: wanted.subjects.clone(),
        retention: wanted.retention,
        storage: wanted.storage,
        deny_delete: wanted.deny_delete,
        deny_purge: wanted.deny_purge,
        duplicate_window: wanted.duplicate_window,
        num_replicas,
        allow_direct: wanted.allow_direct,
        description: wanted.description.clone(),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_of_seed_servers_is_every_server_in_order() -> Result<(), StoreError> {
        let servers = server_list("nats://a:4222, nats://b:4223 ,nats://c:4224,")?;
        let hosts: Vec<(String, u16)> = servers
            .iter()
            .map(|s| (s.host().to_owned(), s.port()))
            .collect();
        assert_eq!(
            hosts,
            [("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4224)]
        );
        assert_eq!(server_list("nats://127.0.0.1:4222")?.len(), 1);
        Ok(())
    }

    #[test]
    fn a_bad_url_in_the_list_is_named_without_its_secrets() {
        let shown = match server_list("nats://a:4222,nats://alice:s3cret@b:99999") {
            Err(e) => e.to_string(),
            Ok(servers) => panic!("parsed a bad port: {servers:?}"),
        };
        assert!(shown.contains("nats://alice:***@b:99999"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(matches!(
            server_list(" , "),
            Err(StoreError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn replicas_change_only_when_asked_and_other_settings_are_kept() {
        let have = stream::Config {
            name: "AICP_EVENTS".into(),
            num_replicas: 3,
            max_bytes: 1 << 30,
            ..Default::default()
        };
        let wanted = |replicas| stream::Config {
            name: "AICP_EVENTS".into(),
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        };
        let kept = with_managed_settings(have.clone(), &wanted(1), false);
        assert_eq!(kept.num_replicas, 3);
        assert!(kept.allow_direct);
        assert_eq!(kept.max_bytes, 1 << 30);
        let changed = with_managed_settings(have, &wanted(1), true);
        assert_eq!(changed.num_replicas, 1);
    }
}
