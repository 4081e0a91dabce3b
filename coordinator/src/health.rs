//! `aicp-coordinator --health-check`: asks a running coordinator's `GET /health` and exits
//! 0 or 1, for a container `HEALTHCHECK` in an image that has no shell or curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the coordinator is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Nothing answered on the port, or the connection failed.
    #[error("no coordinator answers at {addr}: {source}")]
    Unreachable {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// It answered with something other than 200.
    #[error("GET /health at {addr} answered {status_line:?}")]
    Unhealthy {
        /// Where.
        addr: SocketAddr,
        /// The response's first line.
        status_line: String,
    },
    /// It did not answer in time.
    #[error("GET /health at {addr} did not answer within {TIMEOUT:?}")]
    TimedOut {
        /// Where.
        addr: SocketAddr,
    },
}

/// `GET /health` of the coordinator listening on `listen` (on loopback when it listens on
/// every address).
pub async fn check(listen: SocketAddr) -> Result<(), HealthError> {
    let addr = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    tokio::time::timeout(TIMEOUT, get_health(addr))
        .await
        .unwrap_or(Err(HealthError::TimedOut { addr }))
}

async fn get_health(addr: SocketAddr) -> Result<(), HealthError> {
    let unreachable = |source| HealthError::Unreachable { addr, source };
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(unreachable)?;
    stream
        .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(unreachable)?;
    let status_line = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(HealthError::Unhealthy { addr, status_line })
    }
}
