//! `aicp tokens ...`: API tokens through a coordinator (admin only), and `whoami`.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::api::{encode, text, Client};
use crate::cli::TokensCommand;
use crate::error::OpsError;
use crate::output;

/// Runs `aicp tokens ...`.
pub async fn command(
    client: &Client,
    command: TokensCommand,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    match command {
        TokensCommand::Issue { principal, label } => {
            let (_, issued) = client
                .post(
                    "/v1/tokens",
                    &json!({"principal": principal, "label": label}),
                )
                .await?;
            if as_json {
                output::json(&issued);
            } else {
                // The secret alone on standard output, so `$(aicp tokens issue ...)` is it.
                println!("{}", text(&issued["token"]));
                eprintln!(
                    "issued {} for {}: the token above is shown this once",
                    text(&issued["token_id"]),
                    text(&issued["principal"])
                );
            }
        }
        TokensCommand::List => {
            let page = client.get("/v1/tokens?limit=500").await?;
            let tokens = page["tokens"].as_array().cloned().unwrap_or_default();
            print_tokens(&tokens, as_json);
        }
        TokensCommand::Revoke { token_id, reason } => {
            let (_, token) = client
                .post(
                    &format!("/v1/tokens/{}/revoke", encode(&token_id)),
                    &json!({"reason": reason}),
                )
                .await?;
            print_tokens(std::slice::from_ref(&token), as_json);
        }
        TokensCommand::Whoami => {
            let me = client.get("/v1/whoami").await?;
            if as_json {
                output::json(&me);
            } else {
                println!(
                    "{} (token {}, auth {})",
                    text(&me["principal"]),
                    text(&me["token_id"]),
                    text(&me["auth"])
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tokens(tokens: &[Value], as_json: bool) {
    if as_json {
        output::json(&json!(tokens));
        return;
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                text(&t["token_id"]),
                text(&t["principal"]),
                if t["active"] == json!(true) {
                    "active"
                } else {
                    "revoked"
                }
                .to_owned(),
                text(&t["label"]),
                text(&t["issued_at"]),
                text(&t["revoked_at"]),
            ]
        })
        .collect();
    output::table(
        &["TOKEN", "PRINCIPAL", "STATE", "LABEL", "ISSUED", "REVOKED"],
        &rows,
    );
}
