//! The wire format: a batch of envelopes as one MessagePack message with named fields.
//!
//! Each envelope's `data` is the event's own MessagePack map, kept as a byte string: the
//! reader decodes it only once it knows the event type and version from the envelope, and
//! a reader that does not know the type can still read (and skip) the envelope.
//!
//! One NATS message carries every event one command produced on one aggregate, so they
//! are stored atomically under one expected-sequence check. Each envelope names its event
//! type and schema version; the data is decoded by that pair, so older versions can be
//! upcast (see [`crate::upcast`]) and an unknown one is a typed error, never a panic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::access::Principal;
use crate::envelope::Envelope;
use crate::event::Event;
use crate::request::RequestKey;
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
        source: rmp_serde::decode::Error,
    },
}

#[derive(Serialize)]
struct WireOut<'a> {
    event_id: Uuid,
    event_type: &'a str,
    schema_version: u16,
    occurred_at: &'a DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    // Absent in events written before principals were recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a Principal>,
    // Only on the first event of a write sent with an idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a RequestKey>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Deserialize)]
struct WireIn {
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    occurred_at: DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    #[serde(default)]
    principal: Option<Principal>,
    #[serde(default)]
    request: Option<RequestKey>,
    data: serde_bytes::ByteBuf,
}

/// Encodes `events` as one message payload.
pub fn encode_batch(events: &[Envelope]) -> Result<Vec<u8>, EncodeError> {
    if events.is_empty() {
        return Err(EncodeError::EmptyBatch);
    }
    let wire = events
        .iter()
        .map(|e| {
            Ok(WireOut {
                event_id: e.event_id,
                event_type: e.event.event_type(),
                schema_version: e.event.schema_version(),
                occurred_at: &e.occurred_at,
                correlation_id: e.correlation_id,
                causation_id: e.causation_id,
                principal: e.principal.as_ref(),
                request: e.request.as_ref(),
                data: rmp_serde::to_vec_named(&e.event)?,
            })
        })
        .collect::<Result<Vec<_>, EncodeError>>()?;
    Ok(rmp_serde::to_vec_named(&wire)?)
}

/// Encodes one envelope whose data is given already encoded, under any type and version:
/// how tests write events as older (or unknown) schema versions were written.
#[cfg(feature = "testing")]
pub(crate) fn encode_raw(
    template: &Envelope,
    event_type: &str,
    schema_version: u16,
    data: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    let wire = WireOut {
        event_id: template.event_id,
        event_type,
        schema_version,
        occurred_at: &template.occurred_at,
        correlation_id: template.correlation_id,
        causation_id: template.causation_id,
        principal: template.principal.as_ref(),
        request: template.request.as_ref(),
        data,
    };
    Ok(rmp_serde::to_vec_named(&[wire])?)
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
        principal,
        request,
        data,
    } = wire;
    let decoded = Event::decode_current(&event_type, version, &data)
        .or_else(|| upcast::decode_old(&event_type, version, &data));
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
        principal,
        request,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_events;

    #[test]
    fn a_batch_of_every_event_type_round_trips() {
        let events = sample_events();
        assert_eq!(events.len(), Event::TYPES.len());
        let payload = encode_batch(&events).expect("encodes");
        let decoded = decode_batch(Some(CONTENT_TYPE), &payload).expect("decodes");
        assert_eq!(decoded, events);
    }

    #[test]
    fn an_idempotency_key_rides_on_the_wire_only_when_given() {
        let plain = sample_events().remove(0);
        let bare = encode_batch(std::slice::from_ref(&plain)).expect("encodes");
        assert!(!String::from_utf8_lossy(&bare).contains("request"));
        let key = RequestKey {
            key: "order-42".into(),
            fingerprint: "ab".repeat(32),
        };
        let keyed = plain.keyed(key.clone());
        let payload = encode_batch(std::slice::from_ref(&keyed)).expect("encodes");
        let decoded = decode_batch(Some(CONTENT_TYPE), &payload).expect("decodes");
        assert_eq!(decoded, vec![keyed]);
        assert_eq!(decoded[0].request.as_ref(), Some(&key));
    }

    #[test]
    fn fields_are_named_on_the_wire() {
        let payload = encode_batch(&sample_events()[..1]).expect("encodes");
        let text = String::from_utf8_lossy(&payload);
        for field in [
            "event_id",
            "schema_version",
            "correlation_id",
            "data",
            "description",
        ] {
            assert!(text.contains(field), "{field} is not named in the payload");
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let payload = encode_batch(&sample_events()[..1]).expect("encodes");
        assert!(matches!(
            decode_batch(None, &payload),
            Err(DecodeError::ContentType(None))
        ));
        assert!(matches!(
            decode_batch(Some("application/json"), &payload),
            Err(DecodeError::ContentType(Some(_)))
        ));
        assert!(matches!(
            decode_batch(Some(CONTENT_TYPE), b"\xc1"),
            Err(DecodeError::Malformed(_))
        ));
        let empty = rmp_serde::to_vec_named(&Vec::<u8>::new()).expect("encodes");
        assert!(matches!(
            decode_batch(Some(CONTENT_TYPE), &empty),
            Err(DecodeError::EmptyBatch)
        ));
        assert!(matches!(encode_batch(&[]), Err(EncodeError::EmptyBatch)));
        // Truncation anywhere is an error, never a panic.
        for len in 0..payload.len() {
            assert!(decode_batch(Some(CONTENT_TYPE), &payload[..len]).is_err());
        }
    }

    #[test]
    fn data_that_does_not_fit_its_schema_is_invalid_data() {
        let template = &sample_events()[0];
        let payload = crate::testing::encode_as_version(
            template,
            "TaskAssigned",
            1,
            &std::collections::BTreeMap::from([("task_id", "x")]),
        )
        .expect("encodes");
        let err = decode_batch(Some(CONTENT_TYPE), &payload).expect_err("missing fields");
        assert!(
            matches!(&err, DecodeError::InvalidData { event_type, version: 1, .. } if event_type == "TaskAssigned"),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_and_amount_round_trips(
            description in ".*",
            result in ".*",
            price in proptest::prelude::any::<u64>(),
        ) {
            let mut events = sample_events();
            for envelope in &mut events {
                match &mut envelope.event {
                    Event::TaskSubmitted(e) => e.description = description.clone(),
                    Event::TaskCompleted(e) => e.result = result.clone(),
                    Event::TaskAssigned(e) => e.price_sats = price,
                    Event::EscrowHeld(e) => e.amount_sats = price,
                    _ => {}
                }
            }
            let payload = encode_batch(&events).expect("encodes");
            let decoded = decode_batch(Some(CONTENT_TYPE), &payload).expect("decodes");
            proptest::prop_assert_eq!(decoded, events);
        }
    }

    #[test]
    fn envelopes_display_as_one_line_of_json() {
        let line = sample_events()[1].to_string();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(json["event_type"], "TaskAssigned");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["data"]["price_sats"], 400_000);
        assert_eq!(json["data"]["multiplier"], 2000);
    }
}
