//! The agent's events, written to the task's log; model usage is also folded into the task row
//! as it arrives, so listings show live token counts.

use std::borrow::Cow;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

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
    redactor: Arc<RwLock<Redactor>>,
    /// CPU seconds of the task's sandbox sessions, as far as they could be measured.
    cpu_seconds: Arc<std::sync::Mutex<Option<f64>>>,
    /// Work that appends to the log on its own (each session's egress requests), waited for
    /// before the task's last event.
    writers: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TaskLog {
    pub(crate) fn new(store: Arc<dyn Store>, task: Task) -> Self {
        TaskLog {
            store,
            task: Arc::new(Mutex::new(task)),
            redactor: Arc::new(RwLock::new(Redactor::none())),
            cpu_seconds: Arc::new(std::sync::Mutex::new(None)),
            writers: Arc::default(),
        }
    }

    /// Keeps `writer`, a task appending to this log on its own, to be waited for by
    /// [`TaskLog::settle`].
    pub(crate) fn track(&self, writer: tokio::task::JoinHandle<()>) {
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        writers.retain(|writer| !writer.is_finished());
        writers.push(writer);
    }

    /// Waits, up to `within`, for the writers [`TaskLog::track`] keeps (their sessions are
    /// closed, so they are about to end), so that what they append comes before the task's
    /// last event.
    pub(crate) async fn settle(&self, within: std::time::Duration) {
        let writers =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::time::timeout(within, wait_all(writers)).await;
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
        *self
            .redactor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = redactor;
    }

    /// The redactor, also when a panic poisoned its lock: the lock only ever guards a whole
    /// redactor being swapped in, so what it holds is always usable, and redacting with it
    /// beats passing text through unchecked.
    fn redactor(&self) -> RwLockReadGuard<'_, Redactor> {
        self.redactor.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the current redactor, for work off the async threads.
    pub(crate) fn current_redactor(&self) -> Redactor {
        self.redactor().clone()
    }

    /// `text` with secret values replaced by `[secret:NAME]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        self.redactor().redact(text).into_owned()
    }

    /// Whether there are secrets to redact.
    pub(crate) fn has_secrets(&self) -> bool {
        !self.redactor().is_empty()
    }

    /// The names of secrets whose values occur in `text`.
    pub(crate) fn secrets_in(&self, text: &str) -> Vec<String> {
        self.redactor().found_in(text)
    }

    pub(crate) async fn append(&self, event: Event) -> Result<(), SinkError> {
        let event = redact_event(event, &self.redactor());
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
        // The agent says when it waits for the person, and when it goes on.
        if let Event::StateChanged { state, .. } = &event {
            let state = *state;
            self.update(|task| task.state = state).await?;
        }
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

/// Waits for every one of `writers`.
async fn wait_all(writers: Vec<tokio::task::JoinHandle<()>>) {
    for writer in writers {
        let _ = writer.await;
    }
}

/// `event` with secret values replaced in every string it holds (keys of free-form objects,
/// such as a tool call's arguments, included). An event that cannot be redacted is not passed
/// on as it was: a warning saying it was left out takes its place.
fn redact_event(event: Event, redactor: &Redactor) -> Event {
    if redactor.is_empty() {
        return event;
    }
    let kind = event.kind();
    let left_out = |why: &str| {
        Event::Warning {
        message: redactor
            .redact(&format!(
                "a `{kind}` event was left out of the log: it could not be checked for secrets ({why})"
            ))
            .into_owned(),
    }
    };
    let mut value = match serde_json::to_value(&event) {
        Ok(value) => value,
        Err(err) => return left_out(&err.to_string()),
    };
    if !redact_strings(&mut value, redactor) {
        return event;
    }
    // A value can sit where only a fixed word fits (a state, an id): the redacted event then
    // no longer reads back, and is left out.
    // What serde says would quote the field, so it is not repeated.
    serde_json::from_value(value)
        .unwrap_or_else(|_| left_out("a secret's value is in one of its fixed fields"))
}

/// Redacts every string in `value`; whether anything changed.
fn redact_strings(value: &mut serde_json::Value, redactor: &Redactor) -> bool {
    match value {
        serde_json::Value::String(text) => match redactor.redact(text) {
            Cow::Owned(redacted) => {
                *text = redacted;
                true
            }
            Cow::Borrowed(_) => false,
        },
        serde_json::Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            redact_strings(item, redactor) | changed
        }),
        serde_json::Value::Object(map) => {
            let keys_changed = map
                .keys()
                .any(|key| matches!(redactor.redact(key), Cow::Owned(_)));
            if keys_changed {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, value)| (redactor.redact(&key).into_owned(), value))
                    .collect();
            }
            map.values_mut().fold(keys_changed, |changed, item| {
                redact_strings(item, redactor) | changed
            })
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use nightshift_protocol::{TaskId, TaskSpec, TaskState};
    use nightshift_store::SqliteStore;
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "tok-5ecr3t-0123456789";

    async fn task_log(home: &std::path::Path) -> (TaskLog, Arc<dyn Store>, TaskId) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home).await.unwrap());
        let spec = TaskSpec {
            repo: "/r".into(),
            base: None,
            prompt: "p".into(),
            model: "openai:m".into(),
            max_turns: 3,
            max_tokens: None,
            max_cost_usd: None,
            max_duration_secs: None,
            follows: None,
            image: None,
            origin: None,
            review: None,
            attempts: Vec::new(),
            attempt_of: None,
            plan: false,
            plan_run: None,
            subtask_of: None,
            merge: None,
        };
        let task = Task::queued(TaskId::new(), spec, Timestamp::now());
        store.create_task(&task).await.unwrap();
        let id = task.id;
        (TaskLog::new(store.clone(), task), store, id)
    }

    fn token() -> Redactor {
        Redactor::new(&[("TOKEN".into(), TOKEN.into())])
    }

    /// Panics while holding the redactor's write lock, as a bug elsewhere would.
    fn poison(log: &TaskLog) {
        let lock = log.redactor.clone();
        let _ = std::thread::spawn(move || {
            let _held = lock.write().unwrap();
            panic!("poisoning the redactor's lock on purpose");
        })
        .join();
        assert!(log.redactor.is_poisoned());
    }

    #[tokio::test]
    async fn a_poisoned_lock_still_redacts_everything() {
        let home = tempfile::tempdir().unwrap();
        let (log, store, id) = task_log(home.path()).await;
        log.redact_with(token());
        poison(&log);
        assert_eq!(log.redact(&format!("a {TOKEN} b")), "a [secret:TOKEN] b");
        assert!(log.has_secrets());
        assert_eq!(log.secrets_in(TOKEN), ["TOKEN"]);
        log.append(Event::Warning {
            message: format!("saw {TOKEN}"),
        })
        .await
        .unwrap();
        let task = log
            .update(|task| task.error = Some(format!("failed with {TOKEN}")))
            .await
            .unwrap();
        assert_eq!(task.error.as_deref(), Some("failed with [secret:TOKEN]"));
        let stored = serde_json::to_string(&store.events(id, 0, 100).await.unwrap()).unwrap();
        assert!(stored.contains("saw [secret:TOKEN]"), "{stored}");
        assert!(!stored.contains(TOKEN), "{stored}");

        // Secrets set after the lock was poisoned are used too.
        log.redact_with(Redactor::new(&[("OTHER".into(), "another-value".into())]));
        assert_eq!(log.redact("another-value"), "[secret:OTHER]");
    }

    #[test]
    fn an_event_that_cannot_be_redacted_is_left_out_with_a_warning() {
        // The value is a state's name: redacted, the event no longer reads back.
        let redactor = Redactor::new(&[("WORD".into(), "succeeded".into())]);
        let event = Event::StateChanged {
            state: TaskState::Succeeded,
            detail: None,
        };
        let Event::Warning { message } = redact_event(event, &redactor) else {
            panic!("the event was passed on");
        };
        assert!(
            message.contains("a `state_changed` event was left out of the log"),
            "{message}"
        );
        assert!(!message.contains("succeeded"), "{message}");
    }

    #[test]
    fn keys_and_nested_strings_of_an_event_are_redacted() {
        let base64 = "dG9rLTVlY3IzdC0wMTIzNDU2Nzg5";
        let event = Event::ToolStarted {
            call_id: "c1".into(),
            tool: "shell".into(),
            arguments: json!({TOKEN: [{"command": format!("echo {base64} | base64 -d")}]}),
        };
        let redacted = serde_json::to_value(redact_event(event, &token())).unwrap();
        assert_eq!(
            redacted["arguments"],
            json!({"[secret:TOKEN]": [{"command": "echo [secret:TOKEN] | base64 -d"}]})
        );
        let untouched = Event::Claimed { worker: "w".into() };
        assert!(matches!(
            redact_event(untouched, &token()),
            Event::Claimed { .. }
        ));
    }
}
