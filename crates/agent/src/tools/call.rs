//! The plumbing every tool call shares: reading the model's JSON arguments into a typed struct,
//! and moving blocking filesystem work off the async runtime.
//!
//! Models get arguments wrong often enough that the error has to teach: it names the tool, says
//! what serde found wrong, and spells out the fields the tool expects.

use serde::de::DeserializeOwned;

use super::ToolOutput;

/// Parses `arguments` for `tool`. `expected` describes the argument object for the error
/// message, e.g. `{"path": string, "offset"?: integer}`.
pub(crate) fn parse_args<T: DeserializeOwned>(
    tool: &str,
    arguments: &str,
    expected: &str,
) -> Result<T, ToolOutput> {
    // Models sometimes send nothing at all for a tool whose arguments are all optional.
    let text = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let first_error = match serde_json::from_str::<T>(text) {
        Ok(parsed) => return Ok(parsed),
        Err(err) => err,
    };
    // Some models encode the arguments object twice, as a JSON string holding JSON.
    if let Ok(inner) = serde_json::from_str::<String>(text)
        && let Ok(parsed) = serde_json::from_str::<T>(&inner)
    {
        return Ok(parsed);
    }
    Err(ToolOutput::failure(format!(
        "{tool}: invalid arguments: {first_error}. Expected a JSON object {expected} \
         (fields marked ? are optional; no other fields are allowed). Fix the arguments and \
         call {tool} again."
    )))
}

/// Runs `work` on the blocking pool. A panic inside it becomes a failed tool call rather than
/// taking the agent down.
pub(crate) async fn blocking<F>(tool: &'static str, work: F) -> ToolOutput
where
    F: FnOnce() -> ToolOutput + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(output) => output,
        Err(err) => ToolOutput::failure(format!(
            "{tool}: internal error ({err}); the call may not have completed. Check the \
             workspace state with read_file or list_files before retrying."
        )),
    }
}

/// Like [`blocking`], acting as host uid and gid `owner` for file system access while `work`
/// runs, when the sandbox asks for it ([`SandboxSession::file_owner`]): files the tools create
/// must belong to the sandbox user, which a root host is not.
///
/// [`SandboxSession::file_owner`]: nightshift_sandbox::SandboxSession::file_owner
pub(crate) async fn blocking_as<F>(
    owner: Option<nightshift_sandbox::FileOwner>,
    tool: &'static str,
    work: F,
) -> ToolOutput
where
    F: FnOnce() -> ToolOutput + Send + 'static,
{
    blocking(tool, move || {
        let _identity = owner.map(FsIdentity::assume);
        work()
    })
    .await
}

/// The file system identity of the current thread, switched for as long as this lives.
struct FsIdentity {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl FsIdentity {
    fn assume(owner: nightshift_sandbox::FileOwner) -> Self {
        // setfsuid and setfsgid act on this thread only and return the previous ids.
        let gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(owner.gid));
        let uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(owner.uid));
        FsIdentity { uid, gid }
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        nix::unistd::setfsuid(self.uid);
        nix::unistd::setfsgid(self.gid);
    }
}
