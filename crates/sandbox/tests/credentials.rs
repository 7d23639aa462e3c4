//! Credentials: a secret the egress proxy adds as a header to HTTPS requests to its hosts, so
//! that the sandbox never holds it. The "outside" is an HTTPS server on the host's loopback
//! with a certificate from a CA of the test's own, which the proxy is told to trust; inside,
//! curl talks to it through the proxy as any program would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::https::echo_https;
use common::*;
use nightshift_sandbox::{
    CA_BUNDLE, Credential, EgressEvent, EgressVerdict, Namespaced, NamespacedConfig,
    NamespacedSession, NetworkPolicy, SandboxSession, SessionOptions,
};

const SECRET: &str = "s3cr3t-4b1d9e";

struct Setup {
    fixture: Fixture,
    session: NamespacedSession,
    events: tokio::sync::mpsc::UnboundedReceiver<EgressEvent>,
    _roots: tempfile::NamedTempFile,
}

/// A session that may reach `ports` on 127.0.0.1 and adds [`SECRET`] to requests to the
/// first one; the proxy trusts `ca` for upstream servers, and the host allows those loopback
/// ports.
async fn start(ports: &[u16], ca: &str) -> Setup {
    let allow_private = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    start_allowing(ports, ca, allow_private).await
}

async fn start_allowing(ports: &[u16], ca: &str, allow_private: Vec<String>) -> Setup {
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots.path(), ca).unwrap();
    let mut fixture = Fixture::new();
    let mut config = NamespacedConfig::new(helper(), fixture.state.path());
    config.upstream_roots = vec![roots.path().to_path_buf()];
    config.allow_private = allow_private;
    fixture.backend = Namespaced::new(config);
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(
                ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            )),
            egress_events: Some(tx),
            credentials: vec![Credential {
                name: "API_TOKEN".into(),
                hosts: vec![format!("127.0.0.1:{}", ports[0])],
                header: "Authorization".into(),
                value: format!("Bearer {SECRET}"),
            }],
            ..SessionOptions::default()
        })
        .await;
    Setup {
        fixture,
        session,
        events,
        _roots: roots,
    }
}

async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<EgressEvent>) -> EgressEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_proxy_adds_the_secret_and_the_sandbox_never_holds_it() {
    let (port, ca) = echo_https(true).await;
    let mut setup = start(&[port], &ca).await;
    let session = &setup.session;

    // Two requests over one connection; the sandbox's own Authorization header is replaced.
    let out = run(
        session,
        &format!(
            "curl --noproxy '' -sS --fail https://127.0.0.1:{port}/one https://127.0.0.1:{port}/two -H 'Authorization: Bearer forged'"
        ),
    )
    .await;
    assert_eq!(
        out.output
            .matches(&format!("authorization: Bearer {SECRET}"))
            .count(),
        2,
        "{}",
        out.output
    );
    assert!(!out.output.contains("forged"), "{}", out.output);
    let event = next_event(&mut setup.events).await;
    assert_eq!(
        (event.method.as_str(), &event.verdict),
        ("CONNECT", &EgressVerdict::Allowed)
    );
    assert_eq!(
        event.detail.as_deref(),
        Some("secret API_TOKEN added to 2 requests")
    );
    assert!(event.bytes_up > 0 && event.bytes_down > 0, "{event:?}");

    // Programs that read the system's bundle and know no variable trust the session CA too.
    let out = run(
        session,
        &format!(
            "env -u SSL_CERT_FILE -u CURL_CA_BUNDLE curl --noproxy '' -sS --fail https://127.0.0.1:{port}/plain && test -s {CA_BUNDLE} && echo bundle-ok"
        ),
    )
    .await;
    assert!(out.output.contains(SECRET), "{}", out.output);
    assert!(out.output.contains("bundle-ok"), "{}", out.output);
    let _ = next_event(&mut setup.events).await;

    // Nowhere in the sandbox: not its environment, files or processes.
    let out = run(
        session,
        &format!(
            "env | grep -c {SECRET}; grep -rls {SECRET} /run /tmp /workspace /etc/ssl /proc/1/environ /proc/self/environ; echo done"
        ),
    )
    .await;
    assert_eq!(out.output, "0\ndone\n");
    // Nor in the session's state directory on the host.
    let leaked = walk(setup.fixture.state.path())
        .into_iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| contains(&bytes, SECRET.as_bytes())))
        .collect::<Vec<_>>();
    assert!(leaked.is_empty(), "{leaked:?}");
    setup.session.close().await.unwrap();
    assert!(setup.fixture.state_is_empty());
}

#[tokio::test]
async fn a_decrypted_tunnel_carries_requests_for_its_own_host_only() {
    let (port, ca) = echo_https(true).await;
    let mut setup = start(&[port], &ca).await;
    let url = format!("https://127.0.0.1:{port}/x");
    let curl = "curl --noproxy '' -sS -o /dev/null -w '%{http_code}\\n'";
    let out = run(
        &setup.session,
        &format!(
            "{curl} -H 'Host: attacker.example' {url}; {curl} --request-target https://attacker.example/x {url}; {curl} -X TRACE {url}; curl --noproxy '' -sS {url}"
        ),
    )
    .await;
    // Another site behind the same server (by Host or absolute target) and TRACE are refused;
    // a plain request still gets the secret.
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[..3], ["421", "421", "405"], "{}", out.output);
    assert!(
        out.output
            .contains(&format!("authorization: Bearer {SECRET}"))
    );
    assert!(out.output.contains(&format!("host: 127.0.0.1:{port}")));
    for _ in 0..4 {
        next_event(&mut setup.events).await;
    }
    setup.session.close().await.unwrap();
}

#[tokio::test]
async fn an_unverifiable_server_never_gets_the_secret_and_the_client_hears_why() {
    // Self-signed: not from the CA the proxy trusts.
    let (port, ca) = echo_https(false).await;
    let mut setup = start(&[port], &ca).await;
    let out = run(
        &setup.session,
        &format!("curl --noproxy '' -sS https://127.0.0.1:{port}/x; echo; echo exit=$?"),
    )
    .await;
    assert!(
        out.output.contains("nightshift: TLS with 127.0.0.1"),
        "{}",
        out.output
    );
    assert!(!out.output.contains(SECRET), "{}", out.output);
    let event = next_event(&mut setup.events).await;
    assert_eq!(event.verdict, EgressVerdict::Failed);
    let detail = event.detail.unwrap();
    assert!(
        detail.starts_with("secret API_TOKEN not sent: TLS with 127.0.0.1"),
        "{detail}"
    );
    setup.session.close().await.unwrap();
}

#[tokio::test]
async fn a_credentials_private_host_is_refused_unless_the_host_allows_it() {
    let (port, ca) = echo_https(true).await;
    // The repository's allowlist and the secret's hosts name the loopback server; the host's
    // configuration does not.
    let mut setup = start_allowing(&[port], &ca, Vec::new()).await;
    let out = run(
        &setup.session,
        &format!("curl --noproxy '' -sS https://127.0.0.1:{port}/x 2>&1; echo exit=$?"),
    )
    .await;
    assert!(!out.output.contains(SECRET), "{}", out.output);
    assert!(!out.output.contains("GET /x"), "{}", out.output);
    assert!(out.output.contains("403"), "{}", out.output);
    let event = next_event(&mut setup.events).await;
    assert_eq!(event.verdict, EgressVerdict::Denied);
    let detail = event.detail.unwrap();
    assert!(
        detail.starts_with("127.0.0.1 is a loopback address"),
        "{detail}"
    );
    setup.session.close().await.unwrap();
}

#[tokio::test]
async fn hosts_without_a_credential_stay_opaque_tunnels() {
    let (with, ca) = echo_https(true).await;
    let (without, other_ca) = echo_https(true).await;
    let mut setup = start(&[with, without], &ca).await;
    // The second server's certificate comes from another CA, which the sandbox must verify
    // itself: the proxy does not decrypt that tunnel.
    let out = run(
        &setup.session,
        &format!(
            "printf '%s' '{other_ca}' > /tmp/other.pem; curl --noproxy '' -sS --fail --cacert /tmp/other.pem https://127.0.0.1:{without}/x"
        ),
    )
    .await;
    assert!(out.output.starts_with("GET /x HTTP/1.1"), "{}", out.output);
    assert!(!out.output.to_ascii_lowercase().contains("authorization"));
    let event = next_event(&mut setup.events).await;
    assert_eq!(event.verdict, EgressVerdict::Allowed);
    assert_eq!(event.detail, None);
    // Plain HTTP to the credential's host goes without it.
    run(
        &setup.session,
        &format!("curl --noproxy '' -sS --max-time 5 http://127.0.0.1:{with}/plain"),
    )
    .await;
    let event = next_event(&mut setup.events).await;
    assert_eq!(event.method, "GET");
    assert_eq!(
        event.detail.as_deref(),
        Some("secret API_TOKEN not added: secrets go over HTTPS only")
    );
    setup.session.close().await.unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => files.extend(walk(&path)),
            Ok(kind) if kind.is_file() => files.push(path),
            _ => {}
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn other_clients_trust_the_session_ca_without_being_told() {
    let (port, ca) = echo_https(true).await;
    let setup = start(&[port], &ca).await;
    let url = format!("https://127.0.0.1:{port}/from");
    // Each through the proxy variables, with its own TLS stack and trust settings (Node's own
    // `https` module reads no proxy variable at all: npm and the like do).
    let clients = [
        ("wget", format!("wget -q -O - {url}")),
        (
            "python3",
            format!(
                "python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(\"{url}\").read().decode())'"
            ),
        ),
    ];
    let mut tried = Vec::new();
    for (name, command) in clients {
        if !std::path::Path::new("/usr/bin").join(name).exists() {
            println!("{name}: not installed on this host, not tried");
            continue;
        }
        let out = run(&setup.session, &format!("NO_PROXY= no_proxy= {command}")).await;
        println!("{name}: {}", out.output);
        tried.push((name, out.output));
    }
    for (name, output) in &tried {
        assert!(
            output.contains(&format!("authorization: Bearer {SECRET}")),
            "{name}: {output}"
        );
    }
    setup.session.close().await.unwrap();
}
