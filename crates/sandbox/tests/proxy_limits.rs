//! The egress proxy's bounds: a client that sends its request head slowly is cut off without
//! holding up the others, connections over a session's limit are refused while those under it
//! keep working, and a tunnel that passes no bytes is closed. Real sessions, real servers on
//! the host's loopback (allowed by the host's `allow_private`), short limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{
    EgressEvent, EgressLimits, EgressVerdict, NamespacedSession, NetworkPolicy, SandboxSession,
    SessionOptions,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// A session whose allowlist and host configuration allow 127.0.0.1 at `ports`, under `limits`.
async fn start(
    ports: &[u16],
    limits: EgressLimits,
) -> (Fixture, NamespacedSession, UnboundedReceiver<EgressEvent>) {
    let allowed: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let fixture = Fixture::with_config(|config| {
        config.allow_private = allowed.clone();
        config.egress = limits;
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(allowed)),
            egress_events: Some(tx),
            ..SessionOptions::default()
        })
        .await;
    (fixture, session, rx)
}

/// Milliseconds since the epoch, in the sandbox's shell.
const NOW: &str = "$(($(date +%s%N)/1000000))";

#[tokio::test]
async fn a_slow_request_head_is_cut_off_and_does_not_hold_up_others() {
    let port = serve_http("quick answer");
    let (_fixture, session, _events) = start(
        &[port],
        EgressLimits {
            head_timeout: Duration::from_secs(1),
            ..EgressLimits::default()
        },
    )
    .await;
    // Two slow clients: one sends half a head and waits, one trickles a byte every 200 ms
    // (never finishing within the timeout). Meanwhile a good request is answered at once.
    let script = format!(
        r#"start={NOW}
exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n' >&3
exec 4<>/dev/tcp/127.0.0.1/3128; (for i in $(seq 30); do printf x; sleep 0.2; done) >&4 2>/dev/null &
exec 5<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n' >&5
timeout 10 cat <&5; echo; echo "good after $(({NOW}-start)) ms"
timeout 10 cat <&3; echo; echo "half cut after $(({NOW}-start)) ms"
timeout 10 cat <&4; echo; echo "trickle cut after $(({NOW}-start)) ms"
exec 6<>/dev/tcp/127.0.0.1/3128
{{ printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\r\nX-Big: '; head -c 70000 /dev/zero | tr '\0' a; }} >&6 2>/dev/null
timeout 10 cat <&6; echo
"#
    );
    let out = run(&session, &script).await;
    let ms = |label: &str| -> u64 {
        let line = out
            .output
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label}: {}", out.output));
        line.split_whitespace()
            .rev()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(out.output.contains("quick answer"), "{}", out.output);
    assert!(ms("good after") < 900, "{}", out.output);
    assert_eq!(
        out.output.matches("HTTP/1.1 408 Request Timeout").count(),
        2,
        "{}",
        out.output
    );
    assert!(out.output.contains("did not arrive within 1 s"));
    // A head over 64 KiB is refused however fast it comes.
    assert!(
        out.output
            .contains("HTTP/1.1 431 Request Header Fields Too Large"),
        "{}",
        out.output
    );
    // Cut at the timeout, not at cat's.
    assert!(ms("half cut after") < 4000, "{}", out.output);
    assert!(ms("trickle cut after") < 4000, "{}", out.output);
    session.close().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_while_the_others_keep_working() {
    let port = serve_http("still served");
    let (_fixture, session, mut events) = start(
        &[port],
        EgressLimits {
            connections: 3,
            ..EgressLimits::default()
        },
    )
    .await;
    // Three connections take the limit; a fourth is refused at once; the three still work;
    // once they close, there is room again.
    let get = format!(r"printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n'");
    let script = format!(
        r#"exec 3<>/dev/tcp/127.0.0.1/3128 4<>/dev/tcp/127.0.0.1/3128 5<>/dev/tcp/127.0.0.1/3128
sleep 0.5
exec 6<>/dev/tcp/127.0.0.1/3128; {get} >&6; timeout 10 cat <&6; echo; echo ---
for fd in 3 4 5; do {get} >&$fd; timeout 10 cat <&$fd; echo; echo ---; done
exec 3<&- 4<&- 5<&- 6<&-
sleep 0.5
exec 7<>/dev/tcp/127.0.0.1/3128; {get} >&7; timeout 10 cat <&7; echo
"#
    );
    let out = run(&session, &script).await;
    let parts: Vec<&str> = out.output.split("---\n").collect();
    assert_eq!(parts.len(), 5, "{}", out.output);
    assert!(
        parts[0].starts_with("HTTP/1.1 503 Service Unavailable"),
        "{}",
        out.output
    );
    assert!(
        parts[0].contains("3 connections through this session's proxy are open already"),
        "{}",
        out.output
    );
    for part in &parts[1..] {
        assert!(part.contains("still served"), "{}", out.output);
    }
    let events = egress_events(&mut events, 5).await;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.verdict == EgressVerdict::Denied)
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert!(
        refused[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("(its limit)")),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.verdict == EgressVerdict::Allowed)
            .count(),
        4
    );
    session.close().await.unwrap();
}

/// A server that echoes what it gets and never closes first.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // Held open until the proxy closes it.
                let _ = stream.read(&mut buf);
            });
        }
    });
    port
}

#[tokio::test]
async fn a_tunnel_is_closed_after_its_idle_time_and_not_while_bytes_flow() {
    let port = echo_server();
    let (_fixture, session, mut events) = start(
        &[port],
        EgressLimits {
            idle_timeout: Duration::from_secs(1),
            ..EgressLimits::default()
        },
    )
    .await;
    // Bytes every 400 ms for 2 s keep the tunnel open past its 1 s idle time; after them it
    // closes about a second later (long before cat's own timeout).
    let script = format!(
        r#"start={NOW}
exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n' >&3
(for i in 1 2 3 4 5; do printf x; sleep 0.4; done) >&3 &
timeout 15 cat <&3; echo; echo "closed after $(({NOW}-start)) ms"
"#
    );
    let out = run(&session, &script).await;
    assert!(
        out.output.contains("200 Connection Established"),
        "{}",
        out.output
    );
    assert!(out.output.contains("xxxxx"), "{}", out.output);
    let closed: u64 = out
        .output
        .lines()
        .find_map(|l| l.strip_prefix("closed after "))
        .and_then(|l| l.trim_end_matches(" ms").parse().ok())
        .unwrap();
    assert!((2000..10000).contains(&closed), "{}", out.output);
    let event = &egress_events(&mut events, 1).await[0];
    assert_eq!(event.verdict, EgressVerdict::Allowed);
    assert_eq!(
        event.detail.as_deref(),
        Some("closed after 1 s with no bytes either way")
    );
    assert_eq!((event.bytes_up, event.bytes_down), (5, 5));
    session.close().await.unwrap();
}
