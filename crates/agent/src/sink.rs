//! Where the agent's events go.

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
}
