//! Shared set-up for the namespaced sandbox's tests: a backend over the crate's own helper
//! binary, a state directory per test, and small assertions.

#![allow(dead_code)]

pub mod https;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nightshift_sandbox::{
    ExecOutput, ExecRequest, HelperCommand, Limits, Namespaced, NamespacedConfig,
    NamespacedSession, SandboxSession, SessionOptions, SessionSpec,
};
use tokio_util::sync::CancellationToken;

pub fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_nightshift-sandbox-helper"))
}

pub struct Fixture {
    pub state: tempfile::TempDir,
    pub workspace: tempfile::TempDir,
    pub backend: Namespaced,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Fixture {
        Self::with_config(|config| config.limits = limits)
    }

    /// A fixture whose backend configuration `configure` adjusts (the proxy's host-only
    /// settings, say: `allow_private`, `egress`).
    pub fn with_config(configure: impl FnOnce(&mut NamespacedConfig)) -> Fixture {
        let state = tempfile::tempdir().unwrap();
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("README.md"), "hello from the host\n").unwrap();
        std::fs::create_dir(workspace.path().join("src")).unwrap();
        std::fs::write(workspace.path().join("src/lib.rs"), "// lib\n").unwrap();
        let mut config = NamespacedConfig::new(helper(), state.path());
        configure(&mut config);
        Fixture {
            state,
            workspace,
            backend: Namespaced::new(config),
        }
    }

    pub fn spec(&self) -> SessionSpec {
        SessionSpec::new(self.workspace.path())
    }

    pub async fn start(&self) -> NamespacedSession {
        self.backend
            .start_with(self.spec(), SessionOptions::default())
            .await
            .unwrap()
    }

    pub async fn start_with(&self, options: SessionOptions) -> NamespacedSession {
        self.backend.start_with(self.spec(), options).await.unwrap()
    }

    /// The state directory has nothing left of closed sessions.
    pub fn state_is_empty(&self) -> bool {
        std::fs::read_dir(self.state.path())
            .unwrap()
            .next()
            .is_none()
    }
}

pub async fn run(session: &NamespacedSession, command: &str) -> ExecOutput {
    let mut request = ExecRequest::new(command);
    request.timeout = Duration::from_secs(30);
    session
        .exec(request, &CancellationToken::new())
        .await
        .unwrap()
}

pub async fn run_for(session: &NamespacedSession, command: &str, timeout: Duration) -> ExecOutput {
    let mut request = ExecRequest::new(command);
    request.timeout = timeout;
    session
        .exec(request, &CancellationToken::new())
        .await
        .unwrap()
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

pub fn path_of(session: &NamespacedSession, relative: &str) -> PathBuf {
    session.workspace().join(relative)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A one-response-per-connection HTTP server on the host's loopback.
pub fn serve_http(body: &'static str) -> u16 {
    serve_counting(TcpListener::bind("127.0.0.1:0").unwrap(), body).0
}

/// [`serve_http`] on `listener`, with the number of connections it has accepted.
pub fn serve_counting(listener: TcpListener, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (port, accepted)
}

/// The next `count` egress events, each within 5 s.
pub async fn egress_events(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<nightshift_sandbox::EgressEvent>,
    count: usize,
) -> Vec<nightshift_sandbox::EgressEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(event)) => events.push(event),
            _ => break,
        }
    }
    assert_eq!(events.len(), count, "{events:?}");
    events
}
