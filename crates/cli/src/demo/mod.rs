//! `nightshift demo`: the offline first run. It makes a sample repository with a failing test
//! and runs the real pipeline on it (store, working copy, sandbox, agent loop, tools, commit,
//! branch), with one difference from a real task: the model's answers are a replay of recorded
//! answers, served by a scripted OpenAI-compatible server on loopback inside this process. The
//! tool calls really run; their outputs are real.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use nightshift_model::ProviderConfig;
use nightshift_runner::TaskRequest;
use nightshift_scripted_model::{Script, ScriptedModel};
use tokio_util::sync::CancellationToken;

use crate::args::DemoArgs;
use crate::backend::{Backend, Local};
use crate::commands::run::wait;
use crate::home::Home;
use crate::output::{Failure, exit_for};

const SCRIPT: &str = include_str!("script.json");
const FILES: [(&str, &str); 4] = [
    ("fizzbuzz.sh", include_str!("fizzbuzz.sh")),
    ("test.sh", include_str!("test.sh")),
    ("README.md", include_str!("README.md")),
    (".nightshift.toml", include_str!("nightshift.toml")),
];
const PROMPT: &str =
    "The test in test.sh fails: 15 should print FizzBuzz. Find the bug and fix it.";

pub async fn run(args: DemoArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => home
            .root()
            .join("demo")
            .join(format!("fizzbuzz-{}", jiff::Timestamp::now().as_second())),
    };
    create_sample_repo(&dir)?;
    let script = Script::from_json(SCRIPT)
        .map_err(|err| Failure::error(format!("the bundled demo script is invalid: {err}")))?;
    let server = ScriptedModel::start(script).await.map_err(|err| {
        Failure::error(format!("cannot start the replay server on loopback: {err}"))
    })?;
    let providers = ProviderConfig {
        openai_base_url: Some(server.base_url()),
        ..ProviderConfig::default()
    };
    let runner = home.runner(providers).await?;

    if !args.json {
        eprintln!("nightshift demo: a sample repository at {}", dir.display());
        eprintln!("  with a failing test (sh test.sh). The agent's model answers are a REPLAY of");
        eprintln!("  recorded answers bundled with nightshift, served on loopback: no model is");
        eprintln!("  contacted and no key is needed. Everything else is the real pipeline: the");
        eprintln!("  working copy, the commands the agent runs, the commit and the branch.");
    }
    let request = TaskRequest {
        max_turns: 10,
        ..TaskRequest::new(&dir, PROMPT, "openai:recorded-demo")
    };
    let task = runner
        .submit(request)
        .await
        .map_err(|err| Failure::error(err.to_string()))?;
    let runner = Arc::new(runner);
    let backend = Backend::Local(Local::in_process(runner.clone()));
    let id = task.id;
    let worker = tokio::spawn(async move { runner.run_task(id, CancellationToken::new()).await });
    let waited = wait(&backend, &task, args.json).await;
    let finished = worker
        .await
        .map_err(|err| Failure::error(format!("the demo task crashed: {err}")))?
        .map_err(|err| Failure::error(err.to_string()))?;
    waited?;
    if !args.json {
        let short = id.short();
        eprintln!();
        eprintln!("Look around:");
        eprintln!("  nightshift show {short}        the task");
        eprintln!("  nightshift logs {short}        every step, with the commands' real output");
        eprintln!("  nightshift diff {short}        the change");
        if let Some(branch) = &finished.branch {
            eprintln!("  git -C {} log -p {branch}", dir.display());
        }
    }
    Ok(exit_for(finished.state))
}

fn create_sample_repo(dir: &Path) -> Result<(), Failure> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::usage(format!(
            "{} exists and is not empty; pass --dir a new directory",
            dir.display()
        )));
    }
    let io = |err: std::io::Error| {
        Failure::error(format!(
            "creating the sample repository in {}: {err}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    for (name, content) in FILES {
        std::fs::write(dir.join(name), content).map_err(io)?;
    }
    git(dir, &["init", "--quiet", "--initial-branch=main"])?;
    git(dir, &["add", "."])?;
    git(
        dir,
        &[
            "-c",
            "user.name=nightshift demo",
            "-c",
            "user.email=demo@nightshift.invalid",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "-m",
            "FizzBuzz with a test",
        ],
    )?;
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|err| Failure::error(format!("cannot run git (is it installed?): {err}")))?;
    if !output.status.success() {
        return Err(Failure::error(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
