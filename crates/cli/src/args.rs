//! The command line. Names, flags and exit codes here are a public contract (docs/cli.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nightshift_protocol::{TaskSpec, TaskState};

mod plan;
pub use plan::{PlanAction, PlanArgs};

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
    /// Apply a task's change to a working tree with a three-way merge; on a conflict nothing
    /// changes and the conflicting files are named.
    Apply(ApplyArgs),
    /// Stop a task.
    Cancel(TaskArg),
    /// Send a task a message: a running task reads it before its next turn; a task that has
    /// ended takes it as a follow-up.
    Say(SayArgs),
    /// Review a task's result (or a branch) with a read-only agent that reports findings:
    /// file, lines, severity, what is wrong and how to fix it.
    Review(ReviewArgs),
    /// Plan a broad request with a read-only agent that may ask you questions (`nightshift
    /// say`) and hands back a plan of subtasks; `plan show|edit|approve ID` work on it.
    Plan(PlanArgs),
    /// Show a best-of-N task's attempts side by side (`run --attempts N`): state, checks,
    /// review findings, diff size, cost, branch, and which was chosen and why.
    Compare(ShowArgs),
    /// Serve nightshift's tools over MCP on standard input and output, for interactive
    /// agents to delegate tasks to: start_task, task_status, task_logs, task_diff,
    /// send_message, cancel_task (docs/mcp.md).
    Mcp,
    /// Say which isolation features this host has, and how to get the missing ones.
    Doctor(DoctorArgs),
    /// Work with the sandbox directly.
    Sandbox(SandboxArgs),
    /// A repository's environment configuration (.nightshift.toml or what is imported).
    Env(EnvArgs),
    /// Try nightshift offline: a sample repository with a bug, fixed by a replay of recorded
    /// model answers through the real pipeline.
    Demo(DemoArgs),
    /// Run queued tasks from the store until stopped (SIGTERM or Ctrl-C hands back what runs).
    Worker(WorkerArgs),
    /// Serve the HTTP API (and, by default, run workers in the same process).
    Serve(ServeArgs),
    /// Manage API tokens.
    Token(TokenArgs),
    /// Manage the repositories a server serves (and that `run --repo NAME` names).
    Repo(RepoArgs),
    /// Manage secrets: stored encrypted, redacted from everything a task records.
    Secret(SecretArgs),
    /// Manage the images tasks can start from (`[environment] image`, `run --image`).
    Image(ImageArgs),
    /// Run one queued task in this process (what `run` starts in the background).
    #[command(name = "__run-task", hide = true)]
    RunTask(RunTaskArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The git repository to work on: a path, or the name of a registered repository
    /// (`nightshift repo ls`). Its uncommitted changes are not included.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The branch to start from [default: the checked-out branch].
    #[arg(long)]
    pub base: Option<String>,
    /// The model, as provider:model. OPENAI_API_KEY and OPENAI_BASE_URL configure `openai`
    /// [default: openai:gpt-4.1; with NIGHTSHIFT_SERVER, the server's default]. Given more
    /// than once, the attempts are spread over the models in turn (one attempt per model
    /// unless --attempts says more).
    #[arg(long, env = "NIGHTSHIFT_MODEL", value_name = "MODEL")]
    pub model: Vec<String>,
    /// Best-of-N: run N independent attempts (2 to 8), each verified by the checks, and keep
    /// the best as this task's branch: ranked by checks passed, then a review of each, then
    /// the smaller diff (`nightshift compare ID` shows them side by side).
    #[arg(long, value_name = "N")]
    pub attempts: Option<u32>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Start the sandbox from this image instead of the host's system (and over the
    /// repository's `[environment] image`): `REGISTRY/NAME[:TAG][@DIGEST]` (Docker Hub names
    /// such as `rust:1.86` expand as Docker does), `oci:PATH[:TAG]`, `oci-archive:PATH`,
    /// `docker-archive:PATH`.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
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

/// What a task (a review too) may use before it stops.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// The most model turns before the task stops.
    #[arg(long, default_value_t = TaskSpec::DEFAULT_MAX_TURNS)]
    pub max_turns: u32,
    /// The most tokens (input plus output, all turns) before the task stops.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// The most dollars of model usage before the task stops, e.g. 2.50 (needs a known price).
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// The longest the agent may work, e.g. 90s, 30m, 1h30m [default and maximum: 59m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_time: Option<std::time::Duration>,
}

impl BudgetArgs {
    /// `--max-time` in whole seconds, at least one.
    pub fn max_duration_secs(&self) -> Option<u64> {
        self.max_time.map(|time| time.as_secs().max(1))
    }
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The ended task whose branch to review (an id, a unique prefix or the short id); or
    /// --branch.
    #[arg(required_unless_present = "branch", conflicts_with = "branch")]
    pub id: Option<String>,
    /// With --branch: the repository (a path, or a registered repository's name).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Review this branch's changes instead of a task's.
    #[arg(long)]
    pub branch: Option<String>,
    /// With --branch: the branch its changes are measured from [default: the checked-out
    /// branch].
    #[arg(long, requires = "branch")]
    pub base: Option<String>,
    /// What to look at in particular, besides the changes and the request they answer.
    #[arg(long, value_name = "TEXT")]
    pub focus: Option<String>,
    /// The model, as provider:model [default: as for `run`].
    #[arg(long, env = "NIGHTSHIFT_MODEL")]
    pub model: Option<String>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Wait for the review to end and print its findings; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Then send the findings to the reviewed task as a follow-up, for the builder to fix
    /// (implies --wait; nothing is sent when there are none).
    #[arg(long, requires = "id")]
    pub send: bool,
    /// Print JSON: the review task (with --wait, `{"review": TASK, "findings": [...]}`).
    #[arg(long)]
    pub json: bool,
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
pub struct SayArgs {
    /// A task id, a unique prefix of one, or its short id.
    pub id: String,
    /// Print the `message_received` event as JSON.
    #[arg(long)]
    pub json: bool,
    /// What to tell the agent.
    #[arg(required = true, num_args = 1.., value_name = "MESSAGE")]
    pub message: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TaskArg {
    /// A task id, a unique prefix of one, or its short id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A task id, a unique prefix of one, or its short id.
    pub id: String,
    /// The working tree to apply it to.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
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
pub struct DoctorArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Print the effective configuration and where each value came from.
    Check {
        /// The repository.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also start the MCP servers (the installation's and the repository's) in a sandbox
        /// over the working tree and list the tools each offers; exits 1 if one does not start.
        #[arg(long)]
        probe: bool,
    },
    /// Whether a task on this repository would find its setup layer in the cache, and if not,
    /// which input changed since the last one was built.
    Explain {
        /// The repository (its working tree's lockfiles are what is hashed).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run one command exactly as an agent's command runs; exits with the command's code.
    Exec(SandboxExecArgs),
}

#[derive(Debug, Args)]
pub struct SandboxExecArgs {
    /// `none` (the default: only loopback inside), or hosts the egress proxy lets through,
    /// comma-separated, with `*.` wildcards: `crates.io,*.crates.io`.
    #[arg(long, default_value = "none")]
    pub network: String,
    /// The directory mounted (as an overlay: it is never modified) at /workspace.
    #[arg(long, default_value = ".")]
    pub workspace: PathBuf,
    /// Memory limit for everything in the sandbox, in bytes (suffixes K, M, G).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Process limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Timeout for the command.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// The command and its arguments.
    #[arg(required = true, last = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: std::net::SocketAddr,
    /// Tasks this process runs at once; 0 serves the API only (run `nightshift worker`s).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The model for tasks that name none.
    #[arg(long, env = "NIGHTSHIFT_MODEL", default_value = "openai:gpt-4.1")]
    pub model: String,
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; its value is read from standard input (one line, or all of it). A new
    /// secret must say which repositories' tasks may use it.
    Set {
        name: String,
        #[command(flatten)]
        repos: RepoGrants,
    },
    /// Let more repositories' tasks use a secret.
    Grant {
        name: String,
        #[command(flatten)]
        repos: RepoGrants,
    },
    /// Take repositories from a secret's grants.
    Revoke {
        name: String,
        #[command(flatten)]
        repos: RepoGrants,
    },
    /// List the secrets' names and grants (never their values).
    Ls,
    /// Delete a secret.
    Rm { name: String },
}

/// The repositories a secret is granted to (or revoked from).
#[derive(Debug, Args, Clone, Default)]
pub struct RepoGrants {
    /// A repository whose tasks may use the secret: a local repository's path (any directory in
    /// it), or its URL. Repeat for several.
    #[arg(
        long = "repo",
        value_name = "PATH_OR_URL",
        conflicts_with = "all_repos"
    )]
    pub repos: Vec<String>,
    /// Every repository, present and future: an explicit choice.
    #[arg(long)]
    pub all_repos: bool,
}

#[derive(Debug, Args)]
pub struct RepoArgs {
    #[command(subcommand)]
    pub command: RepoCommand,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register the git repository at PATH, or the remote repository at URL: a server then
    /// accepts tasks for it, by its name or its path or URL.
    Add {
        /// A directory of the repository's work tree, or a URL (`https://`, `ssh://`,
        /// `git@host:path`, `file://`).
        #[arg(value_name = "PATH|URL")]
        path: String,
        /// What tasks and tokens call it, e.g. `acme/app` [default: its directory's name].
        #[arg(long)]
        name: Option<String>,
        /// For a URL: the stored secret (`nightshift secret set NAME --repo URL`) host git
        /// reaches it with: an HTTPS token (`TOKEN` or `USER:TOKEN`), or an SSH private key.
        #[arg(long, value_name = "SECRET")]
        credential: Option<String>,
        /// The repository is on GitHub: each task's pushed branch gets a draft pull request
        /// (through `https://api.github.com` for github.com, `https://HOST/api/v3` otherwise).
        #[arg(long)]
        github: bool,
        /// The GitHub API to open pull requests through (GitHub Enterprise Server, or one on
        /// another address); implies --github.
        #[arg(long, value_name = "URL")]
        github_api: Option<String>,
        /// Act on GitHub as this GitHub App (its App id): --credential then names the secret
        /// holding the App's private key (PEM), and nightshift mints installation tokens for
        /// host git and the API; implies --github.
        #[arg(long, value_name = "APP_ID")]
        github_app: Option<String>,
    },
    /// List the registered repositories.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a repository: no new task may run on it; its tasks and branches stay.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it on stdout (it is shown only this once).
    Create {
        /// What the token may do: read, submit (also create, message and cancel tasks) or
        /// admin (also manage tokens).
        #[arg(long, value_parser = parse_scope)]
        scope: nightshift_protocol::TokenScope,
        /// A name to recognize it by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Limit the token to this registered repository (`nightshift repo ls`); repeat for
        /// several. Without it, the token may use every repository the server serves.
        #[arg(long = "repo", value_name = "NAME")]
        repos: Vec<String>,
    },
    /// List tokens (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The most tasks running at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// On shutdown, how long running tasks may go on before they are handed back to the queue.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub grace: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct RunTaskArgs {
    pub id: String,
}

fn parse_state(text: &str) -> Result<TaskState, String> {
    text.parse()
        .map_err(|err: nightshift_protocol::UnknownTaskState| err.to_string())
}

/// `90s`, `30m`, `1h30m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let parsed: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 90s, 30m or 1h30m"))?;
    std::time::Duration::try_from(parsed).map_err(|_| format!("`{text}` is negative"))
}

/// `512M`, `2G`, `1048576`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size; write it like 512M or 2G")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is not a size; write it like 512M or 2G"))
}

fn parse_scope(text: &str) -> Result<nightshift_protocol::TokenScope, String> {
    text.parse()
        .map_err(|err: nightshift_protocol::UnknownTokenScope| err.to_string())
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch an image into the image store (its layers unpacked once, shared by every image
    /// and task that uses them): `REGISTRY/NAME[:TAG][@DIGEST]` (`rust:1.86` on Docker Hub),
    /// `oci:PATH[:TAG]`, `oci-archive:PATH`, `docker-archive:PATH`.
    Pull {
        reference: String,
        /// Print the image as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the images in the store.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget an image (its layers stay until `prune`, while other images use them).
    Rm { reference: String },
    /// Remove the layers no image in the store uses.
    Prune,
}
