//! Model providers behind one stream-first trait.
//!
//! The agent builds a [`ModelRequest`] (system prompt, conversation, tool definitions) and asks a
//! [`ModelClient`] for the answer as a stream of [`StreamEvent`]s; [`ModelClient::complete`]
//! folds that stream into a [`ModelResponse`]. Providers translate to and from their wire
//! protocol (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages) over one shared
//! HTTP transport; cassettes record calls and replay them. Nothing here knows what a tool does.

mod anthropic;
mod cassette;
mod catalog;
mod error;
mod http;
mod openai_chat;
mod openai_responses;
mod pricing;
mod spec;
mod types;

pub use anthropic::AnthropicMessages;
pub use cassette::Redaction;
pub use catalog::{ModelLimits, limits};
pub use error::ModelError;
pub use http::ensure_crypto_provider;
pub use openai_chat::OpenAiChat;
pub use openai_responses::OpenAiResponses;
pub use pricing::{PRICES_AS_OF, Pricing, price_for};
pub use spec::{ModelSpec, Provider, ProviderConfig, connect};
pub use types::{
    Message, ModelRequest, ModelResponse, ReasoningBlock, StopReason, StreamEvent, ToolCall,
    ToolSpec,
};

use async_trait::async_trait;
use futures::Stream;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

/// How many times an answer cut off mid-way is asked for again.
const MID_STREAM_RESTARTS: u32 = 2;

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
        // A stream cut off mid-way cannot be resumed: the request is sent again and the
        // partial answer dropped. Failures before the answer started are the client's own
        // retries' business.
        let mut restarts = 0;
        loop {
            match types::collect(self.stream(request), cancel, on_event).await {
                Ok(response) => return Ok(response),
                Err(failed)
                    if failed.mid_stream
                        && restarts < MID_STREAM_RESTARTS
                        && matches!(
                            failed.error,
                            ModelError::Unreachable { .. } | ModelError::IdleTimeout(_)
                        ) =>
                {
                    restarts += 1;
                    tracing::warn!(
                        "the model's answer was cut off ({}); asking again",
                        failed.error
                    );
                }
                Err(failed) => return Err(failed.error),
            }
        }
    }
}

/// Decodes a body of server-sent events as `provider`'s protocol, with the same parser and
/// decoder its client uses, without a network: for benchmarks and for reading captured
/// streams. `chunks` is the body as it arrived, in pieces of any size.
pub async fn decode_event_stream<S, B, E>(
    provider: Provider,
    chunks: S,
) -> Result<Vec<StreamEvent>, ModelError>
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    E: std::error::Error,
{
    match provider {
        Provider::OpenAiChat => http::decode_body::<openai_chat::Decoder, _, _, _>(chunks).await,
        Provider::OpenAiResponses => {
            http::decode_body::<openai_responses::Decoder, _, _, _>(chunks).await
        }
        Provider::Anthropic => http::decode_body::<anthropic::Decoder, _, _, _>(chunks).await,
        Provider::Replay { .. } => Err(ModelError::Config(
            "a cassette is not a stream of server-sent events".into(),
        )),
    }
}
