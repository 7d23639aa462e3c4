//! The egress proxy's accept loop outlives an accept error: with the process out of file
//! descriptors (EMFILE), a connection waits in the listen queue, and is served once
//! descriptors are free again. A binary of its own, since the descriptor limit is the whole
//! process's: no other test may run while it is lowered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{NetworkPolicy, SandboxSession, SessionOptions};

#[tokio::test]
async fn the_proxy_keeps_accepting_after_running_out_of_descriptors() {
    let port = serve_http("served after all");
    let fixture = Fixture::with_config(|config| {
        config.allow_private = vec![format!("127.0.0.1:{port}")];
    });
    let session = fixture
        .start_with(SessionOptions {
            network: Some(NetworkPolicy::Allow(vec![format!("127.0.0.1:{port}")])),
            ..SessionOptions::default()
        })
        .await;
    // The request goes out a second into the command, while this process has no descriptor
    // to spare; two seconds later it has again.
    let command = format!(
        r"sleep 1; start=$(date +%s%N); exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n' >&3; timeout 20 cat <&3; echo; echo waited $((($(date +%s%N)-start)/1000000)) ms"
    );
    let request = run(&session, &command);
    tokio::pin!(request);
    let early = tokio::time::timeout(Duration::from_millis(300), &mut request).await;
    assert!(early.is_err(), "the command ended early");
    let limits =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    // The lowest free descriptor becomes the limit: no new one can be made.
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd() as u64;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        lowest_free,
        limits.1,
    )
    .unwrap();
    let starved = tokio::time::timeout(Duration::from_secs(2), &mut request).await;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        limits.0,
        limits.1,
    )
    .unwrap();
    assert!(
        starved.is_err(),
        "the command ended while descriptors were short"
    );
    let out = request.await;
    assert!(out.output.contains("served after all"), "{}", out.output);
    let waited: u64 = out
        .output
        .lines()
        .find_map(|l| l.strip_prefix("waited "))
        .and_then(|l| l.trim_end_matches(" ms").parse().ok())
        .unwrap();
    // It waited for descriptors (about a second), and then it was served.
    assert!(waited >= 500, "{}", out.output);
    session.close().await.unwrap();
}
