//! One command in the session, run by a thread of the init: fork and exec in a new session,
//! its output collected up to its limit, its timeout kept, its exit status reported.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::super::wire::{CommandUser, Reply, WireStatus};
use super::command::direct_command;
use super::init::{FORWARDED, Running, Shared, kill_group};
use crate::HeadTailBuffer;

/// How long to keep reading output after the command exited, for what its background
/// processes still print while holding the pipe open.
const PIPE_GRACE: Duration = Duration::from_millis(200);

pub(super) struct Job {
    pub id: u64,
    pub command: String,
    pub cwd: std::path::PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub output_limit: usize,
    pub stdin: Option<Vec<u8>>,
    /// The ids the command switches to before it executes (an image's user); `None` keeps the
    /// init's.
    pub user: Option<CommandUser>,
    /// A long-lived process's standard input, output and error, the host's pipes: its output
    /// is the host's to read, and it has no timeout.
    pub stdio: Option<[OwnedFd; 3]>,
    /// Set when the host asks for it to be killed (its entry in the init's table).
    pub killed: Arc<AtomicBool>,
}

/// What the child needs after fork, prepared before it: nothing may allocate in between.
struct Prepared {
    shell: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    user: Option<CommandUser>,
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes)
        .map_err(|_| "a NUL byte in the command, its environment or its directory".into())
}

impl Job {
    fn prepare(&self) -> Result<Prepared, String> {
        let shell: &[u8] = if Path::new("/bin/bash").exists() {
            b"/bin/bash"
        } else {
            b"/bin/sh"
        };
        if !self.cwd.is_dir() {
            return Err(format!(
                "the working directory {} does not exist",
                self.cwd.display()
            ));
        }
        let mut envp: Vec<CString> = self
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?;
        let cwd = cstring(self.cwd.as_os_str().as_bytes())?;
        // A simple command (a program and plain words, nothing the shell would interpret) is
        // executed directly: the same result as `bash -c` without bash's start-up.
        if let Some((program, words)) = direct_command(&self.command, &self.env) {
            envp.push(cstring(format!("PWD={}", self.cwd.display()).as_bytes())?);
            return Ok(Prepared {
                shell: cstring(program.as_os_str().as_bytes())?,
                argv: words
                    .iter()
                    .map(|w| cstring(w.as_bytes()))
                    .collect::<Result<_, _>>()?,
                envp,
                cwd,
                user: self.user.clone(),
            });
        }
        Ok(Prepared {
            shell: cstring(shell)?,
            argv: vec![
                cstring(shell)?,
                cstring(b"-c")?,
                cstring(self.command.as_bytes())?,
            ],
            envp,
            cwd,
            user: self.user.clone(),
        })
    }

    pub(super) fn run(mut self, shared: &Shared) {
        let started = Instant::now();
        let result = match self.stdio.take() {
            Some(stdio) => self.stream(shared, stdio),
            None => self.execute(shared),
        };
        shared.table().running.remove(&self.id);
        let (status, output, omitted) = match result {
            Ok((status, buffer)) => (status, buffer.render(), buffer.omitted()),
            Err(message) => (WireStatus::SpawnFailed { message }, String::new(), 0),
        };
        let reply = Reply::Done {
            id: self.id,
            status,
            omitted,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        shared.send(&reply, output.as_bytes());
    }

    /// Runs a long-lived process on the host's pipes until it exits or is killed.
    fn stream(
        &self,
        shared: &Shared,
        stdio: [OwnedFd; 3],
    ) -> Result<(WireStatus, HeadTailBuffer), String> {
        let prepared = self.prepare()?;
        let [stdin, stdout, stderr] = stdio;
        let (tx, rx) = mpsc::channel();
        let fds = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
        self.start(shared, &prepared, fds, tx)?;
        drop((stdin, stdout, stderr));
        let raw = rx.recv().unwrap_or(0);
        Ok((
            wire_status(raw, false, &self.killed),
            HeadTailBuffer::new(0),
        ))
    }

    /// Forks the command on `fds` (standard input, output, error) and registers it: its exit
    /// status goes to `exited`, and a kill request for its id reaches its group (one that came
    /// before, at once).
    fn start(
        &self,
        shared: &Shared,
        prepared: &Prepared,
        fds: [RawFd; 3],
        exited: mpsc::Sender<i32>,
    ) -> Result<i32, String> {
        let start = || {
            let table = shared.table();
            let spawned = spawn(prepared, fds, &shared.cgroups);
            spawned.map(|pid| (table, pid))
        };
        let started = match start() {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // Out of processes (rlimits only, no cgroup): what a fork bomb that outlived
                // its command leaves. As when a thread cannot start: pid 1 ends every other
                // process, and tries again.
                // SAFETY: kill(-1) from pid 1 signals every other process of the namespace.
                unsafe { libc::kill(-1, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(200));
                start()
            }
            other => other,
        };
        let (mut table, pid) = started.map_err(|e| format!("fork: {e}"))?;
        table.waiters.insert(pid, exited);
        table.running.insert(
            self.id,
            Running {
                pgid: Some(pid),
                killed: self.killed.clone(),
            },
        );
        table.children += 1;
        drop(table);
        shared.spawned.notify_all();
        if self.killed.load(Ordering::SeqCst) {
            // The kill came while it was starting; from now on a kill finds its group.
            kill_group(shared, pid);
        }
        Ok(pid)
    }

    fn execute(&self, shared: &Shared) -> Result<(WireStatus, HeadTailBuffer), String> {
        let prepared = self.prepare()?;
        let (out_read, out_write) = pipe()?;
        let (in_read, in_write) = pipe()?;
        // An empty standard input needs no writer: closed before the command starts, the pipe
        // reads as ended, and the init holds one descriptor less while the command runs.
        let stdin = self.stdin.clone().unwrap_or_default();
        let in_write = (!stdin.is_empty()).then_some(in_write);
        let (tx, rx) = mpsc::channel();
        let fds = [
            in_read.as_raw_fd(),
            out_write.as_raw_fd(),
            out_write.as_raw_fd(),
        ];
        let pid = self.start(shared, &prepared, fds, tx)?;
        drop(out_write);
        drop(in_read);
        // Without a thread, the command gets an empty standard input (the pipe closes).
        if let Some(in_write) = in_write {
            let _ = std::thread::Builder::new().spawn(move || {
                // A command that does not read its input closes the pipe early; that is fine.
                let mut rest: &[u8] = &stdin;
                while !rest.is_empty() {
                    match nix::unistd::write(&in_write, rest) {
                        Ok(n) if n > 0 => rest = &rest[n..],
                        _ => break,
                    }
                }
            });
        }
        Ok(self.collect(shared, pid, &out_read, &rx, &self.killed))
    }

    /// Reads output until the command has exited and its pipe is closed (or the grace period
    /// after its exit has passed), killing its group on timeout.
    fn collect(
        &self,
        shared: &Shared,
        pgid: i32,
        output: &OwnedFd,
        exited: &mpsc::Receiver<i32>,
        killed: &AtomicBool,
    ) -> (WireStatus, HeadTailBuffer) {
        let mut buffer = HeadTailBuffer::new(self.output_limit);
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let mut status: Option<i32> = None;
        let mut pipe_open = true;
        let mut grace_until: Option<Instant> = None;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if status.is_none() {
                status = exited.try_recv().ok();
            }
            let now = Instant::now();
            if status.is_some() && grace_until.is_none() {
                grace_until = Some(now + PIPE_GRACE);
            }
            if status.is_some() && (!pipe_open || grace_until.is_some_and(|t| now >= t)) {
                break;
            }
            if !timed_out && now >= deadline {
                timed_out = true;
                kill_group(shared, pgid);
            }
            if !pipe_open {
                // Only the exit status is missing.
                let wait = if timed_out {
                    Duration::from_millis(50)
                } else {
                    deadline - now
                };
                status = exited.recv_timeout(wait).ok();
                continue;
            }
            let mut wait = Duration::from_millis(50);
            if !timed_out {
                wait = wait.min(deadline.saturating_duration_since(now));
            }
            if poll_readable(output.as_raw_fd(), wait) {
                match nix::unistd::read(output, &mut chunk) {
                    Ok(0) => pipe_open = false,
                    Ok(n) => buffer.push(&chunk[..n]),
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(_) => pipe_open = false,
                }
            }
        }
        let status = wire_status(status.unwrap_or(0), timed_out, killed);
        (status, buffer)
    }
}

/// A command's end as the host is told it.
fn wire_status(raw: i32, timed_out: bool, killed: &AtomicBool) -> WireStatus {
    if killed.load(Ordering::SeqCst) {
        WireStatus::Killed
    } else if timed_out {
        WireStatus::TimedOut
    } else if libc::WIFEXITED(raw) {
        WireStatus::Exited {
            code: libc::WEXITSTATUS(raw),
        }
    } else {
        WireStatus::Signaled {
            signal: libc::WTERMSIG(raw),
        }
    }
}

fn poll_readable(fd: RawFd, wait: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let ret = unsafe { libc::poll(&mut pollfd, 1, millis) };
    ret > 0
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// fork + execve, the child in a new session (so a new process group) with a default signal
/// state. Between fork and execve the child only makes async-signal-safe calls.
fn spawn(prepared: &Prepared, stdio: [RawFd; 3], cgroups: &[OwnedFd]) -> std::io::Result<i32> {
    let [stdin, stdout, stderr] = stdio;
    let cgroups: Vec<RawFd> = cgroups.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = prepared
        .user
        .as_ref()
        .map(|user| user.groups.clone())
        .unwrap_or_default();
    // SAFETY: after fork the child only calls async-signal-safe functions on memory prepared
    // before the fork, then execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; every pointer refers to memory that outlives the call.
        unsafe {
            for fd in &cgroups {
                libc::write(*fd, b"0".as_ptr().cast(), 1);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for signal in FORWARDED.iter().chain(&[libc::SIGPIPE]) {
                libc::signal(*signal, libc::SIG_DFL);
            }
            libc::setsid();
            libc::dup2(stdin, 0);
            libc::dup2(stdout, 1);
            libc::dup2(stderr, 2);
            // Raw system calls: they change this thread's ids only, and the child has no
            // other thread. Leaving root for another uid drops every capability.
            if let Some(user) = &prepared.user {
                let (uid, gid) = (user.uid as libc::c_ulong, user.gid as libc::c_ulong);
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                {
                    let message = b"nightshift: could not become the image's user\n";
                    libc::write(2, message.as_ptr().cast(), message.len());
                    libc::_exit(126);
                }
            }
            if libc::chdir(prepared.cwd.as_ptr()) == 0 {
                libc::execve(prepared.shell.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            let message = b"nightshift: could not start the shell\n";
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(127);
        }
    }
    Ok(pid)
}
