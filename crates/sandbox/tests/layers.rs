//! Layers: a session's changes kept as a directory, stacked read-only under later sessions'
//! workspaces (how a cached setup is reused).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nightshift_sandbox::{SandboxSession, SessionOptions, SessionSpec};

#[tokio::test]
async fn a_kept_session_becomes_a_layer_of_later_sessions() {
    let fixture = Fixture::new();
    let setup = fixture.start().await;
    let out = run(
        &setup,
        "mkdir -p deps && echo installed > deps/lib.txt && rm README.md",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    let layer = fixture.state.path().join("layer-1");
    setup.close_keeping_changes(&layer).await.unwrap();
    assert!(layer.join("deps/lib.txt").exists());
    // The host's working copy never changed.
    assert!(fixture.workspace.path().join("README.md").exists());
    assert!(!fixture.workspace.path().join("deps").exists());

    let spec = SessionSpec {
        layers: vec![layer.clone()],
        ..fixture.spec()
    };
    let task = fixture
        .backend
        .start_with(spec, SessionOptions::default())
        .await
        .unwrap();
    let out = run(&task, "cat deps/lib.txt; test -e README.md && echo readme || echo no-readme; echo mine > deps/own.txt").await;
    assert!(out.status.success(), "{}", out.output);
    assert!(out.output.contains("installed"), "{}", out.output);
    assert!(
        out.output.contains("no-readme"),
        "the layer's deletion shows: {}",
        out.output
    );
    task.close().await.unwrap();
    // The layer is read-only for the session that used it.
    assert!(!layer.join("deps/own.txt").exists());
    assert!(layer.join("deps/lib.txt").exists());
}
