//! One client connection of the egress proxy: its request head (bounded in size and time), the
//! allowlist and destination checks, and the exchange with the upstream (ended when idle).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use super::allowlist::Via;
use super::destination;
use super::intercept::Interception;
use super::streams::Counted;
use super::{EgressEvent, EgressVerdict, ProxyPolicy};

/// The most a request head may take.
const MAX_HEAD: usize = 64 * 1024;

/// How long resolving and connecting to the upstream may take together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the proxy waits to hand a refusal to a client that does not read it.
const RESPOND_TIMEOUT: Duration = Duration::from_secs(5);

/// What reading a request head came to.
enum Head {
    /// The head (through the blank line), and any bytes read past it.
    Complete(String, Vec<u8>),
    TooLarge,
    /// The client closed (or broke) its connection first.
    Closed,
}

async fn read_head(client: &mut UnixStream) -> Head {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        // The blank line may straddle two reads.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(from + end + 4);
            return Head::Complete(String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        if buf.len() > MAX_HEAD {
            return Head::TooLarge;
        }
    }
}

pub(super) fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

async fn respond(client: &mut UnixStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(RESPOND_TIMEOUT, async {
        let _ = client.write_all(response.as_bytes()).await;
        let _ = client.shutdown().await;
    })
    .await;
}

/// Serves one client connection; the event to report, unless no request was read.
pub(super) async fn serve(
    mut client: UnixStream,
    policy: &ProxyPolicy,
    interception: Option<&Interception>,
) -> Option<EgressEvent> {
    let limits = &policy.limits;
    let (head, mut rest) =
        match tokio::time::timeout(limits.head_timeout, read_head(&mut client)).await {
            Ok(Head::Complete(head, rest)) => (head, rest),
            Ok(Head::Closed) => return None,
            Ok(Head::TooLarge) => {
                let body = format!(
                    "nightshift egress proxy: the request head is over {} KiB\n",
                    MAX_HEAD / 1024
                );
                respond(&mut client, "431 Request Header Fields Too Large", &body).await;
                return None;
            }
            Err(_) => {
                tracing::debug!("egress proxy: a request head did not arrive in time");
                let body = format!(
                    "nightshift egress proxy: the request head did not arrive within {} s\n",
                    limits.head_timeout.as_secs_f32()
                );
                respond(&mut client, "408 Request Timeout", &body).await;
                return None;
            }
        };
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (
        parts.next()?,
        parts.next()?,
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let via = if connect { Via::Tunnel } else { Via::PlainHttp };
    let parsed = if connect {
        split_host_port(target, 443).map(|(h, p)| (h, p, String::new()))
    } else {
        target.strip_prefix("http://").and_then(|rest| {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            split_host_port(authority, 80).map(|(h, p)| (h, p, path))
        })
    };
    let Some((host, port, path)) = parsed else {
        respond(
            &mut client,
            "400 Bad Request",
            "nightshift egress proxy: only CONNECT and absolute http:// requests are served\n",
        )
        .await;
        return None;
    };
    let mut event = EgressEvent {
        host: host.clone(),
        port,
        method: method.to_string(),
        verdict: EgressVerdict::Denied,
        bytes_up: 0,
        bytes_down: 0,
        detail: None,
    };
    if policy.allowlist.allows(&host, port, via).is_none() {
        let mut body = format!(
            "nightshift: {host}:{port} is not allowlisted for this task's network access\n"
        );
        let mut detail = "not allowlisted".to_string();
        if policy.allowlist.names(&host) {
            let default = via.default_port();
            body.push_str(&format!(
                "The allowlist names {host} without port {port}: a pattern without a port allows \
                 only {default} for this kind of request; `{host}:{port}` would allow this one.\n"
            ));
            detail.push_str(&format!(" (only other ports of {host} are)"));
        }
        respond(&mut client, "403 Forbidden", &body).await;
        event.detail = Some(detail);
        return Some(event);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let resolved = tokio::time::timeout_at(
        deadline,
        destination::resolve(&host, port, via, &policy.allow_private),
    )
    .await
    .unwrap_or_else(|_| Err(format!("resolving {host} took too long")));
    let addrs = match resolved {
        Ok(addrs) => addrs,
        Err(reason) => {
            respond(
                &mut client,
                "403 Forbidden",
                &format!("nightshift: {reason}\n"),
            )
            .await;
            event.detail = Some(reason);
            return Some(event);
        }
    };
    // Only the addresses just checked: no second lookup that could answer differently.
    let connected = tokio::time::timeout_at(deadline, TcpStream::connect(&addrs[..]))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    let upstream = match connected {
        Ok(stream) => {
            // Requests and answers are relayed as they come: Nagle's algorithm would hold a
            // small write back for the peer's delayed acknowledgement (~40 ms).
            let _ = stream.set_nodelay(true);
            Counted::new(stream)
        }
        Err(e) => {
            respond(
                &mut client,
                "502 Bad Gateway",
                &format!("nightshift: cannot connect to {host}:{port}: {e}\n"),
            )
            .await;
            event.verdict = EgressVerdict::Failed;
            event.detail = Some(e.to_string());
            return Some(event);
        }
    };
    event.verdict = EgressVerdict::Allowed;
    let credentials = interception
        .map(|i| i.for_host(&host, port, via))
        .unwrap_or_default();
    let names = credentials
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if let (true, false, Some(interception)) = (connect, credentials.is_empty(), interception) {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return Some(event);
        }
        let early = std::mem::take(&mut rest);
        let tunnel = match interception
            .serve(
                (client, early),
                upstream,
                (&host, port),
                &credentials,
                limits,
            )
            .await
        {
            Ok(tunnel) => {
                let plural = if tunnel.requests == 1 { "" } else { "s" };
                event.detail = Some(format!(
                    "secret {names} added to {} request{plural}",
                    tunnel.requests
                ));
                tunnel
            }
            Err((reason, tunnel)) => {
                event.verdict = EgressVerdict::Failed;
                event.detail = Some(format!("secret {names} not sent: {reason}"));
                tunnel
            }
        };
        event.bytes_up = tunnel.bytes_up;
        event.bytes_down = tunnel.bytes_down;
        return Some(event);
    }
    if !credentials.is_empty() {
        event.detail = Some(format!(
            "secret {names} not added: secrets go over HTTPS only"
        ));
    }
    let (up, down, activity) = (
        upstream.written.clone(),
        upstream.read.clone(),
        upstream.activity.clone(),
    );
    let mut upstream = upstream;
    let exchange = async {
        if connect {
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
        } else {
            let mut forwarded = format!("{method} {path} {version}\r\n");
            for line in lines.filter(|l| !l.is_empty()) {
                let name = line
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
                ) {
                    forwarded.push_str(line);
                    forwarded.push_str("\r\n");
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            upstream.write_all(forwarded.as_bytes()).await?;
        }
        if !rest.is_empty() {
            upstream.write_all(&rest).await?;
        }
        // Both ways until both sides are done (each end's EOF is passed on as a shutdown).
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    let idle = limits.idle_timeout;
    tokio::select! {
        _ = exchange => {}
        () = activity.idle(idle) => {
            let note = format!("closed after {} s with no bytes either way", idle.as_secs_f32());
            event.detail = Some(match event.detail.take() {
                Some(detail) => format!("{detail}; {note}"),
                None => note,
            });
        }
    }
    event.bytes_up = up.load(std::sync::atomic::Ordering::Relaxed);
    event.bytes_down = down.load(std::sync::atomic::Ordering::Relaxed);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_with_defaults() {
        assert_eq!(split_host_port("a.b:8443", 443), Some(("a.b".into(), 8443)));
        assert_eq!(split_host_port("a.b", 80), Some(("a.b".into(), 80)));
        assert_eq!(split_host_port("[::1]:99", 80), Some(("::1".into(), 99)));
        assert_eq!(
            split_host_port("[::ffff:127.0.0.1]", 443),
            Some(("::ffff:127.0.0.1".into(), 443))
        );
        assert_eq!(split_host_port("a.b:x", 80), None);
    }
}
