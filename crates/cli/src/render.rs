//! How tasks and events look to a person in a terminal.

use std::fmt::Write;
use std::time::Duration;

use jiff::{Timestamp, tz::TimeZone};
use nightshift_protocol::{Event, EventRecord, PlanStepStatus, Task, Usage};

/// `1.2s`, `3m 04s`, `1h 02m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// `$0.0123`: enough digits for cheap calls.
pub fn dollars(cost: f64) -> String {
    if cost >= 1.0 {
        format!("${cost:.2}")
    } else {
        format!("${cost:.4}")
    }
}

/// `$0.0123 model (prices of 2025-11) + $0.0040 machine (1m 12s)`.
pub fn cost(cost: &crate::output::Cost) -> String {
    let model = match cost.model_usd {
        Some(usd) => format!(
            "{} model (prices of {})",
            dollars(usd),
            nightshift_model::PRICES_AS_OF
        ),
        None => "model price unknown".to_string(),
    };
    let mut machine = duration(Duration::from_secs_f64(cost.machine_seconds));
    if let Some(cpu) = cost.cpu_seconds {
        machine.push_str(&format!(", {cpu:.1}s CPU"));
    }
    match cost.machine_usd {
        Some(usd) => format!("{model} + {} machine ({machine})", dollars(usd)),
        None => format!("{model} · machine time {machine}"),
    }
}

pub fn tokens(usage: &Usage) -> String {
    let mut text = format!("{} in", usage.input_tokens);
    if usage.cached_input_tokens > 0 {
        let _ = write!(text, " ({} cached)", usage.cached_input_tokens);
    }
    let _ = write!(text, " / {} out", usage.output_tokens);
    text
}

fn clock(at: Timestamp) -> String {
    at.to_zoned_datetime(TimeZone::system())
        .strftime("%H:%M:%S")
        .to_string()
}

fn since(from: Timestamp, to: Timestamp) -> Duration {
    to.duration_since(from).try_into().unwrap_or_default()
}

/// The task's run time so far, or in all once ended.
pub fn elapsed(task: &Task) -> Duration {
    let start = task.started_at.unwrap_or(task.created_at);
    since(start, task.finished_at.unwrap_or_else(Timestamp::now))
}

fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if line.chars().count() > max || text.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// A tool call's arguments in a line: `shell` shows its command, file tools their path.
pub fn call_brief(tool: &str, arguments: &serde_json::Value) -> String {
    let field = |name: &str| {
        arguments
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let brief = match tool {
        "shell" => field("command"),
        "read_file" | "write_file" | "edit_file" => field("path"),
        "search" => field("pattern"),
        "list_files" => field("path").or(Some(".".into())),
        "finish" => field("summary"),
        _ => None,
    };
    match brief {
        Some(brief) => format!("{tool} {}", one_line(&brief, 80)),
        None => tool.to_string(),
    }
}

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
    out
}

/// The `show` view.
pub fn task(task: &Task) -> String {
    let mut out = String::new();
    let spec = &task.spec;
    let _ = writeln!(out, "Task      {} ({})", task.id, task.id.short());
    let _ = writeln!(out, "State     {}", task.state);
    let base = match &task.base_commit {
        Some(commit) => format!(
            "{} at {}",
            spec.base.as_deref().unwrap_or("HEAD"),
            &commit[..commit.len().min(12)]
        ),
        None => spec.base.clone().unwrap_or_else(|| "HEAD".into()),
    };
    let _ = writeln!(out, "Repo      {} (base {base})", spec.repo);
    if let Some(branch) = &task.branch {
        let head = task
            .head_commit
            .as_deref()
            .map(|c| &c[..c.len().min(12)])
            .unwrap_or("");
        let _ = writeln!(out, "Branch    {branch} at {head}");
    }
    if task.no_changes() {
        let _ = writeln!(out, "Changes   {}", no_changes(task));
    }
    let _ = writeln!(out, "Model     {}", spec.model);
    let _ = writeln!(
        out,
        "Created   {}",
        task.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(out, "Elapsed   {}", duration(elapsed(task)));
    let _ = writeln!(
        out,
        "Turns     {} of at most {}",
        task.turns, spec.max_turns
    );
    let _ = writeln!(out, "Tokens    {}", tokens(&task.usage));
    if task.cancel_requested && !task.state.is_terminal() {
        let _ = writeln!(out, "Cancel    requested");
    }
    let _ = writeln!(out, "Prompt    {}", indent_rest(&spec.prompt));
    if let Some(summary) = &task.summary {
        let _ = writeln!(out, "Summary   {}", indent_rest(summary));
    }
    if let Some(error) = &task.error {
        let _ = writeln!(out, "Error     {}", indent_rest(error));
    }
    out
}

fn indent_rest(text: &str) -> String {
    text.trim_end().replace('\n', "\n          ")
}

/// What a task that changed nothing stands on, for `show` and `run --wait`.
pub fn no_changes(task: &Task) -> String {
    let head = task.head_commit.as_deref().unwrap_or("");
    format!(
        "none: the agent changed no file; the result is the commit it started from, {}",
        &head[..head.len().min(12)]
    )
}

/// One `ls` row; the prompt says `(no changes)` first when the agent changed nothing.
pub fn task_row(task: &Task) -> String {
    let mark = if task.no_changes() {
        "(no changes) "
    } else {
        ""
    };
    format!(
        "{}  {:<11} {:>8}  {:<7}  {mark}{}",
        task.id.short(),
        task.state.as_str(),
        duration(elapsed(task)),
        task.usage.total(),
        one_line(&task.spec.prompt, 60)
    )
}
