//! What a call costs: a price per model, and the arithmetic from [`Usage`] to dollars.
//!
//! The built-in table covers well-known OpenAI and Anthropic models and can be wrong the day a
//! provider changes its prices, so users override it in config. A model we know no price for
//! has none: the UI says so rather than guessing.

use std::collections::BTreeMap;

use nightshift_protocol::Usage;
use serde::{Deserialize, Serialize};

use crate::catalog::find;
use crate::{ModelSpec, Provider};

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Input tokens not served from the prompt cache.
    pub input_per_mtok: f64,
    /// Input tokens read from the prompt cache.
    pub cached_input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Pricing {
    /// Dollars for `usage`: cached input at the cached rate, the rest of the input at the input
    /// rate, output at the output rate. Anthropic bills writing the cache at 1.25 times the
    /// input rate; [`Usage`] does not count those tokens apart, so they are billed as input.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        (uncached as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// When [`PRICES`] was taken from the providers' public price pages.
pub const PRICES_AS_OF: &str = "2025-11";

const fn price(
    name: &'static str,
    input: f64,
    cached: f64,
    output: f64,
) -> (&'static str, Pricing) {
    (
        name,
        Pricing {
            input_per_mtok: input,
            cached_input_per_mtok: cached,
            output_per_mtok: output,
        },
    )
}

/// Standard (not batch, not priority) prices, as of [`PRICES_AS_OF`]. Anthropic's are for
/// prompts up to 200k tokens; cache reads are a tenth of the input price.
const PRICES: &[(&str, Pricing)] = &[
    price("gpt-5.1", 1.25, 0.125, 10.00),
    price("gpt-5.1-codex", 1.25, 0.125, 10.00),
    price("gpt-5", 1.25, 0.125, 10.00),
    price("gpt-5-codex", 1.25, 0.125, 10.00),
    price("gpt-5-chat", 1.25, 0.125, 10.00),
    price("gpt-5-mini", 0.25, 0.025, 2.00),
    price("gpt-5-nano", 0.05, 0.005, 0.40),
    price("gpt-4.1", 2.00, 0.50, 8.00),
    price("gpt-4.1-mini", 0.40, 0.10, 1.60),
    price("gpt-4.1-nano", 0.10, 0.025, 0.40),
    price("gpt-4o", 2.50, 1.25, 10.00),
    price("gpt-4o-mini", 0.15, 0.075, 0.60),
    price("o1", 15.00, 7.50, 60.00),
    price("o3", 2.00, 0.50, 8.00),
    price("o3-mini", 1.10, 0.55, 4.40),
    price("o4-mini", 1.10, 0.275, 4.40),
    price("codex-mini", 1.50, 0.375, 6.00),
    price("claude-opus-4-5", 5.00, 0.50, 25.00),
    price("claude-opus-4-1", 15.00, 1.50, 75.00),
    price("claude-opus-4", 15.00, 1.50, 75.00),
    price("claude-sonnet-4-5", 3.00, 0.30, 15.00),
    price("claude-sonnet-4", 3.00, 0.30, 15.00),
    price("claude-haiku-4-5", 1.00, 0.10, 5.00),
    price("claude-3-7-sonnet", 3.00, 0.30, 15.00),
    price("claude-3-5-sonnet", 3.00, 0.30, 15.00),
    price("claude-3-5-haiku", 0.80, 0.08, 4.00),
    price("claude-3-haiku", 0.25, 0.03, 1.25),
];

/// The price of `spec`: an override keyed by the whole spec (`anthropic:claude-sonnet-4-5`) or
/// by the model name wins; then the built-in table, by exact name or dated snapshot. `None`
/// when no price is known (local models, replays, new models).
pub fn price_for(spec: &ModelSpec, overrides: &BTreeMap<String, Pricing>) -> Option<Pricing> {
    if let Some(pricing) = overrides
        .get(&spec.to_string())
        .or_else(|| overrides.get(&spec.model))
    {
        return Some(*pricing);
    }
    if matches!(spec.provider, Provider::Replay { .. }) {
        return None;
    }
    find(PRICES, &spec.model, |(name, _)| name).map(|(_, pricing)| *pricing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ModelSpec {
        text.parse().unwrap()
    }

    #[test]
    fn bills_cached_input_at_the_cached_rate() {
        let pricing = price_for(&spec("anthropic:claude-sonnet-4-5"), &BTreeMap::new()).unwrap();
        let usage = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 800_000,
            output_tokens: 100_000,
        };
        // 200k at $3 + 800k at $0.30 + 100k at $15.
        let expected = 0.6 + 0.24 + 1.5;
        assert!(
            (pricing.cost(&usage) - expected).abs() < 1e-9,
            "{}",
            pricing.cost(&usage)
        );
        assert_eq!(pricing.cost(&Usage::default()), 0.0);
        let odd = Usage {
            input_tokens: 10,
            cached_input_tokens: 20,
            output_tokens: 0,
        };
        assert!(
            pricing.cost(&odd) > 0.0,
            "cached beyond input is capped, not negative"
        );
    }

    #[test]
    fn matches_dated_snapshots_and_router_names() {
        let none = BTreeMap::new();
        let gpt41 = price_for(&spec("openai:gpt-4.1"), &none).unwrap();
        assert_eq!(
            price_for(&spec("openai:gpt-4.1-2025-04-14"), &none),
            Some(gpt41)
        );
        assert_eq!(
            price_for(&spec("openai-responses:gpt-4.1"), &none),
            Some(gpt41)
        );
        assert_eq!(
            price_for(&spec("openai:openai/gpt-4.1"), &none),
            Some(gpt41)
        );
        assert_eq!(
            price_for(&spec("anthropic:claude-sonnet-4-20250514"), &none)
                .unwrap()
                .output_per_mtok,
            15.0
        );
        assert_eq!(
            price_for(&spec("openai:gpt-4.1-mini"), &none)
                .unwrap()
                .input_per_mtok,
            0.40
        );
    }

    #[test]
    fn unknown_models_have_no_price() {
        let none = BTreeMap::new();
        for unknown in ["openai:qwen3:8b", "openai:o3-pro", "replay:gpt-4.1"] {
            assert_eq!(price_for(&spec(unknown), &none), None, "{unknown}");
        }
    }

    #[test]
    fn overrides_win_by_spec_then_by_model() {
        let local = Pricing {
            input_per_mtok: 0.0,
            cached_input_per_mtok: 0.0,
            output_per_mtok: 0.0,
        };
        let negotiated = Pricing {
            input_per_mtok: 1.0,
            cached_input_per_mtok: 0.1,
            output_per_mtok: 4.0,
        };
        let overrides = BTreeMap::from([
            ("qwen3:8b".to_string(), local),
            ("gpt-4.1".to_string(), negotiated),
            ("openai-responses:gpt-4.1".to_string(), local),
        ]);
        assert_eq!(price_for(&spec("openai:qwen3:8b"), &overrides), Some(local));
        assert_eq!(
            price_for(&spec("openai:gpt-4.1"), &overrides),
            Some(negotiated)
        );
        assert_eq!(
            price_for(&spec("openai-responses:gpt-4.1"), &overrides),
            Some(local)
        );
    }

    #[test]
    fn every_price_is_sane() {
        for (name, pricing) in PRICES {
            assert!(
                pricing.cached_input_per_mtok <= pricing.input_per_mtok,
                "{name}"
            );
            assert!(pricing.input_per_mtok <= pricing.output_per_mtok, "{name}");
        }
    }
}
