//! Long-lived processes of a namespaced session: the request that starts one carries its three
//! pipe ends to the init, and a task per process follows its end and carries out its kill.

use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::super::wire::{self, Request, WireStatus};
use super::{NamespacedSession, gone};
use crate::process::Pipes;
use crate::{ExitStatus, ProcessHandle, SandboxError, SpawnRequest, Spawned};

impl NamespacedSession {
    /// See [`SandboxSession::spawn`](crate::SandboxSession::spawn).
    pub(super) async fn spawn_process(
        &self,
        request: SpawnRequest,
    ) -> Result<Spawned, SandboxError> {
        if self.closed.is_cancelled() {
            return Err(SandboxError::Closed);
        }
        if self.dead.is_cancelled() {
            return Err(gone("its init is gone"));
        }
        let cwd = Self::resolve_workdir(request.workdir.as_deref())?;
        let spawn_error = |source: std::io::Error| SandboxError::Spawn {
            command: request.command.clone(),
            source,
        };
        let pipes = Pipes::new().map_err(spawn_error)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let mut env = self.env.clone();
        for (key, value) in &request.env {
            env.retain(|(existing, _)| existing != key);
            env.push((key.clone(), value.clone()));
        }
        let spawn = Request::Spawn {
            id,
            command: request.command.clone(),
            cwd,
            env,
        };
        let (handle, follower) = ProcessHandle::new();
        let (writer, closed, table) = (
            self.writer.clone(),
            self.closed.clone(),
            self.pending.clone(),
        );
        let child = pipes.child;
        let (sent_tx, sent) = oneshot::channel();
        // The request is sent, and the process followed, by a task of its own: a caller that
        // gives up half-way (a cancelled start) must not leave half a frame on the way to the
        // init, and its dropped handle then kills what was started.
        tokio::spawn(async move {
            let fds = child.each_ref().map(std::os::fd::AsRawFd::as_raw_fd);
            let outcome = send_frame(&writer, &spawn, &[], &fds).await;
            // The init holds its own copies now.
            drop(child);
            if let Err(e) = outcome {
                if let Ok(mut pending) = table.lock() {
                    pending.remove(&id);
                }
                let _ = sent_tx.send(Err(e));
                return;
            }
            let _ = sent_tx.send(Ok(()));
            tokio::pin!(rx);
            let mut killed = false;
            let status = loop {
                tokio::select! {
                    done = &mut rx => break match done {
                        Ok(done) => match done.status {
                            _ if killed => ExitStatus::Cancelled,
                            WireStatus::Exited { code } => ExitStatus::Exited(code),
                            WireStatus::Signaled { signal } => ExitStatus::Signaled(signal),
                            WireStatus::SpawnFailed { message } => {
                                return follower.failed(message);
                            }
                            WireStatus::TimedOut | WireStatus::Killed => ExitStatus::Cancelled,
                        },
                        Err(_) => ExitStatus::Cancelled,
                    },
                    _ = follower.kill.cancelled(), if !killed => {
                        killed = true;
                        let _ = send_frame(&writer, &Request::Kill { id }, &[], &[]).await;
                    }
                    _ = closed.cancelled() => break ExitStatus::Cancelled,
                }
            };
            follower.ended(status);
        });
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(gone("the request to start it was lost")),
        }
        Ok(Spawned {
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
            handle,
        })
    }
}

/// Sends one request to the init, the descriptors `fds` riding with its first byte.
pub(super) async fn send_frame(
    writer: &tokio::sync::Mutex<OwnedWriteHalf>,
    request: &Request,
    payload: &[u8],
    fds: &[std::os::fd::RawFd],
) -> Result<(), SandboxError> {
    let frame = wire::encode_frame(request, payload).map_err(SandboxError::Wait)?;
    let mut writer = writer.lock().await;
    let mut sent = 0;
    if !fds.is_empty() {
        let socket: &UnixStream = writer.as_ref();
        let raw = std::os::fd::AsRawFd::as_raw_fd(socket);
        sent = socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                wire::sendmsg_with_fds(raw, &frame, fds)
            })
            .await
            .map_err(|e| gone(&e.to_string()))?;
    }
    writer
        .write_all(&frame[sent..])
        .await
        .map_err(|e| gone(&e.to_string()))
}
