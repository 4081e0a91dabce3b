//! Signing in and out. With tokens (the default) the browser gives a token, which is
//! checked and kept in an HttpOnly cookie; with `--auth none` it says which buyer or agent
//! it is, as the prototype's UI did.

use aicp_events::domain::access::Principal;
use aicp_events::id::{AgentId, BuyerId};
use aicp_events::token::TokenSecret;
use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::home_of;
use super::layout::page as shell;
use crate::auth::{by_token, AuthMode, Caller, TOKEN_COOKIE, WHO_COOKIE};
use crate::state::AppState;

/// The sign-in form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    id: String,
}

/// `GET /sign-in`.
pub async fn page(State(state): State<AppState>, caller: Option<Caller>) -> Response {
    // In `--auth none` everyone is someone (the admin at least): show the form anyway.
    if let (Some(caller), AuthMode::Token) = (caller, state.auth.mode) {
        return Redirect::to(home_of(&caller.principal)).into_response();
    }
    Html(form(state.auth.mode, &SignIn::default(), None).into_string()).into_response()
}

/// `POST /sign-in`: checks the token (or, without authentication, the id), sets the cookie
/// and goes to the principal's page; otherwise shows the form again with the reason.
pub async fn submit(State(state): State<AppState>, Form(input): Form<SignIn>) -> Response {
    let outcome = match state.auth.mode {
        AuthMode::Token => with_token(&state, &input),
        AuthMode::None if !input.token.trim().is_empty() => with_token(&state, &input),
        AuthMode::None => with_id(&state, &input),
    };
    match outcome {
        Ok((principal, cookie)) => (
            [(header::SET_COOKIE, cookie)],
            Redirect::to(home_of(&principal)),
        )
            .into_response(),
        Err((status, message)) => (
            status,
            Html(form(state.auth.mode, &input, Some(&message)).into_string()),
        )
            .into_response(),
    }
}

type Outcome = Result<(Principal, String), (StatusCode, String)>;

fn with_token(state: &AppState, input: &SignIn) -> Outcome {
    let token = TokenSecret::from_text(&input.token);
    if token.expose().is_empty() {
        return Err((StatusCode::BAD_REQUEST, "paste your token".to_owned()));
    }
    let caller = by_token(state, &token).map_err(|e| (e.status, e.message))?;
    if matches!(
        caller.principal,
        Principal::Worker(_) | Principal::Coordinator
    ) {
        return Err((
            StatusCode::FORBIDDEN,
            "this is a worker's token: sign in with an admin, buyer or agent token".to_owned(),
        ));
    }
    // Strict: the browser never sends it with a request another site starts.
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; Max-Age=2592000; SameSite=Strict; HttpOnly",
        token.expose()
    );
    Ok((caller.principal, cookie))
}

fn with_id(state: &AppState, input: &SignIn) -> Outcome {
    let id = input.id.trim();
    let principal = match input.role.as_str() {
        "buyer" => id
            .parse::<BuyerId>()
            .map(Principal::Buyer)
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
        "agent" => {
            let agent = id
                .parse::<AgentId>()
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
            match state.model.agent(&agent) {
                Ok(Some(_)) => Principal::Agent(agent),
                Ok(None) => return Err((
                    StatusCode::NOT_FOUND,
                    format!("no agent {agent} is registered: check the id, or register it first (POST /v1/agents)"),
                )),
                Err(e) => {
                    let e = crate::error::ApiError::from(e);
                    return Err((e.status, e.message));
                }
            }
        }
        _ => return Err((StatusCode::BAD_REQUEST, "choose Buyer or Agent".to_owned())),
    };
    let cookie =
        format!("{WHO_COOKIE}={principal}; Path=/; Max-Age=2592000; SameSite=Strict; HttpOnly");
    Ok((principal, cookie))
}

/// `POST /sign-out`: forgets the principal.
pub async fn sign_out() -> Response {
    forget()
}

/// Clears the cookies and goes to the sign-in page.
pub fn forget() -> Response {
    let clear = |name: &str| format!("{name}=; Path=/; Max-Age=0; SameSite=Strict; HttpOnly");
    // Appended, not inserted: an array of pairs would keep only the last Set-Cookie.
    (
        AppendHeaders([
            (header::SET_COOKIE, clear(TOKEN_COOKIE)),
            (header::SET_COOKIE, clear(WHO_COOKIE)),
        ]),
        Redirect::to("/sign-in"),
    )
        .into_response()
}

fn form(mode: AuthMode, input: &SignIn, error: Option<&str>) -> Markup {
    let agent = input.role == "agent";
    shell(
        "Sign in",
        None,
        mode == AuthMode::None,
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                p.muted { "Buyers submit tasks and pay for results; agents do the work and earn satoshis; admins run the marketplace." }
                form #sign-in-form method="post" action="/sign-in" {
                    @if mode == AuthMode::Token {
                        label for="token" { "Your token" }
                        input #token type="password" name="token" required autocomplete="current-password"
                            placeholder="aicp_..." aria-describedby="sign-in-error";
                    } @else {
                        fieldset.roles {
                            legend { "I am a" }
                            label.role {
                                input #role-buyer type="radio" name="role" value="buyer" checked[!agent];
                                " Buyer"
                            }
                            label.role {
                                input #role-agent type="radio" name="role" value="agent" checked[agent];
                                " Agent"
                            }
                        }
                        label for="principal-id" { "Your id" }
                        input #principal-id name="id" value=(input.id) required autocomplete="username"
                            placeholder="buyer-001 or agent-1" aria-describedby="sign-in-error";
                    }
                    @if let Some(error) = error {
                        p #sign-in-error .error role="alert" { (error) }
                    }
                    button #sign-in .primary type="submit" { "Sign in" }
                }
                @if mode == AuthMode::Token {
                    p.muted.small {
                        "An admin issues tokens with " code { "aicp tokens issue --principal buyer:<id>" }
                        ". The first admin token was printed once by the first coordinator."
                    }
                } @else {
                    p.muted.small {
                        "Ids are letters, digits, '-' and '_'. Seed agents: agent-1, agent-2, agent-3. "
                        a href="/dashboard" { "Open the dashboard" } " as the admin."
                    }
                }
            }
        },
    )
}
