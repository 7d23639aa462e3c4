//! Model specs (`openai:MODEL`) and the configuration that turns one into a client.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::{ModelClient, ModelError, OpenAiChat};

/// Which wire protocol a spec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI Chat Completions, and every server compatible with it.
    OpenAiChat,
}

/// A parsed model spec such as `openai:gpt-4.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub provider: Provider,
    pub model: String,
}

impl FromStr for ModelSpec {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((provider, model)) = text.split_once(':') else {
            return Err(ModelError::Config(format!(
                "model spec `{text}` has no provider; write it as openai:MODEL"
            )));
        };
        if model.trim().is_empty() {
            return Err(ModelError::Config(format!(
                "model spec `{text}` names no model"
            )));
        }
        let provider = match provider {
            "openai" => Provider::OpenAiChat,
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model provider `{other}` in `{text}` (supported: openai)"
                )));
            }
        };
        Ok(ModelSpec {
            provider,
            model: model.to_string(),
        })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let provider = match self.provider {
            Provider::OpenAiChat => "openai",
        };
        write!(f, "{provider}:{}", self.model)
    }
}

/// Keys and endpoints. Read from the environment once, at the edge (the CLI), and passed down,
/// so tests never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    pub openai_api_key: Option<String>,
    /// Defaults to `https://api.openai.com/v1`.
    pub openai_base_url: Option<String>,
}

impl ProviderConfig {
    /// Reads `OPENAI_API_KEY` and `OPENAI_BASE_URL`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        ProviderConfig {
            openai_api_key: var("OPENAI_API_KEY"),
            openai_base_url: var("OPENAI_BASE_URL"),
        }
    }
}

/// Makes a client for `spec`.
pub fn connect(
    spec: &ModelSpec,
    config: &ProviderConfig,
) -> Result<Arc<dyn ModelClient>, ModelError> {
    match spec.provider {
        Provider::OpenAiChat => Ok(Arc::new(OpenAiChat::new(spec.clone(), config)?)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_specs() {
        let spec: ModelSpec = "openai:gpt-4.1".parse().unwrap();
        assert_eq!(spec.provider, Provider::OpenAiChat);
        assert_eq!(spec.model, "gpt-4.1");
        assert_eq!(spec.to_string(), "openai:gpt-4.1");
        // Model names may themselves contain colons (e.g. Ollama tags).
        assert_eq!(
            "openai:qwen3:8b".parse::<ModelSpec>().unwrap().model,
            "qwen3:8b"
        );
    }

    #[test]
    fn explains_bad_specs() {
        for bad in ["gpt-4", "openai:", "claude:x"] {
            let err = bad.parse::<ModelSpec>().unwrap_err().to_string();
            assert!(err.contains(bad.split(':').next().unwrap()), "{err}");
        }
    }
}
