//! The helper process as the host holds it: a plain child (not one of the async runtime's, so
//! that one started ahead of time can serve a session started from any runtime), killed and
//! reaped when dropped, awaited through a pidfd.

use std::time::Duration;

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
