//! The helper process as the host holds it: a plain child (not one of the async runtime's, so
//! that one started ahead of time can serve a session started from any runtime), killed and
//! reaped when dropped, awaited through a pidfd; and the tail of what it writes to its
//! standard error, for setup failures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::sys;

pub(crate) struct HelperProcess {
    child: Option<std::process::Child>,
}

impl HelperProcess {
    pub fn new(child: std::process::Child) -> Self {
        HelperProcess { child: Some(child) }
    }

    /// Whether it has not exited (reaping it if it has).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Waits until it exits, for `limit` at most; then kills it if it has not, and reaps it.
    pub async fn wait_or_kill(mut self, limit: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let registered = sys::pidfd_open(child.id() as i32).ok().and_then(|pidfd| {
            // SAFETY: the AsyncFd owns the pidfd, which stays open and the same until it drops.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    pidfd,
                    tokio::io::Interest::READABLE,
                )
            }
            .ok()
        });
        if let Some(exited) = registered {
            // A pidfd turns readable when its process exits.
            let _ = tokio::time::timeout(limit, exited.readable()).await;
        }
        drop(self);
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = child.kill();
        // Reaping takes a moment after SIGKILL: not on the caller's time.
        let reap = std::thread::Builder::new()
            .name("nightshift-reap".into())
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reap {
            tracing::debug!(error = %e, "could not start a thread to reap the sandbox helper");
        }
    }
}

/// The last few KiB the helper wrote to its standard error, for setup failures.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(
    Arc<Mutex<String>>,
    Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
);

impl StderrTail {
    pub fn collect(stderr: Option<std::process::ChildStderr>) -> Self {
        let stderr = stderr.and_then(|s| tokio::process::ChildStderr::from_std(s).ok());
        let tail = StderrTail::default();
        if let Some(mut stderr) = stderr {
            let sink = tail.0.clone();
            let handle = tokio::spawn(async move {
                let mut chunk = vec![0u8; 4096];
                while let Ok(n) = stderr.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                    tracing::debug!(target: "nightshift_sandbox::helper", "{}", text.trim_end());
                    if let Ok(mut tail) = sink.lock() {
                        tail.push_str(&text);
                        if tail.len() > 8192 {
                            let cut = tail.len() - 8192;
                            let cut = (cut..tail.len())
                                .find(|i| tail.is_char_boundary(*i))
                                .unwrap_or(0);
                            tail.drain(..cut);
                        }
                    }
                }
            });
            if let Ok(mut slot) = tail.1.lock() {
                *slot = Some(handle);
            }
        }
        tail
    }

    /// Everything the helper wrote, once it has exited (or after a second).
    pub async fn finished(&self) -> String {
        let handle = self.1.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(1), handle).await;
        }
        self.text()
    }

    pub fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
