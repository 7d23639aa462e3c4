//! Plans: what a planning task hands back instead of a branch. A plan turns one broad request
//! into subtasks, each with its own prompt, the paths it expects to touch and the subtasks it
//! depends on, plus the checks that say the whole is done. Plans are versioned: the planner
//! writes version 1, each edit adds one, and a person approves one version.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Event, EventRecord};

/// Which plan an approved plan's run carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRun {
    /// The planning task.
    pub plan: crate::TaskId,
    /// The approved version.
    pub version: u32,
}

/// Which plan run a subtask belongs to, and which of its subtasks it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskOf {
    pub run: crate::TaskId,
    pub name: String,
}

/// The most subtasks one plan may have.
pub const MAX_SUBTASKS: usize = 20;

/// A plan, as the planner submits it and as a person edits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// What the whole is for, in a sentence or two.
    pub goal: String,
    /// What every subtask must respect (APIs to keep, things not to touch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Commands that pass once the whole is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance: Vec<AcceptanceCheck>,
    pub subtasks: Vec<Subtask>,
}

/// A command that says part of the plan is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptanceCheck {
    pub name: String,
    /// A shell command, run at the repository's top level; exit 0 is a pass.
    pub run: String,
}

/// One piece of the work, a task of its own once the plan is approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subtask {
    /// A short name, unique in the plan: lower-case letters, digits and `-`.
    pub name: String,
    /// What the subtask's agent is asked to do.
    pub prompt: String,
    /// The files and directories it expects to change, relative to the top level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The names of the subtasks whose result it starts from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl Plan {
    /// Checks what the types cannot: names, references, cycles and paths. The error says
    /// what is wrong and where.
    pub fn validate(&self) -> Result<(), String> {
        if self.goal.trim().is_empty() {
            return Err("`goal` is empty: say what the plan is for".into());
        }
        if self.subtasks.is_empty() {
            return Err("a plan needs at least one subtask".into());
        }
        if self.subtasks.len() > MAX_SUBTASKS {
            return Err(format!(
                "{} subtasks: a plan has at most {MAX_SUBTASKS}; make them larger",
                self.subtasks.len()
            ));
        }
        let mut names = BTreeSet::new();
        for check in &self.acceptance {
            if check.name.trim().is_empty() || check.run.trim().is_empty() {
                return Err("an acceptance check needs a `name` and a command to `run`".into());
            }
            if !names.insert(check.name.as_str()) {
                return Err(format!("two acceptance checks are named `{}`", check.name));
            }
        }
        names.clear();
        for subtask in &self.subtasks {
            let name = subtask.name.as_str();
            let valid = !name.is_empty()
                && name.len() <= 40
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(format!(
                    "subtask name `{name}`: use 1 to 40 lower-case letters, digits and `-`"
                ));
            }
            if !names.insert(name) {
                return Err(format!("two subtasks are named `{name}`"));
            }
            if subtask.prompt.trim().is_empty() {
                return Err(format!("subtask `{name}` has an empty `prompt`"));
            }
            for path in &subtask.paths {
                let bad = path.trim().is_empty()
                    || path.starts_with('/')
                    || path.split('/').any(|part| part == "..");
                if bad {
                    return Err(format!(
                        "subtask `{name}`: path `{path}` must be relative to the repository's top level, without `..`"
                    ));
                }
            }
        }
        for subtask in &self.subtasks {
            for dependency in &subtask.depends_on {
                if dependency == &subtask.name {
                    return Err(format!("subtask `{}` depends on itself", subtask.name));
                }
                if !names.contains(dependency.as_str()) {
                    return Err(format!(
                        "subtask `{}` depends on `{dependency}`, which is not in the plan",
                        subtask.name
                    ));
                }
            }
        }
        if let Some(name) = self.first_cycle() {
            return Err(format!(
                "the dependencies go round in a circle through `{name}`"
            ));
        }
        Ok(())
    }

    /// A subtask on a dependency cycle, if there is one.
    fn first_cycle(&self) -> Option<&str> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        loop {
            let before = done.len();
            for subtask in &self.subtasks {
                if !done.contains(subtask.name.as_str())
                    && subtask
                        .depends_on
                        .iter()
                        .all(|dependency| done.contains(dependency.as_str()))
                {
                    done.insert(subtask.name.as_str());
                }
            }
            if done.len() == self.subtasks.len() {
                return None;
            }
            if done.len() == before {
                return self
                    .subtasks
                    .iter()
                    .map(|subtask| subtask.name.as_str())
                    .find(|name| !done.contains(name));
            }
        }
    }

    /// The plan as text, for people: goal, constraints, checks, then each subtask.
    pub fn render(&self) -> String {
        let mut text = format!("Goal: {}\n", self.goal.trim());
        if !self.constraints.is_empty() {
            text.push_str("\nConstraints:\n");
            for constraint in &self.constraints {
                text.push_str(&format!("- {}\n", constraint.trim()));
            }
        }
        if !self.acceptance.is_empty() {
            text.push_str("\nAcceptance checks:\n");
            for check in &self.acceptance {
                text.push_str(&format!("- {}: `{}`\n", check.name, check.run));
            }
        }
        text.push_str(&format!("\nSubtasks ({}):\n", self.subtasks.len()));
        for (index, subtask) in self.subtasks.iter().enumerate() {
            text.push_str(&format!("{}. {}", index + 1, subtask.name));
            if !subtask.depends_on.is_empty() {
                text.push_str(&format!(" (after {})", subtask.depends_on.join(", ")));
            }
            text.push('\n');
            for line in subtask.prompt.trim().lines() {
                text.push_str(&format!("   {line}\n"));
            }
            if !subtask.paths.is_empty() {
                text.push_str(&format!("   touches: {}\n", subtask.paths.join(", ")));
            }
        }
        text
    }
}

/// A planning task's plan, every version of it, and the version approved: what `plan show
/// --json` prints and `GET /api/tasks/{id}/plan` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHistory {
    /// Oldest first.
    pub versions: Vec<PlanVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<u32>,
    /// The run that carries out the approved version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::TaskId>,
}

/// One version of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanVersion {
    pub version: u32,
    pub plan: Plan,
    /// `planner`, or the person who edited it.
    pub author: String,
}

impl PlanHistory {
    /// What the log of a planning task says about its plan.
    pub fn read(events: &[EventRecord]) -> PlanHistory {
        let mut history = PlanHistory {
            versions: Vec::new(),
            approved: None,
            run: None,
        };
        for record in events {
            match &record.event {
                // Two edits or approvals at the same moment: the first one written counts, and
                // nothing changes a plan once it is approved.
                Event::PlanSubmitted {
                    version,
                    plan,
                    author,
                } if history.version(*version).is_none() && history.approved.is_none() => {
                    history.versions.push(PlanVersion {
                        version: *version,
                        plan: plan.clone(),
                        author: author.clone(),
                    })
                }
                Event::PlanApproved { version, run, .. } if history.approved.is_none() => {
                    history.approved = Some(*version);
                    history.run = *run;
                }
                _ => {}
            }
        }
        history
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&PlanVersion> {
        self.versions.last()
    }

    pub fn version(&self, version: u32) -> Option<&PlanVersion> {
        self.versions.iter().find(|entry| entry.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtask(name: &str, depends_on: &[&str]) -> Subtask {
        Subtask {
            name: name.into(),
            prompt: format!("do {name}"),
            paths: vec![format!("src/{name}.rs")],
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn plan(subtasks: Vec<Subtask>) -> Plan {
        Plan {
            goal: "g".into(),
            constraints: vec![],
            acceptance: vec![AcceptanceCheck {
                name: "test".into(),
                run: "make test".into(),
            }],
            subtasks,
        }
    }

    #[test]
    fn a_plan_with_independent_and_dependent_subtasks_is_valid() {
        let plan = plan(vec![
            subtask("a", &[]),
            subtask("b", &[]),
            subtask("c", &["a", "b"]),
        ]);
        assert_eq!(plan.validate(), Ok(()));
        let text = plan.render();
        assert!(text.contains("3. c (after a, b)"), "{text}");
        assert!(text.contains("- test: `make test`"), "{text}");
    }

    #[test]
    fn in_the_history_the_first_edit_and_approval_written_count() {
        let record = |seq, event| EventRecord {
            task_id: crate::TaskId::new(),
            seq,
            at: jiff::Timestamp::UNIX_EPOCH,
            event,
        };
        let submitted = |version, goal: &str| Event::PlanSubmitted {
            version,
            plan: Plan {
                goal: goal.into(),
                ..plan(vec![subtask("a", &[])])
            },
            author: "p".into(),
        };
        let run = crate::TaskId::new();
        let approved = |version, run| Event::PlanApproved {
            version,
            by: None,
            run: Some(run),
        };
        let history = PlanHistory::read(&[
            record(1, submitted(1, "first")),
            record(2, submitted(2, "mine")),
            record(3, submitted(2, "theirs, at the same moment")),
            record(4, approved(2, run)),
            record(5, approved(1, crate::TaskId::new())),
            record(6, submitted(3, "after the approval")),
        ]);
        assert_eq!(history.versions.len(), 2);
        assert_eq!(history.latest().unwrap().plan.goal, "mine");
        assert_eq!((history.approved, history.run), (Some(2), Some(run)));
    }

    #[test]
    fn what_is_wrong_with_a_plan_is_said() {
        for (subtasks, said) in [
            (vec![], "at least one subtask"),
            (vec![subtask("A", &[])], "lower-case"),
            (
                vec![subtask("a", &[]), subtask("a", &[])],
                "two subtasks are named `a`",
            ),
            (vec![subtask("a", &["z"])], "`z`, which is not in the plan"),
            (vec![subtask("a", &["a"])], "depends on itself"),
            (
                vec![subtask("a", &["b"]), subtask("b", &["a"])],
                "round in a circle through `a`",
            ),
        ] {
            let error = plan(subtasks).validate().unwrap_err();
            assert!(error.contains(said), "{said:?} in {error}");
        }
        let mut escaping = plan(vec![subtask("a", &[])]);
        escaping.subtasks[0].paths = vec!["../etc".into()];
        assert!(escaping.validate().unwrap_err().contains("without `..`"));
    }
}
