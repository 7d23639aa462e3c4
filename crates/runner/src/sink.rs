//! The agent's events, written to the task's log; model usage is also folded into the task row
//! as it arrives, so listings show live token counts.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use nightshift_agent::{EventSink, SinkError};
use nightshift_env::secrets::Redactor;
use nightshift_protocol::{Event, Task};
use nightshift_store::Store;
use tokio::sync::Mutex;

/// Appends events to one task's log and keeps its row current. Secret values are redacted
/// from everything it writes.
#[derive(Clone)]
pub(crate) struct TaskLog {
    store: Arc<dyn Store>,
    task: Arc<Mutex<Task>>,
    redactor: Arc<std::sync::RwLock<Redactor>>,
    /// CPU seconds of the task's sandbox sessions, as far as they could be measured.
    cpu_seconds: Arc<std::sync::Mutex<Option<f64>>>,
}

impl TaskLog {
    pub(crate) fn new(store: Arc<dyn Store>, task: Task) -> Self {
        TaskLog {
            store,
            task: Arc::new(Mutex::new(task)),
            redactor: Arc::new(std::sync::RwLock::new(Redactor::none())),
            cpu_seconds: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Adds a closing session's CPU time (when the sandbox could measure it).
    pub(crate) fn add_cpu(&self, seconds: Option<f64>) {
        if let (Some(seconds), Ok(mut total)) = (seconds, self.cpu_seconds.lock()) {
            *total = Some(total.unwrap_or(0.0) + seconds);
        }
    }

    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.cpu_seconds.lock().ok().and_then(|total| *total)
    }

    /// From now on, redact these secrets' values.
    pub(crate) fn redact_with(&self, redactor: Redactor) {
        if let Ok(mut current) = self.redactor.write() {
            *current = redactor;
        }
    }

    /// `text` with secret values replaced by `[secret:NAME]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        match self.redactor.read() {
            Ok(redactor) => redactor.redact(text).into_owned(),
            Err(_) => text.to_string(),
        }
    }

    /// Whether there are secrets to redact.
    pub(crate) fn has_secrets(&self) -> bool {
        self.redactor.read().map(|r| !r.is_empty()).unwrap_or(false)
    }

    /// The names of secrets whose values occur in `text`.
    /// The name of a secret whose value is in the file at `path` (read through once).
    pub(crate) fn secret_in_file(&self, path: &std::path::Path) -> Option<String> {
        let file = std::fs::File::open(path).ok()?;
        let redactor = self.redactor.read().ok()?;
        redactor
            .found_in_reader(std::io::BufReader::with_capacity(1 << 16, file))
            .ok()
            .flatten()
    }

    pub(crate) fn secrets_in(&self, text: &str) -> Vec<String> {
        self.redactor
            .read()
            .map(|r| r.found_in(text))
            .unwrap_or_default()
    }

    fn redact_event(&self, event: Event) -> Event {
        let Ok(redactor) = self.redactor.read() else {
            return event;
        };
        if redactor.is_empty() {
            return event;
        }
        let Ok(mut value) = serde_json::to_value(&event) else {
            return event;
        };
        redact_strings(&mut value, &redactor);
        serde_json::from_value(value).unwrap_or(event)
    }

    pub(crate) async fn append(&self, event: Event) -> Result<(), SinkError> {
        let event = self.redact_event(event);
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
        task.summary = task.summary.take().map(|text| self.redact(&text));
        task.error = task.error.take().map(|text| self.redact(&text));
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
    fn redact(&self, text: &str) -> String {
        TaskLog::redact(self, text)
    }

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

fn redact_strings(value: &mut serde_json::Value, redactor: &Redactor) {
    match value {
        serde_json::Value::String(text) => {
            if let std::borrow::Cow::Owned(redacted) = redactor.redact(text) {
                *text = redacted;
            }
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|item| redact_strings(item, redactor)),
        serde_json::Value::Object(map) => map
            .values_mut()
            .for_each(|item| redact_strings(item, redactor)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}
