//! `nightshift plan`: a planning task (a read-only agent that may ask questions and hands back
//! a plan of subtasks), and `plan show|edit|approve ID` on its plan.

use std::io::Read;
use std::process::ExitCode;

use nightshift_protocol::{Event, Plan, PlanHistory, Task};

use crate::args::{PlanAction, PlanArgs};
use crate::backend::{Backend, Submission};
use crate::output::{Failure, TaskView, exit_for, print_json};

pub async fn run(args: PlanArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    match args.action {
        Some(PlanAction::Show { id, version, json }) => show(&backend, &id, version, json).await,
        Some(PlanAction::Edit { id, file }) => edit(&backend, &id, file).await,
        Some(PlanAction::Approve { id, version }) => {
            let task = backend.find(&id).await?;
            let (approved, run) = backend.approve_plan(&task, version).await?;
            println!("{}: plan version {approved} approved", task.id.short());
            println!("{run}");
            eprintln!(
                "its run (the subtasks, merged into one plan branch): nightshift show {}",
                run.get(run.len().saturating_sub(8)..).unwrap_or(&run)
            );
            Ok(ExitCode::SUCCESS)
        }
        None => start(&backend, args).await,
    }
}

async fn start(backend: &Backend, args: PlanArgs) -> Result<ExitCode, Failure> {
    let submission = Submission {
        repo: args.repo.clone(),
        base: args.base.clone(),
        prompt: args.prompt.join(" "),
        model: args.model.clone(),
        max_turns: args.budget.max_turns,
        max_tokens: args.budget.max_tokens,
        max_cost_usd: args.budget.max_cost,
        max_duration_secs: args.budget.max_duration_secs(),
        image: None,
        review: None,
        attempts: None,
        models: Vec::new(),
        plan: true,
    };
    let task = backend.submit(submission).await?;
    let short = task.id.short();
    if !args.wait {
        if args.json {
            print_json(&TaskView::new(&task))?;
        } else {
            println!("{}", task.id);
            eprintln!(
                "follow it with: nightshift logs --follow {short}; answer its questions with: nightshift say {short} ANSWER"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let task = match args.json {
        true => {
            super::follow::events(backend, task.id, true, |_| Ok(())).await?;
            backend.find(&task.id.to_string()).await?
        }
        false => super::run::wait(backend, &task, false).await?,
    };
    if task.state == nightshift_protocol::TaskState::Succeeded {
        let history = backend.plan_history(&task).await?;
        if args.json {
            print_json(&serde_json::json!({"task": TaskView::new(&task), "plan": history}))?;
        } else {
            println!();
            print_version(&task, &history, None)?;
        }
    }
    Ok(exit_for(task.state))
}

async fn show(
    backend: &Backend,
    id: &str,
    version: Option<u32>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let task = backend.find(id).await?;
    let history = backend.plan_history(&task).await?;
    if json {
        match version {
            None => print_json(&history)?,
            Some(number) => print_json(chosen(&task, &history, number)?)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_version(&task, &history, version)?;
    Ok(ExitCode::SUCCESS)
}

fn chosen<'a>(
    task: &Task,
    history: &'a PlanHistory,
    version: u32,
) -> Result<&'a nightshift_protocol::PlanVersion, Failure> {
    history.version(version).ok_or_else(|| {
        Failure::usage(format!(
            "the plan of task {} has no version {version} (the newest is {})",
            task.id.short(),
            history.latest().map_or(0, |entry| entry.version)
        ))
    })
}

fn print_version(task: &Task, history: &PlanHistory, version: Option<u32>) -> Result<(), Failure> {
    let entry = match version {
        Some(number) => chosen(task, history, number)?,
        None => history
            .latest()
            .ok_or_else(|| Failure::error("the plan has no version"))?,
    };
    let approval = match history.approved {
        Some(approved) if approved == entry.version => "approved".to_string(),
        Some(approved) => format!("version {approved} is approved"),
        None => format!(
            "not approved: `nightshift plan approve {}`",
            task.id.short()
        ),
    };
    println!(
        "plan of {} · version {} of {} by {} · {approval}\n",
        task.id.short(),
        entry.version,
        history.versions.len(),
        entry.author
    );
    // The plan is the agent's words.
    print!("{}", nightshift_protocol::printable(&entry.plan.render()));
    Ok(())
}

async fn edit(
    backend: &Backend,
    id: &str,
    file: Option<std::path::PathBuf>,
) -> Result<ExitCode, Failure> {
    let task = backend.find(id).await?;
    let history = backend.plan_history(&task).await?;
    if let Some(version) = history.approved {
        return Err(Failure::usage(format!(
            "the plan of task {} was approved already (version {version}); it no longer changes",
            task.id.short()
        )));
    }
    let current = history
        .latest()
        .ok_or_else(|| Failure::error("the plan has no version"))?;
    let (text, kept) = match file {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|err| Failure::error(format!("reading standard input: {err}")))?;
            (text, None)
        }
        Some(path) => (
            std::fs::read_to_string(&path)
                .map_err(|err| Failure::usage(format!("{}: {err}", path.display())))?,
            Some(path),
        ),
        None => edited(&task, &current.plan)?,
    };
    let plan: Plan = serde_json::from_str(&text).map_err(|err| {
        let kept = kept
            .as_ref()
            .map(|path| format!("; your text is kept in {}", path.display()))
            .unwrap_or_default();
        Failure::usage(format!(
            "the plan is not valid JSON of a plan: {err}; nothing was changed{kept}"
        ))
        .with_hint(kept_hint(&task, kept.is_empty()))
    })?;
    if let Err(problem) = plan.validate() {
        return Err(Failure::usage(format!(
            "the plan is not valid: {problem}; nothing was changed{}",
            kept.as_ref()
                .map(|path| format!("; your text is kept in {}", path.display()))
                .unwrap_or_default()
        )));
    }
    let version = backend.edit_plan(&task, &plan).await?;
    if version == current.version {
        println!(
            "{}: the plan is unchanged (version {version})",
            task.id.short()
        );
    } else {
        println!("{}: plan version {version} stored", task.id.short());
    }
    Ok(ExitCode::SUCCESS)
}

fn kept_hint(task: &Task, nothing_kept: bool) -> Option<String> {
    (!nothing_kept).then(|| {
        format!(
            "fix it and run `nightshift plan edit {} --file PATH`",
            task.id.short()
        )
    })
}

/// The plan as the person left it in their editor, and the file it is in (kept, so that a
/// mistake does not lose the edit).
fn edited(task: &Task, plan: &Plan) -> Result<(String, Option<std::path::PathBuf>), Failure> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let text = serde_json::to_string_pretty(plan)
        .map_err(|err| Failure::error(format!("writing the plan as JSON: {err}")))?;
    // A new file of our own (never one another user put at a known name in the shared temp
    // directory), kept afterwards so that a bad edit is not lost.
    let mut file = tempfile::Builder::new()
        .prefix(&format!("nightshift-plan-{}-", task.id.short()))
        .suffix(".json")
        .tempfile()
        .map_err(|err| Failure::error(format!("making a file for the plan: {err}")))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())
        .map_err(|err| Failure::error(format!("{}: {err}", file.path().display())))?;
    let (_, path) = file
        .keep()
        .map_err(|err| Failure::error(format!("keeping the plan's file: {err}")))?;
    // The editor may be a command with arguments (`code --wait`), as git takes it.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|err| Failure::error(format!("starting the editor `{editor}`: {err}")))?;
    if !status.success() {
        return Err(Failure::error(format!(
            "the editor `{editor}` failed ({status}); nothing was changed, and your text is kept in {}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|err| Failure::error(format!("{}: {err}", path.display())))?;
    Ok((text, Some(path)))
}

/// What `show` adds for a planning task (its versions, approval and run) and for a plan's run
/// (each subtask: its task, state and merge).
pub(crate) async fn print_progress(backend: &Backend, task: &Task) -> Result<(), Failure> {
    let mut subtasks: Vec<(String, nightshift_protocol::TaskId)> = Vec::new();
    let mut merged: std::collections::BTreeMap<String, Option<String>> = Default::default();
    let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
    super::follow::events(backend, task.id, false, |record| {
        match &record.event {
            Event::SubtaskQueued { name, task_id } => subtasks.push((name.clone(), *task_id)),
            Event::SubtaskMerged { name, commit, .. } => {
                merged.insert(name.clone(), commit.clone());
            }
            Event::MergeConflict { name, files, .. } => {
                conflicts.push((name.clone(), files.clone()))
            }
            _ => {}
        }
        Ok(())
    })
    .await?;
    if task.spec.plan {
        if let Ok(history) = backend.plan_history(task).await {
            let newest = history.latest().map_or(0, |entry| entry.version);
            let approval = match (history.approved, history.run) {
                (Some(version), Some(run)) => {
                    format!(
                        "version {version} approved; its run: nightshift show {}",
                        run.short()
                    )
                }
                (Some(version), None) => format!("version {version} approved"),
                (None, _) => format!("not approved: nightshift plan approve {}", task.id.short()),
            };
            println!(
                "Plan      version {newest} · {approval} · nightshift plan show {}",
                task.id.short()
            );
        }
        return Ok(());
    }
    println!(
        "Subtasks  {} queued, {} merged",
        subtasks.len(),
        merged.len()
    );
    for (name, id) in &subtasks {
        let state = match backend.find(&id.to_string()).await {
            Ok(subtask) => subtask.state.to_string(),
            Err(_) => "?".into(),
        };
        let merge = match merged.get(name) {
            Some(Some(commit)) => format!("merged {}", commit.get(..12).unwrap_or(commit)),
            Some(None) => "changed nothing".into(),
            None => match conflicts.iter().find(|(conflicted, _)| conflicted == name) {
                Some((_, files)) => format!("conflict in {}", files.join(", ")),
                None => "not merged".into(),
            },
        };
        println!("  {name:<20} {}  {state:<11} {merge}", id.short());
    }
    Ok(())
}
