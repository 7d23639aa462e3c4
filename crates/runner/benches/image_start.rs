//! Task start on an image whose layers are warm, against the host base, with the same trivial
//! setup and with none.
//!
//! "Start" is, as in `setup_cache`, from the task's `claimed` event to its first
//! `model_request` event: checkout, configuration, the image resolved in the store (every
//! layer found there), the setup layer mounted, the sandbox session, and the agent's first
//! request to a scripted model on loopback that answers `finish` at once. The image is the
//! image tests' Debian bookworm minbase with git (mmdebstrap, cached under the target
//! directory), written here as an OCI layout and given as the task's own image (`oci:...`,
//! as `nightshift run --image` gives it: a repository may name registry images only). Its
//! configuration's `User` is `1000:1000`, so the agent's session runs as that image user.
//! Before the measured tasks, one task per repository pulls the image and builds its setup
//! layer, and two more warm the sandbox up. Each task's events are also split into the steps
//! between them, to show where the time goes.
//!
//! A session on an image needs host root (its files belong to shifted ids): without it the
//! image cases say they are skipped.
//!
//! Run: `cargo bench -p nightshift-runner --bench image_start` (RUNS=N).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../image/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use nightshift_model::ProviderConfig;
use nightshift_protocol::{Event, TaskState};
use nightshift_runner::{ImageSettings, Runner, RunnerConfig, TaskRequest};
use nightshift_sandbox::{HelperCommand, Namespaced, NamespacedConfig};
use nightshift_scripted_model::{Script, ScriptedModel};
use nightshift_store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The steps of a start, each named by the event that ends it.
const STEPS: &[&str] = &[
    "claimed",
    "checked_out",
    "environment_loaded",
    "image_ready",
    "setup_cache",
    "sandbox_started",
    "model_request",
];

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

/// A repository whose `.nightshift.toml` has these `[environment]` lines, if any.
fn repo(environment: &[String]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "bench\n").unwrap();
    if !environment.is_empty() {
        std::fs::write(
            dir.path().join(".nightshift.toml"),
            format!("[environment]\n{}\n", environment.join("\n")),
        )
        .unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    dir
}

/// One task's start: milliseconds from `claimed` to the first `model_request`, the same from
/// `queued` (the submission), and the milliseconds of each of [`STEPS`] (from the step before
/// it that happened, the first from `queued`; 0 when absent).
struct Start {
    total: f64,
    from_submit: f64,
    steps: Vec<f64>,
}

async fn start(runner: &Runner, store: &Arc<dyn Store>, repo: &Path, image: Option<&str>) -> Start {
    let mut request = TaskRequest::new(repo, "bench", "openai:bench");
    request.image = image.map(str::to_string);
    let task = runner.submit(request).await.unwrap();
    let done = runner
        .run_task(task.id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{:?}", done.error);
    let events = store.events(task.id, 0, 1000).await.unwrap();
    let at = |kind: &str| events.iter().find(|e| e.event.kind() == kind).map(|e| e.at);
    let claimed = events
        .iter()
        .find(|e| matches!(e.event, Event::Claimed { .. }))
        .unwrap()
        .at;
    let ms =
        |from: jiff::Timestamp, to: jiff::Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
    let queued = at("queued").unwrap();
    let mut before = queued;
    let mut steps = Vec::new();
    for step in STEPS {
        match at(step) {
            Some(when) => {
                steps.push(ms(before, when));
                before = when;
            }
            None => steps.push(0.0),
        }
    }
    Start {
        total: ms(claimed, at("model_request").unwrap()),
        from_submit: ms(queued, at("model_request").unwrap()),
        steps,
    }
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples
}

fn at(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, starts: &[Start]) -> f64 {
    let samples = sorted(starts.iter().map(|s| s.total).collect());
    println!(
        "{name:<36} n={:<3} median {:>7.1} ms  p10 {:>7.1}  p90 {:>7.1}  min {:>7.1}  max {:>7.1}",
        samples.len(),
        at(&samples, 0.5),
        at(&samples, 0.1),
        at(&samples, 0.9),
        samples[0],
        samples[samples.len() - 1]
    );
    let steps: Vec<String> = STEPS
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let median = at(&sorted(starts.iter().map(|s| s.steps[i]).collect()), 0.5);
            format!("{step} {median:.0}")
        })
        .collect();
    let from_submit = sorted(starts.iter().map(|s| s.from_submit).collect());
    println!(
        "{:<36} from submit: median {:.1} ms (p10 {:.1}, p90 {:.1}); step medians (ms): {}",
        "",
        at(&from_submit, 0.5),
        at(&from_submit, 0.1),
        at(&from_submit, 0.9),
        steps.join(", ")
    );
    at(&samples, 0.5)
}

fn main() {
    // The sandbox re-executes this binary as its helper.
    nightshift_sandbox::run_helper_if_requested();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let root = support::is_root();
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let script = Script::from_json(
            &serde_json::json!({"steps": [{"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}], "repeat": 10000}}]}).to_string(),
        )
        .unwrap();
        let server = ScriptedModel::start(script).await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
        let helper = HelperCommand::current_exe().unwrap();
        let sandbox = Arc::new(Namespaced::new(NamespacedConfig::new(helper, home.path().join("sandbox"))));
        let mut config = RunnerConfig::new(home.path().join("work"), "bench".into());
        config.layers_dir = Some(home.path().join("layers"));
        config.images = Some(ImageSettings {
            dir: home.path().join("images"),
            owner: if root {
                nightshift_image::Owner::Shift(nightshift_sandbox::ROOT_HOST_ID)
            } else {
                nightshift_image::Owner::Caller
            },
            plain_http: Vec::new(),
            allow_private: Vec::new(),
            logins: Default::default(),
            budget: u64::MAX,
        });
        let providers = ProviderConfig { openai_base_url: Some(server.base_url()), ..ProviderConfig::default() };
        let runner = Runner::new(store.clone(), sandbox, providers, config);

        // As root, setup gets a writable system (on the host base as on an image); otherwise
        // only the home directory is its to write.
        let setup = if root { "echo ready > /etc/ready" } else { "echo ready > $HOME/ready" };
        let setup_line = format!("setup = \"{setup}\"");
        let host_empty = repo(&[]);
        let host_setup = repo(std::slice::from_ref(&setup_line));
        let images = root.then(|| {
            let (layer, _) = support::debian_with_git(&["jq"]).expect("the Debian image (mmdebstrap)");
            let layout = home.path().join("layout");
            support::write_layout(&layout, "v1", &[layer], &[IMAGE_PATH]);
            // A local image is the machine's user's to name (a repository may name only
            // registry images): the task's own `image`, as `nightshift run --image` gives it.
            let image = format!("oci:{}:v1", layout.display());
            (image, repo(&[]), repo(std::slice::from_ref(&setup_line)))
        });

        // Warm-ups: the sandbox's spare helper, the setup layer on the host base, and on the
        // image the pull into the store and the setup layer over it.
        for _ in 0..2 {
            start(&runner, &store, host_empty.path(), None).await;
        }
        start(&runner, &store, host_setup.path(), None).await;
        if let Some((image, image_empty, image_setup)) = &images {
            let pulled = start(&runner, &store, image_empty.path(), Some(image)).await;
            let built = start(&runner, &store, image_setup.path(), Some(image)).await;
            println!(
                "image pulled into the store (first task): {:.0} ms; setup layer built over it: {:.0} ms",
                pulled.total, built.total
            );
        }

        // Interleaved, so that a noisy neighbour weighs on every case alike.
        let cases = if images.is_some() { 4 } else { 2 };
        let mut results: Vec<Vec<Start>> = (0..cases).map(|_| Vec::new()).collect();
        for _ in 0..runs {
            results[0].push(start(&runner, &store, host_empty.path(), None).await);
            results[1].push(start(&runner, &store, host_setup.path(), None).await);
            if let Some((image, image_empty, image_setup)) = &images {
                results[2].push(start(&runner, &store, image_empty.path(), Some(image)).await);
                results[3].push(start(&runner, &store, image_setup.path(), Some(image)).await);
            }
        }
        println!("image_start: claimed -> first model request; namespaced sandbox; setup `{setup}`");
        let host_none = summary("host base, no setup", &results[0]);
        let host_warm = summary("host base, setup, warm layer", &results[1]);
        println!("host base: warm setup minus no setup, medians: {:+.1} ms", host_warm - host_none);
        if images.is_some() {
            let image_none = summary("image, no setup, warm layers", &results[2]);
            let image_warm = summary("image, setup, warm layers", &results[3]);
            println!(
                "image, warm setup minus host base with no setup, medians: {:+.1} ms (goal: under 100 ms)",
                image_warm - host_none
            );
            println!("image, warm setup minus image with no setup, medians: {:+.1} ms", image_warm - image_none);
            println!("image minus host base, both with warm setup, medians: {:+.1} ms", image_warm - host_warm);
        } else {
            println!("image cases skipped: a session on an image needs host root (shifted ids)");
        }
    });
}
