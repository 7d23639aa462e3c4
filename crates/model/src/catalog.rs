//! What we know about well-known models without asking them: context window, output limit,
//! whether they reason. Used to size requests and, later, to decide when to compact.
//!
//! Names match exactly, or as a dated snapshot of a known name (`claude-sonnet-4-5-20250929`,
//! `gpt-4.1-2025-04-14`, `claude-3-7-sonnet-latest`), with any router prefix (`openai/`,
//! `anthropic/`) ignored. A loose prefix match would price `o3-pro` as `o3`; this does not.

use crate::{ModelSpec, Provider};

/// How much a model can read and write in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Tokens of input and output together.
    pub context_window: u64,
    /// The most output tokens one answer may have.
    pub max_output_tokens: u32,
}

/// Limits for models not in the table: generous enough for today's hosted models; a local
/// model with a smaller window fails with a context-length error, which compaction handles.
const DEFAULT_LIMITS: ModelLimits = ModelLimits {
    context_window: 128_000,
    max_output_tokens: 8_192,
};

struct KnownModel {
    name: &'static str,
    limits: ModelLimits,
    /// Whether it produces reasoning that must be sent back (OpenAI reasoning models, which
    /// also reject `include: ["reasoning.encrypted_content"]` when they are not one).
    reasoning: bool,
}

const fn model(name: &'static str, context: u64, output: u32, reasoning: bool) -> KnownModel {
    KnownModel {
        name,
        limits: ModelLimits {
            context_window: context,
            max_output_tokens: output,
        },
        reasoning,
    }
}

/// From the providers' model documentation as of 2025-11.
const MODELS: &[KnownModel] = &[
    model("gpt-5.1", 400_000, 128_000, true),
    model("gpt-5.1-codex", 400_000, 128_000, true),
    model("gpt-5", 400_000, 128_000, true),
    model("gpt-5-mini", 400_000, 128_000, true),
    model("gpt-5-nano", 400_000, 128_000, true),
    model("gpt-5-codex", 400_000, 128_000, true),
    model("gpt-5-chat", 128_000, 16_384, false),
    model("gpt-4.1", 1_047_576, 32_768, false),
    model("gpt-4.1-mini", 1_047_576, 32_768, false),
    model("gpt-4.1-nano", 1_047_576, 32_768, false),
    model("gpt-4o", 128_000, 16_384, false),
    model("gpt-4o-mini", 128_000, 16_384, false),
    model("o1", 200_000, 100_000, true),
    model("o3", 200_000, 100_000, true),
    model("o3-mini", 200_000, 100_000, true),
    model("o4-mini", 200_000, 100_000, true),
    model("codex-mini", 200_000, 100_000, true),
    model("claude-opus-4-5", 200_000, 64_000, false),
    model("claude-opus-4-1", 200_000, 32_000, false),
    model("claude-opus-4", 200_000, 32_000, false),
    model("claude-sonnet-4-5", 200_000, 64_000, false),
    model("claude-sonnet-4", 200_000, 64_000, false),
    model("claude-haiku-4-5", 200_000, 64_000, false),
    model("claude-3-7-sonnet", 200_000, 64_000, false),
    model("claude-3-5-sonnet", 200_000, 8_192, false),
    model("claude-3-5-haiku", 200_000, 8_192, false),
    model("claude-3-haiku", 200_000, 4_096, false),
];

/// The context window and output limit of `spec`'s model, or defaults when it is unknown.
pub fn limits(spec: &ModelSpec) -> ModelLimits {
    known(spec).map_or(DEFAULT_LIMITS, |model| model.limits)
}

/// Whether `spec`'s model is a known reasoning model.
pub(crate) fn is_reasoning(spec: &ModelSpec) -> bool {
    known(spec).is_some_and(|model| model.reasoning)
}

fn known(spec: &ModelSpec) -> Option<&'static KnownModel> {
    if matches!(spec.provider, Provider::Replay { .. }) {
        return None;
    }
    find(MODELS, &spec.model, |model| model.name)
}

/// The entry of `table` for model `name`: exact, else the known name that `name` is a dated
/// snapshot of.
pub(crate) fn find<'t, T>(table: &'t [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'t T> {
    let name = name.rsplit('/').next().unwrap_or(name);
    table.iter().find(|entry| key(entry) == name).or_else(|| {
        table.iter().find(|entry| {
            name.strip_prefix(key(entry))
                .and_then(|rest| rest.strip_prefix(['-', '@']))
                .is_some_and(is_snapshot)
        })
    })
}

/// `20250929`, `2025-04-14` or `latest`.
fn is_snapshot(suffix: &str) -> bool {
    let digits = suffix.chars().filter(char::is_ascii_digit).count();
    suffix == "latest" || (digits >= 8 && suffix.chars().all(|c| c.is_ascii_digit() || c == '-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn limits_of(spec: &str) -> ModelLimits {
        limits(&spec.parse().unwrap())
    }

    #[test]
    fn knows_models_and_their_snapshots() {
        assert_eq!(limits_of("openai:gpt-4.1").context_window, 1_047_576);
        assert_eq!(
            limits_of("openai:gpt-4.1-2025-04-14").max_output_tokens,
            32_768
        );
        assert_eq!(limits_of("openai:gpt-4.1-mini").context_window, 1_047_576);
        assert_eq!(
            limits_of("anthropic:claude-sonnet-4-5-20250929").max_output_tokens,
            64_000
        );
        assert_eq!(
            limits_of("anthropic:claude-3-5-haiku-latest").max_output_tokens,
            8_192
        );
        assert_eq!(
            limits_of("openai:anthropic/claude-opus-4-1").max_output_tokens,
            32_000
        );
    }

    #[test]
    fn unknown_models_get_defaults_not_a_near_neighbour() {
        for spec in [
            "openai:qwen3:8b",
            "openai:o3-pro",
            "openai:gpt-4.1-turbo",
            "replay:gpt-5",
        ] {
            assert_eq!(limits_of(spec), DEFAULT_LIMITS, "{spec}");
        }
    }

    #[test]
    fn knows_which_models_reason() {
        let reasoning = |spec: &str| is_reasoning(&spec.parse().unwrap());
        assert!(reasoning("openai-responses:gpt-5"));
        assert!(reasoning("openai-responses:o4-mini-2025-04-16"));
        assert!(!reasoning("openai-responses:gpt-5-chat-latest"));
        assert!(!reasoning("openai-responses:gpt-4.1"));
        assert!(!reasoning("openai-responses:my-local-model"));
    }
}
