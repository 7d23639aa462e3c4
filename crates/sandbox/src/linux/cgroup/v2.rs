//! cgroup v2's rule that a group holds processes or hands controllers to its children, not
//! both, and how nightshift lives with it in a group delegated to it.

use std::path::{Path, PathBuf};

use super::write;

/// On cgroup v2 a group holds processes or hands controllers to its children, not both: the
/// processes of nightshift's own group move to this leaf of it, so that the group itself can
/// hold the sessions' groups (what systemd's `DelegateSubgroup=` does for a service).
pub(super) const HOST_LEAF: &str = "nightshift-host";

/// The group sessions go under: our own, or its parent when we are in [`HOST_LEAF`] already
/// (moved there by an earlier nightshift process, or started by one that was).
pub(super) fn v2_base(own: &Path) -> PathBuf {
    match (own.file_name(), own.parent()) {
        (Some(name), Some(parent)) if name == HOST_LEAF => parent.to_path_buf(),
        _ => own.to_path_buf(),
    }
}

/// Moves every process of `group` into its [`HOST_LEAF`] (made if missing), until none is
/// left (a process may fork meanwhile). Only when they are all this process and its
/// descendants: a group shared with anything else (a login shell's scope, a container's root)
/// is not nightshift's to rearrange, and sessions then do without cgroup v2 limits.
pub(super) fn evacuate(group: &Path) -> std::io::Result<()> {
    let procs = std::fs::read_to_string(group.join("cgroup.procs"))?;
    if let Some(foreign) = procs
        .split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .find(|pid| !is_ours(*pid))
    {
        return Err(std::io::Error::other(format!(
            "{} also holds process {foreign}, which is not nightshift's, so it cannot hand controllers to sessions (run nightshift in a group of its own: systemd's Delegate=yes)",
            group.display()
        )));
    }
    let leaf = group.join(HOST_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for _ in 0..10 {
        let procs = std::fs::read_to_string(group.join("cgroup.procs"))?;
        let pids: Vec<&str> = procs.split_whitespace().collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            match write(&leaf, "cgroup.procs", pid) {
                // Gone in the meantime.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
    }
    Err(std::io::Error::other(format!(
        "processes keep appearing in {}",
        group.display()
    )))
}

/// Whether `pid` is this process or one of its descendants (a process that has exited in the
/// meantime counts as ours: it holds nothing).
fn is_ours(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut at = pid;
    for _ in 0..4096 {
        if at == me {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{at}/stat")) else {
            return at == pid;
        };
        // The parent is the second field after the command name, which ends at the last ')'.
        let parent = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<i32>().ok());
        match parent {
            Some(parent) if parent > 1 => at = parent,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sessions_go_beside_the_host_leaf() {
        let root = Path::new("/sys/fs/cgroup/system.slice/nightshift-worker.service");
        assert_eq!(v2_base(root), root);
        assert_eq!(v2_base(&root.join(HOST_LEAF)), root);
        assert_eq!(v2_base(Path::new("/")), Path::new("/"));
    }

    const CHILD: &str = "NIGHTSHIFT_TEST_CGROUP2_AT";
    const FOREIGN: &str = "NIGHTSHIFT_TEST_CGROUP2_FOREIGN";

    /// On a real cgroup v2 hierarchy (mounted by the parent test in a mount namespace of its
    /// own): a group holding this process and a child of it is emptied into its host leaf.
    #[test]
    fn evacuation_child() {
        let Some(mount) = std::env::var_os(CHILD) else {
            return;
        };
        let group = Path::new(&mount).join(format!("nightshift-test-{}", std::process::id()));
        std::fs::create_dir(&group).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        for pid in [std::process::id(), sleeper.id()] {
            write(&group, "cgroup.procs", &pid.to_string()).unwrap();
        }
        // A process that is not ours in the group (a sleeper the parent test started, not a
        // descendant of this process): nothing moves.
        let foreign = std::env::var(FOREIGN).unwrap();
        write(&group, "cgroup.procs", &foreign).unwrap();
        let refused = evacuate(&group).unwrap_err().to_string();
        assert!(refused.contains("not nightshift's"), "{refused}");
        assert!(!group.join(HOST_LEAF).exists());
        write(Path::new(&mount), "cgroup.procs", &foreign).unwrap();
        evacuate(&group).unwrap();
        let left = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
        let moved = std::fs::read_to_string(group.join(HOST_LEAF).join("cgroup.procs")).unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        // Back to the root group, so that the test's groups can go.
        for pid in [std::process::id(), sleeper.id()] {
            write(Path::new(&mount), "cgroup.procs", &pid.to_string()).unwrap();
        }
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        std::fs::remove_dir(group.join(HOST_LEAF)).unwrap();
        std::fs::remove_dir(&group).unwrap();
        assert_eq!(left.trim(), "");
        let mut moved: Vec<u32> = moved
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        moved.sort();
        let mut expected = vec![std::process::id(), sleeper.id()];
        expected.sort();
        assert_eq!(moved, expected);
        assert!(own.contains(&format!("/{HOST_LEAF}")), "{own}");
        println!("evacuated");
    }

    #[test]
    fn a_v2_group_is_evacuated_into_its_host_leaf() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: mounting cgroup2 needs root");
            return;
        }
        let mount = tempfile::tempdir().unwrap();
        let test = std::env::current_exe().unwrap();
        // A mount namespace of the child's own, so that the hierarchy is mounted nowhere else.
        let script = format!(
            "mount -t cgroup2 none {0} && exec {1} --exact linux::cgroup::v2::tests::evacuation_child --nocapture --test-threads=1",
            mount.path().display(),
            test.display()
        );
        let mut foreign = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let output = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env(CHILD, mount.path())
            .env(FOREIGN, foreign.id().to_string())
            .output()
            .unwrap();
        foreign.kill().unwrap();
        foreign.wait().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        assert!(text.contains("evacuated"), "{text}");
    }
}
