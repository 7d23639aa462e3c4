//! The task lifecycle: validate and queue a task, then claim it, prepare its working copy and
//! sandbox, run the agent, and hand the result back as a branch, recording every step.
//!
//! The runner renders nothing; the CLI and the server read what it writes to the store.

mod error;
mod lifecycle;
mod reconcile;
mod sink;
mod submit;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nightshift_agent::tools::ToolLimits;
use nightshift_model::ProviderConfig;
use nightshift_sandbox::Sandbox;
use nightshift_store::Store;

pub use error::{RunnerError, SubmitError};
pub use lifecycle::DIFF_BLOB;
pub use submit::TaskRequest;

/// Everything a runner needs, passed in explicitly (no globals, no environment reads).
pub struct Runner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) providers: ProviderConfig,
    pub(crate) config: RunnerConfig,
}

/// Paths and knobs of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where task working copies are made: `<work_dir>/<task id>`.
    pub work_dir: PathBuf,
    /// This worker's name in `claimed` events and task rows.
    pub worker: String,
    /// How often a running task checks whether it was cancelled.
    pub cancel_poll: Duration,
    pub tool_limits: ToolLimits,
}

impl RunnerConfig {
    /// Defaults for a worker that keeps working copies under `work_dir`.
    pub fn new(work_dir: PathBuf, worker: String) -> Self {
        RunnerConfig {
            work_dir,
            worker,
            cancel_poll: Duration::from_millis(250),
            tool_limits: ToolLimits::default(),
        }
    }
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        sandbox: Arc<dyn Sandbox>,
        providers: ProviderConfig,
        config: RunnerConfig,
    ) -> Self {
        Runner {
            store,
            sandbox,
            providers,
            config,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
