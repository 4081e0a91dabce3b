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

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("openssl is needed for the TLS test (apt-get install openssl)")?;
    anyhow::ensure!(status.success(), "openssl {args:?} failed");
    Ok(())
}

/// A private CA, and a certificate signed by it for `name` (with `san`), in `dir`.
fn issue(dir: &std::path::Path, name: &str, san: &str) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=aicp test CA",
                ],
            ]
            .concat(),
        )?;
    }
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n"))?;
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    )
}

#[tokio::test]
async fn tls_with_a_private_ca_and_client_certificates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    issue(d, "server", "IP:127.0.0.1,DNS:localhost")?;
    issue(d, "client", "DNS:aicp-worker")?;
    let path = |f: &str| d.join(f).display().to_string();
    let server = NatsServer::start_with_args(&[
        "--tls",
        "--tlscert",
        &path("server.pem"),
        "--tlskey",
        &path("server.key"),
        "--tlsverify",
        "--tlscacert",
        &path("ca.pem"),
    ])?;
    let url = server.url();
    let tls = |ca: bool, client: bool| NatsCredentials {
        nats_tls_ca: ca.then(|| d.join("ca.pem")),
        nats_tls_cert: client.then(|| d.join("client.pem")),
        nats_tls_key: client.then(|| d.join("client.key")),
        ..NatsCredentials::default()
    };
    // Not trusting the private CA, the client refuses the server; without a client
    // certificate, the server refuses the client.
    for (ca, client) in [(false, false), (false, true), (true, false)] {
        let refused = EventStore::connect_with(&url, Namespace::default(), &tls(ca, client)).await;
        assert!(refused.is_err(), "connected with ca={ca} client={client}");
    }
    let store = EventStore::connect_with(&url, Namespace::default(), &tls(true, true)).await?;
    store.provision().await?;
    assert_eq!(store.last_sequence().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_server_with_nkey_users_lets_in_only_who_holds_the_seed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let user = nkeys::KeyPair::new_user();
    let seed = dir.path().join("worker.nk");
    std::fs::write(&seed, format!("{}\n", user.seed()?))?;
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )?;
    let server = NatsServer::start_with_args(&["-c", &config.display().to_string()])?;
    let url = server.url();
    assert!(EventStore::connect(&url, Namespace::default())
        .await
        .is_err());
    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed()?)?;
    let with = |path: &std::path::Path| NatsCredentials {
        nats_nkey: Some(path.to_owned()),
        ..NatsCredentials::default()
    };
    assert!(
        EventStore::connect_with(&url, Namespace::default(), &with(&other))
            .await
            .is_err()
    );
    let store = EventStore::connect_with(&url, Namespace::default(), &with(&seed)).await?;
    store.provision().await?;
    // The seed is a secret: Debug shows where it is, never what.
    assert!(!format!("{:?}", with(&seed)).contains(&user.seed()?));
    Ok(())
}
