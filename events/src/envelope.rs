//! The envelope every event travels in: identity, time and lineage.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::access::Principal;
use crate::event::Event;
use crate::request::RequestKey;

/// One event with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique and time-ordered (UUIDv7).
    pub event_id: Uuid,
    /// When the fact happened, in UTC.
    pub occurred_at: DateTime<Utc>,
    /// The id shared by every event that one outside request led to.
    pub correlation_id: Uuid,
    /// The event (or request) that directly caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// Who caused it: the authenticated caller of a request, a worker, or the coordinator's
    /// process managers. `None` only in events written before principals were recorded.
    pub principal: Option<Principal>,
    /// The idempotency key of the request that wrote it, on the first event of the
    /// request's message only; `None` without a key, and in events written before keys.
    pub request: Option<RequestKey>,
    /// The fact itself.
    pub event: Event,
}

impl Envelope {
    /// A new event that starts a chain: its correlation id is its own id.
    pub fn new(event: impl Into<Event>) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            occurred_at: Utc::now(),
            correlation_id: event_id,
            causation_id: None,
            principal: None,
            request: None,
            event: event.into(),
        }
    }

    /// The same event, recorded as caused by `principal`.
    pub fn by(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }

    /// The same event, recorded as written by a request with this idempotency key.
    pub fn keyed(mut self, request: RequestKey) -> Self {
        self.request = Some(request);
        self
    }

    /// A new event caused by `cause`: same correlation, causation = `cause`'s id.
    pub fn caused_by(cause: &Envelope, event: impl Into<Event>) -> Self {
        Self {
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.event_id),
            ..Self::new(event)
        }
    }

    /// A new event in the chain of an outside request with this correlation id.
    pub fn correlated(correlation_id: Uuid, event: impl Into<Event>) -> Self {
        Self {
            correlation_id,
            causation_id: Some(correlation_id),
            ..Self::new(event)
        }
    }

    /// The envelope as JSON, for humans and exports (`principal` only when recorded).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "event_id": self.event_id,
            "event_type": self.event.event_type(),
            "schema_version": self.event.schema_version(),
            "occurred_at": self.occurred_at,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "data": self.event.data_json(),
        });
        if let Some(principal) = &self.principal {
            json["principal"] = serde_json::json!(principal.to_string());
        }
        if let Some(request) = &self.request {
            json["idempotency_key"] = serde_json::json!(request.key);
        }
        json
    }
}

impl fmt::Display for Envelope {
    /// One line of JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}
