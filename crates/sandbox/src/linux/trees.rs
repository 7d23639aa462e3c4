//! Host side, when nightshift runs as root: detached copies of the mount trees a session shows
//! (the workspace idmapped, the state directory, the extra binds), cloned here because the
//! sandbox's host uid may not be allowed to reach them by path. They travel to the helper with
//! its configuration. Cloning them here, while the helper is still being executed, takes them
//! off the session's start path.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::sys;

/// The trees of one session, each with the host path it stands for.
pub(crate) fn open<'a>(
    workspace: &Path,
    state: &'a Path,
    others: impl Iterator<Item = &'a PathBuf>,
    host_id: u32,
) -> Result<Vec<(PathBuf, OwnedFd)>, String> {
    let mut trees = vec![(
        workspace.to_path_buf(),
        idmapped_tree(workspace, host_id, 1)?,
    )];
    for path in std::iter::once(state).chain(others.map(PathBuf::as_path)) {
        if path.is_dir() {
            let tree = sys::open_tree_clone(path)
                .map_err(|e| format!("open_tree {}: {e}", path.display()))?;
            trees.push((path.to_path_buf(), tree));
        }
    }
    Ok(trees)
}

/// Idmapped copies of the host's system directories (`/<name>`, those that exist), in which
/// host id `u` appears as `host_id + u` for `u` below `range`: the lower layers of a writable
/// system, whose owners exist in a namespace that maps that range.
pub(crate) fn system(
    names: &[&str],
    host_id: u32,
    range: u32,
) -> Result<Vec<(String, OwnedFd)>, String> {
    let mut trees = Vec::new();
    for name in names {
        let path = Path::new("/").join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
            trees.push((name.to_string(), idmapped_tree(&path, host_id, range)?));
        }
    }
    Ok(trees)
}

/// A detached copy of the mount at `path` in which files owned by host root (and up to
/// `range` ids from it) appear owned by `host_id` (and on). For the workspace, with a range of
/// one: without it, a working copy created by a root host would be unwritable inside, or the
/// sandbox user would have to be host root.
fn idmapped_tree(path: &Path, host_id: u32, range: u32) -> Result<OwnedFd, String> {
    let workspace = path;
    let userns = mapping_namespace(host_id, range)?;
    // The workspace with what is mounted in it; a system directory alone, since overlayfs
    // sees nothing of the mounts below a lower layer, and one of a kind that cannot be
    // idmapped would fail the whole tree.
    let tree = if range == 1 {
        sys::open_tree_clone(workspace)
    } else {
        sys::open_tree_clone_one(workspace)
    }
    .map_err(|e| format!("open_tree {}: {e}", workspace.display()))?;
    sys::mount_setattr(
        Some(tree.as_fd()),
        Path::new(""),
        true,
        sys::MOUNT_ATTR_IDMAP,
        Some(userns.as_fd()),
    )
    .map_err(|e| format!("idmapping {}: {e} (the filesystem may not support idmapped mounts; run nightshift as an unprivileged user instead)", workspace.display()))?;
    Ok(tree)
}

/// A user namespace mapping `range` ids from 0 to `host_id` on, with no process in it: only
/// mounts use it. Made once per host process and mapping (a fork and a namespace cost a
/// millisecond or more).
fn mapping_namespace(host_id: u32, range: u32) -> Result<Arc<OwnedFd>, String> {
    /// Namespaces made so far, by the first host id and range they map.
    type Made = Vec<((u32, u32), Arc<OwnedFd>)>;
    static CACHE: Mutex<Made> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, userns)) = cache.iter().find(|(ids, _)| *ids == (host_id, range)) {
        return Ok(userns.clone());
    }
    let userns = Arc::new(create_mapping_namespace(host_id, range)?);
    cache.push(((host_id, range), userns.clone()));
    Ok(userns)
}

fn create_mapping_namespace(host_id: u32, range: u32) -> Result<OwnedFd, String> {
    let (done_read, done_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (wait_on, close_on_child) = (done_read.as_raw_fd(), done_write.as_raw_fd());
    // SAFETY: clone without CLONE_VM is a fork into a new user namespace. This process may have
    // threads, so the child makes only raw system calls (close, read, exit) and touches no lock.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: see above; the child waits until the parent closes its end, then exits.
        unsafe {
            libc::syscall(libc::SYS_close, close_on_child);
            let mut byte = 0u8;
            libc::syscall(
                libc::SYS_read,
                wait_on,
                &mut byte as *mut u8 as *mut libc::c_void,
                1usize,
            );
            libc::syscall(libc::SYS_exit_group, 0);
        }
        unreachable!();
    }
    if pid < 0 {
        return Err(format!(
            "creating the idmapping namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let pid = pid as i32;
    let result = (|| {
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, format!("0 {host_id} {range}\n"))
                .map_err(|e| format!("writing {path}: {e}"))?;
        }
        // An O_PATH descriptor is not accepted as a namespace.
        let ns = format!("/proc/{pid}/ns/user");
        std::fs::File::open(&ns)
            .map(OwnedFd::from)
            .map_err(|e| format!("opening {ns}: {e}"))
    })();
    drop(done_write);
    drop(done_read);
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a live local.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    result
}
