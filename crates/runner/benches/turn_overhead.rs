//! Orchestrator overhead per tool call: from a model answer received to the next request sent.
//!
//! A scripted model on loopback answers every turn with one `shell` call of `true`. The agent
//! runs against a real SQLite store (every event appended as in a real task) and the unisolated
//! sandbox. A timing sink notes the instant of each event, so for turn k the overhead is
//! `model_request(k+1) - model_response(k)`: parsing the tool call, running it, appending the
//! four events of the turn, and building the next request. The whole turn (including the HTTP
//! round trip and SSE parsing) is reported beside it.
//!
//! Run: `cargo bench -p nightshift-runner --bench turn_overhead` (TURNS=N to change the count).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nightshift_agent::{Agent, AgentConfig, EventSink, SinkError};
use nightshift_model::{ModelSpec, ProviderConfig};
use nightshift_protocol::{Event, Task, TaskId, TaskSpec};
use nightshift_sandbox::{Sandbox, SessionSpec, Unisolated};
use nightshift_scripted_model::{Script, ScriptedModel};
use nightshift_store::{SqliteStore, Store};

struct TimingSink {
    store: Arc<dyn Store>,
    id: TaskId,
    marks: Mutex<Vec<(&'static str, u32, Instant)>>,
}

#[async_trait]
impl EventSink for TimingSink {
    async fn emit(&self, event: Event) -> Result<(), SinkError> {
        let turn = match &event {
            Event::ModelRequest { turn, .. } | Event::ModelResponse { turn, .. } => *turn,
            _ => 0,
        };
        let kind = event.kind();
        if kind == "model_request" {
            // The request is sent right after this event is recorded: mark after appending.
            self.store
                .append_event(self.id, &event)
                .await
                .map_err(|e| SinkError(e.to_string()))?;
            self.marks
                .lock()
                .unwrap()
                .push((kind, turn, Instant::now()));
            return Ok(());
        }
        self.marks
            .lock()
            .unwrap()
            .push((kind, turn, Instant::now()));
        self.store
            .append_event(self.id, &event)
            .await
            .map_err(|e| SinkError(e.to_string()))?;
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<44} n={:<4} median {:>7.3} ms  p10 {:>7.3}  p90 {:>7.3}  min {:>7.3}  max {:>7.3}",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.1)),
        ms(percentile(&samples, 0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let turns: u32 = std::env::var("TURNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(200);
    let script = Script::from_json(
        &serde_json::json!({"steps": [
            {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "true"}}],
                       "usage": {"prompt_tokens": 1000, "completion_tokens": 10}, "repeat": turns}},
            {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}}
        ]})
        .to_string(),
    )
    .unwrap();
    let server = ScriptedModel::start(script).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
    let spec = TaskSpec {
        repo: workspace.path().display().to_string(),
        base: None,
        prompt: "bench".into(),
        model: "openai:bench".into(),
        max_turns: turns + 1,
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
    let task = Task::queued(TaskId::new(), spec, jiff::Timestamp::now());
    store.create_task(&task).await.unwrap();

    let model_spec: ModelSpec = "openai:bench".parse().unwrap();
    let providers = ProviderConfig {
        openai_base_url: Some(server.base_url()),
        ..ProviderConfig::default()
    };
    let model = nightshift_model::connect(&model_spec, &providers).unwrap();
    let session = Unisolated
        .start(SessionSpec::new(workspace.path()))
        .await
        .unwrap();
    let sink = TimingSink {
        store: store.clone(),
        id: task.id,
        marks: Mutex::new(Vec::new()),
    };
    let config = AgentConfig {
        budget: nightshift_agent::Budget {
            max_turns: turns + 1,
            ..Default::default()
        },
        ..AgentConfig::default()
    };
    let agent = Agent {
        model: model.as_ref(),
        session: session.as_ref(),
        sink: &sink,
        config: &config,
        inbox: None,
        mcp: None,
    };
    let started = Instant::now();
    let outcome = agent
        .run("bench", &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let total = started.elapsed();
    session.close().await.unwrap();
    assert!(
        matches!(
            outcome.outcome,
            nightshift_agent::AgentOutcome::Finished { .. }
        ),
        "{:?}",
        outcome.outcome
    );

    let marks = sink.marks.into_inner().unwrap();
    let at = |kind: &str, turn: u32| {
        marks
            .iter()
            .find(|m| m.0 == kind && m.1 == turn)
            .map(|m| m.2)
    };
    let mut overhead = Vec::new();
    let mut whole_turn = Vec::new();
    // Skip the first turn: it pays for connection set-up.
    for turn in 2..=turns {
        let (Some(answer), Some(next), Some(request)) = (
            at("model_response", turn),
            at("model_request", turn + 1),
            at("model_request", turn),
        ) else {
            continue;
        };
        overhead.push(next - answer);
        whole_turn.push(next - request);
    }
    println!(
        "turn_overhead: {turns} turns of `shell true` against the scripted model, SQLite store, unisolated sandbox"
    );
    report("answer received -> next request sent", overhead);
    report("whole turn (incl. HTTP + SSE round trip)", whole_turn);
    println!(
        "total {:.1} ms for {} turns",
        total.as_secs_f64() * 1000.0,
        turns + 1
    );
}
