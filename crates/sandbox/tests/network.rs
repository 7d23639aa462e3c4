//! Network policy: nothing by default; in allowlist mode, HTTP and HTTPS (CONNECT) through the
//! host's egress proxy to allowlisted hosts only, each request reported. Loopback only: the
//! "outside" is a small HTTP server on the host's 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{
    EgressEvent, EgressVerdict, NetworkPolicy, SandboxSession, SessionOptions,
};

/// A one-response-per-connection HTTP server on the host's loopback.
fn serve_http(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
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
    let fixture = Fixture::new();
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
