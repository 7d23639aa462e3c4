//! NIGHTSHIFT_HOME: where the local store, working copies and worker logs live.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nightshift_model::ProviderConfig;
use nightshift_runner::{Runner, RunnerConfig};
use nightshift_sandbox::Unisolated;
use nightshift_store::{SqliteStore, Store};

use crate::output::Failure;

/// The local installation's data directory.
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `NIGHTSHIFT_HOME`, else `$XDG_DATA_HOME/nightshift`, else `~/.local/share/nightshift`.
    pub fn from_env() -> Result<Home, Failure> {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let root = if let Some(home) = var("NIGHTSHIFT_HOME") {
            PathBuf::from(home)
        } else if let Some(data) = var("XDG_DATA_HOME") {
            PathBuf::from(data).join("nightshift")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/share/nightshift")
        } else {
            return Err(Failure::usage(
                "cannot tell where to keep data: set NIGHTSHIFT_HOME",
            ));
        };
        let root = std::path::absolute(&root)
            .map_err(|err| Failure::usage(format!("NIGHTSHIFT_HOME {}: {err}", root.display())))?;
        Ok(Home { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn worker_log(&self, id: &str) -> PathBuf {
        self.root.join("workers").join(format!("{id}.log"))
    }

    pub async fn store(&self) -> Result<Arc<dyn Store>, Failure> {
        let store = SqliteStore::open(&self.root).await.map_err(|err| {
            Failure::error(format!(
                "cannot open the store in {}: {err}",
                self.root.display()
            ))
        })?;
        Ok(Arc::new(store))
    }

    /// A runner on this machine: the local store, the unisolated sandbox, and model settings
    /// from the environment.
    pub async fn runner(&self, providers: ProviderConfig) -> Result<Runner, Failure> {
        let store = self.store().await?;
        let config = RunnerConfig::new(self.root.join("work"), local_worker_name());
        Ok(Runner::new(store, Arc::new(Unisolated), providers, config))
    }

    /// A runner that first settles tasks whose local worker died.
    pub async fn reconciled_runner(&self) -> Result<Runner, Failure> {
        let runner = self.runner(ProviderConfig::from_env()).await?;
        if let Err(err) = runner.reconcile(&local_worker_alive).await {
            tracing::warn!("could not check for abandoned tasks: {err}");
        }
        Ok(runner)
    }
}

/// `local:<host>:<pid>`: enough to tell later whether the worker still runs.
pub fn local_worker_name() -> String {
    format!("local:{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a worker named by [`local_worker_name`] still runs. Workers of other hosts are
/// assumed alive: only their own host can tell.
fn local_worker_alive(worker: &str) -> bool {
    let mut parts = worker.splitn(3, ':');
    let (Some("local"), Some(host), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if host != hostname() {
        return true;
    }
    if pid == std::process::id().to_string() {
        return true;
    }
    // A live nightshift process with that pid; a reused pid runs some other program.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            String::from_utf8_lossy(&cmdline).contains("nightshift")
                || String::from_utf8_lossy(&cmdline).contains("__run-task")
        }
        Err(_) => false,
    }
}
