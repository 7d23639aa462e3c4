//! `nightshift worker`: a long-running worker that takes tasks from the queue; and
//! `nightshift __run-task ID`: the detached local worker that `run` starts, which runs one task
//! to its end and exits, so a finished task leaves no process behind.

use std::process::ExitCode;

use nightshift_model::ProviderConfig;
use nightshift_runner::RunnerError;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use nightshift_runner::WorkerConfig;

use crate::args::{RunTaskArgs, WorkerArgs};
use crate::home::Home;
use crate::output::{Failure, exit_for};

pub async fn run_task(args: RunTaskArgs) -> Result<ExitCode, Failure> {
    let id = args
        .id
        .parse()
        .map_err(|err: nightshift_protocol::ParseTaskIdError| Failure::usage(err.to_string()))?;
    let runner = Home::from_env()?.runner(ProviderConfig::from_env()).await?;
    // The sandbox's helper starts while the task is checked out.
    runner.warm_up();
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    match runner.run_task(id, cancel.clone()).await {
        Ok(task) => {
            // A review `[review] auto` queued has no other worker in local mode: it runs here,
            // after the task, which has already ended.
            if !cancel.is_cancelled()
                && let Some(review) = queued_review(runner.store().as_ref(), task.id).await
            {
                let _ = runner.run_task(review, cancel).await;
            }
            Ok(exit_for(task.state))
        }
        Err(err @ RunnerError::NotClaimable { .. }) => Err(Failure::usage(err.to_string())),
        Err(err) => Err(Failure::error(err.to_string())),
    }
}

pub async fn run_worker(args: WorkerArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let runner = Arc::new(home.worker_runner(ProviderConfig::from_env()).await?);
    runner.warm_up();
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    eprintln!(
        "worker {} running up to {} task(s) at once; SIGTERM or Ctrl-C stops it (running tasks get {} to finish, then go back to the queue)",
        runner.config().worker,
        args.concurrency,
        crate::render::duration(args.grace)
    );
    let config = WorkerConfig {
        concurrency: args.concurrency,
        grace: args.grace,
        ..WorkerConfig::default()
    };
    runner
        .run_worker(config, shutdown)
        .await
        .map_err(|err| Failure::error(err.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT cancel the task (which then commits its work so far) instead of killing
/// the process mid-write.
pub fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
}

/// The review task `[review] auto` queued as the task `id` ended, if any.
async fn queued_review(
    store: &dyn nightshift_store::Store,
    id: nightshift_protocol::TaskId,
) -> Option<nightshift_protocol::TaskId> {
    let (mut after, mut queued) = (0, None);
    loop {
        let page = store.events(id, after, 10_000).await.ok()?;
        let Some(last) = page.last() else {
            return queued;
        };
        after = last.seq;
        for record in &page {
            if let nightshift_protocol::Event::ReviewQueued { task_id } = record.event {
                queued = Some(task_id);
            }
        }
    }
}
