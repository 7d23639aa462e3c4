//! Settling tasks whose worker died. A worker that is killed (or a machine that reboots) leaves
//! its task in a non-terminal state; without this it would show as running forever.
//!
//! Two signals say a worker is gone: its lease lapsed (any worker, on any machine, can see
//! that), or, for a worker on this machine, its process no longer exists (seen at once, without
//! waiting for the lease).

use jiff::Timestamp;
use nightshift_protocol::{ErrorKind, Event, Task, TaskId, TaskState};
use nightshift_store::TaskFilter;

use crate::{Runner, RunnerError};

impl Runner {
    /// Fails every task whose lease has lapsed. Returns the tasks it settled.
    pub async fn settle_expired(&self) -> Result<Vec<TaskId>, RunnerError> {
        let mut settled = Vec::new();
        for task in self.store.expired_tasks().await? {
            let worker = task.worker.clone().unwrap_or_else(|| "unknown".into());
            let since = task
                .lease_expires_at
                .map(|at| format!(" since {}", at.strftime("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default();
            let message = format!(
                "the worker `{worker}` stopped renewing its lease{since}: it crashed, was killed, or lost the store"
            );
            settled.push(self.abandon(task, message).await?);
        }
        Ok(settled)
    }

    /// Fails every claimed, unfinished task whose worker `is_alive` says is gone.
    pub async fn reconcile(
        &self,
        is_alive: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<TaskId>, RunnerError> {
        let filter = TaskFilter {
            states: vec![
                TaskState::Preparing,
                TaskState::Running,
                TaskState::Waiting,
                TaskState::Verifying,
                TaskState::HandingOff,
            ],
            limit: 1000,
            ..TaskFilter::default()
        };
        let mut settled = Vec::new();
        for task in self.store.list_tasks(&filter).await? {
            let Some(worker) = task.worker.clone() else {
                continue;
            };
            if is_alive(&worker) {
                continue;
            }
            let message = format!(
                "the worker `{worker}` stopped before the task ended (it was killed or crashed)"
            );
            settled.push(self.abandon(task, message).await?);
        }
        Ok(settled)
    }

    /// Ends an abandoned task as failed, with an error event saying why.
    async fn abandon(&self, mut task: Task, message: String) -> Result<TaskId, RunnerError> {
        // Re-read: the worker may have finished it since the listing.
        if let Some(current) = self.store.get_task(task.id).await?
            && current.state.is_terminal()
        {
            return Ok(task.id);
        }
        // What the dead worker left on this machine: its working copies (a worker on another
        // machine left nothing here, and these paths then do not exist).
        for dir in [task.id.to_string(), format!("{}-verify", task.id)] {
            let path = self.config.work_dir.join(dir);
            if path.exists() {
                let _ = tokio::fs::remove_dir_all(&path).await;
            }
        }
        self.store
            .append_event(
                task.id,
                &Event::Error {
                    kind: ErrorKind::Internal,
                    message: message.clone(),
                    hint: Some(
                        "run the task again; the lost run's work was not handed back, and its working copy was removed".into(),
                    ),
                },
            )
            .await?;
        let now = Timestamp::now();
        task.state = TaskState::Failed;
        task.error = Some(message);
        task.finished_at = Some(now);
        task.updated_at = now;
        self.store.update_task(&task).await?;
        let duration = task.started_at.map_or(0, |started| {
            now.duration_since(started).as_millis().max(0) as u64
        });
        self.store
            .append_event(
                task.id,
                &Event::Ended {
                    state: TaskState::Failed,
                    summary: None,
                    usage: task.usage,
                    cost_usd: None,
                    cpu_seconds: None,
                    turns: task.turns,
                    duration_ms: duration,
                    no_changes: false,
                },
            )
            .await?;
        Ok(task.id)
    }
}
