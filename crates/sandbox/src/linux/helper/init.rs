//! Pid 1 of a session: builds the sandbox, confines itself (commands inherit it), then serves
//! the host's requests until the host goes away. It reaps every process that ends in the
//! sandbox, forwards termination signals to running commands, and runs each command in its own
//! session and process group, with a clean environment, so that a timeout or a cancellation
//! kills all of it while earlier background processes live on.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::super::wire::{
    self, CommandUser, HelperConfig, Reply, Request, SessionLimits, WireStatus,
};
use super::super::{confine, proxy_bridge};
use super::job::Job;
use super::{Expected, Handles, NetworkJoin, join_network, move_off_stdio, receive_config, rootfs};

/// Signals forwarded to running commands.
pub(super) const FORWARDED: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// A command the host asked for, from the moment its request is read (so that a kill that
/// comes before the command has started is not lost) until it has ended.
pub(super) struct Running {
    /// Its process group, once it is running.
    pub pgid: Option<i32>,
    /// Set by a kill request: the command is killed when it starts, if it has not yet.
    pub killed: Arc<AtomicBool>,
}

#[derive(Default)]
pub(super) struct Table {
    /// Exit statuses are delivered here, by pid, to the thread that started the process.
    pub waiters: HashMap<i32, mpsc::Sender<i32>>,
    pub running: HashMap<u64, Running>,
    pub children: usize,
}

pub(super) struct Shared {
    table: Mutex<Table>,
    pub spawned: Condvar,
    out: Mutex<UnixStream>,
    /// Written "0" by each command before it executes, to join the limited cgroup leaves.
    pub cgroups: Vec<OwnedFd>,
}

impl Shared {
    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the command `id`, not yet started; its kill flag.
    fn register(&self, id: u64) -> Arc<AtomicBool> {
        let killed = Arc::new(AtomicBool::new(false));
        let running = Running {
            pgid: None,
            killed: killed.clone(),
        };
        self.table().running.insert(id, running);
        killed
    }

    /// Reports that the command `id` could not start, for the reason `message`.
    fn spawn_failed(&self, id: u64, message: &str) {
        self.table().running.remove(&id);
        let reply = Reply::Done {
            id,
            status: WireStatus::SpawnFailed {
                message: message.into(),
            },
            omitted: 0,
            duration_ms: 0,
        };
        self.send(&reply, &[]);
    }

    pub(super) fn send(&self, reply: &Reply, payload: &[u8]) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if wire::write_frame(&mut *out, reply, payload).is_err() {
            // The host is gone: end the sandbox.
            std::process::exit(0);
        }
    }
}

pub(crate) fn run(control: UnixStream, expected: Expected, go: OwnedFd, network: NetworkJoin) -> ! {
    let fail = |control: &UnixStream, message: String| -> ! {
        let _ = wire::write_frame(&mut &*control, &Reply::SetupFailed { message }, &[]);
        std::process::exit(1)
    };
    // SAFETY: prctl with integer arguments only changes this process's settings.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // What every session has, while the host has not said what this one is (a helper started
    // ahead of its session waits here with it done).
    let base = match setup_base() {
        Ok(base) => base,
        Err(message) => fail(&control, message),
    };
    let (config, mut handles) = match receive_config(&control, &expected) {
        Ok(received) => received,
        Err(message) => fail(&control, message),
    };
    // Keep the socket off fd 0 and close-on-exec, so that no command inherits it.
    let Ok(control) = move_off_stdio(control) else {
        std::process::exit(1)
    };
    if let Err(message) = setup(base, &config, &mut handles, network) {
        fail(&control, message)
    }
    drop(handles);
    let (limits, cgroups) = match join_cgroups(&control) {
        Ok(joined) => joined,
        Err(message) => fail(&control, message),
    };
    // Confinement applies to the calling thread and what it starts: it comes before any thread.
    let mut writable = vec![rootfs::HOME.to_string()];
    if !config.image.is_empty() {
        // An image's root is writable throughout, as a container's is; what may not change
        // (/dev, the proxy's socket, the CA bundle) is on read-only mounts.
        writable = vec!["/".to_string()];
    } else if config.writable_system {
        writable.extend(rootfs::SYSTEM_DIRS.iter().map(|name| format!("/{name}")));
    }
    // Commands that run as root of our namespace have its capabilities: none may read our
    // descriptors (the control socket among them) or memory. (Commands of an image's user leave
    // our uid for theirs.) (An unprivileged host reaches a
    // root session's files through its own commands, never through /proc/<init>/root.)
    if config.inside_id == 0
        && let Err(message) = keep_commands_off_the_init()
    {
        fail(&control, message)
    }
    let confinement = match confine::apply(&limits.rlimits, &config.seccomp, &writable) {
        Ok(report) => report,
        Err(message) => fail(&control, message),
    };
    if config.proxy
        && let Err(message) = proxy_bridge::listen()
    {
        fail(&control, message)
    }
    // Commands run as our uid but without our capabilities, so the kernel keeps them out of
    // our /proc entries (environ, fd, mem: a ptrace check that capabilities fail). We stay
    // dumpable on purpose: the host user reaches the workspace through /proc/<us>/root, which a
    // non-dumpable process would close to an unprivileged host.
    if let Err(message) = block_forwarded_signals() {
        fail(&control, message)
    }
    let mut byte = [0u8; 1];
    if nix::unistd::read(&go, &mut byte) != Ok(1) {
        std::process::exit(1);
    }
    drop(go);
    serve(control, confinement, cgroups, config.user.clone())
}

/// For commands that run as root inside: no command gets CAP_SYS_PTRACE (the bounding set is
/// inherited), and the init is not dumpable, so /proc/1's descriptors and memory stay closed
/// to processes with the same uid.
fn keep_commands_off_the_init() -> Result<(), String> {
    /// From linux/capability.h.
    const CAP_SYS_PTRACE: libc::c_ulong = 19;
    // SAFETY: prctl with integer arguments only changes this process's settings.
    if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) } != 0 {
        return Err(format!(
            "dropping CAP_SYS_PTRACE: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn setup_base() -> Result<rootfs::Base, String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    rootfs::build_base()
}

fn setup(
    base: rootfs::Base,
    config: &HelperConfig,
    handles: &mut Handles,
    network: NetworkJoin,
) -> Result<(), String> {
    rootfs::build(base, config, handles)?;
    nix::unistd::sethostname("nightshift").map_err(|e| format!("sethostname: {e}"))?;
    join_network(network)?;
    loopback_up()
}

/// Receives the session's cgroups (made by the host while we were being built), joins the
/// init's leaves and makes the cgroup namespace there; returns the limits and the leaves that
/// every command joins.
fn join_cgroups(control: &UnixStream) -> Result<(SessionLimits, Vec<OwnedFd>), String> {
    let (limits, fds): (SessionLimits, _) = wire::read_frame_with_fds(control)
        .map_err(|e| format!("reading the limits: {e}"))?
        .ok_or("the host closed the control socket")?;
    if fds.len() != limits.init_cgroups + limits.command_cgroups {
        return Err(format!("the host sent {} cgroup descriptors", fds.len()));
    }
    let mut fds = fds.into_iter();
    for leaf in fds.by_ref().take(limits.init_cgroups) {
        // `0` is the writer itself: a single thread (no other exists yet), which the kernel
        // moves without taking its global lock. The host opened the file, and the kernel
        // checks the opener's credentials.
        nix::unistd::write(&leaf, b"0").map_err(|e| format!("joining a cgroup: {e}"))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("unshare: {e}"))?;
    Ok((limits, fds.collect()))
}

/// A new network namespace has only `lo`, and it starts down.
fn loopback_up() -> Result<(), String> {
    // SAFETY: socket() with constant arguments; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: an all-zero ifreq is valid; we fill its name and flags.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq that lives across the call.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if ret < 0 {
        return Err(format!("bringing lo up: {error}"));
    }
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Pid 1 drops signals it has no handler for, so the forwarded ones get one; they are blocked
/// in every thread and taken by `sigwait` in one.
fn block_forwarded_signals() -> Result<(), String> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        let signal = Signal::try_from(signal).map_err(|e| e.to_string())?;
        set.add(signal);
        let action = SigAction::new(
            SigHandler::Handler(ignore_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing and is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(|e| format!("sigaction: {e}"))?;
    }
    set.thread_block().map_err(|e| format!("sigprocmask: {e}"))
}

fn serve(
    control: UnixStream,
    confinement: Vec<String>,
    cgroups: Vec<OwnedFd>,
    user: Option<CommandUser>,
) -> ! {
    let out = match control.try_clone() {
        Ok(out) => out,
        Err(_) => std::process::exit(1),
    };
    let shared = Arc::new(Shared {
        table: Mutex::new(Table::default()),
        spawned: Condvar::new(),
        out: Mutex::new(out),
        cgroups,
    });
    // Ready first: the host's first command is read only after the threads below exist.
    shared.send(&Reply::Ready { confinement }, &[]);
    {
        let shared = shared.clone();
        if std::thread::Builder::new()
            .spawn(move || reap(&shared))
            .is_err()
        {
            std::process::exit(1);
        }
    }
    {
        let shared = shared.clone();
        if std::thread::Builder::new()
            .spawn(move || forward_signals(&shared))
            .is_err()
        {
            std::process::exit(1);
        }
    }
    let input = control;
    loop {
        let (request, payload, fds) = match wire::read_request_with_fds::<Request>(&input) {
            Ok(Some(frame)) => frame,
            // The host is gone or broken: exiting pid 1 ends every process in the sandbox.
            Ok(None) | Err(_) => std::process::exit(0),
        };
        let frame = (request, payload);
        match frame {
            (
                Request::Exec {
                    id,
                    command,
                    cwd,
                    env,
                    timeout_ms,
                    output_limit,
                    stdin,
                },
                payload,
            ) => {
                let job = Job {
                    id,
                    command,
                    cwd: Path::new("/workspace").join(cwd),
                    env,
                    timeout: Duration::from_millis(timeout_ms),
                    output_limit,
                    stdin: stdin.then_some(payload),
                    user: user.clone(),
                    stdio: None,
                    killed: shared.register(id),
                };
                start_job(job, &shared);
            }
            (
                Request::Spawn {
                    id,
                    command,
                    cwd,
                    env,
                },
                _,
            ) => {
                let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(fds) else {
                    shared.spawn_failed(id, "the host sent no standard streams");
                    continue;
                };
                let job = Job {
                    id,
                    command,
                    cwd: Path::new("/workspace").join(cwd),
                    env,
                    timeout: Duration::MAX,
                    output_limit: 0,
                    stdin: None,
                    user: user.clone(),
                    stdio: Some([stdin, stdout, stderr]),
                    killed: shared.register(id),
                };
                start_job(job, &shared);
            }
            (Request::Kill { id }, _) => {
                let pgid = shared.table().running.get(&id).and_then(|running| {
                    running.killed.store(true, Ordering::SeqCst);
                    running.pgid
                });
                if let Some(pgid) = pgid {
                    // Not under the lock: the reaper needs it to collect the group's zombies.
                    let killer = shared.clone();
                    if std::thread::Builder::new()
                        .spawn(move || kill_group(&killer, pgid))
                        .is_err()
                    {
                        kill_group(&shared, pgid);
                    }
                }
            }
        }
    }
}

/// Runs `job` on a thread of its own; when no thread can start, ends every other process (a
/// fork bomb most likely holds them all) and tries once more, else reports the failure.
fn start_job(job: Job, shared: &Arc<Shared>) {
    let id = job.id;
    let job = Arc::new(Mutex::new(Some(job)));
    let start = |job: Arc<Mutex<Option<Job>>>, shared: Arc<Shared>| {
        std::thread::Builder::new().spawn(move || {
            let job = job.lock().ok().and_then(|mut j| j.take());
            if let Some(job) = job {
                job.run(&shared);
            }
        })
    };
    if start(job.clone(), shared.clone()).is_err() {
        // Out of processes (rlimits only, no cgroup): something, a fork bomb most
        // likely, holds them all. Pid 1 ends every other process and tries again.
        // SAFETY: kill(-1) from pid 1 signals every other process of the namespace.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
        if start(job, shared.clone()).is_err() {
            shared.spawn_failed(id, "the sandbox's init could not start a thread");
        }
    }
}

/// Kills a process group until it is empty: a fork bomb may fork between two signals. Zombies
/// still count as members until the reaper has collected them, so this waits for that too
/// (about a second at most). `pgid` is the pid of the group's leader, which is killed first by
/// its pid, while it is not reaped yet (its pid could be another process's after): just after
/// the fork it has not made its group yet (`setsid`), and a kill of the group alone would miss
/// it; it cannot start a process once the kill is pending.
pub(super) fn kill_group(shared: &Shared, pgid: i32) {
    let table = shared.table();
    if table.waiters.contains_key(&pgid) {
        // SAFETY: kill sends a signal; no memory is involved.
        unsafe { libc::kill(pgid, libc::SIGKILL) };
    }
    drop(table);
    for _ in 0..200 {
        // SAFETY: kill with a negative pid signals a process group; no memory is involved.
        if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reaps everything: our commands (whose status goes to their thread) and every orphan that
/// the pid namespace hands to pid 1.
fn reap(shared: &Shared) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            let mut table = shared.table();
            if let Some(waiter) = table.waiters.remove(&pid) {
                table.children = table.children.saturating_sub(1);
                let _ = waiter.send(status);
            }
            continue;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // No children at all: sleep until a command is started.
        let table = shared.table();
        if table.children > 0 {
            continue;
        }
        let _unused = shared
            .spawned
            .wait_timeout(table, Duration::from_millis(500));
    }
}

fn forward_signals(shared: &Shared) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for signal in FORWARDED {
        if let Ok(signal) = Signal::try_from(signal) {
            set.add(signal);
        }
    }
    loop {
        let Ok(signal) = set.wait() else { continue };
        let table = shared.table();
        for pgid in table.running.values().filter_map(|running| running.pgid) {
            // SAFETY: kill with a negative pid signals a process group; no memory is involved.
            unsafe { libc::kill(-pgid, signal as libc::c_int) };
        }
    }
}
