//! A task's log as the reviewer reads it: one list item per event, rendered on the server for
//! the first page load and for each live SSE frame alike, so the two cannot drift apart.
//! Everything in an event came from the model, the repository or a command: it is escaped
//! (Maud escapes every interpolation; Markdown goes through [`super::markdown`]).

use maud::{Markup, PreEscaped, html};
use nightshift_protocol::{Event, EventRecord, PlanStepStatus};

use super::markdown;

/// Tool output longer than this many lines starts collapsed.
const OPEN_OUTPUT_LINES: usize = 12;

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn output(text: &str, label: &str) -> Markup {
    let open = text.lines().count() <= OPEN_OUTPUT_LINES;
    html! {
        details.output open[open] {
            summary { (label) " (" (text.lines().count()) " lines)" }
            pre { (text) }
        }
    }
}

/// One event as an `<li>`; its `data-state` carries a new task state for the live page.
pub(crate) fn event(record: &EventRecord) -> Markup {
    let kind = record.event.kind();
    let state = match &record.event {
        Event::StateChanged { state, .. } | Event::Ended { state, .. } => Some(state.as_str()),
        _ => None,
    };
    html! {
        li class={ "event ev-" (kind) } id={ "e" (record.seq) } data-seq=(record.seq) data-state=[state] data-kind=(kind) {
            span.meta { time datetime=(record.at.to_string()) { (record.at.strftime("%H:%M:%S")) } }
            div.body { (body(record)) }
        }
    }
}

fn body(record: &EventRecord) -> Markup {
    match &record.event {
        Event::Queued { spec } => html! { strong { "Queued" } " on " code { (spec.model) } },
        Event::StateChanged { state, detail } => html! {
            "State: " strong.state { (state.as_str()) }
            @if let Some(detail) = detail { " — " (detail) }
        },
        Event::Claimed { worker } => html! { "Claimed by worker " code { (worker) } },
        Event::CheckedOut {
            base,
            base_commit,
            note,
        } => html! {
            "Checked out " code { (base) } " at " code { (base_commit.get(..12).unwrap_or(base_commit)) }
            @if !note.is_empty() { " — " (note) }
        },
        Event::EnvironmentLoaded {
            source,
            checks,
            has_setup,
            has_maintenance,
        } => html! {
            "Environment from " code { (source) } ": "
            (checks.len()) " checks"
            @if *has_setup { ", a setup script" }
            @if *has_maintenance { ", a maintenance script" }
        },
        Event::ImageReady {
            reference,
            digest,
            layers,
        } => html! {
            "Image " code { (reference) } " (" code { (digest.get(..19).unwrap_or(digest)) } "), "
            (layers.len()) " layers, " (layers.iter().filter(|l| l.fetched).count()) " fetched"
        },
        Event::BuildStep {
            step,
            key: _,
            hit,
            reasons,
        } => html! {
            "Build step " code { (step) } ": " (if *hit { "cache hit" } else { "cache miss" })
            @if !reasons.is_empty() { ul.reasons { @for r in reasons { li { (r) } } } }
        },
        Event::SetupCache {
            key: _,
            hit,
            reasons,
        } => html! {
            strong { "Setup cache " (if *hit { "hit" } else { "miss" }) }
            @if !reasons.is_empty() { ul.reasons { @for r in reasons { li { (r) } } } }
        },
        Event::CommandFinished {
            phase,
            name,
            command,
            ok,
            exit_code,
            duration_ms,
            output_tail,
            artifact: _,
        } => html! {
            span class=(if *ok { "pass" } else { "fail" }) { (if *ok { "✓ " } else { "✗ " }) }
            (format!("{phase:?}").to_lowercase()) " " strong { (name) } " " code { (command) }
            " — exit " (exit_code) ", " (seconds(*duration_ms))
            @if !output_tail.is_empty() { (output(output_tail, "output")) }
        },
        Event::Egress {
            host,
            port,
            method,
            allowed,
            bytes_up,
            bytes_down,
            detail,
        } => html! {
            "Egress " (method) " " code { (host) ":" (port) } " "
            span class=(if *allowed { "pass" } else { "fail" }) { (if *allowed { "allowed" } else { "denied" }) }
            " (" (bytes_up) " B up, " (bytes_down) " B down)"
            @if let Some(detail) = detail { " — " (detail) }
        },
        Event::SandboxStarted { backend, isolated } => html! {
            "Sandbox " code { (backend) } (if *isolated { " (isolated)" } else { " (not isolated)" })
        },
        Event::McpServerReady { server, tools } => html! {
            "MCP server " code { (server) } " offers " (tools.len()) " tools: " (tools.join(", "))
        },
        Event::ModelRequest {
            turn,
            model,
            messages,
        } => html! {
            span.dim { "Turn " (turn) ": asked " code { (model) } " with " (messages) " messages" }
        },
        Event::ModelResponse {
            turn: _,
            text,
            tool_calls,
            usage,
            cost_usd,
            stop_reason: _,
            duration_ms,
        } => html! {
            @if let Some(text) = text { div.markdown { (PreEscaped(markdown::render(text))) } }
            @for call in tool_calls {
                details.call {
                    summary { "calls " code { (call.name) } }
                    pre { (pretty(&call.arguments)) }
                }
            }
            span.dim { (usage.input_tokens) " in (" (usage.cached_input_tokens) " cached), " (usage.output_tokens) " out"
                @if let Some(c) = cost_usd { ", $" (format!("{c:.4}")) }
                ", " (seconds(*duration_ms)) }
        },
        Event::ToolStarted {
            call_id: _,
            tool,
            arguments,
        } => html! {
            "▶ " code { (tool) }
            details.args { summary { "arguments" } pre { (pretty(arguments)) } }
        },
        Event::ToolFinished {
            call_id: _,
            tool,
            ok,
            output: out,
            exit_code,
            duration_ms,
        } => html! {
            span class=(if *ok { "pass" } else { "fail" }) { (if *ok { "✓ " } else { "✗ " }) }
            code { (tool) }
            @if let Some(code) = exit_code { " exit " (code) }
            " " (seconds(*duration_ms))
            (output(out, "output"))
        },
        Event::ContextCompacted {
            before_tokens,
            after_tokens,
            masked,
            summarized,
        } => html! {
            "Context compacted: " (before_tokens) " → " (after_tokens) " tokens (" (masked) " masked, " (summarized) " summarized)"
        },
        Event::PlanUpdated { steps } => html! {
            strong { "Plan" }
            ol.plan {
                @for step in steps {
                    @let mark = match step.status {
                        PlanStepStatus::Pending => "☐ ",
                        PlanStepStatus::InProgress => "▶ ",
                        PlanStepStatus::Completed => "☑ ",
                    };
                    li { (mark) (step.step) }
                }
            }
        },
        Event::AgentFinished { summary } => html! {
            strong { "Agent finished" }
            div.markdown { (PreEscaped(markdown::render(summary))) }
        },
        Event::QuestionAsked { question } => html! {
            strong { "Question for you" }
            div.markdown { (PreEscaped(markdown::render(question))) }
            p { "Answer it with a message (below, or `nightshift say`)." }
        },
        Event::PlanSubmitted {
            version,
            plan,
            author,
        } => html! {
            strong { "Plan, version " (version) " by " (author) }
            pre { (plan.render()) }
        },
        Event::PlanApproved { version, by, run } => html! {
            "Plan version " (version) " approved"
            @if let Some(by) = by { " by " (by) }
            @if let Some(run) = run {
                "; its run: " a href={ "/tasks/" (run) } { "task " (run.short()) }
            }
        },
        Event::SubtaskQueued { name, task_id } => html! {
            "Subtask " code { (name) } " queued: "
            a href={ "/tasks/" (task_id) } { "task " (task_id.short()) }
        },
        Event::SubtaskMerged {
            name,
            task_id,
            commit,
        } => html! {
            "Subtask " code { (name) } " ("
            a href={ "/tasks/" (task_id) } { (task_id.short()) }
            ") "
            @match commit {
                Some(commit) => { "merged: " code { (commit.get(..12).unwrap_or(commit)) } }
                None => { "changed nothing" }
            }
        },
        Event::MergeConflict {
            name,
            files,
            resolution,
        } => html! {
            "Merging subtask " code { (name) } " conflicts in " (files.join(", "))
            @if let Some(resolution) = resolution {
                "; resolving it: " a href={ "/tasks/" (resolution) } { "task " (resolution.short()) }
            }
        },
        Event::AttemptQueued {
            task_id,
            index,
            model,
        } => html! {
            "Attempt " (index + 1) " queued: "
            a href={ "/tasks/" (task_id) } { "task " (task_id.short()) }
            " (" (model) ")"
        },
        Event::AttemptReviewQueued { attempt, review } => html! {
            "Review "
            a href={ "/tasks/" (review) } { (review.short()) }
            " queued of attempt "
            a href={ "/tasks/" (attempt) } { (attempt.short()) }
        },
        Event::AttemptsRanked {
            ranking,
            chosen,
            reason,
        } => html! {
            strong {
                @match chosen {
                    Some(chosen) => { "Chose attempt " (chosen.short()) ": " (reason) }
                    None => { "Chose no attempt: " (reason) }
                }
            }
            ol {
                @for rank in ranking {
                    li {
                        a href={ "/tasks/" (rank.task_id) } { (rank.task_id.short()) }
                        " " (rank.model) " · " (rank.state.as_str())
                        " · checks " (rank.checks_passed) " passed, " (rank.checks_failed) " failed"
                        @if let Some(findings) = &rank.findings { " · review: " (findings.to_string()) }
                        @if let Some(lines) = rank.lines_changed { " · " (lines) " lines" }
                    }
                }
            }
        },
        Event::ReviewQueued { task_id } => html! {
            "Review queued: "
            a href={ "/tasks/" (task_id) } { "task " (task_id.short()) }
        },
        Event::ReviewSubmitted { summary, findings } => html! {
            strong { "Review: " (findings.len()) " finding(s)" }
            div.markdown { (PreEscaped(markdown::render(summary))) }
            @if !findings.is_empty() {
                ul.findings {
                    @for finding in findings {
                        li {
                            span.severity { "[" (finding.severity.as_str()) "] " }
                            code { (finding.location()) } " " (finding.problem)
                            @if let Some(suggestion) = &finding.suggestion {
                                br; "Fix: " (suggestion)
                            }
                        }
                    }
                }
            }
        },
        Event::Committed {
            branch,
            commit,
            files_changed,
            insertions,
            deletions,
            incomplete,
        } => html! {
            "Committed " code { (commit.get(..12).unwrap_or(commit)) } " on " code { (branch) } ": "
            (files_changed) " files, " span.add { "+" (insertions) } " " span.del { "−" (deletions) }
            @if *incomplete { " (incomplete)" }
        },
        Event::BranchPushed {
            remote,
            branch,
            commit,
        } => html! {
            "Pushed " code { (branch) } " at " code { (commit.get(..12).unwrap_or(commit)) }
            " to " code { (remote) }
        },
        Event::PullRequest {
            url,
            number,
            created,
        } => html! {
            "Pull request #" (number) @if *created { " opened: " } @else { " updated: " }
            // The forge's answer: a link only when it is a web address.
            @if url.starts_with("https://") || url.starts_with("http://") {
                a href=(url) rel="noreferrer noopener" { (url) }
            } @else {
                code { (url) }
            }
        },
        Event::ForgeCommented { number } => html! {
            "Reported the outcome on #" (number)
        },
        Event::ForgeRetry {
            action,
            attempt,
            retry_at,
            reason,
        } => html! {
            @match retry_at {
                Some(at) => {
                    "The " code { (action) } " failed (attempt " (attempt) ": " (reason)
                    "); trying again at " (at.strftime("%H:%M:%S UTC"))
                }
                None => {
                    strong { "Gave up" } " the " code { (action) } " after " (attempt)
                    " attempts (" (reason) "); the work stays on the branch"
                }
            }
        },
        Event::CancelRequested => html! { strong { "Cancel requested" } },
        Event::MessageReceived { text, from } => html! {
            "Message"
            @if let Some(from) = from { " from " strong { (from) } }
            ": " blockquote { (text) }
        },
        Event::FollowUpStarted { task_id } => html! {
            "Follow-up started: "
            a href={ "/tasks/" (task_id) } { "task " (task_id.short()) }
        },
        Event::Released { worker, reason } => {
            html! { "Released by " code { (worker) } ": " (reason) }
        }
        Event::Warning { message } => html! { span.warn { "Warning: " } (message) },
        Event::Error {
            kind,
            message,
            hint,
        } => html! {
            span.fail { "Error (" (format!("{kind:?}").to_lowercase()) "): " } (message)
            @if let Some(hint) = hint { div.hint { "Hint: " (hint) } }
        },
        Event::Ended {
            state,
            summary,
            usage,
            cost_usd,
            cpu_seconds: _,
            turns,
            duration_ms,
            no_changes,
        } => html! {
            strong { "Ended " span.state { (state.as_str()) } }
            " after " (turns) " turns, " (seconds(*duration_ms)) ", " (usage.total()) " tokens"
            @if let Some(c) = cost_usd { ", $" (format!("{c:.4}")) }
            @if *no_changes { " — no changes" }
            @if let Some(summary) = summary { div.markdown { (PreEscaped(markdown::render(summary))) } }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use nightshift_protocol::{ErrorKind, PlanStep, TaskId};

    fn html_of(event: Event) -> String {
        event_html(EventRecord {
            task_id: TaskId::new(),
            seq: 7,
            at: Timestamp::UNIX_EPOCH,
            event,
        })
    }

    fn event_html(record: EventRecord) -> String {
        super::event(&record).into_string()
    }

    #[test]
    fn setup_egress_plan_and_errors_show_what_the_reviewer_needs() {
        let miss = html_of(Event::SetupCache {
            key: "k".into(),
            hit: false,
            reasons: vec!["Cargo.lock <changed>".into()],
        });
        assert!(miss.contains("Setup cache miss"), "{miss}");
        assert!(miss.contains("Cargo.lock &lt;changed&gt;"), "{miss}");
        let egress = html_of(Event::Egress {
            host: "crates.io".into(),
            port: 443,
            method: "CONNECT".into(),
            allowed: false,
            bytes_up: 1,
            bytes_down: 2,
            detail: Some("not in the allowlist".into()),
        });
        assert!(
            egress.contains("crates.io:443") && egress.contains("denied"),
            "{egress}"
        );
        let plan = html_of(Event::PlanUpdated {
            steps: vec![
                PlanStep {
                    step: "read".into(),
                    status: PlanStepStatus::Completed,
                },
                PlanStep {
                    step: "fix".into(),
                    status: PlanStepStatus::InProgress,
                },
            ],
        });
        assert!(plan.contains("☑ read") && plan.contains("▶ fix"), "{plan}");
        let error = html_of(Event::Error {
            kind: ErrorKind::Setup,
            message: "setup failed".into(),
            hint: Some("fix the <setup> script".into()),
        });
        assert!(error.contains("Error (setup)"), "{error}");
        assert!(
            error.contains("Hint: fix the &lt;setup&gt; script"),
            "{error}"
        );
        let warning = html_of(Event::Warning {
            message: "slow".into(),
        });
        assert!(warning.contains("Warning: </span>slow"), "{warning}");
        assert!(
            warning.contains("id=\"e7\"") && warning.contains("ev-warning"),
            "{warning}"
        );
    }

    #[test]
    fn long_tool_output_starts_collapsed() {
        let long: String = (0..20).map(|n| format!("line {n}\n")).collect();
        let collapsed = html_of(Event::ToolFinished {
            call_id: "c".into(),
            tool: "shell".into(),
            ok: true,
            output: long,
            exit_code: Some(0),
            duration_ms: 1,
        });
        assert!(
            collapsed.contains("<details class=\"output\">"),
            "{collapsed}"
        );
        let short = html_of(Event::ToolFinished {
            call_id: "c".into(),
            tool: "shell".into(),
            ok: true,
            output: "ok".into(),
            exit_code: Some(0),
            duration_ms: 1,
        });
        assert!(short.contains("<details class=\"output\" open>"), "{short}");
    }
}
