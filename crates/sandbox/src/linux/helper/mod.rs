//! The helper process: the same executable as the host, re-executed with a hidden first
//! argument, so that namespaces are created by a fresh single-threaded process and never by the
//! host's async runtime.
//!
//! Stage one (this file) runs with the host's view: it joins the session's cgroups, opens every
//! host path it will need as a descriptor (so that dropping root later cannot lose access to
//! them), drops to the sandbox's host uid when started as root, creates the namespaces, writes the
//! uid and gid maps and forks the init (pid 1 of the new pid namespace). It then only waits: when
//! it dies, the init dies with it (parent-death signal), and so does everything in the sandbox.

mod init;
mod rootfs;

pub use rootfs::PROXY_SOCKET;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::sys;
use super::wire::{self, HelperConfig, Reply};

/// The hidden first argument that turns a binary into the sandbox helper.
pub const HELPER_ARG: &str = "--nightshift-sandbox-helper";

/// Mount trees cloned while still host root, for the host paths the sandbox's host uid may
/// not be allowed to reach once root is dropped. Empty when not started as root: the init then
/// opens every path itself.
#[derive(Default)]
pub(crate) struct Handles {
    pub trees: Vec<(PathBuf, OwnedFd)>,
    /// The limited cgroup leaves, open for writing, for commands to join.
    pub commands_cgroups: Vec<OwnedFd>,
}

impl Handles {
    fn take(&mut self, path: &Path) -> Option<OwnedFd> {
        let index = self.trees.iter().position(|(p, _)| p == path)?;
        Some(self.trees.swap_remove(index).1)
    }
}

/// Runs the helper if this process was started as one, and never returns in that case.
///
/// Call it first thing in `main`, before any thread or async runtime exists.
pub fn run_helper_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return;
    }
    let code = match stage_one(args.collect()) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "nightshift-sandbox-helper: {message}");
            report_failure(&message);
            111
        }
    };
    std::process::exit(code);
}

/// Tells the host why setup failed, over the control socket on standard input.
fn report_failure(message: &str) {
    // SAFETY: fd 0 is the control socket the host gave us; ManuallyDrop keeps it open.
    let socket = std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(0) });
    let _ = wire::write_frame(
        &mut &*socket,
        &Reply::SetupFailed {
            message: message.into(),
        },
        &[],
    );
}

fn set_parent_death_signal() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only changes this process's settings.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_PDEATHSIG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn stage_one(args: Vec<OsString>) -> Result<i32, String> {
    set_parent_death_signal()?;
    let expected_parent: i32 = args
        .first()
        .and_then(|arg| arg.to_str())
        .and_then(|arg| arg.parse().ok())
        .ok_or("missing parent pid argument")?;
    if nix::unistd::getppid().as_raw() != expected_parent {
        return Err("the host exited before the sandbox started".into());
    }
    // Leave the host's session, so that nothing inside can reach its controlling terminal.
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;

    // SAFETY: the host passes the control socket as standard input; we take ownership of it.
    let mut control = unsafe { UnixStream::from_raw_fd(0) };
    let (config, _): (HelperConfig, _) = wire::read_frame(&mut control)
        .map_err(|e| format!("reading the configuration: {e}"))?
        .ok_or("the host closed the control socket")?;
    // Keep the socket off fd 0 and close-on-exec, so that no command inherits it.
    let control = move_off_stdio(control)?;

    for procs in &config.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }

    let mut handles = open_handles(&config)?;
    for procs in &config.cgroup_commands {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .map_err(|e| format!("opening {}: {e}", procs.display()))?;
        handles.commands_cgroups.push(OwnedFd::from(file));
    }
    if config.drop_root {
        drop_root(config.host_id)?;
        set_parent_death_signal()?;
        // Changing uid made us non-dumpable, which makes /proc/self root's: our own uid_map
        // would be out of reach. Nothing can see us but processes of the sandbox uid, and none
        // of those exist yet.
        // SAFETY: prctl with integer arguments only changes this process's settings.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    let host_uid = Uid::effective().as_raw();
    let host_gid = Gid::effective().as_raw();

    nix::sched::unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| format!("unshare: {e} (are unprivileged user namespaces enabled?)"))?;
    write_id_maps("self", config.inside_id, host_uid, host_gid)?;

    let (go_read, go_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded (the helper runs before any thread is created),
    // so the child may do anything after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(go_write);
            init::run(control, config, handles, go_read)
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            drop(handles);
            let sent = wire::write_frame(
                &mut &control,
                &Reply::Spawned {
                    pid: child.as_raw(),
                },
                &[],
            );
            drop(control);
            // The init waits for this byte before it answers, so the host always reads
            // `Spawned` first.
            let _ = nix::unistd::write(&go_write, b"g");
            drop(go_write);
            if sent.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            Ok(wait_for(child))
        }
    }
}

fn wait_for(child: Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

fn move_off_stdio(control: UnixStream) -> Result<UnixStream, String> {
    let moved = control
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    std::mem::forget(control); // fd 0 now refers to /dev/null and must stay open.
    Ok(UnixStream::from(moved))
}

/// As root: detached copies of the workspace (idmapped), the state directory and the extra
/// binds, which the dropped uid may not be able to reach by path.
fn open_handles(config: &HelperConfig) -> Result<Handles, String> {
    let mut handles = Handles::default();
    if !config.drop_root {
        return Ok(handles);
    }
    handles.trees.push((
        config.workspace.clone(),
        idmapped_tree(&config.workspace, config.host_id)?,
    ));
    for path in std::iter::once(&config.state).chain(&config.ro_binds) {
        if path.is_dir() {
            let tree = sys::open_tree_clone(path)
                .map_err(|e| format!("open_tree {}: {e}", path.display()))?;
            handles.trees.push((path.clone(), tree));
        }
    }
    Ok(handles)
}

/// A detached copy of the workspace mount in which files owned by host root appear owned by
/// `host_id`, which the sandbox user maps to. Without it, a working copy created by a root host
/// would be unwritable inside, or the sandbox user would have to be host root.
fn idmapped_tree(workspace: &Path, host_id: u32) -> Result<OwnedFd, String> {
    let userns = mapping_namespace(host_id)?;
    let tree = sys::open_tree_clone(workspace)
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

/// A user namespace mapping 0 to `host_id`, held by a short-lived child.
fn mapping_namespace(host_id: u32) -> Result<OwnedFd, String> {
    let (ready_read, ready_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (done_read, done_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded process; the child only calls unshare, write, read and _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(ready_read);
            drop(done_write);
            let ok = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_write, if ok { b"y" } else { b"n" });
            let mut byte = [0u8; 1];
            let _ = nix::unistd::read(&done_read, &mut byte);
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_write);
            drop(done_read);
            let mut byte = [0u8; 1];
            let result = match nix::unistd::read(&ready_read, &mut byte) {
                Ok(1) if byte[0] == b'y' => {
                    let pid = child.as_raw().to_string();
                    let ns = format!("/proc/{pid}/ns/user");
                    write_id_maps(&pid, 0, host_id, host_id).and_then(|()| {
                        // An O_PATH descriptor is not accepted as a namespace.
                        std::fs::File::open(&ns)
                            .map(OwnedFd::from)
                            .map_err(|e| format!("opening {ns}: {e}"))
                    })
                }
                _ => Err("could not create the idmapping namespace".to_string()),
            };
            drop(done_write);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// Maps `inside` to the host ids in the user namespace of `/proc/<pid>`.
fn write_id_maps(pid: &str, inside: u32, host_uid: u32, host_gid: u32) -> Result<(), String> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| format!("writing /proc/{pid}/{file}: {e}"))
    };
    if pid == "self" {
        write("setgroups", "deny".into())?;
    }
    write("uid_map", format!("{inside} {host_uid} 1\n"))?;
    write("gid_map", format!("{inside} {host_gid} 1\n"))
}

fn drop_root(host_id: u32) -> Result<(), String> {
    let id = Gid::from_raw(host_id);
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(id, id, id).map_err(|e| format!("setresgid: {e}"))?;
    let id = Uid::from_raw(host_id);
    nix::unistd::setresuid(id, id, id).map_err(|e| format!("setresuid: {e}"))
}
