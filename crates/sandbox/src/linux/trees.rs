//! Host side, when nightshift runs as root: detached copies of the mount trees a session shows
//! (the workspace idmapped, the state directory, the extra binds), cloned here because the
//! sandbox's host uid may not be allowed to reach them by path. They travel to the helper with
//! its configuration. Cloning them here, while the helper is still being executed, takes them
//! off the session's start path.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::sys;

/// The trees of one session, each with the host path it stands for. The working copy's files
/// (host root's) show as owned by `owner`'s host uid and gid.
pub(crate) fn open<'a>(
    workspace: &Path,
    state: &'a Path,
    others: impl Iterator<Item = &'a PathBuf>,
    owner: (u32, u32),
) -> Result<Vec<(PathBuf, OwnedFd)>, String> {
    let mapping = Mapping {
        from: 0,
        uid: owner.0,
        gid: owner.1,
        range: 1,
    };
    let mut trees = vec![(workspace.to_path_buf(), idmapped_tree(workspace, mapping)?)];
    for path in std::iter::once(state).chain(others.map(PathBuf::as_path)) {
        if path.is_dir() {
            let tree = sys::open_tree_clone(path)
                .map_err(|e| format!("open_tree {}: {e}", path.display()))?;
            trees.push((path.to_path_buf(), tree));
        }
    }
    Ok(trees)
}

/// The parts of layers that belong to the commands' user, for a session whose commands run as
/// an image's user (see [`crate::SessionUser`]): each layer's `workspace/` and `home/` (those
/// that are directories), idmapped so that what root made there in a setup session (host id
/// `host_id`) shows as owned by `owner`'s host uid and gid, as it does for the sandbox user.
/// Each tree goes with the host path of the part.
pub(crate) fn user_parts(
    layers: &[PathBuf],
    host_id: u32,
    owner: (u32, u32),
) -> Result<Vec<(PathBuf, OwnedFd)>, String> {
    let mapping = Mapping {
        from: host_id,
        uid: owner.0,
        gid: owner.1,
        range: 1,
    };
    let mut trees = Vec::new();
    for layer in layers {
        for part in USER_PARTS {
            let path = layer.join(part);
            // Layers are nightshift's own directories; a link is still never followed.
            if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
                trees.push((path.clone(), idmapped_tree(&path, mapping)?));
            }
        }
    }
    Ok(trees)
}

/// The parts of a layer [`user_parts`] idmaps.
pub(crate) const USER_PARTS: [&str; 2] = ["workspace", "home"];

/// Idmapped copies of the host's system directories (`/<name>`, those that exist), in which
/// host id `u` appears as `host_id + u` for `u` below `range`: the lower layers of a writable
/// system, whose owners exist in a namespace that maps that range.
pub(crate) fn system(
    names: &[&str],
    host_id: u32,
    range: u32,
) -> Result<Vec<(String, OwnedFd)>, String> {
    let mapping = Mapping {
        from: 0,
        uid: host_id,
        gid: host_id,
        range,
    };
    let mut trees = Vec::new();
    for name in names {
        let path = Path::new("/").join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
            trees.push((name.to_string(), idmapped_tree(&path, mapping)?));
        }
    }
    Ok(trees)
}

/// How an idmapped tree shows its files' owners: host ids `from` and the `range - 1` after it
/// appear as `uid` (and on) for owners, `gid` (and on) for groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    from: u32,
    uid: u32,
    gid: u32,
    range: u32,
}

/// A detached copy of the mount at `path` idmapped by `mapping`: for the workspace, host root's
/// files appear owned by the sandbox user's host id (without it, a working copy created by a
/// root host would be unwritable inside, or the sandbox user would have to be host root).
fn idmapped_tree(path: &Path, mapping: Mapping) -> Result<OwnedFd, String> {
    let workspace = path;
    let range = mapping.range;
    let userns = mapping_namespace(mapping)?;
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

/// A user namespace whose maps are `mapping` (`from` inside it is `uid` or `gid` outside), with
/// no process in it: only mounts use it. Made once per host process and mapping (a fork and a
/// namespace cost a millisecond or more).
fn mapping_namespace(mapping: Mapping) -> Result<Arc<OwnedFd>, String> {
    /// Namespaces made so far, by their mapping.
    type Made = Vec<(Mapping, Arc<OwnedFd>)>;
    static CACHE: Mutex<Made> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, userns)) = cache.iter().find(|(made, _)| *made == mapping) {
        return Ok(userns.clone());
    }
    let userns = Arc::new(create_mapping_namespace(mapping)?);
    cache.push((mapping, userns.clone()));
    Ok(userns)
}

fn create_mapping_namespace(mapping: Mapping) -> Result<OwnedFd, String> {
    let Mapping {
        from,
        uid,
        gid,
        range,
    } = mapping;
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
        for (file, to) in [("uid_map", uid), ("gid_map", gid)] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, format!("{from} {to} {range}\n"))
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
