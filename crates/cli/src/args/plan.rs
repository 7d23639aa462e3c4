//! `nightshift plan`: its arguments.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::BudgetArgs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub action: Option<PlanAction>,
    /// The git repository to plan for: a path, or a registered repository's name or URL.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The branch the plan starts from [default: the checked-out branch].
    #[arg(long)]
    pub base: Option<String>,
    /// The model, as provider:model [default: as for `run`].
    #[arg(long, env = "NIGHTSHIFT_MODEL")]
    pub model: Option<String>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Wait for the plan (answering questions with `nightshift say` meanwhile) and print it.
    #[arg(long)]
    pub wait: bool,
    /// Print the task as JSON instead of its id (with --wait, `{"task": TASK, "plan": ...}`).
    #[arg(long)]
    pub json: bool,
    /// What to plan.
    #[arg(required = true, num_args = 1.., value_name = "PROMPT")]
    pub prompt: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Print a planning task's plan: the newest version, or --version N.
    Show {
        /// The planning task: its id, a unique prefix or its short id.
        id: String,
        /// This version instead of the newest.
        #[arg(long)]
        version: Option<u32>,
        /// Print every version as JSON (or the one --version names).
        #[arg(long)]
        json: bool,
    },
    /// Change the plan: opens it as JSON in $VISUAL or $EDITOR (or reads --file, `-` for
    /// standard input); a change is stored as the next version.
    Edit {
        /// The planning task: its id, a unique prefix or its short id.
        id: String,
        /// Read the new plan (JSON) from this file, `-` for standard input, instead of an
        /// editor.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Approve the plan (the newest version, or --version N) and start its run: the subtasks
    /// as tasks of their own, merged into one checked plan branch. Approval is final.
    Approve {
        /// The planning task: its id, a unique prefix or its short id.
        id: String,
        /// Approve this version instead of the newest.
        #[arg(long)]
        version: Option<u32>,
    },
}
