//! Reading the events stream as it is stored: raw messages in sequence order, up to a
//! sequence or live, with their headers and payload (an export must keep both).

use std::pin::Pin;

use aicp_events::codec::{self, DecodeError};
use aicp_events::store::{PoisonMessage, StoredBatch, CONTENT_TYPE_HEADER};
use aicp_events::{Envelope, EventStore};
use aicp_projections::Message;
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use crate::error::OpsError;

/// One message of the events stream.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// When the stream stored it.
    pub stored_at: DateTime<Utc>,
    /// Its headers (content type, `Nats-Msg-Id`).
    pub headers: Option<HeaderMap>,
    /// Its payload.
    pub payload: Bytes,
}

impl RawMessage {
    /// The `Nats-Msg-Id` it was published with, if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.header("Nats-Msg-Id")
    }

    /// Its content type header, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.header(CONTENT_TYPE_HEADER)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// The events it holds.
    pub fn decode(&self) -> Result<Vec<Envelope>, DecodeError> {
        codec::decode_batch(self.content_type(), &self.payload)
    }

    /// The message as the projections take it: a batch of events, or poison.
    pub fn into_message(self) -> Message {
        match self.decode() {
            Ok(events) => Message::Batch(StoredBatch {
                sequence: self.sequence,
                subject: self.subject,
                events,
            }),
            Err(error) => Message::Poison(Box::new(PoisonMessage {
                sequence: self.sequence,
                subject: self.subject,
                error,
                payload: self.payload,
            })),
        }
    }
}

type Messages = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    async_nats::jetstream::Message,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

/// An ordered read of the events stream.
pub struct Feed {
    messages: Option<Messages>,
    /// Last sequence to deliver; `u64::MAX` when following without an end.
    to: u64,
    /// Whether to wait for new messages once the stream's end is reached.
    follow: bool,
}

impl Feed {
    /// Reads from `from` (1 is the start) to `to` (default: the stream's last sequence now),
    /// or on and on when `follow`; only subjects matching `filter` when given.
    pub async fn open(
        store: &EventStore,
        from: u64,
        to: Option<u64>,
        filter: Option<String>,
        follow: bool,
    ) -> Result<Self, OpsError> {
        let stream = store.events_stream().await?;
        let last = stream.cached_info().state.last_sequence;
        let to = match (follow, to) {
            (true, to) => to.unwrap_or(u64::MAX),
            (false, Some(to)) => to.min(last),
            (false, None) => last,
        };
        let from = from.max(1);
        if from > to {
            return Ok(Self {
                messages: None,
                to,
                follow,
            });
        }
        let deliver_policy = if from == 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from,
            }
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: filter.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(|e| OpsError::jetstream("consumer create", e))?;
        // Nothing matches: a bounded read would otherwise wait forever for a first message.
        if !follow && consumer.cached_info().num_pending == 0 {
            return Ok(Self {
                messages: None,
                to,
                follow,
            });
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| OpsError::jetstream("consumer messages", e))?
            .map(|m| m.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>));
        Ok(Self {
            messages: Some(Box::pin(messages)),
            to,
            follow,
        })
    }

    /// The next message, or `None` once the range is read.
    pub async fn next(&mut self) -> Result<Option<RawMessage>, OpsError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let Some(message) = messages.next().await else {
            self.messages = None;
            return Ok(None);
        };
        let message = message.map_err(|e| OpsError::jetstream("read", e))?;
        let info = message
            .info()
            .map_err(|e| OpsError::jetstream("message info", e))?;
        let (sequence, pending, stored_at) = (info.stream_sequence, info.pending, info.published);
        if sequence > self.to {
            self.messages = None;
            return Ok(None);
        }
        // The last one in range, or the last that matches the filter: stop after it.
        if sequence == self.to || (!self.follow && pending == 0) {
            self.messages = None;
        }
        let message = message.split().0;
        Ok(Some(RawMessage {
            sequence,
            subject: message.subject.to_string(),
            stored_at,
            headers: message.headers,
            payload: message.payload,
        }))
    }
}
