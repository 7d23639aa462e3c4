//! A session's egress requests as task events. Every request that went through is logged; the
//! ones the proxy refused (or could not connect) are logged one by one only up to a rate, so
//! that an agent looping on a blocked host cannot flood the task's log: beyond it they are
//! counted, by destination, and a summary says how many were not logged one by one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nightshift_protocol::Event;
use nightshift_sandbox::{EgressEvent, EgressVerdict};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::sink::TaskLog;

/// How many refused requests are logged one by one before the rate applies.
const BURST: f64 = 20.0;
/// How often, beyond the burst, one more refused request is logged one by one.
const ONE_PER: Duration = Duration::from_secs(6);
/// How long counted refusals wait, at most, for their summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// How many destinations a summary names; the rest are counted together.
const NAMED: usize = 10;

/// Decides which refused requests of one session are logged one by one, and counts the rest.
#[derive(Debug)]
pub(crate) struct RefusalRate {
    tokens: f64,
    refilled: Instant,
    /// Not logged one by one since the last summary, by `host:port`.
    counted: BTreeMap<String, u64>,
    /// Those to destinations beyond the [`NAMED`] first.
    others: u64,
    /// When the oldest counted refusal was counted.
    since: Option<Instant>,
}

impl RefusalRate {
    pub(crate) fn new(now: Instant) -> RefusalRate {
        RefusalRate {
            tokens: BURST,
            refilled: now,
            counted: BTreeMap::new(),
            others: 0,
            since: None,
        }
    }

    /// Whether the refused request to `destination` at `now` is logged one by one; if not, it
    /// is counted for the next summary.
    pub(crate) fn admit(&mut self, now: Instant, destination: &str) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.tokens = (self.tokens + elapsed.as_secs_f64() / ONE_PER.as_secs_f64()).min(BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        let named = self.counted.len();
        match self.counted.get_mut(destination) {
            Some(count) => *count += 1,
            None if named < NAMED => {
                self.counted.insert(destination.to_string(), 1);
            }
            None => self.others += 1,
        }
        self.since.get_or_insert(now);
        false
    }

    /// When the counted refusals are due for their summary, if any are counted.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + SUMMARY_EVERY)
    }

    /// The summary of what was counted since the last one, and a fresh count; `None` when
    /// nothing was.
    pub(crate) fn summary(&mut self) -> Option<String> {
        self.since.take()?;
        let counted = std::mem::take(&mut self.counted);
        let others = std::mem::take(&mut self.others);
        let total: u64 = counted.values().sum::<u64>() + others;
        let mut named: Vec<String> = counted
            .into_iter()
            .map(|(destination, count)| format!("{destination} ×{count}"))
            .collect();
        if others > 0 {
            named.push(format!("other destinations ×{others}"));
        }
        Some(format!(
            "{total} more egress request(s) were refused (or could not connect) and are not logged one by one, to keep the log readable: {}",
            named.join(", ")
        ))
    }
}

/// Appends `requests` to the task's log until the session's proxy is gone, refusals at a rate
/// (see [`RefusalRate`]), with a summary of the rest when due and at the end.
pub(crate) async fn log_egress(log: TaskLog, mut requests: UnboundedReceiver<EgressEvent>) {
    let mut rate = RefusalRate::new(Instant::now());
    loop {
        let due = rate.due();
        let next = tokio::select! {
            next = requests.recv() => next,
            () = sleep_until(due), if due.is_some() => {
                if let Some(message) = rate.summary() {
                    let _ = log.append(Event::Warning { message }).await;
                }
                continue;
            }
        };
        let Some(request) = next else { break };
        let allowed = matches!(request.verdict, EgressVerdict::Allowed);
        let destination = format!("{}:{}", request.host, request.port);
        if !allowed && !rate.admit(Instant::now(), &destination) {
            continue;
        }
        let _ = log
            .append(Event::Egress {
                host: request.host,
                port: request.port,
                method: request.method,
                allowed,
                bytes_up: request.bytes_up,
                bytes_down: request.bytes_down,
                detail: request.detail,
            })
            .await;
    }
    if let Some(message) = rate.summary() {
        let _ = log.append(Event::Warning { message }).await;
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_loop_of_refusals_is_logged_up_to_a_rate_and_summarized() {
        let start = Instant::now();
        let mut rate = RefusalRate::new(start);
        let logged = (0..10_000)
            .filter(|i| rate.admit(start, &format!("blocked-{}.example:443", i % 15)))
            .count();
        assert_eq!(logged, BURST as usize);
        let summary = rate.summary().unwrap();
        assert!(
            summary.starts_with("9980 more egress request(s) were refused"),
            "{summary}"
        );
        assert!(summary.contains("other destinations ×"), "{summary}");
        assert_eq!(summary.matches('×').count(), NAMED + 1, "{summary}");
        assert_eq!(rate.summary(), None, "counted once");
        // Time earns one more refusal logged per interval, never more than the burst.
        let later = start + ONE_PER * 2;
        assert!(rate.admit(later, "a:443") && rate.admit(later, "a:443"));
        assert!(!rate.admit(later, "a:443"));
        assert_eq!(rate.due(), Some(later + SUMMARY_EVERY));
        let much_later = later + ONE_PER * 1000;
        let logged = (0..100).filter(|_| rate.admit(much_later, "a:443")).count();
        assert_eq!(logged, BURST as usize);
    }
}
