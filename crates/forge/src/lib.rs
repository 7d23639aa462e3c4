//! Forges: where a task's pushed branch becomes something a team reviews. Today GitHub
//! (github.com and GitHub Enterprise Server): a draft pull request for the branch, its body
//! carrying the task's evidence, updated and commented on by follow-ups. nightshift never
//! approves or merges.
//!
//! nightshift acts with a token from the secret store, or as a GitHub App whose installation
//! tokens it mints.
//!
//! The REST API is spoken through reqwest, already in the build with rustls on ring; octocrab
//! would bring a second HTTP stack for the four calls needed here.

mod app;
mod github;

pub use app::{GitHubApp, InstallationToken};
pub use github::{GitHub, NewPullRequest, PullRequest, RepoRef, default_api};

/// A forge call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered, and not with success.
    #[error("{method} {path} answered {status}: {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// The forge could not be reached, or its answer not read.
    #[error("{method} {path}: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
    /// The forge's settings cannot be used.
    #[error("{0}")]
    Config(String),
}

impl ForgeError {
    /// Whether the forge may take the same call later (an outage or a rate limit), as opposed
    /// to refusing it.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Api { status, .. } => *status >= 500 || *status == 429,
            ForgeError::Transport { .. } => true,
            ForgeError::Config(_) => false,
        }
    }
}
