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
    let keyed = current()?;
    let first = events.first()?;
    if first.principal.as_ref() != Some(&keyed.principal) {
        return None;
    }
    let mut events = events.to_vec();
    events[0].request = Some(keyed.key.clone());
    Some((events, keyed.msg_id()))
}

/// The task `record` stored: the answer to a retried task command.
pub fn task_of(record: RequestRecord) -> Result<Decided, ApiError> {
    let sequence = record.sequence;
    match record.task {
        Some(view) => Ok(Decided { sequence, view }),
        None => Err(ApiError::conflict(
            "idempotency_key_reused",
            format!(
                "the Idempotency-Key was used for a write on {}, not on a task",
                record.subject
            ),
        )),
    }
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
/// A keyed request refused (4xx) without a record of its key is looked at once more: a
/// retry sent right after the first request was answered may reach a replica whose read
/// model has not applied the first yet (a write is answered once stored, not once
/// projected), and deciding again there refuses it on the state the first left (a
/// cancelled task cannot be cancelled). Once the read model has caught up with the
/// stream, a record of the key means the request is a retry: it is answered as one.
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
    let first = match state.model.request(&principal, &key.key)? {
        Some(record) => Some(same_request(&key, record)?),
        // Not here may mean not applied yet (a replica rebuilding, or lagging): past
        // the duplicate window nothing else would stop a second task. So a key not
        // found is looked up again once the read model shows the stream as it is now.
        None => {
            let last = state.store.last_sequence().await?;
            if !state.progress.wait_for(last, state.write_wait).await {
                return Err(ApiError::unavailable(format!(
                    "this replica's read model is catching up ({} of {last} applied): it cannot tell yet whether Idempotency-Key {:?} was used; retry shortly",
                    state.progress.applied(),
                    key.key
                )));
            }
            match state.model.request(&principal, &key.key)? {
                Some(record) => Some(same_request(&key, record)?),
                None => None,
            }
        }
    };
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
        if !appended.duplicate || keyed_events(events).is_none() {
            return Ok(None);
        }
        let Some(keyed) = current() else {
            return Ok(None);
        };
        self.first_with_key(&keyed, appended.sequence)
            .await
            .map(Some)
    }

    /// What a request with `keyed`'s key stored, once the read model has applied the
    /// stream as it is now (bounded by the write wait); 409 if it was another request.
    async fn caught_up_record(&self, keyed: &Keyed) -> Result<Option<RequestRecord>, ApiError> {
        let last = self.store.last_sequence().await?;
        self.progress.wait_for(last, self.write_wait).await;
        match self.model.request(&keyed.principal, &keyed.key.key)? {
            Some(record) => same_request(&keyed.key, record).map(Some),
            None => Ok(None),
        }
    }

    /// What the first request with `keyed`'s key stored at `sequence`, once this replica
    /// shows it: the answer to a request whose append was a duplicate of that one.
    pub async fn first_with_key(
        &self,
        keyed: &Keyed,
        sequence: u64,
    ) -> Result<RequestRecord, ApiError> {
        self.progress.wait_for(sequence, self.write_wait).await;
        match self.model.request(&keyed.principal, &keyed.key.key)? {
            Some(record) => same_request(&keyed.key, record),
            None => Err(ApiError::unavailable(format!(
                "the first request with Idempotency-Key {:?} was stored at sequence {sequence}, not yet visible here; retry shortly",
                keyed.key.key
            ))),
        }
    }
}
