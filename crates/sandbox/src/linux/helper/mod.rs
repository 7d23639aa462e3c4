//! The helper process: the same executable as the host, re-executed with a hidden first
//! argument, so that namespaces are created by a fresh single-threaded process and never by the
//! host's async runtime.
//!
//! Stage one (this file) runs with the host's view. It does all it can before its configuration
//! arrives, since a helper may be started ahead of its session (a spare, which waits at the
//! lowest priority): it drops to the sandbox's host uid when started as root, creates the user
//! namespace with its uid and gid maps, has a child make the network namespace, creates the
//! mount, pid, ipc and uts namespaces and forks the init (pid 1 of the new pid namespace). The
//! init builds what every session's root has, then receives the configuration with the
//! descriptors the host opened for it (as root, the mount trees it cloned, which the dropped
//! uid could not reach), finishes the root, and later receives the session's cgroups. Stage one
//! then only waits: when it dies, the init dies with it (parent-death signal), and so does
//! everything in the sandbox.

mod command;
mod init;
mod job;
mod rootfs;
mod staged;

pub use rootfs::{HOME, PROXY_SOCKET, ROOT_TOOLS, SYSTEM_DIRS};

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

/// Mount trees the host cloned as root, for the host paths the sandbox's host uid may not be
/// allowed to reach once root is dropped. Empty when not started as root: the init then opens
/// every path itself.
#[derive(Default)]
pub(crate) struct Handles {
    pub trees: Vec<(PathBuf, OwnedFd)>,
    /// The host's system directories idmapped for a writable system, by name.
    pub system: Vec<(String, OwnedFd)>,
}

impl Handles {
    fn take(&mut self, path: &Path) -> Option<OwnedFd> {
        let index = self.trees.iter().position(|(p, _)| p == path)?;
        Some(self.trees.swap_remove(index).1)
    }

    fn take_system(&mut self, name: &str) -> Option<OwnedFd> {
        let index = self.system.iter().position(|(n, _)| n == name)?;
        Some(self.system.swap_remove(index).1)
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

/// The helper's arguments after [`HELPER_ARG`]: what it can do before its configuration
/// arrives, so that it does it while the host prepares the rest.
struct Args {
    /// The host's pid: if our parent is not it any more, the host is gone.
    parent: i32,
    /// The uid and gid to become when started as root (see [`HelperConfig::host_id`]).
    host_id: u32,
    inside_id: u32,
    drop_root: bool,
    /// Started ahead of its session: it waits at the lowest priority (the host, as root, gives
    /// the init the normal one back when it takes the helper).
    spare: bool,
    /// How many ids, from `inside_id` and `host_id` on, the user namespace maps: 1, or a
    /// whole range for a session whose commands run as root over a writable system (which
    /// needs the host to be root, to write such a map).
    range: u32,
}

impl Args {
    fn parse(args: &[OsString]) -> Option<Self> {
        let number = |i: usize| args.get(i)?.to_str()?.parse::<u64>().ok();
        Some(Args {
            parent: i32::try_from(number(0)?).ok()?,
            host_id: u32::try_from(number(1)?).ok()?,
            inside_id: u32::try_from(number(2)?).ok()?,
            drop_root: number(3)? == 1,
            spare: number(4)? == 1,
            range: u32::try_from(number(5)?).ok().filter(|range| *range >= 1)?,
        })
    }
}

/// The arguments the host passes after [`HELPER_ARG`].
pub(crate) fn helper_args(
    host_id: u32,
    inside_id: u32,
    drop_root: bool,
    spare: bool,
    range: u32,
) -> [String; 6] {
    [
        std::process::id().to_string(),
        host_id.to_string(),
        inside_id.to_string(),
        u8::from(drop_root).to_string(),
        u8::from(spare).to_string(),
        range.to_string(),
    ]
}

fn stage_one(args: Vec<OsString>) -> Result<i32, String> {
    set_parent_death_signal()?;
    let args = Args::parse(&args).ok_or("missing or malformed arguments")?;
    if nix::unistd::getppid().as_raw() != args.parent {
        return Err("the host exited before the sandbox started".into());
    }
    if args.spare {
        // Whatever this and its children do before the session is theirs yields to the host's
        // running sessions; raising one's own nice value needs no privilege.
        // SAFETY: setpriority with integer arguments only changes this process's priority.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
    // Leave the host's session, so that nothing inside can reach its controlling terminal.
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // A range of ids can only be mapped by a process privileged outside the new namespace: a
    // child forked while we are still root writes our maps once we have made it.
    let mapper = if args.range > 1 {
        if !args.drop_root {
            return Err("a range of ids needs the host to be root".into());
        }
        Some(IdMapper::start(args.inside_id, args.host_id, args.range)?)
    } else {
        None
    };
    // Everything of the host this process needs comes as descriptors the host opened: root is
    // dropped first thing.
    if args.drop_root {
        drop_root(args.host_id)?;
        set_parent_death_signal()?;
        // Changing uid made us non-dumpable, which makes /proc/self root's: our own uid_map
        // would be out of reach. Nothing can see us but processes of the sandbox uid, and none
        // of those exist yet.
        // SAFETY: prctl with integer arguments only changes this process's settings.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    let host_uid = Uid::effective().as_raw();
    let host_gid = Gid::effective().as_raw();
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("unshare: {e} (are unprivileged user namespaces enabled?)"))?;
    match mapper {
        Some(mapper) => mapper.map()?,
        None => write_id_maps("self", args.inside_id, host_uid, host_gid)?,
    }
    // A network namespace takes longer to create than all the others together: a child makes
    // it while the init builds the file system, and the init joins it once it is built.
    let network = NetworkMaker::start()?;

    // The other namespaces, and the init forked into them, before the configuration arrives:
    // the init builds the session-independent part of the root while it waits for it.
    // The cgroup namespace is the init's to make, once it has joined its cgroups.
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|e| format!("unshare: {e}"))?;
    // SAFETY: the host passes the control socket as standard input; we take ownership of it.
    let control = unsafe { UnixStream::from_raw_fd(0) };
    let expected = Expected {
        host_id: args.host_id,
        inside_id: args.inside_id,
        drop_root: args.drop_root,
    };

    let (go_read, go_write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded (the helper runs before any thread is created),
    // so the child may do anything after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(go_write);
            init::run(control, expected, go_read, network.join)
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            drop(network.join);
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
            let code = wait_for(child);
            // It has exited by now, or does once the init's end of its pipe is closed.
            let _ = nix::sys::wait::waitpid(network.maker, None);
            Ok(code)
        }
    }
}

/// A child that stays root in the host's user namespace just long enough to map a range of
/// ids into ours, which only a process privileged there may do.
struct IdMapper {
    pid: Pid,
    go: OwnedFd,
    done: OwnedFd,
}

impl IdMapper {
    /// Forks the mapper. Called while this process is still host root and single-threaded.
    fn start(inside: u32, host: u32, range: u32) -> Result<Self, String> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (go_read, go_write) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
        let (done_read, done_write) =
            nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: this process is single-threaded, so the child may do anything after fork; it
        // only reads, writes two files and exits.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(go_write);
                drop(done_read);
                let parent = nix::unistd::getppid().as_raw();
                let mut byte = [0u8; 1];
                let mapped = nix::unistd::read(&go_read, &mut byte) == Ok(1)
                    && ["uid_map", "gid_map"].iter().all(|file| {
                        std::fs::write(
                            format!("/proc/{parent}/{file}"),
                            format!("{inside} {host} {range}\n"),
                        )
                        .is_ok()
                    });
                let _ = nix::unistd::write(&done_write, if mapped { b"y" } else { b"n" });
                // SAFETY: _exit skips the atexit handlers that belong to the helper.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(go_read);
                drop(done_write);
                Ok(IdMapper {
                    pid: child,
                    go: go_write,
                    done: done_read,
                })
            }
        }
    }

    /// Has the mapper write our maps (we are in the new user namespace by now) and waits.
    fn map(self) -> Result<(), String> {
        let IdMapper { pid, go, done } = self;
        let _ = nix::unistd::write(&go, b"g");
        let mut byte = [0u8; 1];
        let answered = nix::unistd::read(&done, &mut byte);
        let _ = nix::sys::wait::waitpid(pid, None);
        match answered {
            Ok(1) if byte[0] == b'y' => Ok(()),
            _ => Err("mapping a range of ids into the user namespace failed".into()),
        }
    }
}

/// The child that creates the session's network namespace, and what the init needs to join it.
struct NetworkMaker {
    maker: Pid,
    join: NetworkJoin,
}

/// Held by the init: `ready` yields `y` once the namespace exists (`n` if it could not be
/// made), `pidfd` names the process that holds it, and closing `hold` lets that process exit.
pub(crate) struct NetworkJoin {
    pub ready: OwnedFd,
    pub pidfd: OwnedFd,
    pub hold: OwnedFd,
}

impl NetworkMaker {
    /// Forks the maker. Called after the user namespace exists (the network namespace belongs
    /// to it) and before the pid namespace (the maker must not become its pid 1).
    fn start() -> Result<Self, String> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (ready_read, ready_write) =
            nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
        let (hold_read, hold_write) =
            nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: this process is single-threaded, so the child may do anything after fork;
        // it only unshares, writes, reads and exits.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(ready_read);
                drop(hold_write);
                let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET).is_ok();
                let _ = nix::unistd::write(&ready_write, if made { b"y" } else { b"n" });
                let mut byte = [0u8; 1];
                let _ = nix::unistd::read(&hold_read, &mut byte);
                // SAFETY: _exit skips the atexit handlers that belong to the helper.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(ready_write);
                drop(hold_read);
                let pidfd = sys::pidfd_open(child.as_raw()).map_err(|e| {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    format!("pidfd_open: {e}")
                })?;
                Ok(NetworkMaker {
                    maker: child,
                    join: NetworkJoin {
                        ready: ready_read,
                        pidfd,
                        hold: hold_write,
                    },
                })
            }
        }
    }
}

/// Moves the calling process into the namespace the maker made.
pub(crate) fn join_network(join: NetworkJoin) -> Result<(), String> {
    let NetworkJoin { ready, pidfd, hold } = join;
    let mut byte = [0u8; 1];
    match nix::unistd::read(&ready, &mut byte) {
        Ok(1) if byte[0] == b'y' => {}
        _ => return Err("unshare: could not create the network namespace".into()),
    }
    nix::sched::setns(&pidfd, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining the network namespace: {e}"))?;
    // The namespace is ours now; its maker may go.
    drop(hold);
    Ok(())
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

/// What the configuration must say, as the helper's arguments did.
pub(crate) struct Expected {
    host_id: u32,
    inside_id: u32,
    drop_root: bool,
}

/// Reads the configuration and the descriptors that come with it, once the host sends them.
pub(crate) fn receive_config(
    control: &UnixStream,
    expected: &Expected,
) -> Result<(HelperConfig, Handles), String> {
    let (config, fds): (HelperConfig, _) = wire::read_frame_with_fds(control)
        .map_err(|e| format!("reading the configuration: {e}"))?
        .ok_or("the host closed the control socket")?;
    if (config.host_id, config.inside_id, config.drop_root)
        != (expected.host_id, expected.inside_id, expected.drop_root)
    {
        return Err("the configuration does not match the arguments".into());
    }
    let handles = handles_from(&config, fds)?;
    Ok((config, handles))
}

pub(crate) fn move_off_stdio(control: UnixStream) -> Result<UnixStream, String> {
    let moved = control
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    std::mem::forget(control); // fd 0 now refers to /dev/null and must stay open.
    Ok(UnixStream::from(moved))
}

/// Pairs the descriptors that came with the configuration with their paths.
fn handles_from(config: &HelperConfig, fds: Vec<OwnedFd>) -> Result<Handles, String> {
    let expected = config.trees.len() + config.system_trees.len();
    if fds.len() != expected {
        return Err(format!(
            "the host sent {} descriptors, not {expected}",
            fds.len(),
        ));
    }
    let mut fds = fds.into_iter();
    Ok(Handles {
        trees: config.trees.iter().cloned().zip(fds.by_ref()).collect(),
        system: config.system_trees.iter().cloned().zip(fds).collect(),
    })
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
