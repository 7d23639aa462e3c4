//! The sandbox's file system, built by the init inside its new mount namespace: an empty tmpfs
//! that becomes `/`, read-only binds of what programs need, a fresh /proc, a minimal /dev, a
//! tmpfs /tmp and the workspace as an overlay. Nothing of the host is visible unless it is
//! bound here, and the host's /home, /root, /run and /tmp never are.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::super::proxy::trust::{CA_BUNDLE, CA_BUNDLE_FILE, SYSTEM_BUNDLES};
use super::super::sys;
use super::super::wire::HelperConfig;
use super::Handles;
use super::staged::Staged;

/// Where the new root is assembled: in a tmpfs mounted over the host's /tmp in our own mount
/// namespace (which hides nothing from the host: every host path we need is already open as a
/// descriptor). That tmpfs also stages the overlay's layers, and goes with the host's root when
/// it is detached, taking them along in the same unmount.
pub(super) const STAGING: &str = "/tmp";
const NEW_ROOT: &str = "/tmp/root";

/// Where the proxy's socket appears inside.
pub const PROXY_SOCKET: &str = "/run/nightshift/proxy.sock";

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

fn inside(path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    Path::new(NEW_ROOT).join(relative)
}

pub(super) fn mkdir_p(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| err("mkdir", path, e))
}

fn touch(path: &Path) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent, 0o755)?;
    }
    std::fs::File::create(path)
        .map(drop)
        .map_err(|e| err("creating", path, e))
}

fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: &str) -> Result<(), String> {
    mount(Some(fstype), target, Some(fstype), flags, Some(data))
        .map_err(|e| err(&format!("mounting {fstype} on"), target, e))
}

/// A host path to reproduce inside.
pub(super) enum Source {
    /// Opened in our mount namespace, bound from its descriptor.
    Opened(OwnedFd),
    /// A detached tree cloned by stage one while it was root.
    Tree(OwnedFd),
}

/// One entry of the new root.
enum Entry {
    Dir(Source),
    File(Source),
    Symlink(PathBuf),
}

/// System directories every program needs, bound read-only at the same place.
const SYSTEM_BINDS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"];

fn open_path(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| err("opening", path, e))
}

fn source(path: &Path, handles: &mut Handles, base: Option<&Base>) -> Result<Source, String> {
    match handles.take(path) {
        Some(tree) => Ok(Source::Tree(tree)),
        None => open_path(&reachable(path, base)).map(Source::Opened),
    }
}

/// Where a host path can be reached once [`Base`] is built: a path under the host's /tmp,
/// which the staging tmpfs now covers, through the descriptor of the /tmp it covers.
fn reachable(path: &Path, base: Option<&Base>) -> PathBuf {
    match (path.strip_prefix(STAGING), base) {
        (Ok(rest), Some(base)) => Path::new(&fd_path(&base.host_tmp)).join(rest),
        _ => path.to_path_buf(),
    }
}

/// Host paths the sandbox will show, opened before the host's root is hidden.
fn open_entries<'a>(
    paths: impl Iterator<Item = &'a Path>,
    handles: &mut Handles,
    base: Option<&Base>,
) -> Result<Vec<(PathBuf, Entry)>, String> {
    let mut entries = Vec::new();
    for path in paths {
        // A tree the host cloned as root is the directory, whether or not the dropped uid
        // could reach it by path (a toolchain under /root, which is 0700).
        if let Some(tree) = handles.take(path) {
            entries.push((path.to_path_buf(), Entry::Dir(Source::Tree(tree))));
            continue;
        }
        let host = reachable(path, base);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let entry = if meta.file_type().is_symlink() {
            Entry::Symlink(std::fs::read_link(&host).map_err(|e| err("reading the link", path, e))?)
        } else if meta.is_dir() {
            Entry::Dir(source(path, handles, base)?)
        } else {
            Entry::File(source(path, handles, base)?)
        };
        entries.push((path.to_path_buf(), entry));
    }
    Ok(entries)
}

pub(super) fn attach(source: &Source, target: &Path) -> Result<(), String> {
    match source {
        Source::Opened(fd) => {
            let from = fd_path(fd);
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(
                Some(from.as_str()),
                target,
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| err("binding", target, e))
        }
        Source::Tree(fd) => {
            sys::move_mount_to(fd.as_fd(), target).map_err(|e| err("attaching", target, e))
        }
    }
}

fn bind(source: &Source, target: &Path, attrs: u64) -> Result<(), String> {
    attach(source, target)?;
    // mount_setattr sets the flags on every mount below too, which a remount would not.
    sys::mount_setattr(None, target, true, attrs, None).map_err(|e| err("restricting", target, e))
}

/// What every session's root has, built before the session's configuration arrives: the
/// staging tmpfs, the new root with the system directories, /dev and /proc.
pub struct Base {
    /// The host's /tmp, which the staging tmpfs covers.
    host_tmp: OwnedFd,
}

const READ_ONLY: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// Builds [`Base`] in a new mount namespace (and as pid 1 of a new pid namespace, for /proc).
pub fn build_base() -> Result<Base, String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    let entries = open_entries(
        SYSTEM_BINDS.iter().map(Path::new),
        &mut Handles::default(),
        None,
    )?;
    let staging = Path::new(STAGING);
    let host_tmp = open_path(staging)?;
    mount_fs(
        "tmpfs",
        staging,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0700,size=64k",
    )?;
    let root = Path::new(NEW_ROOT);
    mkdir_p(root, 0o755)?;
    mount_fs(
        "tmpfs",
        root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=16m",
    )?;
    place_entries(entries)?;
    build_dev(root)?;
    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir, 0o555)?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &proc_dir, hidden, "")?;
    Ok(Base { host_tmp })
}

/// Finishes the root over [`Base`] with what the configuration names (its read-only binds, a
/// /tmp of its size, the workspace, the home directory and any system overlays) and switches to
/// it. The process's cwd and root are the new `/` afterwards.
pub fn build(base: Base, config: &HelperConfig, handles: &mut Handles) -> Result<(), String> {
    let base = Some(&base);
    let entries = open_entries(config.ro_binds.iter().map(PathBuf::as_path), handles, base)?;
    let workspace = source(&config.workspace, handles, base)?;
    let state = source(&config.state, handles, base)?;
    let sources = |paths: &[PathBuf], handles: &mut Handles| {
        paths
            .iter()
            .map(|layer| source(layer, handles, base))
            .collect::<Result<Vec<_>, _>>()
    };
    let layers = sources(&config.layers, handles)?;
    let image = sources(&config.image, handles)?;
    let root = Path::new(NEW_ROOT);
    let mut staged = Staged::attach(Path::new(STAGING), &workspace, &state, (&layers, &image))?;
    staged.attach_user_parts(&config.layers, handles)?;
    if !staged.image.is_empty() {
        replace_root(root, &staged)?;
    }
    place_entries(entries)?;

    let tmp = root.join("tmp");
    mkdir_p(&tmp, 0o755)?;
    let tmp_opts = format!("mode=1777,size={}", config.tmp_bytes.max(1 << 20));
    mount_fs(
        "tmpfs",
        &tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &tmp_opts,
    )?;

    mount_workspace(
        root,
        &staged,
        config.proxy,
        (config.workspace_over_layers, config.read_only_workspace),
    )?;
    mount_home(&staged)?;
    mount_system(root, &staged, config, handles)?;
    if config.ca_bundle {
        bind_ca_bundle(&staged.state)?;
    }

    let image = !staged.image.is_empty();
    switch_root(root)?;
    // Nothing may be created in / itself; the writable places are their own mounts. An image's
    // root is writable, as a container's is: what a session writes there is its own.
    let read_only: &[&str] = if image { &["/dev"] } else { &["/", "/dev"] };
    for path in read_only {
        sys::mount_setattr(None, Path::new(path), false, READ_ONLY, None)
            .map_err(|e| err("making read-only", Path::new(path), e))?;
    }
    Ok(())
}

/// The sandbox user's home directory inside: writable, and kept by a setup layer.
pub const HOME: &str = "/home/agent";

/// The system directories a writable system makes overlays of, by name (`/<name>` inside),
/// and a layer can hold changes to (`system/<name>/`).
pub const SYSTEM_DIRS: &[&str] = &["usr", "etc", "opt", "var"];

/// Where the helpers of a session whose commands run as root live inside (a `sudo` that only
/// runs its command, when the system has none).
pub const ROOT_TOOLS: &str = "/run/nightshift/bin";

/// Makes the image the new root in place of the base's tmpfs and its binds of the host's
/// system: an overlay of the layers' `root/` parts over the image's layers, writable into the
/// session's `root/`. The base's /dev and /proc move over to it.
fn replace_root(root: &Path, staged: &Staged) -> Result<(), String> {
    const MOVED: [&str; 2] = ["dev", "proc"];
    let aside = Path::new(STAGING).join("aside");
    let move_to = |from: &Path, to: &Path| {
        mkdir_p(to, 0o755)?;
        mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| err(&format!("moving {} to", from.display()), to, e))
    };
    for name in MOVED {
        move_to(&root.join(name), &aside.join(name))?;
    }
    umount2(root, MntFlags::MNT_DETACH).map_err(|e| err("detaching", root, e))?;
    let mut lowers = staged.parts(super::super::state::ROOT_PART);
    lowers.extend(staged.image.iter().rev().cloned());
    let dir = staged.state.join(super::super::state::ROOT_PART);
    mount_overlay(root, &lowers, Some((&dir.join("upper"), &dir.join("work"))))?;
    for name in MOVED {
        move_to(&aside.join(name), &root.join(name))?;
    }
    Ok(())
}

/// An overlay at `target` of `lowers` (topmost first), writable into `upper` (with its `work`
/// beside it) when given, read-only otherwise.
fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<(), String> {
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut options = format!("lowerdir={}", lowers.join(":"));
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match upper {
        Some((upper, work)) => options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        )),
        None => flags |= MsFlags::MS_RDONLY,
    }
    // `userxattr` is what an overlay in a user namespace needs on recent kernels; older ones do
    // not know it and work without.
    mount_fs("overlay", target, flags, &format!("{options},userxattr"))
        .or_else(|first| mount_fs("overlay", target, flags, &options).map_err(|_| first))
}

/// The home directory: the layers' homes under the session's own upper directory.
fn mount_home(staged: &Staged) -> Result<(), String> {
    let target = inside(Path::new(HOME));
    mkdir_p(&target, 0o755)?;
    let mut lowers = staged.parts("home");
    lowers.push(staged.empty.clone());
    let home = staged.state.join("home");
    mount_overlay(
        &target,
        &lowers,
        Some((&home.join("upper"), &home.join("work"))),
    )
}

/// The system directories. With a writable system, each is an overlay of the host's directory
/// (idmapped so that its owners exist inside) under the session's upper directory for it. Else
/// a directory some layer changed is a read-only overlay of those changes over the host's, and
/// the rest stay the plain binds of the base.
fn mount_system(
    root: &Path,
    staged: &Staged,
    config: &HelperConfig,
    handles: &mut Handles,
) -> Result<(), String> {
    for name in SYSTEM_DIRS {
        let mut lowers = staged.parts(&format!("system/{name}"));
        lowers.extend(staged.image_parts(name));
        let target = root.join(name);
        if config.writable_system {
            if let Some(tree) = handles.take_system(name) {
                let at = Path::new(STAGING).join(format!("system-{name}"));
                mkdir_p(&at, 0o755)?;
                attach(&Source::Tree(tree), &at)?;
                lowers.push(at);
            }
            if lowers.is_empty() {
                lowers.push(staged.empty.clone());
            }
            mkdir_p(&target, 0o755)?;
            let dir = staged.state.join("system").join(name);
            mount_overlay(
                &target,
                &lowers,
                Some((&dir.join("upper"), &dir.join("work"))),
            )?;
        } else if !lowers.is_empty() {
            let host = Path::new("/").join(name);
            lowers.push(if host.is_dir() {
                host
            } else {
                staged.empty.clone()
            });
            mkdir_p(&target, 0o755)?;
            mount_overlay(&target, &lowers, None)?;
        }
    }
    if config.writable_system && !inside(Path::new("/usr/bin/sudo")).exists() {
        write_sudo(&inside(Path::new(ROOT_TOOLS)))?;
    }
    Ok(())
}

/// Setup scripts written for hosted agents say `sudo apt-get install ...`. Commands of a
/// writable system already run as root, so where the system has no sudo, this one runs the
/// command it is given, dropping sudo's own options.
fn write_sudo(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    const SCRIPT: &str = "#!/bin/sh\n\
# nightshift: setup runs as root already; this sudo runs its command.\n\
while [ $# -gt 0 ]; do\n\
  case \"$1\" in\n\
    -u|-g|-C|-D|-h|-p|-r|-t|-U|--user|--group) shift 2 ;;\n\
    --) shift; break ;;\n\
    -*) shift ;;\n\
    *) break ;;\n\
  esac\n\
done\n\
exec \"$@\"\n";
    mkdir_p(dir, 0o755)?;
    let path = dir.join("sudo");
    std::fs::write(&path, SCRIPT).map_err(|e| err("writing", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err("making executable", &path, e))
}

/// Reproduces `entries` read-only at the same places in the new root.
fn place_entries(entries: Vec<(PathBuf, Entry)>) -> Result<(), String> {
    for (path, entry) in &entries {
        let at = inside(path);
        match entry {
            Entry::Symlink(points_to) => {
                if let Some(parent) = at.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                symlink(points_to, &at).map_err(|e| err("linking", &at, e))?;
            }
            Entry::Dir(source) => {
                mkdir_p(&at, 0o755)?;
                bind(source, &at, READ_ONLY)?;
            }
            Entry::File(source) => {
                touch(&at)?;
                bind(source, &at, READ_ONLY)?;
            }
        }
    }
    Ok(())
}

/// The session's CA bundle at [`CA_BUNDLE`], and over every system bundle inside.
fn bind_ca_bundle(staged: &Path) -> Result<(), String> {
    let bundle = staged.join(CA_BUNDLE_FILE);
    let at = inside(Path::new(CA_BUNDLE));
    touch(&at)?;
    let bind_at = |at: &Path| {
        mount(
            Some(&bundle),
            at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("binding", at, e))?;
        sys::mount_setattr(None, at, false, READ_ONLY, None).map_err(|e| err("restricting", at, e))
    };
    bind_at(&at)?;
    // A bundle that is a link (Fedora's and Arch's are) is covered where it leads, when that is
    // inside the new root: a link resolved now, before the switch, could otherwise lead to the
    // host's files, and those are left alone.
    let mut covered = Vec::new();
    for system in SYSTEM_BUNDLES {
        let Ok(real) = std::fs::canonicalize(inside(Path::new(system))) else {
            continue;
        };
        let file = std::fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_file());
        if file && real.starts_with(NEW_ROOT) && !covered.contains(&real) {
            bind_at(&real)?;
            covered.push(real);
        }
    }
    Ok(())
}

/// Device nodes cannot be created in a user namespace: the harmless ones are bound from the
/// host's /dev, and a private devpts instance gives terminals that lead nowhere outside.
fn build_dev(root: &Path) -> Result<(), String> {
    let dev = root.join("dev");
    mkdir_p(&dev, 0o755)?;
    mount_fs("tmpfs", &dev, MsFlags::MS_NOSUID, "mode=0755,size=64k")?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        let at = dev.join(name);
        touch(&at)?;
        mount(
            Some(&host),
            &at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("binding", &at, e))?;
    }
    // A bind ignores mount flags: nosuid on all the nodes at once.
    sys::mount_setattr(None, &dev, true, sys::MOUNT_ATTR_NOSUID, None)
        .map_err(|e| err("restricting", &dev, e))?;
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755)?;
    mount_fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm, 0o755)?;
    mount_fs(
        "tmpfs",
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777,size=64m",
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dev.join(link);
        symlink(to, &at).map_err(|e| err("linking", &at, e))?;
    }
    Ok(())
}

/// The workspace: an overlay of the working copy and the layers' `workspace/` parts, writable
/// into the session's upper directory, so that the host's copy is never written. The working
/// copy lies below the layers (what setup changed in it shows), or with `over_layers` above
/// them (every path it holds is its own: a committed tree tested as committed). With
/// `read_only`, the overlay is then made read-only, for every process of the session.
fn mount_workspace(
    root: &Path,
    staged: &Staged,
    proxy: bool,
    (over_layers, read_only): (bool, bool),
) -> Result<(), String> {
    let target = root.join("workspace");
    mkdir_p(&target, 0o755)?;
    let mut lowers = staged.parts("workspace");
    if over_layers {
        lowers.insert(0, staged.lower.clone());
    } else {
        lowers.push(staged.lower.clone());
    }
    mount_overlay(
        &target,
        &lowers,
        Some((&staged.state.join("upper"), &staged.state.join("work"))),
    )?;
    if read_only {
        sys::mount_setattr(None, &target, false, sys::MOUNT_ATTR_RDONLY, None)
            .map_err(|e| err("making read-only", &target, e))?;
    }
    if proxy {
        let at = inside(Path::new(PROXY_SOCKET));
        touch(&at)?;
        let socket = staged.state.join("proxy.sock");
        mount(
            Some(&socket),
            &at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("binding", &at, e))?;
        sys::mount_setattr(
            None,
            &at,
            false,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID,
            None,
        )
        .map_err(|e| err("restricting", &at, e))?;
    }
    Ok(())
}

fn switch_root(root: &Path) -> Result<(), String> {
    nix::unistd::chdir(root).map_err(|e| err("chdir", root, e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    // The old root is now stacked on top of the new one; detaching it leaves only ours.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}
