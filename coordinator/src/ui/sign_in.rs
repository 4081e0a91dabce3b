//! Signing in (choose buyer or agent, give an id) and out. The choice is kept in a cookie.

use aicp_events::id::{AgentId, BuyerId};
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::page as shell;
use super::{signed_in, Principal, COOKIE};
use crate::state::AppState;

/// The sign-in form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct SignIn {
    #[serde(default)]
    role: String,
    #[serde(default)]
    id: String,
}

/// `GET /sign-in`.
pub async fn page(headers: HeaderMap) -> Response {
    if let Some(who) = signed_in(&headers) {
        return Redirect::to(who.home()).into_response();
    }
    Html(form(&SignIn::default(), None).into_string()).into_response()
}

/// `POST /sign-in`: checks the id (an agent must be registered), sets the cookie and
/// goes to the principal's page; otherwise shows the form again with the reason.
pub async fn submit(State(state): State<AppState>, Form(input): Form<SignIn>) -> Response {
    let id = input.id.trim();
    let outcome = match input.role.as_str() {
        "buyer" => id
            .parse::<BuyerId>()
            .map(Principal::Buyer)
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string())),
        "agent" => match id.parse::<AgentId>() {
            Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
            Ok(agent) => match state.model.agent(&agent) {
                Ok(Some(_)) => Ok(Principal::Agent(agent)),
                Ok(None) => Err((
                    StatusCode::NOT_FOUND,
                    format!("no agent {agent} is registered: check the id, or register it first (POST /v1/agents)"),
                )),
                Err(e) => return crate::error::ApiError::from(e).into_response(),
            },
        },
        _ => Err((StatusCode::BAD_REQUEST, "choose Buyer or Agent".to_owned())),
    };
    match outcome {
        Ok(who) => {
            let cookie = format!("{COOKIE}={who}; Path=/; Max-Age=2592000; SameSite=Lax; HttpOnly");
            ([(header::SET_COOKIE, cookie)], Redirect::to(who.home())).into_response()
        }
        Err((status, message)) => {
            (status, Html(form(&input, Some(&message)).into_string())).into_response()
        }
    }
}

/// `POST /sign-out`: forgets the principal.
pub async fn sign_out() -> Response {
    forget()
}

/// Clears the cookie and goes to the sign-in page.
pub fn forget() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; Max-Age=0; SameSite=Lax; HttpOnly");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/sign-in")).into_response()
}

fn form(input: &SignIn, error: Option<&str>) -> Markup {
    let agent = input.role == "agent";
    shell(
        "Sign in",
        None,
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                p.muted { "Buyers submit tasks and pay for results; agents do the work and earn satoshis." }
                form #sign-in-form method="post" action="/sign-in" {
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
                    @if let Some(error) = error {
                        p #sign-in-error .error role="alert" { (error) }
                    }
                    button #sign-in .primary type="submit" { "Sign in" }
                }
                p.muted.small {
                    "Ids are letters, digits, '-' and '_'. Seed agents: agent-1, agent-2, agent-3. "
                    a href="/dashboard" { "Open the dashboard" } " without signing in."
                }
            }
        },
    )
}
