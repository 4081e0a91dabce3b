//! Every HTTP error, in one JSON shape: `{"error": {"code", "message"}}` (a 402 adds
//! the limit that refused and the amounts).
//!
//! Handlers return [`ApiError`]; the status, code and message are decided here, in one
//! place, from the typed errors of the layers below.

use aicp_events::domain::access::Denied;
use aicp_events::domain::assign::NoEligibleAgent;
use aicp_events::domain::budget::{Limit, Shortfall};
use aicp_events::domain::task::TransitionError;
use aicp_events::id::BuyerId;
use aicp_events::store::{AppendError, StoreError};
use aicp_projections::{ProjectionError, QueryError};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The `Retry-After` of a 503, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 1;

/// An error answer: status, a stable machine-readable code, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, such as `invalid_complexity`.
    pub code: &'static str,
    /// What went wrong and what to do about it.
    pub message: String,
    /// For 429 and 503: seconds until a retry may succeed (the `Retry-After` header).
    pub retry_after: Option<u64>,
    /// For 402: the limit that refused, and by how much (fields of the error object).
    pub shortfall: Option<Shortfall>,
}

impl ApiError {
    /// 400: the request is malformed or invalid.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 402: the buyer's balance or a spending limit does not cover the task.
    pub fn payment_required(shortfall: Shortfall, buyer: &BuyerId) -> Self {
        let message = format!(
            "buyer {buyer} cannot pay for this task: {shortfall}{}",
            match shortfall.limit {
                Limit::Balance => "; deposit more, or wait for open tasks to be refunded",
                Limit::Daily => "; retry tomorrow (UTC) or raise the daily limit",
                Limit::Total => "; raise the total limit",
            }
        );
        Self {
            shortfall: Some(shortfall),
            ..Self::new(
                StatusCode::PAYMENT_REQUIRED,
                shortfall.limit.code(),
                message,
            )
        }
    }

    /// 404: no such resource.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: the resource is not in a state that allows this.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 401: no credentials, or credentials that are not (or no longer) valid.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 408: the request took longer than the coordinator allows.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "no answer within {} ms; retry, or check GET /ready",
                limit.as_millis()
            ),
        )
    }

    /// 429: over a rate limit; retry after `seconds`.
    pub fn too_many_requests(seconds: u64, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 403: the caller may not do this to this resource.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take this method; see /docs",
        )
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 503: a dependency is down (NATS, or a stream electing its leader); retry shortly.
    pub fn unavailable(message: impl Into<String>) -> Self {
        // A stream's election takes seconds: a client told when to come back does not
        // hammer the replica meanwhile, and knows the answer is worth retrying.
        Self {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECONDS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 500: a bug or a broken disk; details go to the log, not the client.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the coordinator's log",
        )
    }

    /// The `error` object of the answer: code, message, and a 402's shortfall.
    pub fn error_json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(short) = self.shortfall {
            error["limit"] = serde_json::json!(short.limit);
            error["needed_satoshis"] = short.needed_sats.into();
            error["available_satoshis"] = short.available_sats.into();
            error["short_by_satoshis"] = short.short_by_sats.into();
        }
        error
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            shortfall: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error_json() });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"aicp\""),
            );
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        ApiError::forbidden("forbidden", e.to_string())
    }
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::WrongBuyer { .. } => {
                ApiError::forbidden("not_your_task", e.to_string())
            }
            TransitionError::WrongAgent { .. } => {
                ApiError::forbidden("not_your_task", e.to_string())
            }
            _ => ApiError::conflict("invalid_state", e.to_string()),
        }
    }
}

impl From<NoEligibleAgent> for ApiError {
    fn from(e: NoEligibleAgent) -> Self {
        ApiError::conflict("no_eligible_agent", e.to_string())
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Publish { .. } | AppendError::StreamNotFound { .. } => {
                ApiError::unavailable(e.to_string())
            }
            AppendError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        ApiError::internal(e)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Cursor(c) => ApiError::bad_request("invalid_cursor", c.to_string()),
            QueryError::Storage(s) => ApiError::internal(s),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        // JSON of the wrong shape (axum's 422) is bad input like any other: 400.
        let (status, code) = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_json"),
        };
        ApiError::new(status, code, e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
            }
            status => ApiError::new(status, "invalid_body", e.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", e.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_answer_says_when_to_retry() {
        let response = ApiError::unavailable("NATS is not connected").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECONDS))
        );
    }

    #[test]
    fn a_bad_request_has_no_retry_after() {
        let response = ApiError::bad_request("invalid_json", "not JSON").into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER), None);
    }
}
