//! Model providers behind one stream-first trait.
//!
//! The agent builds a [`ModelRequest`] (system prompt, conversation, tool definitions) and asks a
//! [`ModelClient`] for the answer as a stream of [`StreamEvent`]s; [`ModelClient::complete`]
//! folds that stream into a [`ModelResponse`]. Providers translate to and from their wire
//! protocol; nothing here knows what a tool does.

mod error;
mod openai_chat;
mod spec;
mod types;

pub use error::ModelError;
pub use openai_chat::OpenAiChat;
pub use spec::{ModelSpec, Provider, ProviderConfig, connect};
pub use types::{
    Message, ModelRequest, ModelResponse, StopReason, StreamEvent, ToolCall, ToolSpec,
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

/// A stream of one model answer.
pub type ResponseStream = BoxStream<'static, Result<StreamEvent, ModelError>>;

/// A connection to one model.
#[async_trait]
pub trait ModelClient: Send + Sync {
    /// The spec this client was made from, e.g. `openai:gpt-4.1`.
    fn spec(&self) -> &ModelSpec;

    /// Sends the request and returns the answer as it streams in. The stream ends after a
    /// [`StreamEvent::Completed`] or an error.
    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError>;

    /// The whole answer, built from [`ModelClient::stream`]. `on_event` sees every event as it
    /// arrives (for live progress). Cancelling `cancel` drops the request at once.
    async fn complete(
        &self,
        request: &ModelRequest,
        cancel: &CancellationToken,
        on_event: &mut (dyn for<'event> FnMut(&'event StreamEvent) + Send),
    ) -> Result<ModelResponse, ModelError> {
        types::collect(self.stream(request), cancel, on_event).await
    }
}
