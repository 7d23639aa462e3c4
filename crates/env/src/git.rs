//! Running git: one place that sets the flags every call needs and turns failures into errors
//! that quote git's own words.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not run git (is it installed and on PATH?): {0}")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed (exit {code}): {stderr}")]
    Failed {
        args: String,
        code: i32,
        stderr: String,
    },
    #[error("reading the output of `git {args}`: {source}")]
    Read {
        args: String,
        source: std::io::Error,
    },
}

/// Settings that keep a person's git configuration from getting in the way of an unattended
/// run: no signing prompts, no hooks, no pagers, no credential prompts.
const SAFE_CONFIG: [&str; 8] = [
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "advice.detachedHead=false",
];

/// Runs `git -C dir args...` and returns its standard output, trimmed of the final newline.
pub(crate) async fn git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(SAFE_CONFIG)
        .args(&args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(GitError::Spawn)?;
    if !output.status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        return Err(GitError::Failed {
            args: shown.join(" "),
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if stdout.ends_with('\n') {
        stdout.pop();
    }
    Ok(stdout)
}

/// Runs `git -C dir args...` with `input` on its standard input and hands its standard output
/// to `read` as it comes, for output too large to hold (blocking: call it off the async
/// threads). `read` must read to the end; git's failure is an error even when `read` is done.
pub(crate) fn git_streamed<T>(
    dir: &Path,
    args: &[&str],
    input: Vec<u8>,
    read: impl FnOnce(&mut dyn std::io::Read) -> std::io::Result<T>,
) -> Result<T, GitError> {
    use std::io::{Read, Write};
    let shown = args.join(" ");
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(SAFE_CONFIG)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) = (stdin, stdout, stderr) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(GitError::Spawn(std::io::Error::other(
            "git's pipes are missing",
        )));
    };
    let (result, said) = std::thread::scope(|scope| {
        // Writing and reading at once: git may fill one pipe while waiting on the other.
        scope.spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let said = scope.spawn(move || {
            let mut said = Vec::new();
            let _ = stderr.read_to_end(&mut said);
            said
        });
        let result = read(&mut stdout);
        if result.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        (result, said.join().unwrap_or_default())
    });
    let status = child.wait().map_err(GitError::Spawn)?;
    let result = result.map_err(|source| GitError::Read {
        args: shown.clone(),
        source,
    })?;
    if !status.success() {
        return Err(GitError::Failed {
            args: shown,
            code: status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&said).trim().to_string(),
        });
    }
    Ok(result)
}
