//! Sessions' state on the host: their names, their state directories and overlay directories,
//! the resources a session holds until it is torn down, and the sweeping of what dead processes
//! left behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::cgroup::SessionCgroup;
use super::helper::SYSTEM_DIRS;
use super::proxy::EgressProxy;
use super::{cgroup, sys};

static SESSION_SEQ: AtomicU64 = AtomicU64::new(0);

pub(super) fn session_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SESSION_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("s{}-{seq}-{nanos:x}", std::process::id())
}

/// Removes state directories of sessions whose process died without tearing them down.
fn sweep_stale_state(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if cgroup::is_stale(&entry.file_name().to_string_lossy()) {
            remove_tree(&entry.path());
        }
    }
}

/// How often the state of dead processes is looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Sweeps `state_dir` (see [`sweep_stale_state`]) and the cgroups of dead processes, on the
/// first session of this process and at most once a [`SWEEP_INTERVAL`] after that, on a thread
/// of its own: what is swept belongs to processes that are gone, and no session waits for it.
pub(super) fn sweep_stale_state_now_and_then(state_dir: &Path) {
    static SWEPT: std::sync::Mutex<Vec<(PathBuf, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match swept.iter_mut().find(|(dir, _)| dir == state_dir) {
            Some((_, at)) if now.duration_since(*at) < SWEEP_INTERVAL => return,
            Some((_, at)) => *at = now,
            None => swept.push((state_dir.to_path_buf(), now)),
        }
    }
    let state_dir = state_dir.to_path_buf();
    let sweep = move || {
        sweep_stale_state(&state_dir);
        cgroup::sweep_stale_groups();
    };
    if std::thread::Builder::new()
        .name("nightshift-sweep".into())
        .spawn(sweep.clone())
        .is_err()
    {
        sweep();
    }
}

/// The overlays' directories in a session's state directory, each `upper/` (what the session
/// changed) and `work/` (overlayfs's own): the workspace's at the top, the home directory's in
/// `home/`, each system directory's in `system/<name>/` (with a writable system), and the rest
/// of an image's root in `root/`. A kept layer uses the same names.
const HOME_PART: &str = "home";
const SYSTEM_PART: &str = "system";
pub(super) const ROOT_PART: &str = "root";

/// Which overlays a session has besides the workspace's and the home directory's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Overlays {
    /// A writable host system: the host id and range it maps (its uppers are seeded, see
    /// [`super::system`]).
    pub system: Option<(u32, u32)>,
    /// An image as the root: its root and its system directories, all writable.
    pub image: bool,
    /// The host uid and gid of an image's user the commands run as (see
    /// [`crate::SessionUser`]): the workspace's and the home directory's upper directories are
    /// theirs, so that the overlays' roots are.
    pub user: Option<(u32, u32)>,
}

/// Creates the session's state directory and its overlays' directories, owned by `owner` when
/// given. Returns the workspace's upper directory.
pub(super) fn prepare_state(
    state: &Path,
    owner: Option<u32>,
    overlays: Overlays,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let make = |dir: &Path| -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("creating", dir, e))?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(dir, Some(id), Some(id))
                .map_err(|e| io("setting the owner of", dir, e))?;
        }
        Ok(())
    };
    make(state)?;
    let mut dirs = vec![state.to_path_buf(), state.join(HOME_PART)];
    if overlays.system.is_some() || overlays.image {
        make(&state.join(SYSTEM_PART))?;
        for name in SYSTEM_DIRS {
            dirs.push(state.join(SYSTEM_PART).join(name));
        }
    }
    if overlays.image {
        dirs.push(state.join(ROOT_PART));
    }
    for dir in &dirs {
        make(dir)?;
        make(&dir.join("upper"))?;
        make(&dir.join("work"))?;
    }
    if overlays.image {
        // An overlay's root directory is its upper directory: the image's `/`, `/usr`... must
        // be open to the image's users as the image's are (the state directory itself stays
        // closed to everyone else on the host).
        use std::os::unix::fs::PermissionsExt;
        let system = SYSTEM_DIRS
            .iter()
            .map(|name| state.join(SYSTEM_PART).join(name));
        for dir in system.chain([state.join(ROOT_PART)]) {
            let upper = dir.join("upper");
            std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io("setting the mode of", &upper, e))?;
        }
    }
    if let Some((uid, gid)) = overlays.user {
        for upper in [state.join("upper"), state.join(HOME_PART).join("upper")] {
            std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
                .map_err(|e| io("setting the owner of", &upper, e))?;
        }
    }
    if let Some((host_id, range)) = overlays.system {
        for name in SYSTEM_DIRS {
            let upper = state.join(SYSTEM_PART).join(name).join("upper");
            super::system::seed_upper(name, &upper, host_id, range)?;
        }
    }
    Ok(state.join("upper"))
}

/// Moves what a session changed out of its state directory into `dest`, as a layer: the
/// workspace's changes in `workspace/`, the home directory's in `home/`, each system
/// directory's in `system/<name>/`. The overlays must be gone (the session's mount namespace
/// with them), so the upper directories are plain directories. When a part cannot be moved,
/// what was moved is removed again: a partial layer is never left at `dest`.
pub(super) fn keep_changes(state: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dest)?;
    let moved = move_changes(state, dest);
    if moved.is_err() {
        remove_tree(dest);
    }
    moved
}

fn move_changes(state: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::rename(state.join("upper"), dest.join("workspace"))?;
    std::fs::rename(state.join(HOME_PART).join("upper"), dest.join(HOME_PART))?;
    let root = state.join(ROOT_PART).join("upper");
    if root.is_dir() {
        forget_mount_points(&root);
        std::fs::rename(&root, dest.join(ROOT_PART))?;
    }
    let system = state.join(SYSTEM_PART);
    if system.is_dir() {
        std::fs::create_dir(dest.join(SYSTEM_PART))?;
        for name in SYSTEM_DIRS {
            std::fs::rename(
                system.join(name).join("upper"),
                dest.join(SYSTEM_PART).join(name),
            )?;
        }
    }
    Ok(())
}

/// Takes out of an image root's upper directory what the sandbox made there for itself: the
/// mount points (left where they are empty: the session could not reach below its mounts, but
/// the image may have had content there) and its own files under `/run/nightshift`.
fn forget_mount_points(upper: &Path) {
    remove_tree(&upper.join("run/nightshift"));
    for dir in [
        "workspace",
        "tmp",
        "dev",
        "proc",
        "home/agent",
        "home",
        "run",
    ] {
        let _ = std::fs::remove_dir(upper.join(dir));
    }
}

/// Host resources of a session, released once.
pub(crate) struct Resources {
    pub state_dir: PathBuf,
    pub cgroup: Option<Arc<SessionCgroup>>,
    pub proxy: Option<EgressProxy>,
}

impl Resources {
    pub fn new(state_dir: PathBuf) -> Self {
        Resources {
            state_dir,
            cgroup: None,
            proxy: None,
        }
    }

    /// Kills the sandbox (if `init` is given) and releases everything. Blocking.
    pub fn teardown(mut self, init: Option<&OwnedFd>) {
        if let Some(pidfd) = init {
            let _ = sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
        remove_tree(&self.state_dir);
        if let Some(cgroup) = self.cgroup.take() {
            // The kernel may take a moment to let go of a group whose last process just died,
            // and removing one needs nothing of the caller: not on its time.
            let remove = move || cgroup.remove();
            if let Err(e) = std::thread::Builder::new()
                .name("nightshift-cgroup-rm".into())
                .spawn(remove.clone())
            {
                tracing::debug!(error = %e, "removing a session's cgroups inline");
                remove();
            }
        }
    }
}

/// Removes a directory tree that a hostile command may have made hard to remove (directories
/// without write or search permission).
pub(crate) fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fix_permissions(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a sandbox state directory");
    }
}

fn fix_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fix_permissions(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn changes_that_cannot_all_be_kept_leave_no_partial_layer() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("upper/src")).unwrap();
        std::fs::write(state.join("upper/src/generated.rs"), "x").unwrap();
        // No `home/upper`: the second move fails after the first succeeded.
        let dest = dir.path().join("layer");
        assert!(keep_changes(&state, &dest).is_err());
        assert!(!dest.exists(), "the partial layer is removed");
        std::fs::create_dir_all(state.join("upper")).unwrap();
        std::fs::create_dir_all(state.join("home/upper")).unwrap();
        keep_changes(&state, &dest).unwrap();
        assert!(dest.join("workspace").is_dir() && dest.join("home").is_dir());
    }
}
