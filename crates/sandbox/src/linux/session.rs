//! A live namespaced session, as the host holds it: the socket to its init, the init's pidfd,
//! and the host resources (state directory, cgroups, proxy) that closing it, or dropping it,
//! takes down. Limits are watched here, from counters the kernel keeps, so that a command that
//! hits one ends with a clear [`ExitStatus::LimitExceeded`].

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

mod spawn;

use super::cgroup::{Counters, SessionCgroup};
use super::process::{HelperProcess, StderrTail};
use super::spare::NextSpare;
use super::state::{self, Resources};
use super::wire::{Reply, Request, WireStatus};
use super::{Limits, read_frame_async, sys};
use crate::{
    ExecOutput, ExecRequest, ExitStatus, Limit, SandboxError, SandboxSession, SpawnRequest, Spawned,
};

/// Extra time the host gives the init past a command's own timeout before it gives up on it.
const BACKSTOP: Duration = Duration::from_secs(30);

/// The environment every command starts from: nothing of the host's.
pub(crate) fn base_env() -> Vec<(String, String)> {
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    [
        ("PATH", path),
        ("HOME", super::helper::HOME),
        ("TMPDIR", "/tmp"),
        ("USER", "agent"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
        ("NO_COLOR", "1"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("PAGER", "cat"),
        ("GIT_PAGER", "cat"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The host configuration's share of every session's environment: its variables over the base,
/// and its directories before the base `PATH`.
pub(crate) fn apply_host_env(
    env: &mut Vec<(String, String)>,
    path_prefix: &[PathBuf],
    extra: &[(String, String)],
) {
    for (key, value) in extra {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    if path_prefix.is_empty() {
        return;
    }
    let mut dirs: Vec<String> = path_prefix
        .iter()
        .map(|dir| dir.display().to_string())
        .collect();
    if let Some((_, path)) = env.iter_mut().find(|(key, _)| key == "PATH") {
        dirs.push(std::mem::take(path));
        *path = dirs.join(":");
    }
}

/// A session whose commands run as root: its user, and (with a writable system) the package
/// managers told that nobody answers their questions, and a `sudo` after the system's own.
pub(crate) fn root_env(env: &mut Vec<(String, String)>, writable_system: bool) {
    let mut set = |key: &str, value: String| {
        env.retain(|(existing, _)| existing != key);
        env.push((key.to_string(), value));
    };
    set("USER", "root".into());
    if writable_system {
        set("DEBIAN_FRONTEND", "noninteractive".into());
    }
    if let Some((_, path)) = env.iter_mut().find(|(key, _)| key == "PATH")
        && writable_system
    {
        path.push(':');
        path.push_str(super::helper::ROOT_TOOLS);
    }
}

/// A session whose commands run as an image's user: its name, and its home directory where
/// the image has one.
pub(crate) fn user_env(env: &mut Vec<(String, String)>, user: &crate::SessionUser) {
    let mut set = |key: &str, value: &str| {
        env.retain(|(existing, _)| existing != key);
        env.push((key.to_string(), value.to_string()));
    };
    set("USER", &user.name);
    set("LOGNAME", &user.name);
    if let Some(home) = &user.home {
        set("HOME", home);
    }
}

pub(crate) struct Parts {
    pub stream: UnixStream,
    pub child: HelperProcess,
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub resources: Resources,
    pub upper: PathBuf,
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub report: Vec<String>,
    pub stderr: StderrTail,
    /// The host uid that stands for the sandbox user, when the host runs as root.
    pub file_owner: Option<crate::FileOwner>,
    /// Started by the first command's end (see `NextSpare`).
    pub next_spare: Option<Arc<NextSpare>>,
}

struct Done {
    status: WireStatus,
    omitted: u64,
    duration_ms: u64,
    output: Vec<u8>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Done>>>>;

/// A live namespaced session. See the module documentation.
pub struct NamespacedSession {
    workspace: PathBuf,
    pid: i32,
    pidfd: Arc<OwnedFd>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: AtomicU64,
    child: tokio::sync::Mutex<Option<HelperProcess>>,
    resources: Mutex<Option<Resources>>,
    cgroup: Option<Arc<SessionCgroup>>,
    upper: PathBuf,
    limits: Limits,
    env: Vec<(String, String)>,
    report: Vec<String>,
    file_owner: Option<crate::FileOwner>,
    closed: CancellationToken,
    dead: CancellationToken,
    torn_down: AtomicBool,
    _stderr: StderrTail,
    next_spare: Option<Arc<NextSpare>>,
}

enum Reason {
    Cancelled,
    Limit(Limit),
}

impl NamespacedSession {
    pub(crate) fn new(parts: Parts) -> Self {
        let (mut reader, writer) = parts.stream.into_split();
        let pending: Pending = Arc::default();
        let dead = CancellationToken::new();
        {
            let pending = pending.clone();
            let dead = dead.clone();
            tokio::spawn(async move {
                while let Ok(Some((reply, output))) = read_frame_async(&mut reader).await {
                    if let Reply::Done {
                        id,
                        status,
                        omitted,
                        duration_ms,
                    } = reply
                    {
                        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Done {
                                status,
                                omitted,
                                duration_ms,
                                output,
                            });
                        }
                    }
                }
                dead.cancel();
                if let Ok(mut pending) = pending.lock() {
                    pending.clear();
                }
            });
        }
        NamespacedSession {
            workspace: PathBuf::from(format!("/proc/{}/root/workspace", parts.pid)),
            pid: parts.pid,
            pidfd: Arc::new(parts.pidfd),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pending,
            next_id: AtomicU64::new(1),
            child: tokio::sync::Mutex::new(Some(parts.child)),
            cgroup: parts.resources.cgroup.clone(),
            resources: Mutex::new(Some(parts.resources)),
            upper: parts.upper,
            limits: parts.limits,
            env: parts.env,
            report: parts.report,
            file_owner: parts.file_owner,
            closed: CancellationToken::new(),
            dead,
            torn_down: AtomicBool::new(false),
            _stderr: parts.stderr,
            next_spare: parts.next_spare,
        }
    }

    /// The init's pid as the host sees it.
    pub fn init_pid(&self) -> i32 {
        self.pid
    }

    /// What isolation and limits this session got, one line per layer, for the task log.
    pub fn report(&self) -> &[String] {
        &self.report
    }

    /// The session's environment base (before each command's own additions).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    fn resolve_workdir(workdir: Option<&Path>) -> Result<PathBuf, SandboxError> {
        let Some(relative) = workdir else {
            return Ok(PathBuf::new());
        };
        let escapes = relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, Component::ParentDir));
        if escapes {
            return Err(SandboxError::WorkdirOutsideWorkspace(
                relative.to_path_buf(),
            ));
        }
        Ok(relative.to_path_buf())
    }

    async fn send(&self, request: &Request, payload: &[u8]) -> Result<(), SandboxError> {
        spawn::send_frame(&self.writer, request, payload, &[]).await
    }

    fn counters(&self) -> Counters {
        self.cgroup
            .as_deref()
            .map(SessionCgroup::counters)
            .unwrap_or_default()
    }

    fn tmp_full(&self) -> bool {
        let path = format!("/proc/{}/root/tmp", self.pid);
        nix::sys::statvfs::statvfs(path.as_str()).is_ok_and(|s| s.blocks_available() == 0)
    }

    fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let resources = self.resources.lock().ok().and_then(|mut r| r.take());
        if let Some(resources) = resources {
            let pidfd = self.pidfd.clone();
            // Removing a large upper layer takes a while: not on the caller's thread.
            std::thread::spawn(move || resources.teardown(Some(&pidfd)));
        }
    }
}

pub(super) fn gone(detail: &str) -> SandboxError {
    SandboxError::Wait(std::io::Error::other(format!(
        "the sandbox ended unexpectedly ({detail})"
    )))
}

/// Bytes used under `dir`, stopping early once past `stop_at`.
fn disk_usage(dir: &Path, stop_at: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if total > stop_at {
                return total;
            }
        }
    }
    total
}

#[async_trait]
impl SandboxSession for NamespacedSession {
    fn workspace(&self) -> &Path {
        &self.workspace
    }

    fn file_owner(&self) -> Option<crate::FileOwner> {
        self.file_owner
    }

    fn cpu_seconds(&self) -> Option<f64> {
        if let Some(seconds) = self.cgroup.as_ref().and_then(|cgroup| cgroup.cpu_seconds()) {
            return Some(seconds);
        }
        // pid 1 reaps every process of the session, so its own CPU time plus that of its
        // waited-for children is the session's, for every command that has ended.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime, stime, cutime, cstime are fields 14-17 of stat; 12-15 after the name.
        let ticks: u64 = fields
            .get(11..15)?
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        Some(ticks as f64 / per_second as f64)
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        if self.closed.is_cancelled() {
            return Err(SandboxError::Closed);
        }
        if self.dead.is_cancelled() {
            return Err(gone("its init is gone"));
        }
        let cwd = Self::resolve_workdir(request.workdir.as_deref())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let before = self.counters();
        let tmp_full_before = self.tmp_full();
        let started = Instant::now();
        let exec = Request::Exec {
            id,
            command: request.command.clone(),
            cwd,
            env: self.env.clone(),
            timeout_ms: request.timeout.as_millis().min(u64::MAX as u128) as u64,
            output_limit: request.output_limit,
            stdin: request.stdin.is_some(),
        };
        if let Err(e) = self
            .send(&exec, request.stdin.as_deref().unwrap_or_default())
            .await
        {
            if let Ok(mut pending) = self.pending.lock() {
                pending.remove(&id);
            }
            return Err(e);
        }

        let backstop = tokio::time::sleep(request.timeout + BACKSTOP);
        tokio::pin!(backstop);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut next_disk_check = Instant::now();
        // Usage when the command started: a workspace already over its limit must still let a
        // command clean it up, so only growth past the limit counts.
        let mut disk_baseline: Option<u64> = None;
        let mut reason: Option<Reason> = None;
        let done = loop {
            tokio::select! {
                done = &mut rx => match done {
                    Ok(done) => {
                        if let Some(next) = &self.next_spare {
                            next.start();
                        }
                        break done;
                    }
                    Err(_) => return Err(gone("its init is gone")),
                },
                _ = cancel.cancelled(), if reason.is_none() => {
                    reason = Some(Reason::Cancelled);
                    self.send(&Request::Kill { id }, &[]).await?;
                }
                _ = self.closed.cancelled(), if reason.is_none() => {
                    reason = Some(Reason::Cancelled);
                    let _ = self.send(&Request::Kill { id }, &[]).await;
                }
                _ = tick.tick(), if reason.is_none() => {
                    let now = self.counters();
                    let mut hit = if now.oom_kills > before.oom_kills {
                        Some(Limit::Memory)
                    } else if now.pids_max_hits > before.pids_max_hits {
                        Some(Limit::Processes)
                    } else {
                        None
                    };
                    if let (None, Some(max)) = (hit, self.limits.workspace_bytes)
                        && Instant::now() >= next_disk_check
                    {
                            // Everything the session writes to the host's disk: the
                            // workspace's, the home directory's and the system's upper layers.
                            let upper = self
                                .upper
                                .parent()
                                .map_or_else(|| self.upper.clone(), Path::to_path_buf);
                            let measured = Instant::now();
                            let used = tokio::task::spawn_blocking(move || disk_usage(&upper, max))
                                .await
                                .unwrap_or(0);
                            // Checking costs; check less often on large workspaces.
                            next_disk_check = Instant::now()
                                + Duration::from_secs(1).max(measured.elapsed() * 20);
                            let baseline = *disk_baseline.get_or_insert(used);
                            if used > max && used > baseline + (1 << 20) {
                                hit = Some(Limit::Disk);
                            }
                    }
                    if let Some(limit) = hit {
                        reason = Some(Reason::Limit(limit));
                        self.send(&Request::Kill { id }, &[]).await?;
                        if limit == Limit::Processes
                            && let Some(cgroup) = self.cgroup.clone()
                        {
                            // A bomb may have left the command's group (setsid): every command
                            // process goes, background ones included; the init stays.
                            let _ = tokio::task::spawn_blocking(move || cgroup.kill_commands()).await;
                        }
                    }
                }
                _ = &mut backstop => {
                    if let Ok(mut pending) = self.pending.lock() {
                        pending.remove(&id);
                    }
                    return Err(gone("a command outlived its timeout by far"));
                }
            }
        };

        let after = self.counters();
        let status = match (reason, done.status) {
            (_, WireStatus::SpawnFailed { message }) => {
                return Err(SandboxError::Spawn {
                    command: request.command,
                    source: std::io::Error::other(message),
                });
            }
            (Some(Reason::Cancelled), _) => ExitStatus::Cancelled,
            (Some(Reason::Limit(limit)), _) => ExitStatus::LimitExceeded(limit),
            (None, status) => {
                let exited_badly = !matches!(status, WireStatus::Exited { code: 0 });
                if after.oom_kills > before.oom_kills {
                    ExitStatus::LimitExceeded(Limit::Memory)
                } else if after.pids_max_hits > before.pids_max_hits && exited_badly {
                    ExitStatus::LimitExceeded(Limit::Processes)
                } else if status == (WireStatus::Signaled { signal: libc::SIGXFSZ })
                    // A shell reports a child killed by SIGXFSZ as 128 + 25.
                    || status == (WireStatus::Exited { code: 128 + libc::SIGXFSZ })
                    || (exited_badly && !tmp_full_before && self.tmp_full())
                {
                    ExitStatus::LimitExceeded(Limit::Disk)
                } else {
                    match status {
                        WireStatus::Exited { code } => ExitStatus::Exited(code),
                        WireStatus::Signaled { signal } => ExitStatus::Signaled(signal),
                        WireStatus::TimedOut => ExitStatus::TimedOut,
                        WireStatus::Killed => ExitStatus::Cancelled,
                        WireStatus::SpawnFailed { .. } => ExitStatus::Exited(127),
                    }
                }
            }
        };
        let mut output = String::from_utf8_lossy(&done.output).into_owned();
        if let ExitStatus::LimitExceeded(limit) = status {
            output.push_str(&format!("\n[nightshift: {}]\n", limit.explain()));
        }
        let _ = done.duration_ms;
        Ok(ExecOutput {
            status,
            output,
            omitted_bytes: done.omitted,
            duration: started.elapsed(),
        })
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<Spawned, SandboxError> {
        self.spawn_process(request).await
    }

    fn egress(&self) -> Option<crate::EgressRoute> {
        let resources = self.resources.lock().ok()?;
        Some(resources.as_ref()?.proxy.as_ref()?.route().clone())
    }

    async fn close(&self) -> Result<(), SandboxError> {
        self.shut_down(None).await
    }

    async fn close_keeping_changes(&self, dest: &Path) -> Result<(), SandboxError> {
        if self.closed.is_cancelled() {
            return Err(SandboxError::Closed);
        }
        self.shut_down(Some(dest)).await
    }
}

impl NamespacedSession {
    /// Kills everything in the session and releases its resources; with `keep`, first moves
    /// the overlay's upper directory (what the session's commands changed) there.
    async fn shut_down(&self, keep: Option<&Path>) -> Result<(), SandboxError> {
        if self.closed.is_cancelled() {
            return Ok(());
        }
        self.closed.cancel();
        let _ = sys::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        // The helper exits once its init has; the init, once every process of its pid
        // namespace is gone. After this, nothing of the sandbox runs, and the overlay went with
        // its mount namespace: the upper directory is a plain directory.
        let child = self.child.lock().await.take();
        if let Some(child) = child {
            child.wait_or_kill(Duration::from_secs(10)).await;
        }
        let state_dir = self.upper.parent().map(Path::to_path_buf);
        let kept = keep.map(|dest| {
            let state_dir = state_dir.as_deref().unwrap_or(Path::new("/nonexistent"));
            state::keep_changes(state_dir, dest).map_err(|e| {
                SandboxError::Setup(format!(
                    "keeping the session's changes at {}: {e}",
                    dest.display()
                ))
            })
        });
        let resources = self.resources.lock().ok().and_then(|mut r| r.take());
        self.torn_down.store(true, Ordering::SeqCst);
        if let Some(resources) = resources {
            let pidfd = self.pidfd.clone();
            tokio::task::spawn_blocking(move || resources.teardown(Some(&pidfd)))
                .await
                .map_err(|e| SandboxError::Wait(std::io::Error::other(e.to_string())))?;
        }
        kept.unwrap_or(Ok(()))
    }
}

impl Drop for NamespacedSession {
    fn drop(&mut self) {
        // Killing the init ends the pid namespace; dropping the helper kills it too.
        let _ = sys::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        self.teardown();
    }
}
