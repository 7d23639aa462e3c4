//! Context management: keeping the conversation inside the model's window.
//!
//! As the conversation nears the window, older tool outputs are masked first (they are the
//! bulk, and can be produced again by running the tool again); if that is not enough, the older
//! turns are replaced by a summary the model writes of them. A provider's context-length error
//! forces the same steps before the turn is retried, so a task never fails for context length
//! without compaction having been tried.

use nightshift_model::{Message, ModelClient, ModelError, ModelRequest};
use tokio_util::sync::CancellationToken;

/// Compact when the next request is estimated above this share of the window.
const COMPACT_AT: f64 = 0.75;
/// After masking, summarize when still above this share.
const SUMMARIZE_AT: f64 = 0.90;
/// The most recent messages that are never masked or summarized.
const KEEP_RECENT: usize = 6;

const SUMMARY_PROMPT: &str = "\
You are summarizing the first part of a coding agent's work on a task, so that it can continue \
with less context. Write a dense summary for the agent itself: the task, what it found in the \
repository (files, functions, commands that matter), what it changed, what it ran and the \
results, and what remains to do. Keep file paths, names and error messages exact. No preamble.";

/// A rough token count: about four bytes of text a token.
pub(crate) fn estimate_tokens(request: &ModelRequest) -> u64 {
    let mut bytes = request.system.len();
    for message in &request.messages {
        bytes += match message {
            Message::User { content } => content.len(),
            Message::Assistant {
                content,
                tool_calls,
                ..
            } => {
                content.as_ref().map_or(0, String::len)
                    + tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>()
            }
            Message::Tool { content, .. } => content.len(),
        };
    }
    bytes += request
        .tools
        .iter()
        .map(|t| t.description.len() + t.parameters.to_string().len())
        .sum::<usize>();
    (bytes / 4) as u64
}

/// What a compaction did, for the log.
pub(crate) struct Compaction {
    pub(crate) before_tokens: u64,
    pub(crate) after_tokens: u64,
    pub(crate) masked: u32,
    pub(crate) summarized: u32,
}

/// Whether the request needs compacting for a window of `window` tokens.
pub(crate) fn needs_compaction(request: &ModelRequest, window: u64) -> bool {
    estimate_tokens(request) as f64 > window as f64 * COMPACT_AT
}

/// Masks older tool outputs, then, if still needed (or `force`d by a context-length error),
/// summarizes the older turns with the model. Returns `None` when there was nothing to do.
pub(crate) async fn compact(
    request: &mut ModelRequest,
    window: u64,
    force: bool,
    model: &dyn ModelClient,
    cancel: &CancellationToken,
) -> Result<Option<Compaction>, ModelError> {
    let before_tokens = estimate_tokens(request);
    let recent_from = request.messages.len().saturating_sub(KEEP_RECENT);
    // A provider that refused the prompt leaves no room for keeping recent outputs whole.
    let mask_until = if force {
        request.messages.len().saturating_sub(1)
    } else {
        recent_from
    };
    let mut masked = 0;
    for message in &mut request.messages[..mask_until] {
        if let Message::Tool { content, .. } = message
            && !content.starts_with("[output removed")
            && content.len() > 200
        {
            *content = format!(
                "[output removed to save context ({} bytes); run the tool again if you need it]",
                content.len()
            );
            masked += 1;
        }
    }
    let mut summarized = 0;
    let still_large = estimate_tokens(request) as f64 > window as f64 * SUMMARIZE_AT;
    if (still_large || (force && masked == 0)) && recent_from > 1 {
        // Keep the task (the first message) and the recent turns; summarize what lies between.
        // The cut must not separate tool results from the call that asked for them.
        let mut cut = recent_from;
        while cut < request.messages.len() && matches!(request.messages[cut], Message::Tool { .. })
        {
            cut += 1;
        }
        let older: Vec<Message> = request.messages[1..cut].to_vec();
        if !older.is_empty() {
            let summary = summarize(&older, request, model, cancel).await?;
            summarized = older.len() as u32;
            request.messages.splice(
                1..cut,
                [Message::User { content: format!("Summary of your work so far (older turns were condensed to save context):\n{summary}") }],
            );
        }
    }
    if masked == 0 && summarized == 0 {
        return Ok(None);
    }
    Ok(Some(Compaction {
        before_tokens,
        after_tokens: estimate_tokens(request),
        masked,
        summarized,
    }))
}

async fn summarize(
    older: &[Message],
    request: &ModelRequest,
    model: &dyn ModelClient,
    cancel: &CancellationToken,
) -> Result<String, ModelError> {
    let mut transcript = String::new();
    for message in older {
        match message {
            Message::User { content } => transcript.push_str(&format!("USER: {content}\n")),
            Message::Assistant {
                content,
                tool_calls,
                ..
            } => {
                if let Some(content) = content {
                    transcript.push_str(&format!("AGENT: {content}\n"));
                }
                for call in tool_calls {
                    transcript
                        .push_str(&format!("AGENT CALLS {}: {}\n", call.name, call.arguments));
                }
            }
            Message::Tool { content, .. } => {
                let cut = nightshift_protocol::truncate_middle(content, 4000);
                transcript.push_str(&format!("RESULT: {}\n", cut.text));
            }
        }
    }
    let transcript = nightshift_protocol::truncate_middle(&transcript, 400_000).text;
    let summary_request = ModelRequest {
        model: request.model.clone(),
        system: SUMMARY_PROMPT.to_string(),
        messages: vec![Message::User {
            content: transcript,
        }],
        tools: vec![],
        max_output_tokens: Some(4000),
    };
    let response = model
        .complete(&summary_request, cancel, &mut |_| {})
        .await?;
    Ok(response.text.unwrap_or_default())
}

/// Whether a provider's refusal says the prompt is longer than the model's window.
pub(crate) fn is_context_overflow(error: &ModelError) -> bool {
    let ModelError::Rejected { body, .. } = error else {
        return false;
    };
    let body = body.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "prompt is too long",
        "too many tokens",
        "input is too long",
    ]
    .iter()
    .any(|needle| body.contains(needle))
}
