//! A nats-server that requires credentials: the store connects with the right ones only,
//! and no error shows a secret.

use aicp_events::credentials::NatsCredentials;
use aicp_events::testing::NatsServer;
use aicp_events::{EventStore, Namespace};
use anyhow::{Context, Result};

fn user(name: &str, password: &str) -> NatsCredentials {
    NatsCredentials {
        nats_user: Some(name.into()),
        nats_password: Some(password.into()),
        ..NatsCredentials::default()
    }
}

#[tokio::test]
async fn a_server_with_a_password_lets_in_only_who_has_it() -> Result<()> {
    let server = NatsServer::start_with_args(&["--user", "aicp", "--pass", "s3cret-pass"])?;
    let url = server.url();

    let refused = EventStore::connect(&url, Namespace::default())
        .await
        .err()
        .context("connected without credentials")?;
    assert!(
        refused.to_string().contains("cannot connect to NATS"),
        "{refused}"
    );
    let wrong = EventStore::connect_with(&url, Namespace::default(), &user("aicp", "guess"))
        .await
        .err()
        .context("connected with a wrong password")?;
    assert!(!wrong.to_string().contains("guess"), "{wrong}");

    // A password in the URL never reaches an error message.
    let in_url = url.replace("nats://", "nats://aicp:guessed-in-url@");
    let shown = EventStore::connect(&in_url, Namespace::default())
        .await
        .err()
        .context("connected with a wrong password in the URL")?;
    assert!(!shown.to_string().contains("guessed-in-url"), "{shown}");

    let store =
        EventStore::connect_with(&url, Namespace::default(), &user("aicp", "s3cret-pass")).await?;
    store.provision().await?;
    assert_eq!(store.last_sequence().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_server_with_a_token_lets_in_only_who_has_it() -> Result<()> {
    let server = NatsServer::start_with_args(&["--auth", "t0ken-value"])?;
    let url = server.url();
    assert!(EventStore::connect(&url, Namespace::default())
        .await
        .is_err());
    let token = NatsCredentials {
        nats_token: Some("t0ken-value".into()),
        ..NatsCredentials::default()
    };
    let store = EventStore::connect_with(&url, Namespace::default(), &token).await?;
    store.provision().await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_credentials_file_is_a_clear_error() -> Result<()> {
    let server = NatsServer::start()?;
    let creds = NatsCredentials {
        nats_creds: Some("/nonexistent/aicp.creds".into()),
        ..NatsCredentials::default()
    };
    let error = EventStore::connect_with(&server.url(), Namespace::default(), &creds)
        .await
        .err()
        .context("connected with a missing credentials file")?;
    assert!(
        error.to_string().contains("/nonexistent/aicp.creds"),
        "{error}"
    );
    Ok(())
}
