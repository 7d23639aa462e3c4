//! Running git on the host: one place that sets the flags every call needs and turns failures
//! into errors that quote git's own words.
//!
//! Host git works in the person's repository and in task working copies cloned from it, whose
//! content is the untrusted repository's and into which bundles made by the agent are fetched.
//! So it runs with none of the configuration that could execute programs or reach the network
//! (hooks, fsmonitor, any transport but local files), checks every object it receives, and
//! ignores whatever `GIT_*` variables the process inherited. The host's system and global
//! configuration is left out too, except the settings a person's repository may need to be
//! usable at all (see [`CARRIED_SETTINGS`]).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::OnceCell;

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

/// Settings that keep git from running anything but itself and from trusting what it fetches:
/// no signing, no hooks, no fsmonitor, no transport but local paths and bundles, every received
/// object checked; and no automatic maintenance or gc, which would leave a detached git working
/// on in the person's repository after a hand-back (and its lock files in the object store a
/// task's clone is copying).
const SAFE_CONFIG: [&str; 20] = [
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "transfer.fsckObjects=true",
    "-c",
    "advice.detachedHead=false",
    "-c",
    "maintenance.auto=false",
    "-c",
    "gc.auto=0",
];

/// Settings of the host's system and global configuration that host git keeps: which
/// repositories owned by someone else may be used (`safe.directory`), and the content filters
/// (such as Git LFS) a checkout of the person's repository needs.
const CARRIED_SETTINGS: &str = r"^(safe\.directory|filter\..+\.(clean|smudge|process|required))$";

/// The `-c` arguments carrying [`CARRIED_SETTINGS`], read once.
static CARRIED: OnceCell<Vec<OsString>> = OnceCell::const_new();

/// Runs `git -C dir args...` and returns its standard output, trimmed of the final newline.
pub(crate) async fn git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    git_with_index(dir, None, args).await
}

/// [`git`], with `GIT_INDEX_FILE` set to `index` when given: a scratch index, so that a
/// merge can be tried without touching the person's own.
pub(crate) async fn git_with_index<I, S>(
    dir: &Path,
    index: Option<&Path>,
    args: I,
) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let env: Vec<(OsString, OsString)> = index
        .map(|index| ("GIT_INDEX_FILE".into(), index.as_os_str().to_os_string()))
        .into_iter()
        .collect();
    run_git(dir, &[], &env, args).await
}

/// The transports host git may use to reach a remote repository (a task's repository given
/// by URL): on top of [`SAFE_CONFIG`], which allows local paths only.
const REMOTE_PROTOCOLS: [&str; 8] = [
    "-c",
    "protocol.https.allow=always",
    "-c",
    "protocol.http.allow=always",
    "-c",
    "protocol.ssh.allow=always",
    "-c",
    "protocol.git.allow=never",
];

/// [`git`] for a command that reaches a remote repository: HTTP(S), SSH and local files are
/// allowed, prompts are not, and `env` is added (a credential as `GIT_CONFIG_*` settings, which
/// other users of the machine cannot read as they could a command line).
pub(crate) async fn git_remote<I, S>(
    dir: &Path,
    env: &[(OsString, OsString)],
    args: I,
) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_git(dir, &REMOTE_PROTOCOLS, env, args).await
}

async fn run_git<I, S>(
    dir: &Path,
    config: &[&str],
    env: &[(OsString, OsString)],
    args: I,
) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let carried = CARRIED.get_or_init(carried_settings).await;
    let mut command = Command::new("git");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("GIT_")) {
            command.env_remove(&name);
        }
    }
    let output = command
        .arg("-C")
        .arg(dir)
        .args(SAFE_CONFIG)
        .args(config)
        .args(carried)
        .args(&args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (k, v)))
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
    let mut command = std::process::Command::new("git");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("GIT_")) {
            command.env_remove(&name);
        }
    }
    // The carried settings are read by the first `git` call, which always comes first.
    let carried = CARRIED.get().map(Vec::as_slice).unwrap_or_default();
    let mut child = command
        .arg("-C")
        .arg(dir)
        .args(SAFE_CONFIG)
        .args(carried)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
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

/// [`CARRIED_SETTINGS`] as the host's system and global configuration (and the environment the
/// person gave nightshift) set them, as `-c name=value` arguments. Read outside any repository.
async fn carried_settings() -> Vec<OsString> {
    let mut carried = Vec::new();
    for scope in ["--system", "--global"] {
        let output = Command::new("git")
            .args(["config", scope, "--null", "--get-regexp", CARRIED_SETTINGS])
            .current_dir("/")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        // No such file, or no such setting: nothing to carry.
        let Ok(output) = output else { continue };
        for entry in output.stdout.split(|&b| b == 0) {
            let Some(newline) = entry.iter().position(|&b| b == b'\n') else {
                continue;
            };
            let (name, value) = (&entry[..newline], &entry[newline + 1..]);
            let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value))
            else {
                continue;
            };
            carried.push(OsString::from("-c"));
            carried.push(OsString::from(format!("{name}={value}")));
        }
    }
    carried
}
