//! Sessions' state directories on the host: their names, their overlay directories, and the
//! sweeping of what dead processes left behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{cgroup, session};

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
            session::remove_tree(&entry.path());
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

/// Creates `<state>/upper` and `<state>/work`, owned by `owner` when given; returns the upper.
pub(super) fn prepare_state(state: &Path, owner: Option<u32>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)?;
    if let Some(id) = owner {
        std::os::unix::fs::chown(state, Some(id), Some(id))?;
    }
    let upper = state.join("upper");
    let work = state.join("work");
    for dir in [&upper, &work] {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(dir, Some(id), Some(id))?;
        }
    }
    Ok(upper)
}
