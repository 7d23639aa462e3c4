//! A worker: claims queued tasks from the store and runs up to `concurrency` of them at once,
//! until told to shut down. Any number of workers, on any number of machines, can share one
//! store: claims are atomic and every claim is a lease that the worker keeps renewing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Stops;
use crate::{Runner, RunnerError};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The most tasks running at once.
    pub concurrency: usize,
    /// After a shutdown request, how long running tasks may go on before they are handed back
    /// to the queue.
    pub grace: Duration,
    /// How often to look for tasks whose worker died (lapsed leases).
    pub settle_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 4,
            grace: Duration::from_secs(30),
            settle_every: Duration::from_secs(15),
        }
    }
}

impl Runner {
    /// Runs tasks until `shutdown` fires, then lets running tasks finish for `grace` and hands
    /// the rest back to the queue. Store outages are waited out, never fatal.
    pub async fn run_worker(
        self: Arc<Self>,
        config: WorkerConfig,
        shutdown: CancellationToken,
    ) -> Result<(), RunnerError> {
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let hand_back = CancellationToken::new();
        let mut running = JoinSet::new();
        let mut last_settle: Option<tokio::time::Instant> = None;
        // Forge retries run beside the tasks, one round at a time.
        let retry_every = self.config.forge_retry_wait.min(config.settle_every);
        let mut last_retry: Option<tokio::time::Instant> = None;
        let mut retrying: Option<tokio::task::JoinHandle<()>> = None;
        let mut backoff = Duration::from_millis(200);

        loop {
            while let Some(done) = running.try_join_next() {
                if let Err(err) = done {
                    tracing::error!("a task of this worker panicked: {err}");
                }
            }
            if last_settle.is_none_or(|at| at.elapsed() >= config.settle_every) {
                if let Err(err) = self.settle_expired().await {
                    tracing::warn!("could not settle abandoned tasks: {err}");
                }
                last_settle = Some(tokio::time::Instant::now());
            }
            if last_retry.is_none_or(|at| at.elapsed() >= retry_every)
                && retrying.as_ref().is_none_or(|round| round.is_finished())
            {
                let runner = self.clone();
                retrying = Some(tokio::spawn(async move {
                    if let Err(err) = runner.retry_forge_work().await {
                        tracing::warn!("could not take forge retries: {err}");
                    }
                }));
                last_retry = Some(tokio::time::Instant::now());
            }
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let claimed = match self
                .store
                .claim_next(&self.config.worker, self.config.lease)
                .await
            {
                Ok(claimed) => {
                    backoff = Duration::from_millis(200);
                    claimed
                }
                Err(err) => {
                    tracing::warn!("the store is unavailable ({err}); retrying in {backoff:?}");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let Some(task) = claimed else {
                drop(permit);
                tokio::select! {
                    waited = self.store.wait_for_work(Duration::from_secs(1)) => {
                        if let Err(err) = waited {
                            tracing::debug!("waiting for work: {err}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
                continue;
            };
            let runner = self.clone();
            let stops = Stops {
                cancel: CancellationToken::new(),
                shutdown: hand_back.child_token(),
            };
            running.spawn(async move {
                let id = task.id;
                if let Err(err) = runner.run_claimed(task, stops).await {
                    tracing::error!(task = %id, "running the task failed: {err}");
                }
                drop(permit);
            });
        }

        // Shutting down: no new claims; running tasks get the grace period, then go back.
        if !running.is_empty() {
            tracing::info!(
                "shutting down: waiting up to {:?} for {} task(s)",
                config.grace,
                running.len()
            );
            let drained = tokio::time::timeout(config.grace, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                hand_back.cancel();
                while running.join_next().await.is_some() {}
            }
        }
        Ok(())
    }
}
