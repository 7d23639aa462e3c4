//! The repository's environment in a task: its configuration (`.nightshift.toml` or what is
//! imported), the untracked files it asks for, its setup and maintenance scripts, its declared
//! checks, and the context the agent gets from it (AGENTS.md, the checks it will be held to).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nightshift_agent::SinkError;
use nightshift_env::config::{ConfigError, ConfigSource, EnvConfig, Loaded};
use nightshift_env::tree_files::{Links, open_regular_in};
use nightshift_env::{collect_agents_md, render_agents_context};
use nightshift_protocol::{CommandPhase, Event, TaskId};
use nightshift_sandbox::{ExecRequest, ExitStatus, SandboxSession};
use nightshift_store::Store;
use tokio_util::sync::CancellationToken;

use crate::sink::TaskLog;

/// How long setup and maintenance may run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a check may run when it names no timeout.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The most output kept of one environment command.
const OUTPUT_LIMIT: usize = 4 * 1024 * 1024;
/// How much of a command's output goes into its event.
const TAIL_BYTES: usize = 4 * 1024;

/// Reads the configuration of the working copy at `root` (off the async threads).
pub(crate) async fn load(root: &Path) -> Result<Loaded, ConfigError> {
    let root = root.to_path_buf();
    match tokio::task::spawn_blocking(move || EnvConfig::load(&root)).await {
        Ok(loaded) => loaded,
        Err(err) => Err(ConfigError::Read {
            path: PathBuf::from(".nightshift.toml"),
            source: std::io::Error::other(format!("the loader crashed: {err}")),
        }),
    }
}

/// Logs what was loaded and every warning about it.
pub(crate) async fn announce(log: &TaskLog, loaded: &Loaded) -> Result<(), SinkError> {
    for warning in &loaded.warnings {
        log.append(Event::Warning {
            message: format!("configuration: {warning}"),
        })
        .await?;
    }
    let source = match &loaded.source {
        ConfigSource::File { path } => path.display().to_string(),
        ConfigSource::Imported { importer, path } => {
            format!("{} (imported from {})", importer.name(), path.display())
        }
        ConfigSource::Defaults => "defaults (no .nightshift.toml or importable file)".to_string(),
    };
    let environment = &loaded.config.environment;
    log.append(Event::EnvironmentLoaded {
        source,
        checks: loaded
            .config
            .checks
            .iter()
            .map(|check| check.name.clone())
            .collect(),
        has_setup: environment.setup.is_some(),
        has_maintenance: environment.maintenance.is_some(),
    })
    .await
}

/// Copies the untracked files the configuration lists from the source checkout into the
/// working copy, and keeps them out of every commit (`.git/info/exclude`): they are often
/// secrets such as `.env`. Missing files are reported, not fatal.
pub(crate) async fn copy_untracked(
    log: &TaskLog,
    source_root: &Path,
    copy_root: &Path,
    paths: &[PathBuf],
) -> Result<(), SinkError> {
    if paths.is_empty() {
        return Ok(());
    }
    let (source_root, copy_root, paths) = (
        source_root.to_path_buf(),
        copy_root.to_path_buf(),
        paths.to_vec(),
    );
    let notes = tokio::task::spawn_blocking(move || copy_files(&source_root, &copy_root, &paths))
        .await
        .unwrap_or_else(|err| vec![format!("copying untracked files crashed: {err}")]);
    for note in notes {
        log.append(Event::Warning { message: note }).await?;
    }
    Ok(())
}

/// The largest file `environment.copy` copies.
const MAX_COPIED_BYTES: u64 = 256 * 1024 * 1024;

fn copy_files(source_root: &Path, copy_root: &Path, paths: &[PathBuf]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut excluded = String::new();
    let source = match cap_std::fs::Dir::open_ambient_dir(source_root, cap_std::ambient_authority())
    {
        Ok(dir) => dir,
        Err(err) => {
            return vec![format!(
                "cannot open {} to copy untracked files: {err}",
                source_root.display()
            )];
        }
    };
    let target = match cap_std::fs::Dir::open_ambient_dir(copy_root, cap_std::ambient_authority()) {
        Ok(dir) => dir,
        Err(err) => {
            return vec![format!(
                "cannot open the working copy to copy untracked files: {err}"
            )];
        }
    };
    for path in paths {
        // Inside the checkout only (cap-std refuses `..` and links out), a regular file only
        // (a FIFO is refused, not waited on), streamed and bounded.
        let opened = match open_regular_in(&source, source_root, path, Links::FollowInside) {
            Ok(opened) if opened.len > MAX_COPIED_BYTES => {
                notes.push(format!(
                    "environment.copy: `{}` was not copied: it is larger than {} MiB",
                    path.display(),
                    MAX_COPIED_BYTES >> 20
                ));
                continue;
            }
            Ok(opened) => opened,
            Err(err) => {
                notes.push(format!("environment.copy: {err}"));
                continue;
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = target.create_dir_all(parent);
        }
        let copied = target.create(path).and_then(|out| {
            let mut out = out.into_std();
            std::io::copy(&mut opened.file.take(MAX_COPIED_BYTES), &mut out)
        });
        match copied {
            Ok(_) => excluded.push_str(&format!("/{}\n", path.display())),
            Err(err) => notes.push(format!(
                "environment.copy: `{}` could not be written: {err}",
                path.display()
            )),
        }
    }
    if !excluded.is_empty() {
        let exclude = copy_root.join(".git/info/exclude");
        let mut content = std::fs::read_to_string(&exclude).unwrap_or_default();
        content.push_str("# copied by nightshift from the source checkout; never committed\n");
        content.push_str(&excluded);
        if let Some(dir) = exclude.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(err) = std::fs::write(&exclude, content) {
            notes.push(format!(
                "could not keep the copied files out of commits: {err}"
            ));
        }
    }
    notes
}

/// What the agent is told about the environment before the task: AGENTS.md files, where to
/// work, and the checks its result will be held to.
pub(crate) fn agent_context(loaded: &Loaded, copy_root: &Path) -> String {
    let config = &loaded.config;
    let mut dirs = Vec::new();
    if let Some(workdir) = &config.environment.workdir {
        dirs.push(workdir.clone());
    }
    let docs = collect_agents_md(copy_root, &dirs);
    let mut context = render_agents_context(&docs);
    if let Some(workdir) = config
        .environment
        .workdir
        .as_ref()
        .filter(|w| w.as_os_str() != ".")
    {
        context.push_str(&format!(
            "\nThe project lives in `{}` of the repository.\n",
            workdir.display()
        ));
    }
    if !config.checks.is_empty() {
        context.push_str(
            "\nWhen you finish, nightshift commits your work and runs these checks on it in a fresh sandbox; the task fails if one fails:\n",
        );
        for check in &config.checks {
            context.push_str(&format!("- {}: `{}`\n", check.name, check.run));
        }
    }
    context
}

/// One environment command's result.
pub(crate) struct CommandOutcome {
    pub(crate) ok: bool,
    pub(crate) exit_code: i32,
    pub(crate) tail: String,
}

/// Runs an environment command in the session, in the configured workdir, logs it as a
/// `command_finished` event and keeps its whole output as the blob `artifact`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_command(
    log: &TaskLog,
    store: &dyn Store,
    task: TaskId,
    session: &dyn SandboxSession,
    workdir: Option<&Path>,
    phase: CommandPhase,
    name: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<CommandOutcome, SinkError> {
    let default_timeout = match phase {
        CommandPhase::Setup | CommandPhase::Maintenance | CommandPhase::Build => SETUP_TIMEOUT,
        CommandPhase::Check => CHECK_TIMEOUT,
    };
    let mut request = ExecRequest::new(format!("{}set -e\n{command}", exports(env)));
    request.workdir = workdir
        .filter(|w| w.as_os_str() != ".")
        .map(Path::to_path_buf);
    request.timeout = timeout.unwrap_or(default_timeout);
    request.output_limit = OUTPUT_LIMIT;
    let started = Instant::now();
    let (ok, exit_code, output) = match session.exec(request, cancel).await {
        Ok(out) => {
            let mut output = out.output;
            match out.status {
                ExitStatus::TimedOut => output.push_str(&format!(
                    "\n[timed out after {}s]\n",
                    timeout.unwrap_or(default_timeout).as_secs()
                )),
                ExitStatus::LimitExceeded(limit) => {
                    output.push_str(&format!("\n[{}]\n", limit.explain()))
                }
                ExitStatus::Cancelled => output.push_str("\n[cancelled]\n"),
                ExitStatus::Exited(_) | ExitStatus::Signaled(_) => {}
            }
            (out.status.success(), out.status.code(), output)
        }
        Err(err) => (
            false,
            -1,
            format!("the sandbox could not run the command: {err}"),
        ),
    };
    let artifact = match phase {
        CommandPhase::Check => format!("check-{}.log", sanitize(name)),
        CommandPhase::Setup => "setup.log".to_string(),
        CommandPhase::Maintenance => "maintenance.log".to_string(),
        CommandPhase::Build => format!("build-{}.log", sanitize(name)),
    };
    let output = log.redact(&output);
    let stored = match store
        .put_blob(task, &artifact, output.clone().into_bytes().into())
        .await
    {
        Ok(()) => true,
        Err(err) => {
            log.append(Event::Warning {
                message: format!("{artifact} could not be stored: {err}"),
            })
            .await?;
            false
        }
    };
    let tail = tail(&output);
    log.append(Event::CommandFinished {
        phase,
        name: name.to_string(),
        command: command.to_string(),
        ok,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        output_tail: tail.clone(),
        artifact: stored.then_some(artifact),
    })
    .await?;
    Ok(CommandOutcome {
        ok,
        exit_code,
        tail,
    })
}

/// The end of the output: it says how the command ended.
fn tail(output: &str) -> String {
    if output.len() <= TAIL_BYTES {
        return output.to_string();
    }
    let mut start = output.len() - TAIL_BYTES;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} earlier bytes]\n{}", &output[start..])
}

/// Blob names allow `[A-Za-z0-9._-]`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Shell `export` lines for `env`, values single-quoted.
fn exports(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(name, value)| format!("export {name}='{}'\n", value.replace('\'', r"'\''")))
        .collect()
}

/// What to do about a failed setup or maintenance script: where it comes from, where its log
/// is, and what the failure looks like it ran into (root-only commands, the network allowlist).
/// `root` says how the script ran: as root over a writable system (`Some(true)`), as root
/// over a read-only one (`Some(false)`), or as the sandbox user (`None`).
pub(crate) fn script_hint(name: &str, script: &str, tail: &str, root: Option<bool>) -> String {
    let mut hint = format!(
        "fix the {name} script (`nightshift env check` shows where it comes from); its whole log is the artifact {name}.log"
    );
    let words = |text: &str, any: &[&str]| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .any(|word| any.contains(&word))
    };
    let system_packages = words(
        script,
        &[
            "sudo", "apt-get", "apt", "dpkg", "dnf", "yum", "apk", "zypper", "pacman",
        ],
    ) || tail.contains("sudo: ")
        || tail.contains("are you root?")
        || tail.contains("Read-only file system");
    match root {
        _ if !system_packages => {}
        None => hint.push_str(
            "; the script runs as the sandbox user over a read-only system (/usr, /etc), so system packages cannot be installed: put system packages in the setup script (setup runs as root), or install tools into the workspace or $HOME",
        ),
        Some(false) => hint.push_str(
            "; setup runs as root of its sandbox, but over a read-only system (/usr, /etc): a writable system needs nightshift itself to run as root (it maps a range of ids so that the system's owners exist inside); chown and package-manager failures come from that. Install tools into the workspace or $HOME instead, or on the host",
        ),
        Some(true) => hint.push_str(
            "; setup runs as root over a writable copy of the system, so system package managers work: `apt-get update` first if the package lists are old, and let [network].setup reach the distribution's mirrors (`@registries` includes those of /etc/apt)",
        ),
    }
    if tail.contains("is not allowlisted")
        || tail.contains("Could not resolve host")
        || tail.contains("Temporary failure in name resolution")
        || tail.contains("Name or service not known")
    {
        hint.push_str(
            "; it reaches only the hosts of [network].setup, through the egress proxy: add the host it needs there (the task's egress events list what it asked for)",
        );
    }
    hint
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_failed_script_gets_a_hint_for_what_it_ran_into() {
        let plain = script_hint("setup", "npm ci", "npm ERR! missing script", Some(true));
        assert!(plain.contains("artifact setup.log"), "{plain}");
        assert!(!plain.contains("root") && !plain.contains("[network]"));
        let apt = "sudo apt-get install -y libpq-dev";
        let maintenance = script_hint("maintenance", apt, "Permission denied", None);
        assert!(
            maintenance.contains("system packages cannot be installed"),
            "{maintenance}"
        );
        let read_only = script_hint("setup", apt, "Read-only file system", Some(false));
        assert!(
            read_only.contains("nightshift itself to run as root"),
            "{read_only}"
        );
        let writable = script_hint("setup", apt, "Unable to locate package", Some(true));
        assert!(writable.contains("apt-get update"), "{writable}");
        let network = script_hint(
            "setup",
            "pip install -r requirements.txt",
            "nightshift: files.pythonhosted.org:443 is not allowlisted for this task's network access",
            Some(true),
        );
        assert!(network.contains("[network].setup"), "{network}");
        assert!(!script_hint("setup", "./apt-tools/build.sh", "", None).contains("sandbox user"));
    }
}
