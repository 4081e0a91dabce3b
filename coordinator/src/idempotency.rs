//! `Idempotency-Key` on every write route: a retry with the same key and request gets the
//! first request's answer, the same key with another request is 409.
//!
//! The key is kept in the events, not in memory: the write's message carries it (see
//! `aicp_events::request`), the read model keeps it with the aggregate as the message left
//! it, and the message's `Nats-Msg-Id` is derived from it, so two retries racing on two
//! replicas store one message. Keys are scoped by caller: two buyers may use the same key.
//! A refused request stores nothing, so its retry is decided again.
//!
//! The middleware computes the request's fingerprint (method, path and body) once and
//! scopes it to the request's task: every command appends through [`AppState::append`],
//! which is the one place that reads it, rather than each command taking a parameter.

use aicp_events::domain::access::Principal;
use aicp_events::request::RequestKey;
use aicp_events::{Appended, Envelope};
use aicp_projections::views::RequestRecord;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::commands::Decided;
use crate::error::ApiError;
use crate::state::AppState;

/// The header a client names its write with.
pub const HEADER: &str = "idempotency-key";

tokio::task_local! {
    static REQUEST: Keyed;
}

/// The key of the write being handled, with what the read model knows of it.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// Whose key it is.
    pub principal: Principal,
    /// The key and the request's fingerprint.
    pub key: RequestKey,
    /// What the first request with this key (and this fingerprint) stored, if any.
    pub first: Option<RequestRecord>,
}

impl Keyed {
    /// The key of item `index` of a batch sent with this key (what it stored is not looked up).
    pub fn item(&self, index: usize) -> Keyed {
        Keyed {
            principal: self.principal.clone(),
            key: self.key.item(index),
            first: None,
        }
    }

    /// Whether `events` are this request's caller's own (a process manager's are not).
    fn owns(&self, events: &[Envelope]) -> bool {
        events
            .first()
            .is_some_and(|first| first.principal.as_ref() == Some(&self.principal))
    }

    /// The `Nats-Msg-Id` of the write: one message per caller and key, whichever replica.
    pub fn msg_id(&self) -> String {
        // Hashed: keys may hold ':' and ',' as principals do, so the two written side by
        // side could name two callers' keys alike.
        let named = format!("{}\n{}", self.principal, self.key.key);
        format!(
            "req:{}",
            aicp_events::request::fingerprint("", "", named.as_bytes())
        )
    }
}

/// The key of the write this task is handling, if the client gave one.
pub fn current() -> Option<Keyed> {
    REQUEST.try_with(Keyed::clone).ok()
}

/// Runs `f` as the write with key `keyed` (a batch's items each have their own).
pub async fn scoped<F: std::future::Future>(keyed: Option<Keyed>, f: F) -> F::Output {
    match keyed {
        Some(keyed) => REQUEST.scope(keyed, f).await,
        None => f.await,
    }
}

/// The events with the request's key on the first, and the msg id to append them with,
/// if this task handles a keyed request and the events are its caller's.
pub fn keyed_events(events: &[Envelope]) -> Option<(Vec<Envelope>, String)> {
    let keyed = current().filter(|k| k.owns(events))?;
    let mut events = events.to_vec();
    events[0].request = Some(keyed.key.clone());
    Some((events, keyed.msg_id()))
}

/// The task `record` stored: the answer to a retried task command.
pub fn task_of(record: RequestRecord) -> Result<Decided, ApiError> {
    let sequence = record.sequence;
    match record.task {
        Some(view) => Ok(Decided { sequence, view }),
        None => Err(written_elsewhere(&record, "a task")),
    }
}

/// 409: the key's first request wrote `record`, which is not `what` this request writes.
pub fn written_elsewhere(record: &RequestRecord, what: &str) -> ApiError {
    ApiError::conflict(
        "idempotency_key_reused",
        format!(
            "the Idempotency-Key was used for a write on {}, not on {what}",
            record.subject
        ),
    )
}

/// 409 unless `record` was stored by the request `key` names.
pub fn same_request(key: &RequestKey, record: RequestRecord) -> Result<RequestRecord, ApiError> {
    if record.fingerprint == key.fingerprint {
        Ok(record)
    } else {
        Err(reused(&key.key))
    }
}

fn invalid_key<E>(_: E) -> ApiError {
    ApiError::bad_request(
        "invalid_idempotency_key",
        aicp_events::request::InvalidKey.to_string(),
    )
}

fn reused(key: &str) -> ApiError {
    ApiError::conflict(
        "idempotency_key_reused",
        format!(
            "Idempotency-Key {key:?} was used for another request; use a new key for a new request"
        ),
    )
}

/// The middleware: reads the key and the body of a write, refuses a key used for another
/// request, and runs the handler with the key in scope.
///
/// A write is answered once stored, not once projected, so a retry may reach a replica
/// whose read model does not show the first request yet. A key not found is therefore
/// looked up again once the read model shows the stream as it was when the retry came;
/// and a keyed request refused (4xx) without a record is looked at once more after it
/// ran: the first may have been stored meanwhile, and deciding again refused the retry
/// on the state the first left (a cancelled task cannot be cancelled). With a record, the
/// request is a retry and is answered as one.
pub async fn keyed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (request, keyed, copy) = match prepare(&state, request).await {
        Ok((request, Some((keyed, copy)))) => (request, keyed, copy),
        Ok((request, None)) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    let response = REQUEST
        .scope(keyed.clone(), next.clone().run(request))
        .await;
    let refused = response.status().is_client_error()
        && response.status() != axum::http::StatusCode::TOO_MANY_REQUESTS;
    if !refused || keyed.first.is_some() {
        return response;
    }
    match state.caught_up_record(&keyed).await {
        Ok(None) => response,
        Ok(Some(first)) => {
            let (parts, bytes) = copy;
            let again = Keyed {
                first: Some(first),
                ..keyed
            };
            let request = Request::from_parts(parts, Body::from(bytes));
            REQUEST.scope(again, next.run(request)).await
        }
        Err(e) => e.into_response(),
    }
}

/// A keyed request's parts and body, to run it again as a retry.
type Retained = (axum::http::request::Parts, axum::body::Bytes);

async fn prepare(
    state: &AppState,
    request: Request,
) -> Result<(Request, Option<(Keyed, Retained)>), ApiError> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Ok((request, None));
    }
    let Some(raw) = request.headers().get(HEADER) else {
        return Ok((request, None));
    };
    let raw = raw.to_str().map_err(invalid_key)?.to_owned();
    // Without a caller the route refuses the request anyway (401), keyed or not.
    let Some(principal) =
        crate::auth::identified(request.extensions()).map(|c| c.principal.clone())
    else {
        return Ok((request, None));
    };
    let (parts, body) = request.into_parts();
    // The route's own limit: only a batch may be larger than any other write.
    let limit = if parts.uri.path() == crate::batch::PATH {
        state.max_batch_body
    } else {
        state.max_body
    };
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::payload_too_large(limit))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let key = RequestKey::new(&raw, parts.method.as_str(), path, &bytes).map_err(invalid_key)?;
    let mut first = state.key_record(&principal, &key)?;
    // Not here may mean not applied yet (a replica rebuilding, or lagging): past the
    // duplicate window nothing else would stop a second task.
    if first.is_none() {
        if !state.caught_up().await? {
            return Err(ApiError::unavailable(format!(
                "this replica's read model is catching up ({} applied): it cannot tell yet whether Idempotency-Key {:?} was used; retry shortly",
                state.progress.applied(),
                key.key
            )));
        }
        first = state.key_record(&principal, &key)?;
    }
    let copy = (parts.clone(), bytes.clone());
    let request = Request::from_parts(parts, Body::from(bytes));
    let keyed = Keyed {
        principal,
        key,
        first,
    };
    Ok((request, Some((keyed, copy))))
}

impl AppState {
    /// What the first request with this request's key stored, if this is a retry of it.
    pub fn replayed(&self) -> Option<RequestRecord> {
        current().and_then(|k| k.first)
    }

    /// What the first request with this request's key stored, if `appended` (of `events`)
    /// was a duplicate of it rather than a new message.
    pub async fn duplicate_of(
        &self,
        events: &[Envelope],
        appended: &Appended,
    ) -> Result<Option<RequestRecord>, ApiError> {
        let Some(keyed) = current().filter(|k| appended.duplicate && k.owns(events)) else {
            return Ok(None);
        };
        self.first_with_key(&keyed, appended.sequence)
            .await
            .map(Some)
    }

    /// What `principal`'s request with `key` stored, as this replica shows it now; 409 if
    /// another request stored it.
    pub fn key_record(
        &self,
        principal: &Principal,
        key: &RequestKey,
    ) -> Result<Option<RequestRecord>, ApiError> {
        match self.model.request(principal, &key.key)? {
            Some(record) => same_request(key, record).map(Some),
            None => Ok(None),
        }
    }

    /// Waits (bounded by the write wait) until the read model shows the stream as it is
    /// now; false if it did not in time.
    async fn caught_up(&self) -> Result<bool, ApiError> {
        let last = self.store.last_sequence().await?;
        Ok(self.progress.wait_for(last, self.write_wait).await)
    }

    /// What a request with `keyed`'s key stored, once the read model shows the stream as
    /// it is now (or the write wait has passed); 409 if it was another request.
    async fn caught_up_record(&self, keyed: &Keyed) -> Result<Option<RequestRecord>, ApiError> {
        self.caught_up().await?;
        self.key_record(&keyed.principal, &keyed.key)
    }

    /// What the first request with `keyed`'s key stored at `sequence`, once this replica
    /// shows it: the answer to a request whose append was a duplicate of that one.
    pub async fn first_with_key(
        &self,
        keyed: &Keyed,
        sequence: u64,
    ) -> Result<RequestRecord, ApiError> {
        self.progress.wait_for(sequence, self.write_wait).await;
        match self.key_record(&keyed.principal, &keyed.key)? {
            Some(record) => Ok(record),
            None => Err(ApiError::unavailable(format!(
                "the first request with Idempotency-Key {:?} was stored at sequence {sequence}, not yet visible here; retry shortly",
                keyed.key.key
            ))),
        }
    }
}
