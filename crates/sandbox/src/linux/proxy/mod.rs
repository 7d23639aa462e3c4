//! The egress proxy: the only way out of a sandbox in allowlist mode. It runs on the host,
//! listens on a unix socket that is bound into the sandbox (where the init relays
//! 127.0.0.1:3128 to it), and serves HTTP CONNECT (for HTTPS, opaque to us) and plain HTTP
//! requests to allowlisted hosts. Everything else gets a 403 that says why. Every request, let
//! through or not, is reported as an [`EgressEvent`] for the task's log.
//!
//! One request per client connection: a plain-HTTP request is sent upstream with
//! `Connection: close`, so a client cannot reuse the connection for another host.
//!
//! A tunnel to a host that a session credential is for is not opaque: see [`intercept`].

pub(crate) mod intercept;
mod streams;
pub(crate) mod trust;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::proxy_bridge::BRIDGE_PORT;
use intercept::Interception;

/// The most a request head may take.
const MAX_HEAD: usize = 64 * 1024;

/// Whether a request was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressVerdict {
    /// Allowlisted and connected.
    Allowed,
    /// Not allowlisted (or resolving to a loopback or link-local address).
    Denied,
    /// Allowlisted, but the upstream connection failed.
    Failed,
}

/// One request through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    pub host: String,
    pub port: u16,
    /// `CONNECT` for tunnels (HTTPS), the HTTP method otherwise.
    pub method: String,
    pub verdict: EgressVerdict,
    /// Bytes from the sandbox to the upstream, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why it was denied or failed.
    pub detail: Option<String>,
}

/// A running proxy; dropping or stopping it ends it.
pub(crate) struct EgressProxy {
    task: JoinHandle<()>,
}

impl EgressProxy {
    /// Listens at `path` (owned by `owner` when given, so that the sandbox user may connect),
    /// adding the credentials of `interception` to requests to their hosts.
    pub fn start(
        path: &Path,
        patterns: Vec<String>,
        interception: Option<Arc<Interception>>,
        events: Option<UnboundedSender<EgressEvent>>,
        owner: Option<u32>,
    ) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(path, Some(id), Some(id))?;
        }
        let allow = Arc::new(Allowlist::new(&patterns));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let allow = allow.clone();
                let events = events.clone();
                let interception = interception.clone();
                tokio::spawn(async move {
                    if let Some(event) = serve(client, &allow, interception.as_deref()).await {
                        tracing::info!(
                            host = %event.host, port = event.port, method = %event.method,
                            verdict = ?event.verdict, up = event.bytes_up, down = event.bytes_down,
                            "sandbox egress"
                        );
                        if let Some(events) = events {
                            let _ = events.send(event);
                        }
                    }
                });
            }
        });
        Ok(EgressProxy { task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Variables that point programs at the proxy inside the sandbox.
pub(crate) fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{BRIDGE_PORT}");
    let mut env: Vec<(String, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "npm_config_proxy",
        "npm_config_https_proxy",
        "PIP_PROXY",
        "CARGO_HTTP_PROXY",
        "YARN_HTTP_PROXY",
        "YARN_HTTPS_PROXY",
    ]
    .into_iter()
    .map(|k| (k.to_string(), url.clone()))
    .collect();
    for key in ["NO_PROXY", "no_proxy"] {
        env.push((key.into(), "localhost,127.0.0.1,::1".into()));
    }
    env
}

/// Host patterns: `example.com`, `*.example.com` (subdomains only), each optionally `:port`.
#[derive(Debug)]
pub(crate) struct Allowlist {
    rules: Vec<(String, Option<u16>)>,
}

impl Allowlist {
    pub fn new(patterns: &[String]) -> Self {
        let rules = patterns
            .iter()
            .map(|p| {
                let p = p.trim().to_ascii_lowercase();
                match p.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                        match port.parse() {
                            Ok(port) => (host.trim_matches(['[', ']']).to_string(), Some(port)),
                            Err(_) => (p.clone(), None),
                        }
                    }
                    _ => (p.trim_matches(['[', ']']).to_string(), None),
                }
            })
            .collect();
        Allowlist { rules }
    }

    /// The rule's host pattern if `host:port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> Option<&str> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().find_map(|(pattern, rule_port)| {
            if rule_port.is_some_and(|p| p != port) {
                return None;
            }
            let matched = match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
                }
                None => host == *pattern,
            };
            matched.then_some(pattern.as_str())
        })
    }
}

/// Reads a request head (through the blank line); returns it and any bytes read past it.
async fn read_head(client: &mut UnixStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
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
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Resolves an allowed host, refusing loopback and link-local answers unless the rule named
/// that address itself: a public name must not become a way into the host's own services.
async fn resolve(host: &str, port: u16, rule: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let literal = rule.parse::<IpAddr>().is_ok();
    let internal = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if !literal && addrs.iter().any(|a| internal(a.ip())) {
        return Err(format!(
            "{host} resolves to a loopback or link-local address"
        ));
    }
    Ok(addrs)
}

async fn serve(
    mut client: UnixStream,
    allow: &Allowlist,
    interception: Option<&Interception>,
) -> Option<EgressEvent> {
    let (head, mut rest) = read_head(&mut client).await?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (
        parts.next()?,
        parts.next()?,
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let connect = method.eq_ignore_ascii_case("CONNECT");
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
    let Some(rule) = allow.allows(&host, port) else {
        let body = format!(
            "nightshift: {host}:{port} is not allowlisted for this task's network access\n"
        );
        respond(&mut client, "403 Forbidden", &body).await;
        event.detail = Some("not allowlisted".into());
        return Some(event);
    };
    let addrs = match resolve(&host, port, rule).await {
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
    let mut upstream = match TcpStream::connect(&addrs[..]).await {
        Ok(stream) => {
            // Requests and answers are relayed as they come: Nagle's algorithm would hold a
            // small write back for the peer's delayed acknowledgement (~40 ms).
            let _ = stream.set_nodelay(true);
            stream
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
        .map(|i| i.for_host(&host, port))
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
            .serve((client, early), upstream, (&host, port), &credentials)
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
    let mut up = 0u64;
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return Some(event);
        }
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
        up += forwarded.len() as u64;
        if upstream.write_all(forwarded.as_bytes()).await.is_err() {
            return Some(event);
        }
    }
    if !rest.is_empty() {
        up += rest.len() as u64;
        if upstream.write_all(&rest).await.is_err() {
            return Some(event);
        }
    }
    let (sent, received) = relay(&mut client, &mut upstream).await;
    event.bytes_up = up + sent;
    event.bytes_down = received;
    Some(event)
}

/// Copies both ways until both sides are done, counting bytes.
async fn relay(client: &mut UnixStream, upstream: &mut TcpStream) -> (u64, u64) {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let up = copy_then_shutdown(&mut client_read, &mut upstream_write);
    let down = copy_then_shutdown(&mut upstream_read, &mut client_write);
    tokio::join!(up, down)
}

async fn copy_then_shutdown(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> u64 {
    let copied = tokio::io::copy(from, to).await.unwrap_or(0);
    let _ = to.shutdown().await;
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_hosts_subdomains_and_ports() {
        let allow = Allowlist::new(&[
            "crates.io".into(),
            "*.crates.io".into(),
            "example.com:8080".into(),
            "127.0.0.1:3000".into(),
        ]);
        assert!(allow.allows("crates.io", 443).is_some());
        assert!(allow.allows("static.crates.io", 443).is_some());
        assert!(allow.allows("STATIC.Crates.IO.", 80).is_some());
        assert!(allow.allows("evilcrates.io", 443).is_none());
        assert!(allow.allows("crates.io.evil.com", 443).is_none());
        assert!(allow.allows("example.com", 8080).is_some());
        assert!(allow.allows("example.com", 443).is_none());
        assert!(allow.allows("127.0.0.1", 3000).is_some());
        assert!(allow.allows("127.0.0.1", 3001).is_none());
    }

    #[test]
    fn authorities_split_with_defaults() {
        assert_eq!(split_host_port("a.b:8443", 443), Some(("a.b".into(), 8443)));
        assert_eq!(split_host_port("a.b", 80), Some(("a.b".into(), 80)));
        assert_eq!(split_host_port("[::1]:99", 80), Some(("::1".into(), 99)));
        assert_eq!(split_host_port("a.b:x", 80), None);
    }
}
