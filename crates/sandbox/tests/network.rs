//! Network policy: nothing by default; in allowlist mode, HTTP and HTTPS (CONNECT) through the
//! host's egress proxy to allowlisted hosts only, each request reported. Loopback only: the
//! "outside" is a small HTTP server on the host's 127.0.0.1, which is a private destination:
//! the repository's allowlist alone does not reach it, the host's `allow_private` must too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{
    EgressEvent, EgressVerdict, NamespacedSession, NetworkPolicy, SandboxSession, SessionOptions,
};

/// What the proxy answers `request` (one request line, then a blank line), sent from inside.
async fn ask(session: &NamespacedSession, request: &str) -> String {
    let command = format!(
        "exec 3<>/dev/tcp/127.0.0.1/3128; printf '{request}\\r\\n\\r\\n' >&3; timeout 10 cat <&3"
    );
    run(session, &command).await.output
}

#[tokio::test]
async fn no_network_by_default() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run(&session, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; (exec 3<>/dev/tcp/127.0.0.1/3128) 2>&1 || echo no-proxy").await;
    assert_eq!(out.output.lines().next(), Some("lo"));
    assert!(out.output.contains("no-proxy"));
    assert_eq!(
        out.output
            .lines()
            .filter(|l| !l.contains("refused") && *l != "no-proxy")
            .count(),
        1,
        "{}",
        out.output
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn the_allowlist_lets_listed_hosts_through_and_reports_every_request() {
    let allowed = serve_http("hello through the proxy");
    let unlisted = serve_http("must not be seen");
    let fixture = Fixture::with_config(|config| {
        config.allow_private = vec![format!("127.0.0.1:{allowed}")];
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(vec![
                format!("127.0.0.1:{allowed}"),
                "*.crates.io".into(),
            ])),
            egress_events: Some(tx),
            ..SessionOptions::default()
        })
        .await;
    // Plain HTTP, as curl or pip would send it to a proxy.
    let out = run(
        &session,
        &format!(
            "exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{allowed}/x HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3; cat <&3"
        ),
    )
    .await;
    assert!(
        out.output.contains("hello through the proxy"),
        "{}",
        out.output
    );
    // A tunnel (what HTTPS uses), to the same server.
    let out = run(
        &session,
        &format!(
            "exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT 127.0.0.1:{allowed} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
        ),
    )
    .await;
    assert!(
        out.output.contains("200 Connection Established"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("hello through the proxy"),
        "{}",
        out.output
    );
    // Not allowlisted: a port of the same host, and a name.
    for target in [
        format!("127.0.0.1:{unlisted}"),
        "example.com:443".to_string(),
    ] {
        let out = run(
            &session,
            &format!("exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT {target} HTTP/1.1\\r\\n\\r\\n' >&3; cat <&3"),
        )
        .await;
        assert!(out.output.contains("403 Forbidden"), "{}", out.output);
        assert!(out.output.contains("is not allowlisted"), "{}", out.output);
        assert!(!out.output.contains("must not be seen"));
    }
    // Programs find the proxy through the usual variables.
    let out = run(&session, "echo $HTTPS_PROXY $http_proxy $NO_PROXY").await;
    assert_eq!(
        out.output,
        "http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.1,::1\n"
    );
    // Direct connections still go nowhere.
    let out = run(
        &session,
        &format!("(exec 3<>/dev/tcp/127.0.0.1/{allowed}) 2>&1 || echo direct-refused"),
    )
    .await;
    assert!(out.output.contains("direct-refused"));

    let mut events = Vec::new();
    while events.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(event)) => events.push(event),
            _ => break,
        }
    }
    assert_eq!(events.len(), 4, "{events:?}");
    let get = &events[0];
    assert_eq!(
        (get.method.as_str(), get.port, &get.verdict),
        ("GET", allowed, &EgressVerdict::Allowed)
    );
    assert!(get.bytes_up > 0 && get.bytes_down > 0);
    assert_eq!(events[1].method, "CONNECT");
    assert_eq!(events[1].verdict, EgressVerdict::Allowed);
    assert_eq!(events[2].verdict, EgressVerdict::Denied);
    assert_eq!(
        (events[3].host.as_str(), &events[3].verdict),
        ("example.com", &EgressVerdict::Denied)
    );
    session.close().await.unwrap();
    assert!(fixture.state_is_empty());
}

#[tokio::test]
async fn a_repository_allowlist_does_not_open_private_destinations() {
    let (port, accepted) = serve_counting(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        "must not be seen",
    );
    // The allowlist (the repository's word) names the host's loopback server every way it can;
    // the host's configuration allows nothing private.
    let targets = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
        format!("[::127.0.0.1]:{port}"),
        format!("[64:ff9b::7f00:1]:{port}"),
        format!("0.0.0.0:{port}"),
    ];
    let fixture = Fixture::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(targets.to_vec())),
            egress_events: Some(tx),
            ..SessionOptions::default()
        })
        .await;
    for target in &targets {
        let out = ask(&session, &format!("CONNECT {target} HTTP/1.1")).await;
        assert!(out.starts_with("HTTP/1.1 403 Forbidden"), "{target}: {out}");
        assert!(out.contains("allow_private"), "{target}: {out}");
    }
    let out = ask(&session, &format!("GET http://127.0.0.1:{port}/ HTTP/1.1")).await;
    assert!(out.starts_with("HTTP/1.1 403 Forbidden"), "{out}");
    assert!(out.contains("127.0.0.1 is a loopback address"), "{out}");

    let events = egress_events(&mut rx, targets.len() + 1).await;
    let detail = |i: usize| events[i].detail.clone().unwrap_or_default();
    assert!(events.iter().all(|e| e.verdict == EgressVerdict::Denied));
    assert!(
        detail(0).starts_with("127.0.0.1 is a loopback address"),
        "{}",
        detail(0)
    );
    assert!(
        detail(1).starts_with("localhost resolves to ") && detail(1).contains("loopback"),
        "{}",
        detail(1)
    );
    assert!(
        detail(3).starts_with("::ffff:127.0.0.1 (that is 127.0.0.1) is a loopback address"),
        "{}",
        detail(3)
    );
    assert!(
        detail(7).contains("an unspecified address"),
        "{}",
        detail(7)
    );
    assert!(events.iter().all(|e| {
        e.detail
            .as_deref()
            .is_some_and(|d| d.contains("allow_private"))
    }));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the server was reached");
    session.close().await.unwrap();
}

#[tokio::test]
async fn the_hosts_configuration_opens_the_private_destinations_it_names() {
    let (by_address, hits) =
        serve_counting(TcpListener::bind("127.0.0.1:0").unwrap(), "by address");
    let (by_name, _) = serve_counting(TcpListener::bind("127.0.0.1:0").unwrap(), "by name");
    let fixture = Fixture::with_config(|config| {
        config.allow_private = vec![
            format!("127.0.0.1:{by_address}"),
            format!("localhost:{by_name}"),
        ];
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(vec![
                format!("127.0.0.1:{by_address}"),
                format!("[::ffff:127.0.0.1]:{by_address}"),
                format!("localhost:{by_name}"),
                format!("127.0.0.1:{by_name}"),
            ])),
            egress_events: Some(tx),
            ..SessionOptions::default()
        })
        .await;
    let out = ask(
        &session,
        &format!("GET http://127.0.0.1:{by_address}/ HTTP/1.1"),
    )
    .await;
    assert!(out.contains("by address"), "{out}");
    // The address allowed, in another spelling.
    let out = ask(
        &session,
        &format!("GET http://[::ffff:127.0.0.1]:{by_address}/ HTTP/1.1"),
    )
    .await;
    assert!(out.contains("by address"), "{out}");
    let out = ask(
        &session,
        &format!("CONNECT localhost:{by_name} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.1"),
    )
    .await;
    assert!(out.contains("200 Connection Established"), "{out}");
    assert!(out.contains("by name"), "{out}");
    // Allowed by name is not allowed by address: the host named localhost, not 127.0.0.1.
    let out = ask(&session, &format!("CONNECT 127.0.0.1:{by_name} HTTP/1.1")).await;
    assert!(out.starts_with("HTTP/1.1 403 Forbidden"), "{out}");
    let verdicts: Vec<_> = egress_events(&mut rx, 4)
        .await
        .into_iter()
        .map(|e| e.verdict)
        .collect();
    assert_eq!(
        verdicts,
        [
            EgressVerdict::Allowed,
            EgressVerdict::Allowed,
            EgressVerdict::Allowed,
            EgressVerdict::Denied
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_host_without_a_port_reaches_only_its_usual_port() {
    let (port, accepted) = serve_counting(TcpListener::bind("127.0.0.1:0").unwrap(), "no");
    // A real server on 8080 when the port is free here; the refusal comes first either way.
    let on_8080 = TcpListener::bind("127.0.0.1:8080")
        .ok()
        .map(|listener| serve_counting(listener, "no").1);
    let fixture = Fixture::with_config(|config| {
        config.allow_private = vec![format!("127.0.0.1:{port}"), "127.0.0.1:8080".into()];
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EgressEvent>();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(vec!["127.0.0.1".into()])),
            egress_events: Some(tx),
            ..SessionOptions::default()
        })
        .await;
    for request in [
        "CONNECT 127.0.0.1:8080 HTTP/1.1".to_string(),
        "GET http://127.0.0.1:8080/ HTTP/1.1".to_string(),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1"),
        format!("GET http://127.0.0.1:{port}/ HTTP/1.1"),
    ] {
        let out = ask(&session, &request).await;
        assert!(
            out.starts_with("HTTP/1.1 403 Forbidden"),
            "{request}: {out}"
        );
        assert!(out.contains("is not allowlisted"), "{out}");
        assert!(
            out.contains("a pattern without a port allows only"),
            "{out}"
        );
    }
    for event in egress_events(&mut rx, 4).await {
        assert_eq!(event.verdict, EgressVerdict::Denied);
        assert_eq!(
            event.detail.as_deref(),
            Some("not allowlisted (only other ports of 127.0.0.1 are)")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    if let Some(accepted) = on_8080 {
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }
    session.close().await.unwrap();
}
