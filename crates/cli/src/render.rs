//! How tasks and events look to a person in a terminal.

use std::fmt::Write;
use std::time::Duration;

use jiff::{Timestamp, tz::TimeZone};
use nightshift_protocol::{Task, Usage, printable};

mod event;
pub use event::event;

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
    // The summary and the error may hold what a repository's code printed.
    printable(&out).into_owned()
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
/// `depth` is how many levels under the task it is part of it is listed (`ls` groups them):
/// its prompt is indented, and says which part it is.
pub fn task_row(task: &Task, depth: usize) -> String {
    let mark = if task.no_changes() {
        "(no changes) "
    } else {
        ""
    };
    let spec = &task.spec;
    let what = match (&spec.attempt_of, &spec.subtask_of, &spec.plan_run) {
        (Some(of), _, _) => format!("attempt {} ({})", of.index + 1, spec.model),
        (_, Some(of), _) => format!("subtask {}", of.name),
        (_, _, Some(run)) => format!(
            "run of plan v{}: {}",
            run.version,
            one_line(&spec.prompt, 50)
        ),
        _ if spec.plan => format!("plan: {}", one_line(&spec.prompt, 54)),
        _ if !spec.attempts.is_empty() => {
            format!(
                "best of {}: {}",
                spec.attempts.len(),
                one_line(&spec.prompt, 50)
            )
        }
        _ => one_line(&spec.prompt, 60),
    };
    let indent = match depth {
        0 => String::new(),
        depth => format!("{}└ ", "  ".repeat(depth - 1)),
    };
    let what = printable(&what);
    format!(
        "{}  {:<11} {:>8}  {:<7}  {indent}{mark}{what}",
        task.id.short(),
        task.state.as_str(),
        duration(elapsed(task)),
        task.usage.total(),
    )
}

/// The task `task` is part of: a best-of-N task, a plan's run, or the plan a run carries out.
pub fn part_of(task: &Task) -> Option<nightshift_protocol::TaskId> {
    let spec = &task.spec;
    spec.attempt_of
        .map(|of| of.task)
        .or(spec.subtask_of.as_ref().map(|of| of.run))
        .or(spec.plan_run.map(|run| run.plan))
}
