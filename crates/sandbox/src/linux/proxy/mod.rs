//! The egress proxy: the only way out of a sandbox in allowlist mode. It runs on the host,
//! listens on a unix socket that is bound into the sandbox (where the init relays
//! 127.0.0.1:3128 to it), and serves HTTP CONNECT (for HTTPS, opaque to us) and plain HTTP
//! requests to allowlisted hosts. Everything else gets a 403 that says why. Every request, let
//! through or not, is reported as an [`EgressEvent`] for the task's log.
//!
//! The allowlist is the repository's, so it is not trusted: private destinations need the
//! host's configuration too (see [`destination`]), and a session's connections are bounded in
//! number, in the time their request takes to arrive and in how long they may sit idle, so
//! that a hostile session cannot make the host hold unbounded resources.
//!
//! One request per client connection: a plain-HTTP request is sent upstream with
//! `Connection: close`, so a client cannot reuse the connection for another host.
//!
//! A tunnel to a host that a session credential is for is not opaque: see [`intercept`].

mod allowlist;
mod destination;
pub(crate) mod intercept;
mod serve;
mod streams;
pub(crate) mod trust;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::config::EgressLimits;
use super::proxy_bridge::BRIDGE_PORT;
pub(crate) use allowlist::Allowlist;
use intercept::Interception;

/// How long the accept loop waits after an error (out of descriptors, say) before accepting
/// again: the pending connection stays queued, and the loop must neither spin nor end.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a request was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressVerdict {
    /// Allowlisted and connected.
    Allowed,
    /// Not allowlisted, a private destination the host does not allow, or over the session's
    /// connection limit.
    Denied,
    /// Allowlisted, but the upstream connection failed.
    Failed,
}

/// One request through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    /// Empty (with port 0 and method `-`) for a connection refused before its request was
    /// read.
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

/// What a session's proxy lets through, and its bounds.
pub(crate) struct ProxyPolicy {
    /// The session's allowlist (the repository's word).
    pub allowlist: Allowlist,
    /// Private destinations the host's configuration allows.
    pub allow_private: Allowlist,
    pub limits: EgressLimits,
}

/// A running proxy; dropping or stopping it ends it.
pub(crate) struct EgressProxy {
    task: JoinHandle<()>,
    route: crate::EgressRoute,
}

impl EgressProxy {
    /// Listens at `path` (owned by `owner` when given, so that the sandbox user may connect),
    /// adding the credentials of `interception` to requests to their hosts.
    pub fn start(
        path: &Path,
        policy: ProxyPolicy,
        interception: Option<Arc<Interception>>,
        events: Option<UnboundedSender<EgressEvent>>,
        owner: Option<u32>,
    ) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(path, Some(id), Some(id))?;
        }
        let route = crate::EgressRoute {
            socket: path.to_path_buf(),
            ca_pem: interception.as_ref().map(|i| i.ca_pem().to_string()),
        };
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(policy),
            interception,
            events,
        ));
        Ok(EgressProxy { task, route })
    }

    /// How the host reaches it.
    pub fn route(&self) -> &crate::EgressRoute {
        &self.route
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

/// Serves each client on a task of its own, at most `limits.connections` at once. It ends
/// only when the proxy is stopped: an accept error is logged and waited out.
async fn accept_loop(
    listener: UnixListener,
    policy: Arc<ProxyPolicy>,
    interception: Option<Arc<Interception>>,
    events: Option<UnboundedSender<EgressEvent>>,
) {
    let slots = Arc::new(Semaphore::new(policy.limits.connections));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let event = refuse_over_limit(&client, policy.limits.connections);
            report(event, events.as_ref());
            continue;
        };
        let (policy, interception, events) = (policy.clone(), interception.clone(), events.clone());
        tokio::spawn(async move {
            let event = serve::serve(client, &policy, interception.as_deref()).await;
            drop(slot);
            if let Some(event) = event {
                report(event, events.as_ref());
            }
        });
    }
}

/// Answers a connection over the limit with a 503, without waiting on it: the answer is
/// small enough for the socket's buffer, and the connection is closed right after.
fn refuse_over_limit(client: &UnixStream, limit: usize) -> EgressEvent {
    let reason = format!(
        "{limit} connections through this session's proxy are open already (its limit); \
         close some or make fewer at once"
    );
    let body = format!("nightshift: {reason}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.try_write(response.as_bytes());
    EgressEvent {
        host: String::new(),
        port: 0,
        method: "-".into(),
        verdict: EgressVerdict::Denied,
        bytes_up: 0,
        bytes_down: 0,
        detail: Some(reason),
    }
}

fn report(event: EgressEvent, events: Option<&UnboundedSender<EgressEvent>>) {
    tracing::info!(
        host = %event.host, port = event.port, method = %event.method,
        verdict = ?event.verdict, up = event.bytes_up, down = event.bytes_down,
        detail = event.detail.as_deref().unwrap_or(""),
        "sandbox egress"
    );
    if let Some(events) = events {
        let _ = events.send(event);
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
