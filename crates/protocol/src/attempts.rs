//! Best-of-N: a task that runs several independent attempts at one request, as tasks of their
//! own, and takes the best one's branch as its result.
//!
//! The attempts are ranked by what nightshift measured, in this order: the task succeeded (its
//! checks passed on the committed tree), more checks passed, a review of it found less (by
//! severity), a smaller diff, and then the attempt that was asked for first.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::{CommandPhase, Event, EventRecord, Severity, Task, TaskId, TaskState};

/// The most attempts one task may run.
pub const MAX_ATTEMPTS: usize = 8;

/// Which best-of-N task an attempt belongs to, and which of its attempts it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptOf {
    pub task: TaskId,
    /// 0-based, in the order the attempts were asked for.
    pub index: u32,
}

/// How many findings of each severity a review reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingCounts {
    pub critical: u32,
    pub high: u32,
    pub medium: u32,
    pub low: u32,
}

impl FindingCounts {
    pub fn count(severities: impl IntoIterator<Item = Severity>) -> Self {
        let mut counts = FindingCounts::default();
        for severity in severities {
            match severity {
                Severity::Critical => counts.critical += 1,
                Severity::High => counts.high += 1,
                Severity::Medium => counts.medium += 1,
                Severity::Low => counts.low += 1,
            }
        }
        counts
    }

    pub fn total(&self) -> u32 {
        self.critical + self.high + self.medium + self.low
    }

    /// Most severe first: one critical finding outweighs any number of high ones, and so on.
    fn key(&self) -> (u32, u32, u32, u32) {
        (self.critical, self.high, self.medium, self.low)
    }
}

impl std::fmt::Display for FindingCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.total() == 0 {
            return f.write_str("no findings");
        }
        let parts: Vec<String> = [
            (self.critical, "critical"),
            (self.high, "high"),
            (self.medium, "medium"),
            (self.low, "low"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| format!("{n} {name}"))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

/// One attempt as the ranking sees it: what it did, measured from its task and its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRank {
    pub task_id: TaskId,
    pub index: u32,
    pub model: String,
    pub state: TaskState,
    pub checks_passed: u32,
    pub checks_failed: u32,
    /// Its branch, when it committed anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Lines added plus lines removed by its last commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines_changed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_changed: Option<u32>,
    /// The review task of this attempt, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<TaskId>,
    /// What that review found, once it submitted its findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<FindingCounts>,
    /// Dollars its model use cost (and its review's), when the price is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl AttemptRank {
    /// The attempt `task` (of `model`), as its log tells it.
    pub fn read(task: &Task, index: u32, events: &[EventRecord]) -> Self {
        let mut rank = AttemptRank {
            task_id: task.id,
            index,
            model: task.spec.model.clone(),
            state: task.state,
            checks_passed: 0,
            checks_failed: 0,
            branch: task.branch.clone(),
            lines_changed: None,
            files_changed: None,
            review: None,
            findings: None,
            cost_usd: None,
        };
        for record in events {
            match &record.event {
                Event::CommandFinished {
                    phase: CommandPhase::Check,
                    ok,
                    ..
                } => match ok {
                    true => rank.checks_passed += 1,
                    false => rank.checks_failed += 1,
                },
                Event::Committed {
                    files_changed,
                    insertions,
                    deletions,
                    ..
                } => {
                    rank.lines_changed = Some(insertions + deletions);
                    rank.files_changed = Some(*files_changed);
                }
                Event::Ended { cost_usd, .. } => rank.cost_usd = *cost_usd,
                _ => {}
            }
        }
        rank
    }

    /// Adds what the review `review` of this attempt found, from its log.
    pub fn reviewed(&mut self, review: TaskId, events: &[EventRecord]) {
        self.review = Some(review);
        for record in events {
            match &record.event {
                Event::ReviewSubmitted { findings, .. } => {
                    self.findings = Some(FindingCounts::count(
                        findings.iter().map(|finding| finding.severity),
                    ));
                }
                Event::Ended {
                    cost_usd: Some(cost),
                    ..
                } => self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost),
                _ => {}
            }
        }
    }

    /// Whether this attempt is a candidate at all: it succeeded and left a branch.
    pub fn succeeded(&self) -> bool {
        self.state == TaskState::Succeeded && self.branch.is_some()
    }

    /// Better first; see the module's documentation for the order.
    pub fn compare(&self, other: &AttemptRank) -> Ordering {
        other
            .succeeded()
            .cmp(&self.succeeded())
            .then_with(|| other.branch.is_some().cmp(&self.branch.is_some()))
            .then_with(|| other.checks_passed.cmp(&self.checks_passed))
            .then_with(|| self.checks_failed.cmp(&other.checks_failed))
            .then_with(|| match (&self.findings, &other.findings) {
                (Some(a), Some(b)) => a.key().cmp(&b.key()),
                // An attempt whose review said nothing (it failed) comes after one that was
                // read and judged.
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| {
                let a = self.lines_changed.unwrap_or(u32::MAX);
                let b = other.lines_changed.unwrap_or(u32::MAX);
                a.cmp(&b)
            })
            .then_with(|| self.index.cmp(&other.index))
    }
}

/// Sorts the attempts best first.
pub fn rank_attempts(attempts: &mut [AttemptRank]) {
    attempts.sort_by(|a, b| a.compare(b));
}

/// Why the first of `ranked` (best first) came first, in words.
pub fn choice_reason(ranked: &[AttemptRank]) -> String {
    let Some(best) = ranked.first() else {
        return "there were no attempts".into();
    };
    let Some(next) = ranked.get(1) else {
        return "it was the only attempt".into();
    };
    let succeeded = ranked.iter().filter(|rank| rank.succeeded()).count();
    if !best.succeeded() {
        return match best.branch {
            Some(_) => format!(
                "no attempt succeeded; it passed the most checks ({} of {})",
                best.checks_passed,
                best.checks_passed + best.checks_failed
            ),
            None => "no attempt succeeded or left a branch".into(),
        };
    }
    if succeeded == 1 {
        return "it was the only attempt that succeeded (its checks passed)".into();
    }
    if best.checks_passed != next.checks_passed || best.checks_failed != next.checks_failed {
        return format!(
            "it passed more checks ({} against {})",
            best.checks_passed, next.checks_passed
        );
    }
    match (&best.findings, &next.findings) {
        (Some(a), Some(b)) if a.key() != b.key() => {
            return format!("its review found less ({a}, against {b})");
        }
        (Some(a), None) => {
            return format!("its review found {a}, and the other's review did not finish");
        }
        _ => {}
    }
    match (best.lines_changed, next.lines_changed) {
        (Some(a), Some(b)) if a != b => {
            format!("its checks and review tied, and its diff is smaller ({a} lines against {b})")
        }
        _ => "it tied with the next, and was asked for first".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn attempt(index: u32, state: TaskState, passed: u32, lines: Option<u32>) -> AttemptRank {
        AttemptRank {
            task_id: TaskId::new(),
            index,
            model: "openai:m".into(),
            state,
            checks_passed: passed,
            checks_failed: 0,
            branch: lines.map(|_| format!("nightshift/{index}")),
            lines_changed: lines,
            files_changed: lines.map(|_| 1),
            review: None,
            findings: None,
            cost_usd: None,
        }
    }

    #[test]
    fn success_comes_before_everything_else() {
        let mut ranked = vec![
            attempt(0, TaskState::Failed, 1, Some(2)),
            attempt(1, TaskState::Succeeded, 1, Some(500)),
            attempt(2, TaskState::Failed, 0, None),
        ];
        rank_attempts(&mut ranked);
        assert_eq!(ranked[0].index, 1);
        assert_eq!(ranked[1].index, 0);
        assert_eq!(
            choice_reason(&ranked),
            "it was the only attempt that succeeded (its checks passed)"
        );
    }

    #[test]
    fn a_review_outweighs_the_diff_and_a_severe_finding_outweighs_many_small_ones() {
        let mut small = attempt(0, TaskState::Succeeded, 2, Some(3));
        small.findings = Some(FindingCounts::count([Severity::Critical]));
        let mut large = attempt(1, TaskState::Succeeded, 2, Some(90));
        large.findings = Some(FindingCounts::count([Severity::Low, Severity::Low]));
        let mut ranked = vec![small, large];
        rank_attempts(&mut ranked);
        assert_eq!(ranked[0].index, 1);
        assert_eq!(
            choice_reason(&ranked),
            "its review found less (2 low, against 1 critical)"
        );
    }

    #[test]
    fn equals_are_told_apart_by_the_diff_then_by_order() {
        let mut ranked = vec![
            attempt(0, TaskState::Succeeded, 1, Some(40)),
            attempt(1, TaskState::Succeeded, 1, Some(12)),
            attempt(2, TaskState::Succeeded, 1, Some(12)),
        ];
        rank_attempts(&mut ranked);
        let order: Vec<u32> = ranked.iter().map(|rank| rank.index).collect();
        assert_eq!(order, [1, 2, 0]);
        assert_eq!(
            choice_reason(&ranked),
            "it tied with the next, and was asked for first"
        );
    }

    #[test]
    fn an_attempt_is_read_from_its_log() {
        let spec: crate::TaskSpec =
            serde_json::from_str(r#"{"repo":"/r","prompt":"p","model":"openai:a","max_turns":3}"#)
                .unwrap();
        let mut task = Task::queued(TaskId::new(), spec, Timestamp::UNIX_EPOCH);
        task.state = TaskState::Succeeded;
        task.branch = Some("nightshift/x".into());
        let record = |seq, event| EventRecord {
            task_id: task.id,
            seq,
            at: Timestamp::UNIX_EPOCH,
            event,
        };
        let check = |ok| Event::CommandFinished {
            phase: CommandPhase::Check,
            name: "test".into(),
            command: "make test".into(),
            exit_code: if ok { 0 } else { 1 },
            ok,
            duration_ms: 5,
            output_tail: String::new(),
            artifact: None,
        };
        let events = [
            record(1, check(true)),
            record(2, check(false)),
            record(
                3,
                Event::Committed {
                    branch: "nightshift/x".into(),
                    commit: "c".repeat(40),
                    files_changed: 2,
                    insertions: 7,
                    deletions: 3,
                    incomplete: false,
                },
            ),
        ];
        let rank = AttemptRank::read(&task, 4, &events);
        assert_eq!((rank.checks_passed, rank.checks_failed), (1, 1));
        assert_eq!(rank.lines_changed, Some(10));
        assert_eq!(rank.index, 4);
        assert!(rank.succeeded());
    }
}
