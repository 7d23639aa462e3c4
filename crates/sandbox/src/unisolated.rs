//! The unisolated backend: commands run directly on the host, as the user running nightshift,
//! with nothing between them and the host but a clean environment and a working directory.
//!
//! It exists so the pipeline works before (and where) real isolation is unavailable. Its name
//! says what it is, [`Sandbox::isolated`] returns false, and the runner logs a warning for every
//! task that uses it.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::process::Pipes;
use crate::{
    ExecOutput, ExecRequest, ExitStatus, HeadTailBuffer, ProcessHandle, Sandbox, SandboxError,
    SandboxSession, SessionSpec, SpawnRequest, Spawned,
};

/// How long to keep reading a command's pipes after it exited, for output still in flight from
/// processes it left running in the background.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// Runs commands on the host without isolation. See the module documentation.
#[derive(Debug, Default, Clone)]
pub struct Unisolated;

#[async_trait]
impl Sandbox for Unisolated {
    fn backend(&self) -> &'static str {
        "unisolated"
    }

    fn isolated(&self) -> bool {
        false
    }

    async fn start(&self, spec: SessionSpec) -> Result<Box<dyn SandboxSession>, SandboxError> {
        if spec.read_only_workspace {
            return Err(SandboxError::Setup(
                "the unisolated backend runs commands on the host and cannot make the workspace read-only; use the namespaced sandbox".into(),
            ));
        }
        if !spec.image.is_empty() {
            return Err(SandboxError::Setup(
                "the unisolated backend runs commands on the host and cannot start from an image; use the namespaced sandbox".into(),
            ));
        }
        let workspace = tokio::fs::canonicalize(&spec.workspace)
            .await
            .map_err(|source| SandboxError::Workspace {
                path: spec.workspace.clone(),
                source,
            })?;
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut env = base_env(&workspace);
        for (key, value) in spec.env {
            env.retain(|(existing, _)| *existing != key);
            env.push((key, value));
        }
        Ok(Box::new(UnisolatedSession {
            workspace,
            shell,
            env,
            groups: Arc::new(Mutex::new(Vec::new())),
            closed: CancellationToken::new(),
        }))
    }
}

/// The environment every command starts from: enough for common tools, nothing of the host's.
fn base_env(workspace: &Path) -> Vec<(String, String)> {
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    vec![
        ("PATH".into(), path.into()),
        ("HOME".into(), workspace.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
        ("NO_COLOR".into(), "1".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("PAGER".into(), "cat".into()),
        ("GIT_PAGER".into(), "cat".into()),
    ]
}

struct UnisolatedSession {
    workspace: PathBuf,
    shell: &'static str,
    env: Vec<(String, String)>,
    /// Process groups of commands run so far: closing the session kills what is left of them.
    groups: Arc<Mutex<Vec<i32>>>,
    closed: CancellationToken,
}

impl UnisolatedSession {
    fn resolve_workdir(&self, workdir: Option<&Path>) -> Result<PathBuf, SandboxError> {
        let Some(relative) = workdir else {
            return Ok(self.workspace.clone());
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
        Ok(self.workspace.join(relative))
    }
}

fn kill_group(pgid: i32) {
    // The group may be gone already; that is the normal case.
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

#[async_trait]
impl SandboxSession for UnisolatedSession {
    fn workspace(&self) -> &Path {
        &self.workspace
    }

    async fn exec(
        &self,
        request: ExecRequest,
        cancel: &CancellationToken,
    ) -> Result<ExecOutput, SandboxError> {
        if self.closed.is_cancelled() {
            return Err(SandboxError::Closed);
        }
        let cwd = self.resolve_workdir(request.workdir.as_deref())?;
        let started = Instant::now();
        let mut command = Command::new(self.shell);
        command
            .arg("-c")
            .arg(&request.command)
            .current_dir(&cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if request.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            command: request.command.clone(),
            source,
        })?;
        let pgid = child.id().map(|pid| pid as i32);
        if let Some(pgid) = pgid
            && let Ok(mut groups) = self.groups.lock()
        {
            groups.push(pgid);
        }

        let buffer = Arc::new(Mutex::new(HeadTailBuffer::new(request.output_limit)));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(pump(stdout, buffer.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(pump(stderr, buffer.clone())));
        }
        if let (Some(mut stdin), Some(bytes)) = (child.stdin.take(), request.stdin) {
            tokio::spawn(async move {
                // A command that does not read its input closes the pipe early; that is fine.
                let _ = stdin.write_all(&bytes).await;
            });
        }

        let status = tokio::select! {
            waited = child.wait() => {
                let status = waited.map_err(SandboxError::Wait)?;
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => ExitStatus::Exited(code),
                    (None, Some(signal)) => ExitStatus::Signaled(signal),
                    (None, None) => ExitStatus::Exited(-1),
                }
            }
            _ = tokio::time::sleep(request.timeout) => ExitStatus::TimedOut,
            _ = cancel.cancelled() => ExitStatus::Cancelled,
            _ = self.closed.cancelled() => ExitStatus::Cancelled,
        };
        if matches!(status, ExitStatus::TimedOut | ExitStatus::Cancelled) {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            let _ = child.wait().await;
        }
        for reader in readers {
            if tokio::time::timeout(PIPE_GRACE, reader).await.is_err() {
                // A background process still holds the pipe open; what it prints later is lost,
                // which is the documented behaviour of backgrounded commands.
            }
        }
        let (output, omitted_bytes) = match buffer.lock() {
            Ok(buffer) => (buffer.render(), buffer.omitted()),
            Err(poisoned) => {
                let buffer = poisoned.into_inner();
                (buffer.render(), buffer.omitted())
            }
        };
        Ok(ExecOutput {
            status,
            output,
            omitted_bytes,
            duration: started.elapsed(),
        })
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<Spawned, SandboxError> {
        if self.closed.is_cancelled() {
            return Err(SandboxError::Closed);
        }
        let cwd = self.resolve_workdir(request.workdir.as_deref())?;
        let spawn_error = |source: std::io::Error| SandboxError::Spawn {
            command: request.command.clone(),
            source,
        };
        let pipes = Pipes::new().map_err(spawn_error)?;
        let [stdin, stdout, stderr] = pipes.child;
        let mut child = Command::new(self.shell)
            .arg("-c")
            .arg(&request.command)
            .current_dir(&cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let pgid = child.id().map(|pid| pid as i32);
        if let Some(pgid) = pgid
            && let Ok(mut groups) = self.groups.lock()
        {
            groups.push(pgid);
        }
        let (handle, follower) = ProcessHandle::new();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                waited = child.wait() => {
                    use std::os::unix::process::ExitStatusExt;
                    match waited {
                        Ok(status) => match (status.code(), status.signal()) {
                            (Some(code), _) => ExitStatus::Exited(code),
                            (None, Some(signal)) => ExitStatus::Signaled(signal),
                            (None, None) => ExitStatus::Exited(-1),
                        },
                        Err(_) => ExitStatus::Cancelled,
                    }
                }
                _ = follower.kill.cancelled() => ExitStatus::Cancelled,
                _ = closed.cancelled() => ExitStatus::Cancelled,
            };
            if status == ExitStatus::Cancelled {
                if let Some(pgid) = pgid {
                    kill_group(pgid);
                }
                let _ = child.wait().await;
            }
            follower.ended(status);
        });
        Ok(Spawned {
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
            handle,
        })
    }

    async fn close(&self) -> Result<(), SandboxError> {
        self.closed.cancel();
        let groups = match self.groups.lock() {
            Ok(mut groups) => std::mem::take(&mut *groups),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for pgid in groups {
            kill_group(pgid);
        }
        Ok(())
    }
}

async fn pump(mut pipe: impl AsyncRead + Unpin, buffer: Arc<Mutex<HeadTailBuffer>>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Ok(mut buffer) = buffer.lock() {
                    buffer.push(&chunk[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn session(dir: &Path) -> Box<dyn SandboxSession> {
        Unisolated
            .start(SessionSpec {
                env: vec![("GREETING".into(), "hi".into())],
                ..SessionSpec::new(dir)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn runs_in_the_workspace_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let cancel = CancellationToken::new();
        let out = session
            .exec(
                ExecRequest::new("pwd; echo $GREETING; env | grep -c CARGO || true"),
                &cancel,
            )
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Exited(0));
        let lines: Vec<_> = out.output.lines().collect();
        assert_eq!(
            lines[0],
            dir.path().canonicalize().unwrap().to_str().unwrap()
        );
        assert_eq!(lines[1], "hi");
        assert_eq!(lines[2], "0", "host variables leaked into the command");
    }

    #[tokio::test]
    async fn reports_exit_codes_and_interleaves_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let out = session
            .exec(
                ExecRequest::new("echo out; echo err >&2; exit 3"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Exited(3));
        assert!(out.output.contains("out") && out.output.contains("err"));
    }

    #[tokio::test]
    async fn kills_the_whole_group_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let mut request = ExecRequest::new("sleep 30 & sleep 30; echo never");
        request.timeout = Duration::from_millis(200);
        let out = session
            .exec(request, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::TimedOut);
        assert!(out.duration < Duration::from_secs(5));
        assert!(!out.output.contains("never"));
    }

    #[tokio::test]
    async fn cancellation_stops_a_running_command() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let out = session
            .exec(ExecRequest::new("sleep 30"), &cancel)
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Cancelled);
    }

    #[tokio::test]
    async fn rejects_workdirs_outside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let mut request = ExecRequest::new("true");
        request.workdir = Some(PathBuf::from("../.."));
        let err = session
            .exec(request, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::WorkdirOutsideWorkspace(_)));
    }

    #[tokio::test]
    async fn feeds_stdin_and_caps_output() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let mut request = ExecRequest::new("cat; head -c 100000 /dev/zero | tr '\\0' x");
        request.stdin = Some(b"from stdin\n".to_vec());
        request.output_limit = 1000;
        let out = session
            .exec(request, &CancellationToken::new())
            .await
            .unwrap();
        assert!(out.output.starts_with("from stdin\n"));
        assert!(out.omitted_bytes > 90_000);
        assert!(out.output.len() < 1100);
    }

    #[tokio::test]
    async fn close_kills_background_processes() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path()).await;
        let out = session
            .exec(
                ExecRequest::new("sleep 60 >/dev/null 2>&1 & echo $!"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let pid: i32 = out.output.trim().parse().unwrap();
        session.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "background process {pid} survived the session");
    }
}
