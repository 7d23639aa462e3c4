//! One event of a task's log as text, for `logs` and `follow`.

use std::time::Duration;

use nightshift_protocol::{Event, EventRecord, PlanStepStatus};

use super::{call_brief, clock, dollars, duration, tokens};

/// One event as text: a header line and, for some events, indented detail lines.
pub fn event(record: &EventRecord) -> String {
    let time = clock(record.at);
    let (label, text, detail): (&str, String, Option<String>) = match &record.event {
        Event::Queued { spec } => (
            "queued",
            format!(
                "{} (base {}) with {}",
                spec.repo,
                spec.base.as_deref().unwrap_or("HEAD"),
                spec.model
            ),
            Some(spec.prompt.clone()),
        ),
        Event::StateChanged { state, detail } => (
            "state",
            match detail {
                Some(detail) => format!("{state}: {detail}"),
                None => state.to_string(),
            },
            None,
        ),
        Event::Claimed { worker } => ("claimed", format!("by {worker}"), None),
        Event::CheckedOut {
            base,
            base_commit,
            note,
        } => (
            "checkout",
            format!("{base} at {}", &base_commit[..base_commit.len().min(12)]),
            Some(note.clone()),
        ),
        Event::SandboxStarted { backend, isolated } => (
            "sandbox",
            if *isolated {
                format!("{backend} (isolated)")
            } else {
                format!("{backend} (NOT isolated)")
            },
            None,
        ),
        Event::McpServerReady { server, tools } => (
            "mcp",
            format!("{server}: {} tools ({})", tools.len(), tools.join(", ")),
            None,
        ),
        Event::ModelRequest {
            turn,
            model,
            messages,
        } => (
            "model",
            format!("turn {turn}: asking {model} ({messages} messages)"),
            None,
        ),
        Event::ModelResponse {
            turn,
            text,
            tool_calls,
            usage,
            duration_ms,
            ..
        } => {
            let calls = match tool_calls.len() {
                0 => String::new(),
                1 => " · 1 tool call".into(),
                n => format!(" · {n} tool calls"),
            };
            (
                "answer",
                format!(
                    "turn {turn}{calls} · {} tokens · {}",
                    tokens(usage),
                    duration(Duration::from_millis(*duration_ms))
                ),
                text.clone(),
            )
        }
        Event::ToolStarted {
            tool, arguments, ..
        } => ("tool", call_brief(tool, arguments), None),
        Event::ToolFinished {
            tool,
            ok,
            output,
            exit_code,
            duration_ms,
            ..
        } => {
            let status = match (ok, exit_code) {
                (_, Some(code)) => format!("exit {code}"),
                (true, None) => "ok".into(),
                (false, None) => "failed".into(),
            };
            (
                "result",
                format!(
                    "{tool}: {status} · {}",
                    duration(Duration::from_millis(*duration_ms))
                ),
                Some(output.clone()),
            )
        }
        Event::PlanUpdated { steps } => {
            let lines = steps
                .iter()
                .map(|step| {
                    let mark = match step.status {
                        PlanStepStatus::Pending => "[ ]",
                        PlanStepStatus::InProgress => "[>]",
                        PlanStepStatus::Completed => "[x]",
                    };
                    format!("{mark} {}", step.step)
                })
                .collect::<Vec<_>>()
                .join("\n");
            ("plan", format!("{} steps", steps.len()), Some(lines))
        }
        Event::AgentFinished { summary } => (
            "finished",
            "the agent called finish".into(),
            Some(summary.clone()),
        ),
        Event::QuestionAsked { question } => (
            "question",
            "the agent asks (answer with `nightshift say ID ANSWER`)".into(),
            Some(question.clone()),
        ),
        Event::PlanSubmitted {
            version,
            plan,
            author,
        } => (
            "plan",
            format!(
                "version {version} by {author}: {} subtask(s)",
                plan.subtasks.len()
            ),
            Some(plan.render()),
        ),
        Event::PlanApproved { version, by, run } => (
            "plan",
            format!(
                "version {version} approved{}{}",
                by.as_ref()
                    .map(|by| format!(" by {by}"))
                    .unwrap_or_default(),
                run.map(|run| format!("; its run: {}", run.short()))
                    .unwrap_or_default()
            ),
            None,
        ),
        Event::SubtaskQueued { name, task_id } => (
            "subtask",
            format!("{name} queued as {}", task_id.short()),
            None,
        ),
        Event::SubtaskMerged {
            name,
            task_id,
            commit,
        } => (
            "subtask",
            match commit {
                Some(commit) => format!(
                    "{name} ({}) merged: {}",
                    task_id.short(),
                    commit.get(..12).unwrap_or(commit)
                ),
                None => format!("{name} ({}) changed nothing", task_id.short()),
            },
            None,
        ),
        Event::MergeConflict {
            name,
            files,
            resolution,
        } => (
            "subtask",
            format!(
                "merging {name} conflicts in {}{}",
                files.join(", "),
                resolution
                    .map(|id| format!("; resolving it: {}", id.short()))
                    .unwrap_or_default()
            ),
            None,
        ),
        Event::AttemptQueued {
            task_id,
            index,
            model,
        } => (
            "attempt",
            format!(
                "attempt {} queued as {} ({model})",
                index + 1,
                task_id.short()
            ),
            None,
        ),
        Event::AttemptReviewQueued { attempt, review } => (
            "attempt",
            format!(
                "review {} queued of attempt {}",
                review.short(),
                attempt.short()
            ),
            None,
        ),
        Event::AttemptsRanked {
            ranking,
            chosen,
            reason,
        } => {
            let lines = ranking
                .iter()
                .map(|rank| {
                    format!(
                        "{}. attempt {} {} ({}) {}",
                        if Some(rank.task_id) == *chosen {
                            "*"
                        } else {
                            " "
                        },
                        rank.index + 1,
                        rank.task_id.short(),
                        rank.model,
                        rank.state
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let head = match chosen {
                Some(chosen) => format!("chose {}: {reason}", chosen.short()),
                None => format!("chose none: {reason}"),
            };
            ("attempts", head, Some(lines))
        }
        Event::ReviewQueued { task_id } => (
            "review",
            format!("[review] auto queued the review {}", task_id.short()),
            None,
        ),
        Event::ReviewSubmitted { summary, findings } => {
            let mut lines = vec![summary.trim().to_string()];
            for finding in findings {
                lines.push(format!(
                    "[{}] {}: {}",
                    finding.severity.as_str(),
                    finding.location(),
                    finding.problem
                ));
            }
            (
                "review",
                format!("{} finding(s)", findings.len()),
                Some(lines.join("\n")),
            )
        }
        Event::Committed {
            branch,
            commit,
            files_changed,
            insertions,
            deletions,
            incomplete,
        } => (
            "committed",
            format!(
                "{branch} at {} · {files_changed} files, +{insertions} -{deletions}{}",
                &commit[..commit.len().min(12)],
                if *incomplete {
                    " · INCOMPLETE work"
                } else {
                    ""
                }
            ),
            None,
        ),
        Event::BranchPushed {
            remote,
            branch,
            commit,
        } => (
            "pushed",
            format!(
                "{branch} at {} to {remote}",
                &commit[..commit.len().min(12)]
            ),
            None,
        ),
        Event::PullRequest {
            url,
            number,
            created,
        } => (
            "pull request",
            format!(
                "#{number} {} · {url}",
                if *created { "opened" } else { "updated" }
            ),
            None,
        ),
        Event::ForgeCommented { number } => {
            ("reported", format!("the outcome, on #{number}"), None)
        }
        Event::ForgeRetry {
            action,
            attempt,
            retry_at,
            reason,
        } => (
            "forge",
            match retry_at {
                Some(at) => format!(
                    "{action} failed (attempt {attempt}: {reason}); trying again at {}",
                    at.strftime("%H:%M:%S UTC")
                ),
                None => format!(
                    "{action} given up after {attempt} attempts ({reason}); the work stays on the branch"
                ),
            },
            None,
        ),
        Event::CancelRequested => ("cancel", "cancellation requested".into(), None),
        Event::ImageReady {
            reference,
            digest,
            layers,
        } => {
            let fetched: Vec<_> = layers.iter().filter(|layer| layer.fetched).collect();
            let bytes: u64 = fetched.iter().map(|layer| layer.bytes).sum();
            (
                "image",
                format!(
                    "{reference} at {} · {} layers, {} fetched ({bytes} bytes), {} from the store",
                    &digest[..digest.len().min(19)],
                    layers.len(),
                    fetched.len(),
                    layers.len() - fetched.len()
                ),
                None,
            )
        }
        Event::BuildStep {
            step,
            key,
            hit,
            reasons,
        } => (
            "build",
            if *hit {
                format!("{step}: layer {key} from the cache")
            } else {
                format!("{step}: building layer {key}")
            },
            (!reasons.is_empty()).then(|| reasons.join("\n")),
        ),
        Event::SetupCache { key, hit, reasons } => (
            "cache",
            if *hit {
                format!("setup layer {key}: hit")
            } else {
                format!("setup layer {key}: miss, building it")
            },
            (!reasons.is_empty()).then(|| reasons.join("\n")),
        ),
        Event::Egress {
            host,
            port,
            method,
            allowed,
            bytes_up,
            bytes_down,
            detail,
        } => (
            "egress",
            format!(
                "{method} {host}:{port} {} · {bytes_up} bytes up, {bytes_down} down",
                if *allowed { "allowed" } else { "DENIED" }
            ),
            detail.clone(),
        ),
        Event::FollowUpStarted { task_id } => (
            "follow-up",
            format!(
                "a message started follow-up task {} ({})",
                task_id.short(),
                task_id
            ),
            None,
        ),
        Event::EnvironmentLoaded {
            source,
            checks,
            has_setup,
            has_maintenance,
        } => {
            let mut parts = Vec::new();
            if *has_setup {
                parts.push("setup".to_string());
            }
            if *has_maintenance {
                parts.push("maintenance".to_string());
            }
            match checks.len() {
                0 => parts.push("no checks".to_string()),
                _ => parts.push(format!("checks: {}", checks.join(", "))),
            }
            ("env", format!("{source} · {}", parts.join(" · ")), None)
        }
        Event::CommandFinished {
            phase,
            name,
            ok,
            exit_code,
            duration_ms,
            output_tail,
            ..
        } => {
            let phase = serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let verdict = if *ok {
                "ok".to_string()
            } else {
                format!("FAILED (exit {exit_code})")
            };
            (
                "command",
                format!(
                    "{phase} {name}: {verdict} · {}",
                    duration(Duration::from_millis(*duration_ms))
                ),
                (!*ok).then(|| output_tail.clone()),
            )
        }
        Event::ContextCompacted {
            before_tokens,
            after_tokens,
            masked,
            summarized,
        } => (
            "compacted",
            format!(
                "context from ~{before_tokens} to ~{after_tokens} tokens: {masked} old outputs masked, {summarized} messages summarized"
            ),
            None,
        ),
        Event::MessageReceived { text, from } => (
            "message",
            match from {
                Some(from) => format!("from {from}"),
                None => "from the person who delegated the task".into(),
            },
            Some(text.clone()),
        ),
        Event::Released { worker, reason } => ("released", format!("by {worker}: {reason}"), None),
        Event::Warning { message } => ("warning", message.clone(), None),
        Event::Error {
            kind,
            message,
            hint,
        } => (
            "error",
            format!(
                "{}: {message}",
                serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            hint.as_ref().map(|hint| format!("hint: {hint}")),
        ),
        Event::Ended {
            state,
            summary,
            usage,
            cost_usd,
            turns,
            duration_ms,
            no_changes,
            ..
        } => (
            "ended",
            format!(
                "{state} after {} · {turns} turns · {} tokens{}{}",
                duration(Duration::from_millis(*duration_ms)),
                tokens(usage),
                cost_usd
                    .map(|cost| format!(" · {}", dollars(cost)))
                    .unwrap_or_default(),
                if *no_changes { " · no changes" } else { "" },
            ),
            summary.clone(),
        ),
    };
    let mut out = format!("{time} {label:<9} {text}");
    if let Some(detail) = detail.filter(|d| !d.trim().is_empty()) {
        for line in detail.trim_end().lines() {
            out.push_str("\n                   ");
            out.push_str(line);
        }
    }
    // Commands' output, tool results and summaries are the repository's words: shown, never
    // obeyed by the terminal.
    nightshift_protocol::printable(&out).into_owned()
}
