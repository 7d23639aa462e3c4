//! Shared set-up for the namespaced sandbox's tests: a backend over the crate's own helper
//! binary, a state directory per test, and small assertions.

#![allow(dead_code)]

pub mod https;

use std::path::{Path, PathBuf};
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
        let state = tempfile::tempdir().unwrap();
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(workspace.path().join("README.md"), "hello from the host\n").unwrap();
        std::fs::create_dir(workspace.path().join("src")).unwrap();
        std::fs::write(workspace.path().join("src/lib.rs"), "// lib\n").unwrap();
        let mut config = NamespacedConfig::new(helper(), state.path());
        config.limits = limits;
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
