//! The governor: budgets (turns, tokens, dollars, wall clock) and loop detection.
//!
//! A background agent that burns tokens in a loop is the most common complaint about open-source
//! agents. When a limit trips, the agent is told once and given one turn to wrap up (typically
//! to call `finish` with what is done and what remains); then the run stops, and the runner
//! commits the work so far as incomplete.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_protocol::Usage;

/// Turns a call's token usage into dollars, when the model's price is known.
pub type CostFn = Arc<dyn Fn(&Usage) -> f64 + Send + Sync>;

/// How many times the same tool call with the same result may happen before it counts as a
/// loop.
pub const LOOP_REPEATS: u32 = 3;

/// The limits of one run. `None` means unlimited.
#[derive(Debug, Clone)]
pub struct Budget {
    pub max_turns: u32,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_duration: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_turns: 50,
            max_tokens: None,
            max_cost_usd: None,
            max_duration: None,
        }
    }
}

/// What the governor says before a turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Continue,
    /// A limit tripped: tell the agent `reason` and let it take this one last turn.
    WrapUp(String),
}

pub(crate) struct Governor {
    budget: Budget,
    started: Instant,
    seen: HashMap<u64, u32>,
    looping: Option<String>,
}

impl Governor {
    pub(crate) fn new(budget: Budget) -> Self {
        Governor {
            budget,
            started: Instant::now(),
            seen: HashMap::new(),
            looping: None,
        }
    }

    /// When the time budget runs out, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.budget.max_duration.map(|max| self.started + max)
    }

    /// Checked before turn `turn` (1-based) with what was used so far.
    pub(crate) fn before_turn(&self, turn: u32, usage: &Usage, cost_usd: f64) -> Verdict {
        if let Some(reason) = &self.looping {
            return Verdict::WrapUp(reason.clone());
        }
        if turn >= self.budget.max_turns {
            return Verdict::WrapUp(format!(
                "this is the last of its {} turns",
                self.budget.max_turns
            ));
        }
        if let Some(max) = self.budget.max_tokens
            && usage.total() >= max
        {
            return Verdict::WrapUp(format!("it used {} of its {max} tokens", usage.total()));
        }
        if let Some(max) = self.budget.max_cost_usd
            && cost_usd >= max
        {
            return Verdict::WrapUp(format!("it spent ${cost_usd:.4} of its ${max:.2} budget"));
        }
        if let Some(max) = self.budget.max_duration
            && self.started.elapsed() >= max
        {
            return Verdict::WrapUp(format!("it ran for its {} seconds", max.as_secs()));
        }
        Verdict::Continue
    }

    /// Notes a finished tool call; the same (tool, arguments, result) seen `LOOP_REPEATS`
    /// times trips the loop limit.
    pub(crate) fn record_call(&mut self, tool: &str, arguments: &str, result: &str) {
        let mut hasher = DefaultHasher::new();
        (tool, arguments, result).hash(&mut hasher);
        let count = self.seen.entry(hasher.finish()).or_insert(0);
        *count += 1;
        if *count >= LOOP_REPEATS && self.looping.is_none() {
            self.looping = Some(format!(
                "it made the same `{tool}` call with the same result {count} times, which looks like a loop"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(total: u64) -> Usage {
        Usage {
            input_tokens: total,
            cached_input_tokens: 0,
            output_tokens: 0,
        }
    }

    #[test]
    fn the_last_turn_is_a_wrap_up_turn() {
        let governor = Governor::new(Budget {
            max_turns: 3,
            ..Budget::default()
        });
        assert_eq!(governor.before_turn(1, &usage(0), 0.0), Verdict::Continue);
        assert_eq!(governor.before_turn(2, &usage(0), 0.0), Verdict::Continue);
        assert!(
            matches!(governor.before_turn(3, &usage(0), 0.0), Verdict::WrapUp(r) if r.contains("3 turns"))
        );
    }

    #[test]
    fn tokens_dollars_and_time_trip() {
        let budget = Budget {
            max_turns: 100,
            max_tokens: Some(1000),
            max_cost_usd: Some(0.5),
            max_duration: None,
        };
        let governor = Governor::new(budget.clone());
        assert_eq!(
            governor.before_turn(2, &usage(999), 0.49),
            Verdict::Continue
        );
        assert!(
            matches!(governor.before_turn(2, &usage(1000), 0.0), Verdict::WrapUp(r) if r.contains("1000 tokens"))
        );
        assert!(
            matches!(governor.before_turn(2, &usage(0), 0.5), Verdict::WrapUp(r) if r.contains("$0.50"))
        );
        let timed = Governor::new(Budget {
            max_duration: Some(Duration::ZERO),
            ..budget
        });
        assert!(
            matches!(timed.before_turn(2, &usage(0), 0.0), Verdict::WrapUp(r) if r.contains("seconds"))
        );
    }

    #[test]
    fn repeated_identical_calls_are_a_loop() {
        let mut governor = Governor::new(Budget::default());
        governor.record_call("shell", r#"{"command":"make"}"#, "error 1");
        governor.record_call("shell", r#"{"command":"make"}"#, "error 2");
        governor.record_call("shell", r#"{"command":"make"}"#, "error 1");
        assert_eq!(governor.before_turn(2, &usage(0), 0.0), Verdict::Continue);
        governor.record_call("shell", r#"{"command":"make"}"#, "error 1");
        assert!(
            matches!(governor.before_turn(2, &usage(0), 0.0), Verdict::WrapUp(r) if r.contains("loop"))
        );
    }
}
