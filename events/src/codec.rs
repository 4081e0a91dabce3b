//! The wire format: a batch of envelopes as one MessagePack message with named fields.
//!
//! One NATS message carries every event one command produced on one aggregate, so they
//! are stored atomically under one expected-sequence check. Each envelope names its event
//! type and schema version; the data is decoded by that pair, so older versions can be
//! upcast (see [`crate::upcast`]) and an unknown one is a typed error, never a panic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::event::Event;
use crate::upcast;

/// The `Content-Type` header of every message on the events stream.
pub const CONTENT_TYPE: &str = "application/vnd.aicp.event-batch.v1+msgpack";

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A batch must hold at least one event.
    #[error("an event batch must hold at least one event")]
    EmptyBatch,
    /// MessagePack encoding failed.
    #[error("could not encode event batch: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
}

/// Why a message is not a valid event batch.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message is not an AICP event batch, or one of a format we do not know.
    #[error("unsupported content type {0:?}, expected {CONTENT_TYPE:?}")]
    ContentType(Option<String>),
    /// The bytes are not a MessagePack batch of envelopes.
    #[error("malformed event batch: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// The batch holds no events.
    #[error("event batch is empty")]
    EmptyBatch,
    /// No decoder for this event type and version (written by newer code, or corrupt).
    #[error("unknown event {event_type} v{version}")]
    UnknownEvent {
        /// The event type in the envelope.
        event_type: String,
        /// The schema version in the envelope.
        version: u16,
    },
    /// The envelope is known but its data does not fit the schema.
    #[error("invalid data for {event_type} v{version}: {source}")]
    InvalidData {
        /// The event type in the envelope.
        event_type: String,
        /// The schema version in the envelope.
        version: u16,
        /// What did not fit.
        source: rmpv::ext::Error,
    },
}

#[derive(Serialize)]
struct WireOut<'a> {
    event_id: Uuid,
    event_type: &'static str,
    schema_version: u16,
    occurred_at: &'a DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    data: &'a Event,
}

#[derive(Deserialize)]
struct WireIn {
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    occurred_at: DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    data: rmpv::Value,
}

/// Encodes `events` as one message payload.
pub fn encode_batch(events: &[Envelope]) -> Result<Vec<u8>, EncodeError> {
    if events.is_empty() {
        return Err(EncodeError::EmptyBatch);
    }
    let wire: Vec<WireOut<'_>> = events
        .iter()
        .map(|e| WireOut {
            event_id: e.event_id,
            event_type: e.event.event_type(),
            schema_version: e.event.schema_version(),
            occurred_at: &e.occurred_at,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            data: &e.event,
        })
        .collect();
    Ok(rmp_serde::to_vec_named(&wire)?)
}

/// Decodes a message payload, upcasting older event versions to the current ones.
pub fn decode_batch(
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<Vec<Envelope>, DecodeError> {
    if content_type != Some(CONTENT_TYPE) {
        return Err(DecodeError::ContentType(content_type.map(str::to_owned)));
    }
    let wire: Vec<WireIn> = rmp_serde::from_slice(payload)?;
    if wire.is_empty() {
        return Err(DecodeError::EmptyBatch);
    }
    wire.into_iter().map(decode_envelope).collect()
}

fn decode_envelope(wire: WireIn) -> Result<Envelope, DecodeError> {
    let WireIn {
        event_id,
        event_type,
        schema_version: version,
        occurred_at,
        correlation_id,
        causation_id,
        data,
    } = wire;
    let decoded = if Event::TYPES.contains(&(event_type.as_str(), version)) {
        Event::decode_current(&event_type, version, data)
    } else {
        upcast::decode_old(&event_type, version, data)
    };
    let Some(decoded) = decoded else {
        return Err(DecodeError::UnknownEvent {
            event_type,
            version,
        });
    };
    let event = decoded.map_err(|source| DecodeError::InvalidData {
        event_type,
        version,
        source,
    })?;
    Ok(Envelope {
        event_id,
        occurred_at,
        correlation_id,
        causation_id,
        event,
    })
}
