//! A lean HTTP/1.1 client for the load: requests written as bytes prepared once, one
//! keep-alive connection each, responses parsed only as far as status and body.
//!
//! reqwest spent 33-95 µs of the machine's two cores per request, as much as the server
//! it measured; this spends a few (the benchmark prints the load generator's CPU per
//! request beside the server's).

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response accepted (the API's pages are far smaller).
const MAX_RESPONSE: usize = 8 << 20;

/// One keep-alive connection to the coordinator.
pub struct Connection {
    address: String,
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` that belong to the response after the current one.
    pending: usize,
}

/// A response: its status and body.
pub struct Response<'a> {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as received.
    pub body: &'a [u8],
}

impl Connection {
    /// Connects to `base` (`http://host:port`).
    pub async fn open(base: &str) -> Result<Self> {
        let address = base
            .strip_prefix("http://")
            .with_context(|| format!("{base} is not an http:// URL"))?
            .trim_end_matches('/')
            .to_owned();
        let stream = connect(&address).await?;
        Ok(Self {
            address,
            stream,
            buffer: Vec::with_capacity(16 << 10),
            pending: 0,
        })
    }

    /// Replaces a broken connection with a new one to the same server, as a client would.
    pub async fn reopen(&mut self) -> Result<()> {
        self.stream = connect(&self.address).await?;
        self.buffer.clear();
        self.pending = 0;
        Ok(())
    }

    /// Sends one request (whole, as prepared by [`request`]) and reads its response.
    pub async fn send(&mut self, request: &[u8]) -> Result<Response<'_>> {
        self.stream.write_all(request).await?;
        // What followed the previous response stays at the front.
        self.buffer.drain(..self.buffer.len() - self.pending);
        let (status, head_len, body_len) = loop {
            if let Some(head) = parse_head(&self.buffer)? {
                break head;
            }
            self.fill().await?;
        };
        let total = head_len + body_len;
        if total > MAX_RESPONSE {
            bail!("response of {total} bytes");
        }
        while self.buffer.len() < total {
            self.fill().await?;
        }
        self.pending = self.buffer.len() - total;
        Ok(Response {
            status,
            body: &self.buffer[head_len..total],
        })
    }

    async fn fill(&mut self) -> Result<()> {
        let start = self.buffer.len();
        self.buffer.resize(start + (16 << 10), 0);
        let read = self.stream.read(&mut self.buffer[start..]).await;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.buffer.truncate(start);
                return Err(e.into());
            }
        };
        self.buffer.truncate(start + n);
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

async fn connect(address: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A request as bytes: `method path`, the admin token, and a JSON body if any.
pub fn request(method: &str, path: &str, token: &str, json: Option<&str>) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n");
    match json {
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => out.push_str("\r\n"),
    }
    out.into_bytes()
}

/// Status, head length and body length, once the head is complete in `buffer`.
fn parse_head(buffer: &[u8]) -> Result<Option<(u16, usize, usize)>> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() > 64 << 10 {
            bail!("no end of the response head in 64 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not read by the load generator");
        }
    }
    Ok(Some((status, end + 4, length.unwrap_or(0))))
}

/// The string value of `"field":"..."` in a JSON body, found without parsing it all.
pub fn string_field<'a>(body: &'a [u8], field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let start = body.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let len = body[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_status_and_lengths() {
        let response = b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_head(response).expect("valid"),
            Some((201, response.len() - 7, 7))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").expect("valid"), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn a_string_field_is_found() {
        let body = br#"{"id":"8fb44756","agent_name":"agent-1"}"#;
        assert_eq!(string_field(body, "id"), Some("8fb44756"));
        assert_eq!(string_field(body, "agent_name"), Some("agent-1"));
        assert_eq!(string_field(body, "status"), None);
    }
}
