//! What adding a credential costs an HTTPS request through the egress proxy: curl inside a
//! session against two identical HTTPS services on the host's loopback, one reached through an
//! opaque tunnel (curl verifies it itself), one through the proxy's interception (the proxy
//! ends TLS with the session CA, adds the header, and opens its own verified TLS upstream).
//! Times are curl's own `time_total` per transfer, so the sandbox's exec is not in them.
//!
//! `cargo bench -p nightshift-sandbox --bench proxy -- [--runs N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/common/https.rs"]
mod https;

use common::summary;

use std::time::Duration;

use nightshift_sandbox::{
    Credential, ExecRequest, HelperCommand, Namespaced, NamespacedConfig, NetworkPolicy,
    SandboxSession, SessionOptions, SessionSpec,
};
use tokio_util::sync::CancellationToken;

/// curl's `time_total` of each transfer, in milliseconds.
fn times(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|line| line.trim().parse::<f64>().ok())
        .map(|seconds| seconds * 1000.0)
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = common::runs(100);
    let (with, with_ca) = https::echo_https(true).await;
    let (without, without_ca) = https::echo_https(true).await;
    let state = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    // The system's bundle plus the service's CA, as the session's own bundle is the system's
    // plus the session CA: curl reads and parses the whole bundle on every run (~15 ms here),
    // so both cases pay that alike.
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    std::fs::write(
        workspace.path().join("opaque-ca.pem"),
        format!("{system}\n{without_ca}"),
    )
    .unwrap();
    let roots = state.path().join("upstream-ca.pem");
    std::fs::write(&roots, &with_ca).unwrap();
    let mut config = NamespacedConfig::new(
        HelperCommand::new(env!("CARGO_BIN_EXE_nightshift-sandbox-helper")),
        state.path().join("sessions"),
    );
    config.upstream_roots = vec![roots];
    // Both services are on the host's loopback: a private destination the host must allow.
    config.allow_private = vec![format!("127.0.0.1:{with}"), format!("127.0.0.1:{without}")];
    let backend = Namespaced::new(config);
    let session = backend
        .start_with(
            SessionSpec::new(workspace.path()),
            SessionOptions {
                network: Some(NetworkPolicy::Allow(vec![
                    format!("127.0.0.1:{with}"),
                    format!("127.0.0.1:{without}"),
                ])),
                credentials: vec![Credential {
                    name: "TOKEN".into(),
                    hosts: vec![format!("127.0.0.1:{with}")],
                    header: "Authorization".into(),
                    value: "Bearer bench".into(),
                }],
                ..SessionOptions::default()
            },
        )
        .await
        .unwrap();
    println!("runs per measurement: {runs}");
    let cancel = CancellationToken::new();
    let curl = "curl --noproxy '' -s -o /dev/null -w '%{time_total}\\n'";
    let cases = [
        (
            "opaque tunnel",
            format!("--cacert opaque-ca.pem https://127.0.0.1:{without}/"),
        ),
        ("credential added", format!("https://127.0.0.1:{with}/")),
    ];
    for (name, target) in &cases {
        // A new connection per request: TLS handshakes included (twice when intercepted).
        let mut request =
            ExecRequest::new(format!("for i in $(seq {runs}); do {curl} {target}; done"));
        request.timeout = Duration::from_secs(600);
        let out = session.exec(request, &cancel).await.unwrap();
        let samples = times(&out.output);
        assert_eq!(samples.len(), runs, "{}", out.output);
        summary(&format!("{name}: new connection + request"), samples);
        // One connection, many requests: what each further request costs.
        let urls = vec![target.rsplit(' ').next().unwrap_or_default(); runs].join(" ");
        let ca = if target.starts_with("--cacert") {
            "--cacert opaque-ca.pem"
        } else {
            ""
        };
        let mut request = ExecRequest::new(format!("{curl} {ca} {urls}"));
        request.timeout = Duration::from_secs(600);
        let out = session.exec(request, &cancel).await.unwrap();
        let samples = times(&out.output);
        assert_eq!(samples.len(), runs, "{}", out.output);
        summary(
            &format!("{name}: request on a kept connection"),
            samples[1..].to_vec(),
        );
    }
    session.close().await.unwrap();
}
