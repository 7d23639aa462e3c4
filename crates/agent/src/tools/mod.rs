//! The agent's tool set: the names, JSON arguments and behaviour documented in docs/tools.md.
//! They are a public contract: prompts, cassettes and users' expectations depend on them.
//!
//! Every tool runs against a [`SandboxSession`]: `shell` executes into it, the file tools work
//! on its workspace and can never reach outside it.

mod apply_patch;
mod call;
mod control;
mod edit_file;
mod list_files;
mod patch_text;
mod plan;
mod read_file;
mod review;
mod search;
mod shell;
mod walk;
mod workspace;
mod write_file;

use std::time::Duration;

use nightshift_model::ToolSpec;
use nightshift_protocol::{Finding, Plan, PlanStep, truncate_middle};
use nightshift_sandbox::SandboxSession;
use tokio_util::sync::CancellationToken;

/// The tool names in the order [`specs`] lists them.
pub const TOOL_NAMES: [&str; 9] = [
    shell::NAME,
    read_file::NAME,
    write_file::NAME,
    edit_file::NAME,
    apply_patch::NAME,
    search::NAME,
    list_files::NAME,
    control::UPDATE_PLAN,
    control::FINISH,
];

/// The nine tools as the model sees them, always in the same order and byte for byte the same:
/// they sit in the cached prefix of every model request.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        shell::spec(),
        read_file::spec(),
        write_file::spec(),
        edit_file::spec(),
        apply_patch::spec(),
        search::spec(),
        list_files::spec(),
        control::update_plan_spec(),
        control::finish_spec(),
    ]
}

/// The tools of a review: reading the repository and running commands in a read-only
/// workspace, and `submit_review` in place of `finish`.
pub const REVIEW_TOOL_NAMES: [&str; 5] = [
    shell::NAME,
    read_file::NAME,
    search::NAME,
    list_files::NAME,
    review::SUBMIT_REVIEW,
];

/// The tools of a planning task: reading and running commands in a read-only workspace,
/// asking the person, and `submit_plan` in place of `finish`.
pub const PLAN_TOOL_NAMES: [&str; 6] = [
    shell::NAME,
    read_file::NAME,
    search::NAME,
    list_files::NAME,
    plan::ASK,
    plan::SUBMIT_PLAN,
];

/// What the agent is there to do: it decides the tools the model gets and how a run ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Change the repository: every tool, ending with `finish`.
    #[default]
    Build,
    /// Review changes without changing anything: [`REVIEW_TOOL_NAMES`], ending with
    /// `submit_review`.
    Review,
    /// Plan work without changing anything: [`PLAN_TOOL_NAMES`], ending with `submit_plan`.
    Plan,
}

impl Mode {
    /// The names of the tools of this mode, in the order [`Mode::specs`] lists them.
    pub fn tool_names(self) -> &'static [&'static str] {
        match self {
            Mode::Build => &TOOL_NAMES,
            Mode::Review => &REVIEW_TOOL_NAMES,
            Mode::Plan => &PLAN_TOOL_NAMES,
        }
    }

    /// The tool that ends a run of this mode.
    pub fn final_tool(self) -> &'static str {
        match self {
            Mode::Build => control::FINISH,
            Mode::Review => review::SUBMIT_REVIEW,
            Mode::Plan => plan::SUBMIT_PLAN,
        }
    }

    /// The tools of this mode as the model sees them, always the same for a mode.
    pub fn specs(self) -> Vec<ToolSpec> {
        match self {
            Mode::Build => specs(),
            Mode::Review => vec![
                shell::spec(),
                read_file::spec(),
                search::spec(),
                list_files::spec(),
                review::spec(),
            ],
            Mode::Plan => vec![
                shell::spec(),
                read_file::spec(),
                search::spec(),
                list_files::spec(),
                plan::ask_spec(),
                plan::submit_plan_spec(),
            ],
        }
    }
}

/// Runs the tool call `name` with the model's raw JSON `arguments`.
///
/// Never fails and never panics: bad arguments, unknown tools and failed operations all come
/// back as a [`ToolOutput`] with `ok == false` and a message the model can act on. The text is
/// always cut to [`ToolLimits::output_bytes`].
pub async fn run(name: &str, arguments: &str, ctx: &ToolContext<'_>) -> ToolOutput {
    let names = ctx.mode.tool_names();
    if !names.contains(&name) {
        let known = TOOL_NAMES.contains(&name)
            || REVIEW_TOOL_NAMES.contains(&name)
            || PLAN_TOOL_NAMES.contains(&name);
        let why = match known {
            true => format!("`{name}` is not available in this task"),
            false => format!("unknown tool `{name}`"),
        };
        return ToolOutput::failure(format!(
            "{why}. The available tools are: {}.",
            names.join(", ")
        ))
        .cut_to(ctx.limits.output_bytes);
    }
    let output = match name {
        shell::NAME => shell::run(arguments, ctx).await,
        read_file::NAME => read_file::run(arguments, ctx).await,
        write_file::NAME => write_file::run(arguments, ctx).await,
        edit_file::NAME => edit_file::run(arguments, ctx).await,
        apply_patch::NAME => apply_patch::run(arguments, ctx).await,
        search::NAME => search::run(arguments, ctx).await,
        list_files::NAME => list_files::run(arguments, ctx).await,
        control::UPDATE_PLAN => control::update_plan(arguments),
        control::FINISH => control::finish(arguments),
        review::SUBMIT_REVIEW => review::submit_review(arguments),
        plan::ASK => plan::ask(arguments),
        plan::SUBMIT_PLAN => plan::submit_plan(arguments),
        unknown => ToolOutput::failure(format!(
            "unknown tool `{unknown}`. The available tools are: {}.",
            TOOL_NAMES.join(", ")
        )),
    };
    output.cut_to(ctx.limits.output_bytes)
}

/// Everything a tool call may use.
pub struct ToolContext<'a> {
    pub session: &'a dyn SandboxSession,
    pub cancel: &'a CancellationToken,
    pub limits: &'a ToolLimits,
    /// Which tools may run: a call to another is refused.
    pub mode: Mode,
}

/// Sizes and times that bound tool calls.
#[derive(Debug, Clone)]
pub struct ToolLimits {
    /// The most bytes of a tool's output the model sees; longer output keeps head and tail.
    pub output_bytes: usize,
    /// `shell`'s timeout when the call gives none.
    pub default_shell_timeout: Duration,
    /// The longest timeout a `shell` call may ask for.
    pub max_shell_timeout: Duration,
    /// The most bytes `read_file` returns in one call.
    pub read_bytes: usize,
    /// The most matches `search` and entries `list_files` return.
    pub max_entries: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            output_bytes: 16 * 1024,
            default_shell_timeout: Duration::from_secs(120),
            max_shell_timeout: Duration::from_secs(1800),
            read_bytes: 64 * 1024,
            max_entries: 500,
        }
    }
}

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// What the model sees, already cut to `ToolLimits::output_bytes`.
    pub text: String,
    /// False when the call failed (bad arguments, a file that is not there, a non-zero exit).
    pub ok: bool,
    /// `shell`'s exit code.
    pub exit_code: Option<i32>,
    /// What the loop must act on besides passing `text` back.
    pub control: Option<Control>,
}

/// Tool calls that steer the loop rather than touch the workspace.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `finish`: the agent is done.
    Finish { summary: String },
    /// `update_plan`: the agent's new plan.
    Plan { steps: Vec<PlanStep> },
    /// `submit_review`: the review is done; its findings, most severe first.
    Review {
        summary: String,
        findings: Vec<Finding>,
    },
    /// `ask`: the run waits for the person's answer to `question`.
    Ask { question: String },
    /// `submit_plan`: the planning is done.
    SubmitPlan { plan: Box<Plan> },
}

impl ToolOutput {
    /// A successful call's output.
    pub(crate) fn success(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            ok: true,
            exit_code: None,
            control: None,
        }
    }

    /// A failed call's output: `text` says what went wrong and what to do instead.
    pub(crate) fn failure(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            ok: false,
            exit_code: None,
            control: None,
        }
    }

    pub(crate) fn cut_to(mut self, max_bytes: usize) -> Self {
        if self.text.len() > max_bytes {
            self.text = cut_text(&self.text, max_bytes);
        }
        self
    }
}

/// Room for [`truncate_middle`]'s marker line, which comes on top of the bytes it keeps.
const CUT_MARKER_ROOM: usize = 64;

/// `text` cut in the middle to at most `max_bytes`, marker included.
pub(crate) fn cut_text(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    truncate_middle(text, max_bytes.saturating_sub(CUT_MARKER_ROOM)).text
}
