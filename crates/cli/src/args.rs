//! The command line. Names, flags and exit codes here are a public contract (docs/cli.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nightshift_protocol::{TaskSpec, TaskState};

#[derive(Debug, Parser)]
#[command(
    name = "nightshift",
    version,
    about = "Delegate coding tasks to a background agent that hands back a branch."
)]
pub struct Cli {
    /// Log what nightshift itself does to stderr (or set NIGHTSHIFT_LOG=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a task: the agent works on PROMPT in a copy of the repository.
    Run(RunArgs),
    /// List tasks, newest first.
    Ls(LsArgs),
    /// Show one task.
    Show(ShowArgs),
    /// Print a task's event log.
    Logs(LogsArgs),
    /// Print the change a task made, as a patch.
    Diff(TaskArg),
    /// Stop a task.
    Cancel(TaskArg),
    /// Try nightshift offline: a sample repository with a bug, fixed by a replay of recorded
    /// model answers through the real pipeline.
    Demo(DemoArgs),
    /// Run one queued task in this process (what `run` starts in the background).
    #[command(name = "__run-task", hide = true)]
    RunTask(RunTaskArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The git repository to work on. Its uncommitted changes are not included.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The branch to start from [default: the checked-out branch].
    #[arg(long)]
    pub base: Option<String>,
    /// The model, as provider:model. OPENAI_API_KEY and OPENAI_BASE_URL configure `openai`.
    #[arg(long, env = "NIGHTSHIFT_MODEL", default_value = "openai:gpt-4.1")]
    pub model: String,
    /// The most model turns before the task stops.
    #[arg(long, default_value_t = TaskSpec::DEFAULT_MAX_TURNS)]
    pub max_turns: u32,
    /// Wait for the task to end, showing progress; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Print the task as JSON instead of its id.
    #[arg(long)]
    pub json: bool,
    /// What the agent should do.
    #[arg(required = true, num_args = 1.., value_name = "PROMPT")]
    pub prompt: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only tasks in this state (repeatable).
    #[arg(long, value_parser = parse_state)]
    pub state: Vec<TaskState>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A task id, a unique prefix of one, or its short id (last 8 characters).
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A task id, a unique prefix of one, or its short id.
    pub id: String,
    /// Keep printing new events until the task ends.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per event per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TaskArg {
    /// A task id, a unique prefix of one, or its short id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to create the sample repository [default: a new directory under NIGHTSHIFT_HOME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunTaskArgs {
    pub id: String,
}

fn parse_state(text: &str) -> Result<TaskState, String> {
    text.parse()
        .map_err(|err: nightshift_protocol::UnknownTaskState| err.to_string())
}
