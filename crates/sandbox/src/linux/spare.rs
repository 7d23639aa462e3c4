//! Helpers started ahead of their sessions: starting the helper is a millisecond of every
//! session start, so once a backend has started more than one session it keeps one ready.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::{Ids, NamespacedConfig};
use super::helper;
use super::process::HelperProcess;
use super::setup_error;
use super::wire::Reply;
use crate::SandboxError;

/// Once a backend has started more than one session, it keeps one helper started ahead of the
/// next: executing the helper is a millisecond of every start, and a waiting helper has already
/// made its namespaces and the part of the root every session has (which hold nothing of any
/// session). It only waits for its configuration, and is killed with the backend.
///
/// Spares are started by one thread that lives as long as the process: a helper dies with the
/// thread that started it (its parent-death signal), and a session's helper may have been a
/// spare, so that thread must outlive every session (an async runtime's threads come and go).
#[derive(Default)]
pub(crate) struct Warm {
    pub spare: std::sync::Mutex<Option<Helper>>,
    /// Sessions started so far.
    pub starts: AtomicU64,
}

/// How long after a session starts the next spare is started at the latest. Its first command
/// starts it sooner, as it ends: either way the spare's start competes with neither this
/// session's start nor its first command (a spare starting beside them slowed both).
const SPARE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The next spare, asked for once: by the session's first command or after [`SPARE_DELAY`].
pub(crate) struct NextSpare(std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl NextSpare {
    pub fn after_start(
        warm: &Arc<Warm>,
        config: &Arc<NamespacedConfig>,
        (host_id, drop_root): (u32, bool),
    ) -> Arc<NextSpare> {
        let (warm, config) = (Arc::downgrade(warm), config.clone());
        let next = Arc::new(NextSpare(std::sync::Mutex::new(Some(Box::new(
            move || {
                if let Some(warm) = warm.upgrade() {
                    warm.refill(&config, host_id, drop_root);
                }
            },
        )))));
        let later = Arc::downgrade(&next);
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_DELAY).await;
            if let Some(next) = later.upgrade() {
                next.start();
            }
        });
        next
    }

    /// Asks for the spare, unless that was done already.
    pub fn start(&self) {
        let start = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(start) = start {
            start();
        }
    }
}

/// A request for a spare helper with these ids.
struct Refill {
    config: Arc<NamespacedConfig>,
    ids: (u32, bool),
}

impl Warm {
    /// Asks for a spare helper (if there is none), without waiting for it.
    pub fn refill(self: &Arc<Self>, config: &Arc<NamespacedConfig>, host_id: u32, drop_root: bool) {
        type Request = (std::sync::Weak<Warm>, Refill);
        static STARTER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Request>>> =
            std::sync::OnceLock::new();
        let starter = STARTER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Request>();
            let started = std::thread::Builder::new()
                .name("nightshift-spare".into())
                .spawn(move || {
                    while let Ok((warm, request)) = rx.recv() {
                        if let Some(warm) = warm.upgrade() {
                            warm.start_spare(request);
                        }
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::debug!(error = %e, "could not start the spare helper thread");
                    None
                }
            }
        });
        let request = Refill {
            config: config.clone(),
            ids: (host_id, drop_root),
        };
        if let Some(starter) = starter {
            let _ = starter.send((Arc::downgrade(self), request));
        }
    }

    fn start_spare(&self, request: Refill) {
        let mut slot = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_mut().is_some_and(|spare| spare.child.alive()) {
            return;
        }
        let (host_id, drop_root) = request.ids;
        match spawn_helper(&request.config, Ids::new(false, host_id, drop_root), true) {
            Ok(helper) => *slot = Some(helper),
            Err(e) => tracing::debug!(error = %e, "could not start a spare sandbox helper"),
        }
    }
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("starts", &self.starts.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Starts the helper, with the other end of the control socket as its standard input.
/// when the host is root, which can give its init the normal priority back when it is taken
/// (nobody else could lower a nice value again).
pub(crate) fn spawn_helper(
    config: &NamespacedConfig,
    ids: Ids,
    spare: bool,
) -> Result<Helper, SandboxError> {
    let Ids {
        host_id, drop_root, ..
    } = ids;
    let reniced = spare && nix::unistd::geteuid().is_root();
    let (host_end, helper_end) =
        StdUnixStream::pair().map_err(|e| setup_error(format!("socketpair: {e}")))?;
    let helper = &config.helper;
    let mut child = std::process::Command::new(&helper.program)
        .args(&helper.args)
        .args(helper::helper_args(
            host_id,
            ids.inside_id,
            drop_root,
            reniced,
            ids.range,
        ))
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(helper_end)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            setup_error(format!(
                "starting the helper {}: {e}",
                helper.program.display()
            ))
        })?;
    let stderr = child.stderr.take();
    Ok(Helper {
        child: HelperProcess::new(child),
        control: host_end,
        stderr,
        ids: (host_id, drop_root),
        reniced,
        early: None,
    })
}

/// A helper process that has been started but not yet configured.
pub(crate) struct Helper {
    pub child: HelperProcess,
    /// The host's end of the control socket, still blocking.
    pub control: StdUnixStream,
    pub stderr: Option<std::process::ChildStderr>,
    /// The host id and whether it drops root, which it was started with.
    pub ids: (u32, bool),
    /// Whether it waits at the lowest priority (see [`spawn_helper`]).
    pub reniced: bool,
    /// Its first reply when it was read before the handshake (see [`Helper::restore_priority`]).
    pub early: Option<Reply>,
}

impl Helper {
    /// For a spare at the lowest priority: reads its first reply without waiting, if it is
    /// there (a waiting spare sent `Spawned` long ago), and gives the init the normal priority
    /// back before it learns its session, so that no thread it starts keeps the spare's.
    /// Otherwise the handshake does it when `Spawned` arrives.
    pub fn restore_priority(&mut self) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        if !self.reniced || self.early.is_some() {
            return Ok(());
        }
        let mut ready = libc::pollfd {
            fd: self.control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; no waiting.
        if unsafe { libc::poll(&mut ready, 1, 0) } != 1 {
            return Ok(());
        }
        // A frame is written whole, in one write: readable means all of it is there.
        if let Ok(Some((reply, _))) = super::wire::read_frame::<Reply>(&mut &self.control) {
            if let Reply::Spawned { pid } = reply {
                normal_priority(pid)?;
            }
            self.early = Some(reply);
        }
        Ok(())
    }
}

/// Gives the init `pid` (a spare's, single-threaded until it is ready) the normal priority. An
/// init that is gone already is not an error here: the handshake reports why it went.
pub(crate) fn normal_priority(pid: i32) -> Result<(), String> {
    // SAFETY: setpriority with integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 0) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(format!(
        "restoring the priority of the sandbox's init: {error}"
    ))
}
