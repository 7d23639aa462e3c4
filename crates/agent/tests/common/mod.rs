//! What the tool tests share: a workspace with a file just outside it, the unisolated sandbox
//! over it, and calls through the real dispatcher.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use nightshift_agent::tools::{self, ToolContext, ToolLimits, ToolOutput};
use nightshift_sandbox::{Sandbox, SandboxSession, SessionSpec, Unisolated};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A workspace at `<outer>/ws`, so that `<outer>/secret.txt` is just outside it.
pub struct Fixture {
    pub outer: TempDir,
    pub session: Box<dyn SandboxSession>,
    pub cancel: CancellationToken,
    pub limits: ToolLimits,
}

impl Fixture {
    pub async fn new() -> Self {
        Self::with_limits(ToolLimits::default()).await
    }

    pub async fn with_limits(limits: ToolLimits) -> Self {
        let outer = tempfile::tempdir().unwrap();
        let workspace = outer.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::write(outer.path().join("secret.txt"), "top secret\n").unwrap();
        let session = Unisolated.start(SessionSpec::new(workspace)).await.unwrap();
        Fixture {
            outer,
            session,
            cancel: CancellationToken::new(),
            limits,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.session.workspace().to_path_buf()
    }

    pub fn secret(&self) -> PathBuf {
        self.outer.path().join("secret.txt").canonicalize().unwrap()
    }

    pub fn write(&self, relative: &str, content: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.root().join(relative)).unwrap()
    }

    pub fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(self.root())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?} failed");
    }

    pub async fn call(&self, name: &str, arguments: Value) -> ToolOutput {
        self.call_raw(name, &arguments.to_string()).await
    }

    pub async fn call_raw(&self, name: &str, arguments: &str) -> ToolOutput {
        let ctx = ToolContext {
            session: self.session.as_ref(),
            cancel: &self.cancel,
            limits: &self.limits,
            mode: Default::default(),
        };
        tools::run(name, arguments, &ctx).await
    }
}

pub fn assert_ok(output: &ToolOutput) {
    assert!(output.ok, "expected success, got: {}", output.text);
}

pub fn assert_failed(output: &ToolOutput, needles: &[&str]) {
    assert!(!output.ok, "expected failure, got: {}", output.text);
    for needle in needles {
        assert!(
            output.text.contains(needle),
            "{needle:?} missing from: {}",
            output.text
        );
    }
}
