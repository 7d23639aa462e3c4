//! Task start with a warm setup cache against an empty setup, and a cold start against a warm
//! one for a 30-second setup.
//!
//! "Start" is from the task's `claimed` event to its first `model_request` event: checkout,
//! configuration, the setup layer (built or mounted), the sandbox session, and maintenance
//! (none here). Real git repositories, the real namespaced sandbox (this binary is also its
//! helper), a SQLite store, and a scripted model on loopback that answers `finish` at once.
//!
//! With `RUST_CRATE=1`, also a real Rust crate: dependencies from crates.io (this reaches
//! crates.io through the egress proxy), `cargo fetch` as setup with the host's rustup bound in,
//! the layer's size, and a warm start over it.
//!
//! Run: `cargo bench -p nightshift-runner --bench setup_cache` (RUNS=N, SETUP_SECONDS=S,
//! RUST_CRATE=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nightshift_model::ProviderConfig;
use nightshift_protocol::{Event, TaskState};
use nightshift_runner::{Runner, RunnerConfig, TaskRequest};
use nightshift_sandbox::{HelperCommand, Namespaced, NamespacedConfig};
use nightshift_scripted_model::{Script, ScriptedModel};
use nightshift_store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn repo(setup: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "bench\n").unwrap();
    std::fs::write(dir.path().join("package-lock.json"), "{}\n").unwrap();
    std::fs::write(dir.path().join(".gitignore"), "deps/\n").unwrap();
    if let Some(setup) = setup {
        std::fs::write(
            dir.path().join(".nightshift.toml"),
            format!("[environment]\nsetup = \"{setup}\"\n"),
        )
        .unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    dir
}

/// Milliseconds from `claimed` to the first `model_request` of the task.
async fn start_ms(runner: &Runner, store: &Arc<dyn Store>, repo: &Path) -> f64 {
    let task = runner
        .submit(TaskRequest::new(repo, "bench", "openai:bench"))
        .await
        .unwrap();
    let done = runner
        .run_task(task.id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{:?}", done.error);
    let events = store.events(task.id, 0, 1000).await.unwrap();
    let claimed = events
        .iter()
        .find(|e| matches!(e.event, Event::Claimed { .. }))
        .unwrap()
        .at;
    let asked = events
        .iter()
        .find(|e| matches!(e.event, Event::ModelRequest { .. }))
        .unwrap()
        .at;
    asked.duration_since(claimed).as_secs_f64() * 1000.0
}

/// A crate with a few common dependencies from crates.io, its lockfile made here.
fn rust_crate(cargo: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"bench-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\nserde_json = \"1\"\n\
         regex = \"1\"\nanyhow = \"1\"\nclap = { version = \"4\", features = [\"derive\"] }\n",
    )
    .unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::write(
        root.join(".nightshift.toml"),
        "[environment]\nsetup = \"cargo fetch --locked\"\n",
    )
    .unwrap();
    let locked = Command::new(cargo)
        .arg("generate-lockfile")
        .current_dir(root)
        .status()
        .unwrap();
    assert!(locked.success());
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "init"]);
    dir
}

/// Bytes under `path`, links not followed.
fn size_of(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn summary(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<40} n={:<3} median {:>9.1} ms  p10 {:>9.1}  p90 {:>9.1}  min {:>9.1}  max {:>9.1}",
        samples.len(),
        at(0.5),
        at(0.1),
        at(0.9),
        samples[0],
        samples[samples.len() - 1]
    );
}

fn main() {
    // The sandbox re-executes this binary as its helper.
    nightshift_sandbox::run_helper_if_requested();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let setup_seconds: u64 = std::env::var("SETUP_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let script = Script::from_json(
            &serde_json::json!({"steps": [{"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}], "repeat": 1000}}]}).to_string(),
        )
        .unwrap();
        let server = ScriptedModel::start(script).await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
        let helper = HelperCommand::current_exe().unwrap();
        let mut sandbox_config = NamespacedConfig::new(helper, home.path().join("sandbox"));
        // The host's rustup, as `[sandbox] binds` would give it (for RUST_CRATE).
        let user_home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        let cargo = user_home.join(".cargo/bin/cargo");
        let rust_crate_wanted = std::env::var("RUST_CRATE").is_ok_and(|v| v == "1");
        if rust_crate_wanted {
            sandbox_config.ro_binds = vec![user_home.join(".rustup"), user_home.join(".cargo/bin")];
            sandbox_config.path_prefix = vec![user_home.join(".cargo/bin")];
            sandbox_config.env = vec![
                ("RUSTUP_HOME".into(), user_home.join(".rustup").display().to_string()),
                ("CARGO_HOME".into(), "/home/agent/.cargo".into()),
            ];
        }
        let sandbox = Arc::new(Namespaced::new(sandbox_config));
        let mut config = RunnerConfig::new(home.path().join("work"), "bench".into());
        config.layers_dir = Some(home.path().join("layers"));
        let providers = ProviderConfig { openai_base_url: Some(server.base_url()), ..ProviderConfig::default() };
        let runner = Runner::new(store.clone(), sandbox, providers, config);

        let empty = repo(None);
        let slow = repo(Some(&format!("sleep {setup_seconds}; mkdir -p deps; echo ready > deps/marker")));
        // Warm up the sandbox (a spare helper is kept after the second session).
        for _ in 0..2 {
            start_ms(&runner, &store, empty.path()).await;
        }
        let mut no_setup = Vec::new();
        for _ in 0..runs {
            no_setup.push(start_ms(&runner, &store, empty.path()).await);
        }
        let cold = start_ms(&runner, &store, slow.path()).await;
        let mut warm = Vec::new();
        for _ in 0..runs {
            warm.push(start_ms(&runner, &store, slow.path()).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("setup_cache: claimed -> first model request; namespaced sandbox; {setup_seconds} s setup script");
        summary("no setup configured", no_setup.clone());
        summary("setup, warm cache (layer mounted)", warm.clone());
        summary("setup, cold cache (setup runs)", vec![cold]);
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        println!("warm minus no setup, medians: {:.1} ms (goal: under 100 ms)", median(warm.clone()) - median(no_setup));
        println!("cold / warm, medians: {:.0}x", cold / median(warm));

        if rust_crate_wanted {
            let krate = rust_crate(&cargo);
            let before = size_of(&home.path().join("layers"));
            let cold = start_ms(&runner, &store, krate.path()).await;
            let layer_bytes = size_of(&home.path().join("layers")) - before;
            let mut warm = Vec::new();
            for _ in 0..runs {
                warm.push(start_ms(&runner, &store, krate.path()).await);
            }
            println!("rust crate (serde, serde_json, regex, anyhow, clap; `cargo fetch`):");
            summary("rust crate, cold (cargo fetch runs)", vec![cold]);
            summary("rust crate, warm (layer mounted)", warm.clone());
            println!("rust crate layer: {:.1} MiB", layer_bytes as f64 / (1 << 20) as f64);
        }
    });
}
