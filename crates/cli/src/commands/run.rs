//! `nightshift run`: queue a task, start a detached worker for it, and optionally wait.
//!
//! Without `--wait` the command returns as soon as the task is stored and its worker started:
//! the worker is a `nightshift __run-task ID` process in its own session, so closing the
//! terminal does not stop it, and it exits when the task ends.

use std::fs::OpenOptions;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nightshift_protocol::{Event, Task, TaskId, TaskState, Usage};
use nightshift_runner::{SubmitError, TaskRequest};
use nightshift_store::Store;

use crate::args::RunArgs;
use crate::home::Home;
use crate::output::{Cost, Failure, TaskView, exit_for, print_json};
use crate::render;

pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let runner = home.reconciled_runner().await?;
    let request = TaskRequest {
        base: args.base.clone(),
        max_turns: args.max_turns,
        max_tokens: args.max_tokens,
        max_cost_usd: args.max_cost,
        max_duration_secs: args.max_time.map(|time| time.as_secs().max(1)),
        ..TaskRequest::new(&args.repo, args.prompt.join(" "), &args.model)
    };
    let task = runner.submit(request).await.map_err(submit_failure)?;
    if let Err(failure) = spawn_worker(&home, task.id) {
        // Nothing will run it: take it off the queue rather than leave it waiting forever.
        let _ = runner.store().request_cancel(task.id).await;
        return Err(failure);
    }
    if !args.wait {
        if args.json {
            print_json(&TaskView::new(&task))?;
        } else {
            println!("{}", task.id);
            eprintln!(
                "follow it with: nightshift logs --follow {}",
                task.id.short()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = runner.store().clone();
    let task = wait(&store, &task, args.json).await?;
    Ok(exit_for(task.state))
}

fn submit_failure(err: SubmitError) -> Failure {
    let hint = err.hint();
    let failure = match &err {
        SubmitError::EmptyPrompt | SubmitError::Budget(_) | SubmitError::Model(_) => {
            Failure::usage(err.to_string())
        }
        SubmitError::Repository(env) if env.is_invalid_input() => Failure::usage(err.to_string()),
        SubmitError::Repository(_) | SubmitError::Store(_) => Failure::error(err.to_string()),
    };
    failure.with_hint(hint)
}

/// Starts `nightshift __run-task ID` detached: its own session, no terminal, output to
/// `NIGHTSHIFT_HOME/workers/ID.log`.
fn spawn_worker(home: &Home, id: TaskId) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|err| Failure::error(format!("cannot find the nightshift executable: {err}")))?;
    let log_path = home.worker_log(&id.to_string());
    let cannot = |err: std::io::Error| Failure::error(format!("cannot start the worker: {err}"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(cannot)?;
    let log_err = log.try_clone().map_err(cannot)?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("__run-task")
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    command.spawn().map_err(cannot)?;
    Ok(())
}

/// Follows the task to its end with a live progress line on a terminal, then prints the
/// outcome. Ctrl-C stops waiting; the task goes on.
pub(crate) async fn wait(
    store: &std::sync::Arc<dyn Store>,
    task: &Task,
    json: bool,
) -> Result<Task, Failure> {
    let short = task.id.short();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    if !bar.is_hidden() {
        eprintln!(
            "waiting for {short}; Ctrl-C stops waiting, the task goes on (`nightshift cancel {short}` stops it)"
        );
    }
    let started = std::time::Instant::now();
    let mut state = TaskState::Queued;
    let mut step = String::from("waiting for a worker");
    let mut usage = Usage::default();
    let mut turn = 0;
    let mut error: Option<(String, Option<String>)> = None;
    let mut committed = None;
    super::follow::events(store, task.id, true, |record| {
        match &record.event {
            Event::StateChanged { state: new, detail } => {
                state = *new;
                step = detail.clone().unwrap_or_default();
            }
            Event::ModelRequest { turn: n, .. } => {
                turn = *n;
                step = format!("turn {n}: waiting for the model");
            }
            Event::ModelResponse { usage: used, .. } => usage += *used,
            Event::ToolStarted {
                tool, arguments, ..
            } => {
                step = format!("turn {turn}: {}", render::call_brief(tool, arguments));
            }
            Event::Error { message, hint, .. } => error = Some((message.clone(), hint.clone())),
            Event::Committed {
                branch,
                files_changed,
                insertions,
                deletions,
                incomplete,
                ..
            } => {
                committed = Some((
                    branch.clone(),
                    *files_changed,
                    *insertions,
                    *deletions,
                    *incomplete,
                ));
            }
            Event::Ended { state: end, .. } => state = *end,
            _ => {}
        }
        bar.set_message(format!(
            "{short} {state} · {step} · {} · {} tokens",
            render::duration(started.elapsed()),
            usage.total()
        ));
        Ok(())
    })
    .await?;
    bar.finish_and_clear();
    let task = store.find_task(&task.id.to_string()).await?;
    let cost = Cost::of(store, &task).await?;
    if json {
        print_json(&TaskView {
            cost: Some(cost),
            ..TaskView::new(&task)
        })?;
        return Ok(task);
    }
    println!(
        "{short} {} after {} · {} turns · {} tokens",
        task.state,
        render::duration(render::elapsed(&task)),
        task.turns,
        render::tokens(&task.usage)
    );
    println!("cost      {}", render::cost(&cost));
    if let Some((branch, files, plus, minus, incomplete)) = committed {
        let note = if incomplete { " (incomplete work)" } else { "" };
        println!("branch    {branch}{note} · {files} files, +{plus} -{minus}");
        println!("review    nightshift diff {short}   ·   git log -p {branch}");
    }
    if let Some(summary) = &task.summary {
        println!("summary   {}", summary.trim().replace('\n', "\n          "));
    }
    if let Some((message, hint)) = error {
        eprintln!("error: {message}");
        if let Some(hint) = hint {
            eprintln!("hint: {hint}");
        }
        eprintln!("details: nightshift logs {short}");
    }
    Ok(task)
}
