//! Who is calling: an API token (the default), or nobody checks (`--auth none`, loopback only).
//!
//! A request's token comes from `Authorization: Bearer <token>` or, for the UI, the
//! `aicp_token` cookie. It is hashed and looked up in this replica's read model, which
//! applies `TokenIssued` and `TokenRevoked` from the stream like any other event: a token
//! revoked through any replica is refused by every replica as soon as each has applied the
//! revocation (milliseconds). A token given by configuration (`--admin-token`,
//! `--worker-token`) is checked against its hash in memory and never written to the stream.
//!
//! Every request also counts against two rate limits: its client IP's (before anything
//! else, so guessing tokens is slow too) and its principal's (workers excepted: see
//! [`identify`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use aicp_events::domain::access::{authorize, Action, Principal};
use aicp_events::id::TokenId;
use aicp_events::token::{TokenHash, TokenSecret};
use axum::extract::{ConnectInfo, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::limits::{retry_after_seconds, Limiter, Rate};
use crate::state::AppState;

/// The cookie that carries the UI's token.
pub const TOKEN_COOKIE: &str = "aicp_token";
/// In `--auth none`, the cookie that says who the UI acts as (`buyer:<id>`, `agent:<id>`).
pub const WHO_COOKIE: &str = "aicp_who";

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every call but the public pages needs a token.
    Token,
    /// Nobody is checked: an API call is the admin, the UI is whoever it says. Only on a
    /// loopback address, for a developer's machine.
    None,
}

/// The authentication and rate-limit settings of a replica.
#[derive(Debug)]
pub struct Auth {
    /// Token or none.
    pub mode: AuthMode,
    /// Tokens given by configuration (`--admin-token`, `--worker-token`): their hashes and
    /// principals.
    pub configured: Vec<(TokenHash, Principal)>,
    /// Requests per principal.
    pub per_principal: Limiter,
    /// Requests per client IP.
    pub per_ip: Limiter,
    /// The header a trusted proxy puts the client's address in (its last entry is used).
    pub client_ip_header: Option<HeaderName>,
    /// Origins (`scheme://host:port`) besides the coordinator's own whose pages may send
    /// cookie-authenticated writes: the CORS allow-list.
    pub allowed_origins: Vec<String>,
}

impl Auth {
    /// Settings from configuration.
    pub fn new(
        mode: AuthMode,
        configured: &[(&TokenSecret, Principal)],
        per_principal: Option<Rate>,
        per_ip: Option<Rate>,
        client_ip_header: Option<HeaderName>,
        allowed_origins: &[String],
    ) -> Arc<Self> {
        Arc::new(Self {
            mode,
            configured: configured
                .iter()
                .map(|(token, principal)| (token.hash(), principal.clone()))
                .collect(),
            per_principal: Limiter::new(per_principal),
            per_ip: Limiter::new(per_ip),
            client_ip_header,
            allowed_origins: allowed_origins.to_vec(),
        })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who it acts as.
    pub principal: Principal,
    /// The token it used (`None` for a configured token and in `--auth none`).
    pub token_id: Option<TokenId>,
}

impl Caller {
    /// 403 unless the caller may take `action`.
    pub fn may(&self, action: Action<'_>) -> Result<(), ApiError> {
        Ok(authorize(&self.principal, action)?)
    }
}

/// What the middleware found, for the handlers' extractors.
#[derive(Debug, Clone)]
struct Identified(Option<Caller>);

/// The caller the middleware identified for a request, for later middleware.
pub fn identified(extensions: &axum::http::Extensions) -> Option<&Caller> {
    extensions
        .get::<Identified>()
        .and_then(|Identified(caller)| caller.as_ref())
}

/// Middleware on every route: per-IP limit, identify the caller, per-principal limit.
/// A bad or revoked token is 401 here; whether a route needs a caller at all is up to
/// its handler (which asks for a [`Caller`]).
pub async fn identify(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let now = Instant::now();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let ip = client_ip(&state.auth, request.headers(), peer);
    if let Err(wait) = state.auth.per_ip.check(&ip, now) {
        return ApiError::too_many_requests(
            retry_after_seconds(wait),
            format!("too many requests from {ip}; retry later"),
        )
        .into_response();
    }
    let caller = match caller(&state, request.headers()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = same_origin(&state.auth, request.method(), request.headers()) {
        return e.into_response();
    }
    // Workers are the marketplace's own service: a pool shares one token and makes two
    // calls per task, so a per-principal budget would cap the whole fleet's throughput.
    // Their address limit still applies, and their calls only touch tasks queued for them.
    let limited = caller
        .as_ref()
        .filter(|c| !matches!(c.principal, Principal::Worker(_)));
    if let Some(caller) = limited {
        let key = caller.principal.to_string();
        if let Err(wait) = state.auth.per_principal.check(&key, now) {
            return ApiError::too_many_requests(
                retry_after_seconds(wait),
                format!("too many requests from {key}; retry later"),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(Identified(caller));
    next.run(request).await
}

/// Refuses a write a browser sends from another site's page (cross-site request forgery)
/// when it would be authenticated by a cookie (or by nothing, with `--auth none`): its
/// `Origin` must be the coordinator's own or an allowed one. Calls with a bearer token
/// are not forgeable that way, and clients that send no `Origin` are not browsers on a
/// foreign page.
fn same_origin(auth: &Auth, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority == host);
    if own || auth.allowed_origins.iter().any(|o| o == origin || o == "*") {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "cross_site",
        format!("a write from a page of {origin} is refused; send a bearer token instead"),
    ))
}

/// The client's address: the peer, or the last entry of the trusted proxy's header (its
/// last line, as a proxy appends); IPv6 addresses count by their /64, which one client
/// usually holds whole.
fn client_ip(auth: &Auth, headers: &HeaderMap, peer: Option<IpAddr>) -> String {
    let forwarded = auth
        .client_ip_header
        .as_ref()
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    match forwarded.or(peer) {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or_else(String::new, |v4| v4.to_string()),
        Some(ip) => ip.to_string(),
        None => "unknown".to_owned(),
    }
}

/// The caller a request's credentials name; `Ok(None)` if it sent none.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    let bearer = bearer(headers)?;
    let cookie = cookie(headers, TOKEN_COOKIE);
    if let Some(token) = bearer.as_deref() {
        return by_token(state, &TokenSecret::from_text(token)).map(Some);
    }
    if let Some(token) = cookie {
        // A stale cookie makes the UI sign in again rather than fail every page.
        if let Ok(caller) = by_token(state, &TokenSecret::from_text(token)) {
            return Ok(Some(caller));
        }
    }
    if state.auth.mode == AuthMode::None {
        let principal = cookie_principal(headers).unwrap_or(Principal::Admin);
        return Ok(Some(Caller {
            principal,
            token_id: None,
        }));
    }
    Ok(None)
}

/// `Authorization: Bearer <token>`; another scheme is refused rather than ignored.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be `Bearer <token>`",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid());
    }
    Ok(Some(token.trim().to_owned()))
}

/// The value of cookie `name`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// In `--auth none`, the buyer or agent the UI signed in as.
fn cookie_principal(headers: &HeaderMap) -> Option<Principal> {
    let principal: Principal = cookie(headers, WHO_COOKIE)?.parse().ok()?;
    matches!(principal, Principal::Buyer(_) | Principal::Agent(_)).then_some(principal)
}

/// The caller a token names: 401 if no token has it or it was revoked.
pub fn by_token(state: &AppState, token: &TokenSecret) -> Result<Caller, ApiError> {
    let hash = token.hash();
    if let Some((_, principal)) = state.auth.configured.iter().find(|(h, _)| *h == hash) {
        return Ok(Caller {
            principal: principal.clone(),
            token_id: None,
        });
    }
    match state.model.token_by_hash(&hash)? {
        Some(view) if view.revoked_at.is_none() => Ok(Caller {
            principal: view.principal,
            token_id: Some(view.token_id),
        }),
        Some(view) => Err(ApiError::unauthorized(
            "token_revoked",
            format!("token {} was revoked", view.token_id),
        )),
        None => Err(ApiError::unauthorized(
            "invalid_token",
            "no such token: check it, or ask an admin for one (aicp tokens issue)",
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Identified>() {
            Some(Identified(Some(caller))) => Ok(caller.clone()),
            _ => Err(ApiError::unauthorized(
                "unauthenticated",
                "this needs a token: send `Authorization: Bearer <token>` (an admin issues them with `aicp tokens issue`)",
            )),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> Result<Option<Self>, std::convert::Infallible> {
        Ok(parts
            .extensions
            .get::<Identified>()
            .and_then(|Identified(caller)| caller.clone()))
    }
}
