//! What can go wrong in an operator command, each with a message that says what to do.

use std::path::PathBuf;

use aicp_events::store::StoreError;
use aicp_projections::ProjectionError;

/// A failed command; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// NATS did not answer, a stream is missing, or a JetStream request failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A JetStream request failed.
    #[error("JetStream {op} failed: {reason}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// A read model could not be opened, read or written.
    #[error("read model {}: {source}", dir.display())]
    ReadModel {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        source: ProjectionError,
    },
    /// A read model directory is open in another process.
    #[error("read model {} is in use by another process (a running coordinator?): stop it first, one process at a time opens a read model", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The coordinator's REST API did not answer.
    #[error("cannot reach the coordinator at {url}: {reason} (start it, or pass --api)")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The coordinator refused a request.
    #[error("the coordinator answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Its error message, or the body.
        message: String,
    },
    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
}

impl OpsError {
    /// A JetStream failure during `op`.
    pub fn jetstream(op: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::JetStream {
            op,
            reason: reason.to_string(),
        }
    }

    /// A read-model failure in `dir`; a held lock is reported as [`OpsError::InUse`].
    pub fn read_model(dir: &std::path::Path, source: ProjectionError) -> Self {
        match &source {
            ProjectionError::InUse => Self::InUse {
                dir: dir.to_owned(),
            },
            _ => Self::ReadModel {
                dir: dir.to_owned(),
                source,
            },
        }
    }

    /// An I/O failure on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
