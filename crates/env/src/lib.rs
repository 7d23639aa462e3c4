//! Repositories for tasks: finding the source repository and its base commit, making the task's
//! own working copy, and bringing the result back as a branch.
//!
//! Everything that changes a repository goes through the git command line, the same git the
//! person uses, so hooks-free, config-respecting behaviour is what they would get by hand.

mod apply;
pub mod build;
pub mod cache;
pub mod config;
mod git;
pub mod grants;
mod merge;
mod mirror;
mod repo;
pub mod secrets;
mod slug;
pub mod tree_files;

pub use apply::{Applied, ApplyError, apply_change};
pub use config::{EnvConfig, Loaded, collect_agents_md, describe, render_agents_context};
pub use git::GitError;
pub use merge::Merge;
pub use mirror::{MirrorLock, Mirrors, RemoteCredential, is_remote};
pub use repo::{CommitStats, EnvError, ResolvedBase, SourceRepo, WorkingCopy};
pub use slug::{branch_name, slugify};
