//! Model specs (`openai:MODEL`, `anthropic:MODEL`, `replay:PATH`, ...) and the configuration
//! that turns one into a client.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::cassette::{Recorder, Redaction, Replay};
use crate::{AnthropicMessages, ModelClient, ModelError, OpenAiChat, OpenAiResponses};

/// What `replay:PATH` ends with to compare every request with the recorded one.
const STRICT_SUFFIX: &str = "?strict";

/// Which wire protocol a spec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI Chat Completions, and every server compatible with it: `openai:`.
    OpenAiChat,
    /// OpenAI's Responses API: `openai-responses:`.
    OpenAiResponses,
    /// Anthropic's Messages API: `anthropic:`.
    Anthropic,
    /// Answers served from a recorded cassette: `replay:PATH`, or `replay:PATH?strict` to fail
    /// on the first request that differs from the recorded one.
    Replay { strict: bool },
}

impl Provider {
    /// The prefix of specs for this provider.
    pub fn prefix(self) -> &'static str {
        match self {
            Provider::OpenAiChat => "openai",
            Provider::OpenAiResponses => "openai-responses",
            Provider::Anthropic => "anthropic",
            Provider::Replay { .. } => "replay",
        }
    }
}

/// A parsed model spec such as `openai:gpt-4.1`. For `replay:`, `model` is the cassette's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub provider: Provider,
    pub model: String,
}

impl FromStr for ModelSpec {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let supported = "openai, openai-responses, anthropic, replay";
        let Some((provider, model)) = text.split_once(':') else {
            return Err(ModelError::Config(format!(
                "model spec `{text}` has no provider; write it as PROVIDER:MODEL, e.g. openai:gpt-4.1 (providers: {supported})"
            )));
        };
        let provider = match provider {
            "openai" => Provider::OpenAiChat,
            "openai-responses" => Provider::OpenAiResponses,
            "anthropic" => Provider::Anthropic,
            "replay" => Provider::Replay {
                strict: model.ends_with(STRICT_SUFFIX),
            },
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model provider `{other}` in `{text}` (supported: {supported})"
                )));
            }
        };
        let model = match provider {
            Provider::Replay { strict: true } => &model[..model.len() - STRICT_SUFFIX.len()],
            _ => model,
        };
        if model.trim().is_empty() {
            let what = match provider {
                Provider::Replay { .. } => "no cassette file",
                _ => "no model",
            };
            return Err(ModelError::Config(format!(
                "model spec `{text}` names {what}"
            )));
        }
        Ok(ModelSpec {
            provider,
            model: model.to_string(),
        })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match self.provider {
            Provider::Replay { strict: true } => STRICT_SUFFIX,
            _ => "",
        };
        write!(f, "{}:{}{suffix}", self.provider.prefix(), self.model)
    }
}

/// Keys, endpoints and recording. Read from the environment once, at the edge (the CLI), and
/// passed down, so tests never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    pub openai_api_key: Option<String>,
    /// Defaults to `https://api.openai.com/v1`.
    pub openai_base_url: Option<String>,
    pub anthropic_api_key: Option<String>,
    /// Defaults to `https://api.anthropic.com` (requests go to `{base}/v1/messages`).
    pub anthropic_base_url: Option<String>,
    /// When set, every call is appended to this cassette file (JSON lines) as it completes.
    pub record: Option<PathBuf>,
    /// What every string of a recorded call goes through before it is written (the task's
    /// secret redaction): a cassette keeps no more than the task's log does.
    pub record_redaction: Option<Redaction>,
}

impl ProviderConfig {
    /// Reads `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`.
    /// Recording is per task, so `record` is left for the runner to set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        ProviderConfig {
            openai_api_key: var("OPENAI_API_KEY"),
            openai_base_url: var("OPENAI_BASE_URL"),
            anthropic_api_key: var("ANTHROPIC_API_KEY"),
            anthropic_base_url: var("ANTHROPIC_BASE_URL"),
            record: None,
            record_redaction: None,
        }
    }
}

impl ProviderConfig {
    /// The environment variable of the API key `spec` needs and this configuration lacks, if
    /// any: `OPENAI_API_KEY` for `openai:` and `openai-responses:`, `ANTHROPIC_API_KEY` for
    /// `anthropic:`, none for `replay:`. Only the providers' own endpoints demand a key: with the
    /// base URL pointing elsewhere (a local OpenAI-compatible server such as Ollama or vLLM, or
    /// a proxy that adds its own key) a missing key is fine, as it is to the clients, which
    /// then send none.
    pub fn missing_key(&self, spec: &ModelSpec) -> Option<&'static str> {
        let (key, base_url, default, variable) = match spec.provider {
            Provider::OpenAiChat | Provider::OpenAiResponses => (
                &self.openai_api_key,
                &self.openai_base_url,
                crate::openai_chat::DEFAULT_BASE_URL,
                "OPENAI_API_KEY",
            ),
            Provider::Anthropic => (
                &self.anthropic_api_key,
                &self.anthropic_base_url,
                crate::anthropic::DEFAULT_BASE_URL,
                "ANTHROPIC_API_KEY",
            ),
            Provider::Replay { .. } => return None,
        };
        if crate::http::configured(key.as_deref()).is_some() {
            return None;
        }
        let elsewhere = crate::http::configured(base_url.as_deref()).is_some_and(|url| {
            !url.trim_end_matches('/')
                .eq_ignore_ascii_case(default.trim_end_matches('/'))
        });
        (!elsewhere).then_some(variable)
    }
}

/// Makes a client for `spec`, recording to `config.record` when set.
pub fn connect(
    spec: &ModelSpec,
    config: &ProviderConfig,
) -> Result<Arc<dyn ModelClient>, ModelError> {
    let client: Arc<dyn ModelClient> = match spec.provider {
        Provider::OpenAiChat => Arc::new(OpenAiChat::new(spec.clone(), config)?),
        Provider::OpenAiResponses => Arc::new(OpenAiResponses::new(spec.clone(), config)?),
        Provider::Anthropic => Arc::new(AnthropicMessages::new(spec.clone(), config)?),
        Provider::Replay { strict } => {
            Arc::new(Replay::open(spec.clone(), Path::new(&spec.model), strict)?)
        }
    };
    match &config.record {
        Some(path) => Ok(Arc::new(Recorder::create(
            client,
            path,
            config.record_redaction.clone(),
        )?)),
        None => Ok(client),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_provider() {
        for (text, provider, model) in [
            ("openai:gpt-4.1", Provider::OpenAiChat, "gpt-4.1"),
            // Model names may themselves contain colons (e.g. Ollama tags).
            ("openai:qwen3:8b", Provider::OpenAiChat, "qwen3:8b"),
            (
                "openai-responses:o4-mini",
                Provider::OpenAiResponses,
                "o4-mini",
            ),
            (
                "anthropic:claude-sonnet-4-5",
                Provider::Anthropic,
                "claude-sonnet-4-5",
            ),
            (
                "replay:/tmp/t.jsonl",
                Provider::Replay { strict: false },
                "/tmp/t.jsonl",
            ),
            (
                "replay:t.jsonl?strict",
                Provider::Replay { strict: true },
                "t.jsonl",
            ),
        ] {
            let spec: ModelSpec = text.parse().unwrap();
            assert_eq!(
                (spec.provider, spec.model.as_str()),
                (provider, model),
                "{text}"
            );
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn a_key_is_needed_only_by_the_providers_own_endpoints() {
        let spec = |text: &str| text.parse::<ModelSpec>().unwrap();
        let none = ProviderConfig::default();
        assert_eq!(
            none.missing_key(&spec("openai:gpt-x")),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(
            none.missing_key(&spec("openai-responses:o4-mini")),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(
            none.missing_key(&spec("anthropic:claude-x")),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(none.missing_key(&spec("replay:/tmp/c.jsonl")), None);

        let keys = ProviderConfig {
            openai_api_key: Some("k".into()),
            anthropic_api_key: Some("k".into()),
            ..ProviderConfig::default()
        };
        assert_eq!(keys.missing_key(&spec("openai:gpt-x")), None);
        assert_eq!(keys.missing_key(&spec("anthropic:claude-x")), None);

        let blank = ProviderConfig {
            openai_api_key: Some("  ".into()),
            ..ProviderConfig::default()
        };
        assert_eq!(
            blank.missing_key(&spec("openai:gpt-x")),
            Some("OPENAI_API_KEY")
        );

        // The default endpoint spelled out still needs the key; any other needs none.
        let official = ProviderConfig {
            openai_base_url: Some("https://api.openai.com/v1/".into()),
            anthropic_base_url: Some("https://api.anthropic.com".into()),
            ..ProviderConfig::default()
        };
        assert_eq!(
            official.missing_key(&spec("openai:gpt-x")),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(
            official.missing_key(&spec("anthropic:claude-x")),
            Some("ANTHROPIC_API_KEY")
        );
        let local = ProviderConfig {
            openai_base_url: Some("http://localhost:11434/v1".into()),
            anthropic_base_url: Some("http://127.0.0.1:8080".into()),
            ..ProviderConfig::default()
        };
        assert_eq!(local.missing_key(&spec("openai:qwen3:8b")), None);
        assert_eq!(local.missing_key(&spec("openai-responses:m")), None);
        assert_eq!(local.missing_key(&spec("anthropic:claude-x")), None);
    }

    #[test]
    fn explains_bad_specs() {
        for (bad, expected) in [
            ("gpt-4", "has no provider"),
            ("openai:", "names no model"),
            ("anthropic:  ", "names no model"),
            ("claude:x", "unknown model provider `claude`"),
            ("replay:", "names no cassette file"),
            ("replay:?strict", "names no cassette file"),
        ] {
            let err = bad.parse::<ModelSpec>().unwrap_err();
            assert!(matches!(err, ModelError::Config(_)), "{bad}");
            assert!(err.to_string().contains(expected), "{bad}: {err}");
        }
    }
}
