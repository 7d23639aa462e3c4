//! Where the agent's events go, and where messages for it come from.

use async_trait::async_trait;
use nightshift_protocol::Event;

/// The event sink could not record an event; the agent stops, since its log would be wrong.
#[derive(Debug, thiserror::Error)]
#[error("could not record the event: {0}")]
pub struct SinkError(pub String);

/// Receives every event of a run, in order.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn emit(&self, event: Event) -> Result<(), SinkError>;

    /// `text` as the model may see it: a sink that knows the task's secrets replaces their
    /// values (a command's output can hold one, e.g. a server that echoes the header the egress
    /// proxy added).
    fn redact(&self, text: &str) -> String {
        text.to_string()
    }
}

/// Messages a person sent the task while it runs. The agent reads them between turns and
/// hands them to the model as user messages, so a running task can be steered.
pub trait Inbox: Send + Sync {
    /// Takes every message that arrived since the last call, oldest first.
    fn drain(&self) -> Vec<String>;
}
