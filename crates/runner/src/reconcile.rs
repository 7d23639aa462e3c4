//! Settling tasks whose worker died. A detached local worker that is killed (or a machine that
//! reboots) leaves its task in a non-terminal state; without this it would show as running
//! forever.

use jiff::Timestamp;
use nightshift_protocol::{ErrorKind, Event, TaskId, TaskState};
use nightshift_store::TaskFilter;

use crate::{Runner, RunnerError};

impl Runner {
    /// Fails every claimed, unfinished task whose worker `is_alive` says is gone, with an error
    /// event that says so. Returns the tasks it settled.
    pub async fn reconcile(
        &self,
        is_alive: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<TaskId>, RunnerError> {
        let filter = TaskFilter {
            states: vec![
                TaskState::Preparing,
                TaskState::Running,
                TaskState::Verifying,
                TaskState::HandingOff,
            ],
            before: None,
            limit: 1000,
        };
        let mut settled = Vec::new();
        for mut task in self.store.list_tasks(&filter).await? {
            let Some(worker) = self.claimed_by(task.id).await? else {
                continue;
            };
            if is_alive(&worker) {
                continue;
            }
            let message = format!(
                "the worker `{worker}` stopped before the task ended (it was killed or crashed)"
            );
            self.store
                .append_event(
                    task.id,
                    &Event::Error {
                        kind: ErrorKind::Internal,
                        message: message.clone(),
                        hint: Some(
                            "run the task again; its working copy was not handed back".into(),
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
                        turns: task.turns,
                        duration_ms: duration,
                    },
                )
                .await?;
            settled.push(task.id);
        }
        Ok(settled)
    }

    /// The worker named by the task's last `claimed` event.
    async fn claimed_by(&self, id: TaskId) -> Result<Option<String>, RunnerError> {
        let mut worker = None;
        let mut after = 0;
        loop {
            let page = self.store.events(id, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                if let Event::Claimed { worker: name } = &record.event {
                    worker = Some(name.clone());
                }
            }
        }
        Ok(worker)
    }
}
