//! A remote MCP server (streamable HTTP, and the older HTTP+SSE, over HTTPS on loopback, written
//! with the official Python SDK) is reached through the task's egress proxy, which adds a
//! `proxy` secret's header that the sandbox, the model and the task's records never hold; a
//! server whose host the allowlist does not name does not start.
//!
//! Needs NIGHTSHIFT_TEST_MCP_PYTHON (see e2e_mcp_tools.rs); without it the test says so and does
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::mcp::*;
use common::*;
use serde_json::{Value, json};

/// A certificate for 127.0.0.1 as PEM files in `dir`, and the PEM of the CA that signed it.
fn loopback_certificate_files(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (cert, key, ca_pem) = common::loopback_certificate();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file, ca_pem)
}

/// The remote server, killed when dropped.
struct RemoteServer {
    child: std::process::Child,
    port: u16,
    header_log: PathBuf,
}

impl Drop for RemoteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server, with `mode` its transport (`sse`, or "" for streamable HTTP), and the PEM of
/// the CA that signed its certificate.
fn remote_server(python: &Path, dir: &Path, mode: &str) -> (RemoteServer, String) {
    use std::io::BufRead;
    let (cert, key, ca_pem) = loopback_certificate_files(dir);
    let header_log = dir.join("headers.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/remote_server.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args([&cert, &key, &header_log])
        .args((!mode.is_empty()).then_some(mode))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server's port");
    let server = RemoteServer {
        child,
        port,
        header_log,
    };
    (server, ca_pem)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_server_is_reached_through_the_proxy_which_adds_its_secret() {
    let Some((_, python)) = python() else {
        return;
    };
    const TOKEN: &str = "mcp-t0ken-5ecr3t-42";
    let (dir, legacy_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server, ca_pem) = remote_server(&python, dir.path(), "");
    let (legacy, legacy_ca_pem) = remote_server(&python, legacy_dir.path(), "sse");
    let (port, legacy_port) = (server.port, legacy.port);
    let repo = repo_with(&[(
        ".nightshift.toml",
        &format!(
            r#"[network]
agent = ["127.0.0.1:{port}", "127.0.0.1:{legacy_port}"]

[secrets]
API_TOKEN = {{ scope = "proxy", hosts = ["127.0.0.1:{port}", "127.0.0.1:{legacy_port}"] }}

[mcp.remote]
url = "https://127.0.0.1:{port}/mcp"

[mcp.legacy]
url = "https://127.0.0.1:{legacy_port}/sse"
transport = "sse"

[mcp.elsewhere]
url = "https://127.0.0.1:9/mcp"
startup_timeout = "5s"
"#
        ),
    )]);
    let (mut ns, model) = Nightshift::with_script(script(json!([
        call("remote__whoami", json!({})),
        call("legacy__whoami", json!({})),
        shell("echo \"agent sees: [$API_TOKEN]\""),
        finish("Asked the remote server."),
    ])))
    .await;
    ns.allow_loopback(&[port, legacy_port]);
    // The worker trusts the services' CAs as it would public ones.
    let roots = ns.home.path().join("service-ca.pem");
    std::fs::write(&roots, format!("{ca_pem}{legacy_ca_pem}")).unwrap();
    ns.env
        .push(("SSL_CERT_FILE".into(), path_str(&roots).to_string()));
    set_secret(&ns, "API_TOKEN", TOKEN);

    let (out, task) = ns.wait_task(repo.path(), "Ask who I am").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{task}\n{events:#?}");

    let ready: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "mcp_server_ready")
        .collect();
    assert_eq!(ready.len(), 2, "{ready:?}");
    assert_eq!(ready[0]["tools"], json!(["remote__whoami"]));
    assert_eq!(ready[1]["tools"], json!(["legacy__whoami"]));
    // Each server got the secret from the proxy, on every request; the result the model saw
    // is redacted.
    for (server, tool) in [(&server, "remote__whoami"), (&legacy, "legacy__whoami")] {
        let headers = std::fs::read_to_string(&server.header_log).unwrap();
        assert!(
            !headers.is_empty() && headers.lines().all(|h| h == format!("Bearer {TOKEN}")),
            "{tool}: {headers}"
        );
        let whoami = finished(&events, tool);
        assert_eq!(whoami.len(), 1);
        assert_eq!(whoami[0]["ok"], true, "{}", whoami[0]);
        assert_eq!(
            whoami[0]["output"], "you sent Bearer [secret:API_TOKEN]",
            "{}",
            whoami[0]
        );
    }
    assert!(
        shell_output(&events).contains("agent sees: []"),
        "{}",
        shell_output(&events)
    );
    // Every request went through the proxy, logged as the task's egress.
    let egress: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "egress" && (e["port"] == port || e["port"] == legacy_port))
        .collect();
    assert!(!egress.is_empty(), "{events:#?}");
    assert!(
        egress.iter().all(|e| e["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("secret API_TOKEN added")),
        "{egress:?}"
    );
    // A server whose host the allowlist does not name never starts, and says why.
    let warnings = warnings(&events);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`elsewhere` did not start")
                && w.contains("must be allowed in `[network] agent`")),
        "{warnings:?}"
    );
    let sent = serde_json::to_string(&model.requests()).unwrap();
    assert!(!sent.contains(TOKEN), "the model was sent the secret");
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}
