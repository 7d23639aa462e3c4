//! The way from the host's MCP client to a session's egress proxy: a listener on the host's
//! loopback that passes each connection on to the proxy's Unix socket, so that an HTTP client
//! (which speaks to proxies over TCP) reaches a remote MCP server under the session's allowlist
//! and with its credentials, as the sandbox's own requests do.
//!
//! Every process of the host can connect to a loopback port, so each connection must first
//! prove it is ours: its request head carries `Proxy-Authorization` with a random token, which
//! is checked and removed before the head goes on. A connection without it is answered 407 and
//! never reaches the proxy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The most a request head may take.
const MAX_HEAD: usize = 64 * 1024;

/// How long a client may take to send its request head (ours sends it at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections relayed at once (after their token was checked); more wait. The client
/// keeps a few: streamable HTTP makes a request at a time and perhaps holds an event stream.
const MAX_CONNECTIONS: usize = 32;

/// The most connections whose request head is still being read; more are closed at once. Only
/// another process of the host (any may connect to loopback) makes that many.
const MAX_UNPROVEN: usize = 64;

/// The user name the client presents with the token.
pub(super) const USER: &str = "nightshift";

pub(super) struct Relay {
    /// `http://127.0.0.1:PORT`, the proxy URL for the client.
    pub url: String,
    /// The password the client presents, as user [`USER`].
    pub token: String,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Listens on a free loopback port, passing connections on to the proxy at `socket`.
    pub async fn start(socket: PathBuf) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let token = random_token();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{token}"))
        );
        let task = tokio::spawn(async move {
            // Connections go with the relay: aborting this task drops the set, which aborts them.
            let mut connections = JoinSet::new();
            let unproven = Arc::new(Semaphore::new(MAX_UNPROVEN));
            let relayed = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: wait it out rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Too many connections that have not shown the token yet: a flood from
                // another process, closed at once rather than let it hold up ours.
                let Ok(unproven) = unproven.clone().try_acquire_owned() else {
                    continue;
                };
                let (socket, expected) = (socket.clone(), expected.clone());
                let relayed = relayed.clone();
                connections.spawn(async move {
                    let _ = pass_on(client, &socket, &expected, unproven, relayed).await;
                });
            }
        });
        Ok(Relay { url, token, task })
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `client`'s request head (holding one of the `unproven` permits meanwhile) and, when
/// it carries the token, passes the connection on to the proxy (holding a `relayed` one).
async fn pass_on(
    mut client: TcpStream,
    socket: &std::path::Path,
    expected: &str,
    unproven: OwnedSemaphorePermit,
    relayed: Arc<Semaphore>,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await;
    drop(unproven);
    let Ok(Some((head, rest))) = head else {
        return Ok(());
    };
    let Some(head) = without_authorization(&head, expected) else {
        let body = "nightshift: this relay serves the task's own MCP client only\n";
        let response = format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    };
    let Ok(_relayed) = relayed.acquire_owned().await else {
        return Ok(());
    };
    let mut proxy = UnixStream::connect(socket).await?;
    proxy.write_all(head.as_bytes()).await?;
    proxy.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut proxy).await?;
    Ok(())
}

/// The request head (through its blank line) and what came after it; `None` when the client
/// closed first or the head is too large.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(from + end + 4);
            return Some((String::from_utf8(buf).ok()?, rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The head without its `Proxy-Authorization` line, if that line is exactly `expected`.
fn without_authorization(head: &str, expected: &str) -> Option<String> {
    let mut kept = Vec::new();
    let mut authorized = false;
    for line in head.split("\r\n") {
        match line.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("proxy-authorization") => {
                authorized = value.trim() == expected;
                if !authorized {
                    return None;
                }
            }
            _ => kept.push(line),
        }
    }
    authorized.then(|| kept.join("\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_authorization_passes_and_it_is_removed() {
        let head = "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nProxy-Authorization: Basic abc\r\n\r\n";
        assert_eq!(
            without_authorization(head, "Basic abc").as_deref(),
            Some("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
        );
        assert_eq!(without_authorization(head, "Basic xyz"), None);
        let bare = "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n";
        assert_eq!(without_authorization(bare, "Basic abc"), None);
        // A second header may not smuggle a request past the first.
        let twice = "GET http://a.example/ HTTP/1.1\r\nproxy-authorization: Basic abc\r\nProxy-Authorization: Basic no\r\n\r\n";
        assert_eq!(without_authorization(twice, "Basic abc"), None);
    }

    #[tokio::test]
    async fn a_connection_without_the_token_never_reaches_the_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let proxy = tokio::net::UnixListener::bind(&socket).unwrap();
        let relay = Relay::start(socket).await.unwrap();
        let address = relay.url.trim_start_matches("http://").to_string();

        let mut stranger = TcpStream::connect(&address).await.unwrap();
        stranger
            .write_all(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stranger.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");

        let mut ours = TcpStream::connect(&address).await.unwrap();
        let authorization =
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{}", relay.token));
        ours.write_all(
            format!(
                "CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic {authorization}\r\n\r\nhello"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // Only ours arrives, without its token.
        let (mut accepted, _) = proxy.accept().await.unwrap();
        let mut seen = vec![0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = accepted.read(&mut seen).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&seen[..n]);
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "CONNECT a.example:443 HTTP/1.1\r\n\r\nhello"
        );
    }

    #[tokio::test]
    async fn a_flood_of_connections_without_the_token_is_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let _proxy = tokio::net::UnixListener::bind(&socket).unwrap();
        let relay = Relay::start(socket).await.unwrap();
        let address = relay.url.trim_start_matches("http://").to_string();
        // Each holds one of the slots for unproven connections, sending nothing.
        let mut idle = Vec::new();
        for _ in 0..MAX_UNPROVEN {
            idle.push(TcpStream::connect(&address).await.unwrap());
        }
        // The relay takes them in order; the next one finds the slots full and is closed
        // without waiting for the head's timeout.
        let mut extra = TcpStream::connect(&address).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HEAD_TIMEOUT / 2, extra.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the extra connection was kept: {read:?}"
        );
        // Once the flood is gone, a connection is served again (answered, here without a token).
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut later = TcpStream::connect(&address).await.unwrap();
        later
            .write_all(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        later.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    }
}
