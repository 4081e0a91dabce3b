//! API tokens: issuing and revoking them (as events), the first admin token, and their routes.
//!
//! `POST /v1/tokens` answers the secret once; only its hash is stored. A revocation is an
//! event too, so every replica refuses the token once its read model has applied it.

use aicp_events::domain::access::{Action, Principal};
use aicp_events::event::{TokenIssued, TokenRevoked};
use aicp_events::id::TokenId;
use aicp_events::store::AppendError;
use aicp_events::token::{self, TokenSecret};
use aicp_events::{Aggregate, Envelope, Expected};
use aicp_projections::views::{RequestRecord, TokenView};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{AuthMode, Caller};
use crate::commands::{parse_id, Written};
use crate::error::ApiError;
use crate::state::AppState;

/// Longest label accepted.
const MAX_LABEL_CHARS: usize = 200;

/// The token routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", get(list).post(issue))
        .route("/v1/tokens/{id}", get(show))
        .route("/v1/tokens/{id}/revoke", post(revoke))
        .route("/v1/whoami", get(whoami))
}

/// A token as JSON: never its secret or hash.
#[derive(Debug, Serialize)]
pub struct TokenJson {
    token_id: TokenId,
    principal: Principal,
    label: String,
    active: bool,
    issued_at: DateTime<Utc>,
    issued_by: Option<Principal>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<Principal>,
    revoke_reason: Option<String>,
}

impl From<TokenView> for TokenJson {
    fn from(v: TokenView) -> Self {
        Self {
            active: v.revoked_at.is_none(),
            token_id: v.token_id,
            principal: v.principal,
            label: v.label,
            issued_at: v.issued_at,
            issued_by: v.issued_by,
            revoked_at: v.revoked_at,
            revoked_by: v.revoked_by,
            revoke_reason: v.revoke_reason,
        }
    }
}

/// A token just issued: its id and its secret, which is not kept anywhere.
#[derive(Debug)]
pub struct Issued {
    /// The token's id.
    pub token_id: TokenId,
    /// The secret, to hand over once: `None` to a retry of the request that issued it
    /// (with its `Idempotency-Key`), since only the secret's hash is kept.
    pub secret: Option<TokenSecret>,
    /// The write.
    pub written: Written,
}

impl AppState {
    /// Issues a token for `principal`, recorded as issued by `by`.
    pub async fn issue_token(
        &self,
        principal: Principal,
        label: String,
        by: &Principal,
    ) -> Result<Issued, ApiError> {
        if let Some(first) = self.replayed() {
            return self.issued_before(first).await;
        }
        if principal == Principal::Coordinator {
            return Err(ApiError::bad_request(
                "invalid_principal",
                "the coordinator principal is the coordinator's own; issue admin, buyer:<id>, agent:<id> or worker tokens",
            ));
        }
        if let Principal::Agent(agent) = &principal {
            // A token for a misspelt agent would only ever be refused.
            self.agent(agent)?;
        }
        let label = label.trim().to_owned();
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::bad_request(
                "invalid_label",
                format!("label must be at most {MAX_LABEL_CHARS} characters"),
            ));
        }
        let token_id = token::generate_id().map_err(ApiError::internal)?;
        self.store_token(token_id, principal, label, by.clone())
            .await?
            .ok_or_else(|| ApiError::conflict("token_exists", "token id taken; retry"))
    }

    /// Appends a new token under `token_id`; `None` if that id is taken.
    async fn store_token(
        &self,
        token_id: TokenId,
        principal: Principal,
        label: String,
        by: Principal,
    ) -> Result<Option<Issued>, ApiError> {
        let secret = TokenSecret::generate().map_err(ApiError::internal)?;
        let event = Envelope::new(TokenIssued {
            token_id: token_id.clone(),
            principal,
            hash: secret.hash(),
            label,
        })
        .by(by);
        // The attempt's own id: a retried publish is recognised, another replica's is not.
        let msg_id = format!("token:{}", event.event_id);
        let aggregate = Aggregate::Token(token_id.clone());
        let events = [event];
        match self
            .append(&aggregate, &events, Expected::NEW, Some(&msg_id))
            .await
        {
            Ok(appended) => match self.duplicate_of(&events, &appended).await? {
                Some(first) => self.issued_before(first).await.map(Some),
                None => Ok(Some(Issued {
                    token_id,
                    secret: Some(secret),
                    written: self.written(appended.sequence).await,
                })),
            },
            Err(AppendError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The token the first request with this request's key issued, without its secret.
    async fn issued_before(&self, first: RequestRecord) -> Result<Issued, ApiError> {
        let Some(token) = first.token.clone() else {
            return Err(crate::idempotency::written_elsewhere(&first, "a token"));
        };
        Ok(Issued {
            token_id: token.token_id,
            secret: None,
            written: self.written(first.sequence).await,
        })
    }

    /// Revokes a token; revoking a revoked token changes nothing.
    pub async fn revoke_token(
        &self,
        token_id: &TokenId,
        reason: String,
        by: &Principal,
    ) -> Result<Option<Written>, ApiError> {
        let view = self.model.token(token_id)?.ok_or_else(|| {
            ApiError::not_found(
                "unknown_token",
                format!("token {token_id} does not exist (a token given by configuration is revoked by removing it there)"),
            )
        })?;
        if view.revoked_at.is_some() {
            return Ok(None);
        }
        let reason = if reason.trim().is_empty() {
            "revoked".to_owned()
        } else {
            reason.trim().to_owned()
        };
        let event = Envelope::new(TokenRevoked {
            token_id: token_id.clone(),
            reason,
        })
        .by(by.clone());
        let aggregate = Aggregate::Token(token_id.clone());
        let events = [event];
        match self
            .append(
                &aggregate,
                &events,
                Expected::Sequence(view.last_sequence),
                None,
            )
            .await
        {
            Ok(appended) => match self.duplicate_of(&events, &appended).await? {
                // The key's first request revoked this token: its answer is this one's.
                Some(first)
                    if first
                        .token
                        .as_ref()
                        .is_some_and(|t| t.token_id == *token_id) =>
                {
                    Ok(Some(self.written(first.sequence).await))
                }
                Some(first) => Err(crate::idempotency::written_elsewhere(
                    &first,
                    &format!("token {token_id}"),
                )),
                None => Ok(Some(self.written(appended.sequence).await)),
            },
            // The only thing that can happen to a token after its issue is a revocation.
            Err(AppendError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// On a marketplace without tokens (and without a configured admin token), issues the
    /// first admin token and returns it; `None` if there is one already. Replicas racing
    /// for it append under one aggregate with `Expected::NEW`: one wins.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<TokenSecret>, ApiError> {
        let configured_admin = self
            .auth
            .configured
            .iter()
            .any(|(_, p)| *p == Principal::Admin);
        if self.auth.mode != AuthMode::Token || configured_admin {
            return Ok(None);
        }
        if !self
            .model
            .tokens(&aicp_projections::PageRequest::first(1))?
            .items
            .is_empty()
        {
            return Ok(None);
        }
        let issued = self
            .store_token(
                token::bootstrap_id(),
                Principal::Admin,
                "first admin token, issued on first start".to_owned(),
                Principal::Coordinator,
            )
            .await?;
        Ok(issued.and_then(|i| i.secret))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    principal: String,
    #[serde(default)]
    label: String,
}

/// `POST /v1/tokens`: 201 with the token's secret, shown this once.
async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.may(Action::ManageTokens)?;
    let Json(body) = body?;
    let principal: Principal =
        body.principal
            .parse()
            .map_err(|e: aicp_events::domain::access::InvalidPrincipal| {
                ApiError::bad_request("invalid_principal", e.to_string())
            })?;
    let issued = state
        .issue_token(principal.clone(), body.label.clone(), &caller.principal)
        .await?;
    let status = if issued.written.visible {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({
            "token_id": issued.token_id,
            "token": issued.secret.as_ref().map(TokenSecret::expose),
            "principal": principal,
            "label": body.label.trim(),
            "note": match issued.secret {
                Some(_) => "the token is shown this once: only its hash is kept",
                None => "issued by the first request with this Idempotency-Key, which was shown the token: only its hash is kept",
            },
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/tokens`: every token, revoked ones included, in id order.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.may(Action::ManageTokens)?;
    let Query(q) = q?;
    let page = crate::routes::page(q.cursor, q.limit)?;
    let got = state.model.tokens(&page)?;
    let tokens: Vec<TokenJson> = got.items.into_iter().map(TokenJson::from).collect();
    Ok(Json(json!({"tokens": tokens, "next_cursor": got.next_cursor})).into_response())
}

/// `GET /v1/tokens/{id}`.
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.may(Action::ManageTokens)?;
    let Path(id) = path?;
    let id: TokenId = parse_id(&id)?;
    let view = state.model.token(&id)?.ok_or_else(|| {
        ApiError::not_found("unknown_token", format!("token {id} does not exist"))
    })?;
    Ok(Json(TokenJson::from(view)).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: String,
}

/// `POST /v1/tokens/{id}/revoke`: 200 with the token, now refused everywhere.
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Option<Json<RevokeBody>>,
) -> Result<Response, ApiError> {
    caller.may(Action::ManageTokens)?;
    let Path(id) = path?;
    let id: TokenId = parse_id(&id)?;
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    let written = state.revoke_token(&id, reason, &caller.principal).await?;
    let status = match written {
        Some(w) if !w.visible => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    let body = match state.model.token(&id)? {
        Some(view) => json!(TokenJson::from(view)),
        None => json!({"token_id": id}),
    };
    Ok((status, Json(body)).into_response())
}

/// `GET /v1/whoami`: the caller's principal, as this replica sees it.
async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "principal": caller.principal,
        "role": caller.principal.role(),
        "token_id": caller.token_id,
        "auth": match state.auth.mode {
            AuthMode::Token => "token",
            AuthMode::None => "none",
        },
    }))
}
