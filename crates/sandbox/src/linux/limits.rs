//! A session's limits as the host hands them to the helper: the cgroups it creates for the
//! session (the init's leaves and the commands'), open for writing, and the rlimits that stand
//! in for the controllers a host lacks, sent as the helper's second frame.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use super::cgroup::SessionCgroup;
use super::wire::{self, RlimitSpec};
use super::{Limits, setup_error, state};
use crate::SandboxError;

/// The session's cgroups, as the second frame to the helper.
pub(super) struct CgroupFrame {
    limits: wire::SessionLimits,
    /// The init's leaves, then the commands' leaves, open for writing.
    fds: Vec<OwnedFd>,
}

impl CgroupFrame {
    pub(super) fn send(self, control: &StdUnixStream) -> std::io::Result<()> {
        let fds: Vec<_> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let frame = wire::encode_frame(&self.limits, &[])?;
        wire::send_with_fds(control, &frame, &fds)
    }
}

/// Creates the session's cgroups (recorded in `resources`) and says what the init is to join
/// and which rlimits stand in for the controllers it lacks; with notes for the report.
pub(super) fn limit(
    name: &str,
    limits: &Limits,
    resources: &mut state::Resources,
) -> Result<(CgroupFrame, Vec<String>), SandboxError> {
    let (cgroup, mut notes) = SessionCgroup::create(&format!("nightshift-{name}"), limits);
    let cgroup = cgroup.map(Arc::new);
    resources.cgroup = cgroup.clone();
    if let Some(cgroup) = &cgroup {
        notes.push(cgroup.describe());
    }
    let has = |f: fn(&SessionCgroup) -> bool| cgroup.as_deref().is_some_and(f);
    let rlimits = RlimitSpec {
        nofile: Some(limits.open_files),
        fsize: limits.workspace_bytes,
        nproc: if has(SessionCgroup::has_pids) {
            None
        } else {
            limits.pids
        },
        data: if has(SessionCgroup::has_memory) {
            None
        } else {
            limits.memory_bytes
        },
    };
    let (init_leaves, command_leaves) = cgroup
        .as_deref()
        .map(|c| (c.init_procs(), c.commands_procs()))
        .unwrap_or_default();
    let mut fds = Vec::new();
    for leaf in init_leaves.iter().chain(&command_leaves) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(leaf)
            .map_err(|e| setup_error(format!("opening {}: {e}", leaf.display())))?;
        fds.push(OwnedFd::from(file));
    }
    let frame = CgroupFrame {
        limits: wire::SessionLimits {
            init_cgroups: init_leaves.len(),
            command_cgroups: command_leaves.len(),
            rlimits,
        },
        fds,
    };
    Ok((frame, notes))
}
