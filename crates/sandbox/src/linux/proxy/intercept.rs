//! Adding secrets on the way out. For a host that a [`Credential`] is for, the proxy ends the
//! sandbox's TLS itself, with a certificate for that host from a certificate authority made for
//! this session alone (trusted inside the sandbox and nowhere else; its key never leaves this
//! process), adds the header to every request, and sends each on over a TLS connection of its
//! own that verifies the real server against the host's trusted roots. Other hosts stay opaque
//! tunnels, and plain HTTP never carries a secret.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::allowlist::{Allowlist, Via};
use super::streams::{Counted, Prefixed};
use super::trust::{SessionCa, upstream_config};
use crate::Credential;
use crate::linux::config::EgressLimits;

/// What the proxy needs to add credentials: which, for which hosts, and the means to end and
/// re-originate TLS.
pub(crate) struct Interception {
    injections: Vec<Injection>,
    ca: SessionCa,
    /// Extra PEM files trusted for upstream servers, beside the host's roots.
    extra_roots: Vec<PathBuf>,
    upstream: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl Interception {
    /// Checks every credential's header and value, and makes the session CA.
    pub fn new(credentials: Vec<Credential>, extra_roots: Vec<PathBuf>) -> Result<Self, String> {
        let injections = credentials
            .into_iter()
            .map(Injection::new)
            .collect::<Result<_, _>>()?;
        Ok(Interception {
            injections,
            ca: SessionCa::new()?,
            extra_roots,
            upstream: OnceLock::new(),
        })
    }

    /// The session CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// The credentials for `host:port`, reached `via`.
    pub fn for_host(&self, host: &str, port: u16, via: Via) -> Vec<&Injection> {
        self.injections
            .iter()
            .filter(|injection| injection.hosts.allows(host, port, via).is_some())
            .collect()
    }

    fn upstream(&self) -> Result<Arc<ClientConfig>, String> {
        self.upstream
            .get_or_init(|| upstream_config(&self.extra_roots))
            .clone()
    }

    /// Serves one tunnel to `host` whose client has been told the connection is established:
    /// TLS with the sandbox under a session certificate, TLS to `upstream`, and HTTP/1.1 in
    /// between with the credentials added to every request. Each request head must arrive
    /// within the head timeout, counted from when the connection is ready for it (so a kept
    /// connection with no request for that long is closed, as a server's keep-alive timeout
    /// would), and the tunnel ends when no bytes go to or from the upstream for the idle
    /// timeout.
    pub async fn serve(
        &self,
        (client, early): (UnixStream, Vec<u8>),
        upstream: Counted<TcpStream>,
        (host, port): (&str, u16),
        credentials: &[&Injection],
        limits: &EgressLimits,
    ) -> Result<Tunnel, (String, Tunnel)> {
        let (up, down, activity) = (
            upstream.written.clone(),
            upstream.read.clone(),
            upstream.activity.clone(),
        );
        let requests = Arc::new(AtomicU32::new(0));
        let tunnel = || Tunnel {
            requests: requests.load(Ordering::Relaxed),
            bytes_up: up.load(Ordering::Relaxed),
            bytes_down: down.load(Ordering::Relaxed),
        };
        let served = self.intercept(
            (client, early),
            upstream,
            (host, port),
            credentials,
            (limits.head_timeout, requests.clone()),
        );
        let outcome = tokio::select! {
            outcome = served => outcome,
            () = activity.idle(limits.idle_timeout) => {
                if requests.load(Ordering::Relaxed) > 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "no bytes either way for {} s",
                        limits.idle_timeout.as_secs_f32()
                    ))
                }
            }
        };
        outcome
            .map(|()| tunnel())
            .map_err(|reason| (reason, tunnel()))
    }

    async fn intercept(
        &self,
        (client, early): (UnixStream, Vec<u8>),
        upstream: Counted<TcpStream>,
        (host, port): (&str, u16),
        credentials: &[&Injection],
        (head_timeout, requests): (Duration, Arc<AtomicU32>),
    ) -> Result<(), String> {
        // What the client sent right behind its CONNECT (its TLS hello, when it did not wait
        // for the answer) comes first.
        let client = Prefixed::new(early, client);
        let server = || {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            builder
        };
        let server_config = self.ca.server_config(host)?;
        let client = TlsAcceptor::from(server_config)
            .accept(client)
            .await
            .map_err(|e| format!("TLS with the sandbox's client: {e}"))?;
        let (sender, connection) = match self.connect(host, upstream).await {
            Ok(parts) => parts,
            Err(reason) => {
                // The client hears why, in HTTP over its own TLS, rather than a reset.
                let message = format!("nightshift: {reason}\n");
                let refuse = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let mut response = bad_gateway(&message);
                    response
                        .headers_mut()
                        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                    async move { Ok::<_, hyper::Error>(response) }
                });
                let _ = server()
                    .serve_connection(TokioIo::new(client), refuse)
                    .await;
                return Err(reason);
            }
        };
        let connection = tokio::spawn(connection);
        let headers = credentials
            .iter()
            .map(|injection| (injection.header.clone(), injection.value.clone()))
            .collect::<Vec<_>>();
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let counter = requests.clone();
        let host_name = host.to_string();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let (sender, headers, counter, host) = (
                sender.clone(),
                headers.clone(),
                counter.clone(),
                host_name.clone(),
            );
            async move {
                if let Err((status, why)) = pin_to_tunnel(&mut request, &host, port) {
                    return Ok(refusal(status, &format!("nightshift: {why}\n")));
                }
                request.headers_mut().remove(PROXY_AUTHORIZATION);
                for (name, value) in headers {
                    request.headers_mut().insert(name, value);
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let mut sender = sender.lock().await;
                let answer = match sender.ready().await {
                    Ok(()) => sender.send_request(request).await,
                    Err(e) => Err(e),
                };
                Ok::<_, hyper::Error>(match answer {
                    Ok(response) => response.map(BodyExt::boxed),
                    Err(e) => bad_gateway(&format!("nightshift: {host}: {e}\n")),
                })
            }
        });
        let served = server().serve_connection(TokioIo::new(client), service);
        tokio::pin!(served);
        let mut connection = connection;
        let served = tokio::select! {
            served = served.as_mut() => served,
            // The server closed its end (an idle keep-alive timeout, say): the client's
            // connection closes too, after the request in flight, so that it reconnects
            // rather than taking a 502 for its next request.
            _ = &mut connection => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        connection.abort();
        match served {
            Ok(()) => Ok(()),
            Err(e) if requests.load(Ordering::Relaxed) > 0 => {
                tracing::debug!(error = %e, host, "intercepted tunnel ended");
                Ok(())
            }
            Err(e) => Err(format!("HTTP from the sandbox's client: {e}")),
        }
    }
}

impl Interception {
    /// TLS to the real `host`, verified against the trusted roots, and HTTP/1.1 over it.
    async fn connect(
        &self,
        host: &str,
        upstream: Counted<TcpStream>,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Incoming>,
            hyper::client::conn::http1::Connection<
                TokioIo<tokio_rustls::client::TlsStream<Counted<TcpStream>>>,
                Incoming,
            >,
        ),
        String,
    > {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
        let upstream = TlsConnector::from(self.upstream()?)
            .connect(name, upstream)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        hyper::client::conn::http1::handshake(TokioIo::new(upstream))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))
    }
}

/// A credential as the proxy sends it: its hosts, and its header parsed once.
pub(crate) struct Injection {
    /// The secret's name, for the log.
    pub name: String,
    hosts: Allowlist,
    header: HeaderName,
    value: HeaderValue,
}

impl Injection {
    fn new(credential: Credential) -> Result<Injection, String> {
        let header = HeaderName::from_bytes(credential.header.as_bytes()).map_err(|_| {
            format!(
                "secret {}: `{}` is not a valid HTTP header name",
                credential.name, credential.header
            )
        })?;
        let mut value = HeaderValue::from_bytes(credential.value.as_bytes()).map_err(|_| {
            format!(
                "secret {}: its value cannot be sent in an HTTP header (it holds a line break or another control character)",
                credential.name
            )
        })?;
        value.set_sensitive(true);
        Ok(Injection {
            hosts: Allowlist::new(&credential.hosts),
            name: credential.name,
            header,
            value,
        })
    }
}

/// What went through an intercepted tunnel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tunnel {
    pub requests: u32,
    /// TLS bytes to and from the upstream server.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

fn bad_gateway(message: &str) -> Response<BoxBody<Bytes, hyper::Error>> {
    refusal(StatusCode::BAD_GATEWAY, message)
}

fn refusal(status: StatusCode, message: &str) -> Response<BoxBody<Bytes, hyper::Error>> {
    let body = Full::new(Bytes::from(message.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// Holds a request in a decrypted tunnel to the tunnel's own host, so that the secret added to
/// it reaches that host and nothing else behind the same server: the request target becomes
/// origin-form, its `Host` must name the tunnel's host (it is set when missing), and methods
/// that are not for the host's resources are refused.
fn pin_to_tunnel<B>(
    request: &mut Request<B>,
    host: &str,
    port: u16,
) -> Result<(), (StatusCode, String)> {
    use hyper::Method;
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not sent through a connection that carries a secret",
                request.method()
            ),
        ));
    }
    let misdirected = |other: &str| {
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this connection is for {host}:{port}; a request for {other} does not go through it"
            ),
        )
    };
    let uri = request.uri().clone();
    if let Some(authority) = uri.authority() {
        let default = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        if uri.scheme_str().is_some_and(|s| s != "https")
            || !same_host(authority.host(), host)
            || authority.port_u16().unwrap_or(default) != port
        {
            return Err(misdirected(authority.as_str()));
        }
        let origin = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| misdirected(authority.as_str()))?;
        *request.uri_mut() = origin;
    }
    let expected = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let expected = if port == 443 {
        expected
    } else {
        format!("{expected}:{port}")
    };
    let headers = request.headers_mut();
    let named = headers.get_all(hyper::header::HOST).iter().count();
    if let Some(given) = headers.get(hyper::header::HOST) {
        let given = given.to_str().unwrap_or_default().to_string();
        let parsed = given.parse::<hyper::http::uri::Authority>().ok();
        let matches = parsed
            .as_ref()
            .is_some_and(|a| same_host(a.host(), host) && a.port_u16().unwrap_or(443) == port);
        if named > 1 || !matches {
            return Err(misdirected(&given));
        }
    }
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_str(&expected).map_err(|_| misdirected(&expected))?,
    );
    Ok(())
}

fn same_host(given: &str, host: &str) -> bool {
    let given = given.trim_start_matches('[').trim_end_matches(']');
    given
        .trim_end_matches('.')
        .eq_ignore_ascii_case(host.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_their_hosts_only() {
        let credential = |name: &str, hosts: &[&str]| Credential {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            header: "Authorization".into(),
            value: "Bearer x".into(),
        };
        let interception = Interception::new(
            vec![
                credential("A", &["api.example.com"]),
                credential("B", &["*.example.com:443"]),
            ],
            Vec::new(),
        )
        .unwrap();
        let names = |host, port, via| {
            interception
                .for_host(host, port, via)
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("api.example.com", 443, Via::Tunnel), ["A", "B"]);
        // Without a port, a host's credential is for its usual port only.
        assert_eq!(
            names("api.example.com", 8443, Via::Tunnel),
            Vec::<String>::new()
        );
        assert_eq!(names("api.example.com", 80, Via::PlainHttp), ["A"]);
        assert_eq!(names("example.com", 443, Via::Tunnel), Vec::<String>::new());
        assert!(
            interception
                .ca_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }

    fn request(method: &str, target: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn requests_are_held_to_the_tunnels_host() {
        let pin = |mut r: Request<()>, host: &str, port: u16| {
            pin_to_tunnel(&mut r, host, port)
                .map(|()| {
                    (
                        r.uri().to_string(),
                        r.headers()["host"].to_str().unwrap().to_string(),
                    )
                })
                .map_err(|(status, _)| status.as_u16())
        };
        let ok = |target: &str, given: Option<&str>| {
            pin(request("GET", target, given), "api.example.com", 443)
        };
        assert_eq!(
            ok("/v1/me", Some("api.example.com")),
            Ok(("/v1/me".into(), "api.example.com".into()))
        );
        assert_eq!(
            ok("/v1/me", Some("API.example.com.:443")),
            Ok(("/v1/me".into(), "api.example.com".into()))
        );
        assert_eq!(
            ok("/v1/me", None),
            Ok(("/v1/me".into(), "api.example.com".into()))
        );
        assert_eq!(
            ok("https://api.example.com/v1/me?x=1", Some("api.example.com")),
            Ok(("/v1/me?x=1".into(), "api.example.com".into()))
        );
        // Another site behind the same front end, by Host or by an absolute target.
        assert_eq!(ok("/v1/me", Some("attacker.example")), Err(421));
        assert_eq!(ok("/v1/me", Some("api.example.com:8443")), Err(421));
        assert_eq!(
            ok("https://attacker.example/x", Some("api.example.com")),
            Err(421)
        );
        assert_eq!(ok("http://api.example.com/x", None), Err(421));
        for method in ["TRACE", "CONNECT"] {
            let target = if method == "CONNECT" {
                "api.example.com:443"
            } else {
                "/"
            };
            assert_eq!(
                pin(request(method, target, None), "api.example.com", 443),
                Err(405)
            );
        }
        // Ports other than 443, and addresses.
        assert_eq!(
            pin(
                request("GET", "/", Some("127.0.0.1:8443")),
                "127.0.0.1",
                8443
            ),
            Ok(("/".into(), "127.0.0.1:8443".into()))
        );
        assert_eq!(
            pin(request("GET", "/", None), "::1", 8443),
            Ok(("/".into(), "[::1]:8443".into()))
        );
    }

    #[test]
    fn bad_headers_and_values_are_refused_without_the_value() {
        let bad = |header: &str, value: &str| {
            Interception::new(
                vec![Credential {
                    name: "TOKEN".into(),
                    hosts: vec!["a.b".into()],
                    header: header.into(),
                    value: value.into(),
                }],
                Vec::new(),
            )
            .err()
            .unwrap()
        };
        assert!(bad("Bad Header", "x").contains("not a valid HTTP header name"));
        let error = bad("Authorization", "line\nbreak-s3cret");
        assert!(error.contains("control character"), "{error}");
        assert!(!error.contains("s3cret"));
    }
}
