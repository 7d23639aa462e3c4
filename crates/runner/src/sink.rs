//! The agent's events, written to the task's log; model usage is also folded into the task row
//! as it arrives, so listings show live token counts.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use nightshift_agent::{EventSink, SinkError};
use nightshift_protocol::{Event, Task};
use nightshift_store::Store;
use tokio::sync::Mutex;

/// Appends events to one task's log and keeps its row current.
#[derive(Clone)]
pub(crate) struct TaskLog {
    store: Arc<dyn Store>,
    task: Arc<Mutex<Task>>,
}

impl TaskLog {
    pub(crate) fn new(store: Arc<dyn Store>, task: Task) -> Self {
        TaskLog {
            store,
            task: Arc::new(Mutex::new(task)),
        }
    }

    pub(crate) async fn append(&self, event: Event) -> Result<(), SinkError> {
        let id = self.task.lock().await.id;
        self.store
            .append_event(id, &event)
            .await
            .map(|_| ())
            .map_err(|err| SinkError(err.to_string()))
    }

    /// Changes the row with `change` and writes it.
    pub(crate) async fn update(&self, change: impl FnOnce(&mut Task)) -> Result<Task, SinkError> {
        let mut task = self.task.lock().await;
        change(&mut task);
        task.updated_at = Timestamp::now();
        self.store
            .update_task(&task)
            .await
            .map_err(|err| SinkError(err.to_string()))?;
        Ok(task.clone())
    }

    pub(crate) async fn snapshot(&self) -> Task {
        self.task.lock().await.clone()
    }
}

#[async_trait]
impl EventSink for TaskLog {
    async fn emit(&self, event: Event) -> Result<(), SinkError> {
        if let Event::ModelResponse { turn, usage, .. } = &event {
            let (turn, usage) = (*turn, *usage);
            self.update(|task| {
                task.turns = turn;
                task.usage += usage;
            })
            .await?;
        }
        self.append(event).await
    }
}
