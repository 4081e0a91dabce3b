//! How a process proves itself to NATS, and how it knows the server is the right one: a
//! user and password, a token, an NKey seed, or a credentials file (a JWT and NKey seed);
//! TLS with the certificate authority that signed the server's certificate and, for
//! servers that verify clients, a client certificate. The operator configures them through
//! flags or the environment (the Helm chart fills them from Secrets). Secrets are never
//! printed: not in `Debug`, not in `--help`, not in an error that shows the server's URL.

use std::fmt;
use std::path::PathBuf;

use async_nats::ConnectOptions;

/// NATS credentials: at most one kind; none for a server without authentication.
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct NatsCredentials {
    /// User name for a NATS server with user/password authentication.
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password of --nats-user.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// Token for a NATS server with token authentication.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_creds"])]
    pub nats_token: Option<String>,
    /// Credentials file (JWT and NKey seed) for a NATS server run by an operator.
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`), for a NATS server whose users are NKeys.
    #[arg(long, env = "NATS_NKEY", conflicts_with_all = ["nats_user", "nats_token", "nats_creds"])]
    pub nats_nkey: Option<PathBuf>,
    /// PEM file of the certificate authority that signed the NATS server's certificate (a
    /// private CA); the connection then requires TLS. A `tls://` URL requires TLS too.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a NATS server that verifies its clients (`verify: true`).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Prefix of this process's reply subjects instead of `_INBOX`, so that a server's
    /// permissions can let it receive its own replies and nobody else's (workers use
    /// `_INBOX_worker` with `ops/nats/worker-permissions.conf`).
    #[arg(long, env = "NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

impl fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCredentials")
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "***"))
            .field("nats_token", &self.nats_token.as_ref().map(|_| "***"))
            .field("nats_creds", &self.nats_creds)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("nats_inbox_prefix", &self.nats_inbox_prefix)
            .finish()
    }
}

impl NatsCredentials {
    /// `options` authenticating with these credentials.
    pub(crate) async fn apply(&self, options: ConnectOptions) -> std::io::Result<ConnectOptions> {
        let options = match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(password)) => {
                options.user_and_password(user.clone(), password.clone())
            }
            _ => options,
        };
        let options = match &self.nats_token {
            Some(token) => options.token(token.clone()),
            None => options,
        };
        let options = match &self.nats_tls_ca {
            Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
            None => options,
        };
        let options = match &self.nats_nkey {
            // The seed signs the server's nonce; it is read here and never shown.
            Some(path) => options.nkey(std::fs::read_to_string(path)?.trim().to_owned()),
            None => options,
        };
        let options = match &self.nats_inbox_prefix {
            Some(prefix) => options.custom_inbox_prefix(prefix.clone()),
            None => options,
        };
        let options = match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(cert), Some(key)) => options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true),
            _ => options,
        };
        match &self.nats_creds {
            Some(path) => options.credentials_file(path).await,
            None => Ok(options),
        }
    }
}

/// `url` with any password or token in it replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{shown}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets_and_keep_the_rest() {
        assert_eq!(
            redact("nats://alice:s3cret@nats:4222"),
            "nats://alice:***@nats:4222"
        );
        assert_eq!(redact("tls://t0ken@nats:4222/x"), "tls://***@nats:4222/x");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[test]
    fn debug_hides_passwords_and_tokens() {
        let credentials = NatsCredentials {
            nats_user: Some("alice".into()),
            nats_password: Some("s3cret".into()),
            nats_token: Some("t0ken".into()),
            ..NatsCredentials::default()
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("alice"));
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }
}
