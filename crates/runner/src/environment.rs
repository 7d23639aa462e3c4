//! The repository's environment in a task: its configuration (`.nightshift.toml` or what is
//! imported), the untracked files it asks for, its setup and maintenance scripts, its declared
//! checks, and the context the agent gets from it (AGENTS.md, the checks it will be held to).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nightshift_agent::SinkError;
use nightshift_env::config::{ConfigError, ConfigSource, EnvConfig, Loaded, SecretScope};
use nightshift_env::secrets::Redactor;
use nightshift_env::tree_files::{Links, open_regular_in};
use nightshift_env::{collect_agents_md, render_agents_context};
use nightshift_protocol::{CommandPhase, Event, TaskId};
use nightshift_sandbox::{Credential, ExecRequest, ExitStatus, SandboxSession};
use nightshift_store::Store;
use tokio_util::sync::CancellationToken;

use crate::sink::TaskLog;

/// How long setup and maintenance may run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a check may run when it names no timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
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
        CommandPhase::Setup | CommandPhase::Maintenance => SETUP_TIMEOUT,
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

/// What the configuration's secrets become in a task's sandboxes.
#[derive(Debug, Default)]
pub(crate) struct TaskSecrets {
    /// Setup's environment variables.
    pub setup_env: Vec<(String, String)>,
    /// Headers the egress proxy adds for the sandbox.
    pub credentials: Vec<Credential>,
}

/// A stored secret, unsealed, with the repositories it is granted to.
#[derive(Debug, Clone)]
pub(crate) struct StoredSecret {
    pub name: String,
    pub value: String,
    pub repos: Vec<String>,
}

/// Why a task cannot have the secrets its configuration names.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SecretsRefused {
    /// Not stored at all.
    pub missing: Vec<String>,
    /// Stored, but not granted to the task's repository.
    pub ungranted: Vec<String>,
}

impl SecretsRefused {
    /// The task's error and the hint that says how to fix it.
    pub(crate) fn explain(&self, repo: &str) -> (String, String) {
        let mut problems = Vec::new();
        if !self.missing.is_empty() {
            problems.push(format!(
                "names the secret(s) {}, which are not set",
                self.missing.join(", ")
            ));
        }
        if !self.ungranted.is_empty() {
            problems.push(format!(
                "names the secret(s) {}, which are not granted to this repository ({repo})",
                self.ungranted.join(", ")
            ));
        }
        let message = format!("the configuration {}", problems.join(", and "));
        let hint = match (self.missing.first(), self.ungranted.first()) {
            (Some(name), _) => format!(
                "set each with `nightshift secret set NAME --repo {repo}` (the value is read from stdin), e.g. `nightshift secret set {name} --repo {repo}`"
            ),
            (None, Some(name)) => format!(
                "a secret reaches only the repositories it is granted to: `nightshift secret grant {name} --repo {repo}` (or `--all-repos`), if this repository's tasks should have it"
            ),
            (None, None) => String::new(),
        };
        (message, hint)
    }
}

/// The secrets the configuration names, as setup's environment variables and the egress
/// proxy's credentials, or why some cannot be given: not stored, or not granted to `repo`
/// (the task's repository). The repository's configuration only asks; the grants decide.
pub(crate) fn task_secrets(
    loaded: &Loaded,
    secrets: &[StoredSecret],
    repo: &str,
) -> Result<TaskSecrets, SecretsRefused> {
    let mut task = TaskSecrets::default();
    let mut refused = SecretsRefused::default();
    for spec in &loaded.config.secrets {
        let Some(stored) = secrets.iter().find(|stored| stored.name == spec.name) else {
            refused.missing.push(spec.name.clone());
            continue;
        };
        if !nightshift_env::grants::granted(&stored.repos, repo) {
            refused.ungranted.push(spec.name.clone());
            continue;
        }
        let value = &stored.value;
        match &spec.scope {
            SecretScope::Setup => task.setup_env.push((spec.name.clone(), value.clone())),
            SecretScope::Proxy {
                hosts,
                header,
                format,
            } => task.credentials.push(Credential {
                name: spec.name.clone(),
                hosts: hosts.clone(),
                header: header.clone(),
                value: format.replace("{value}", value),
            }),
        }
    }
    if refused == SecretsRefused::default() {
        Ok(task)
    } else {
        Err(refused)
    }
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

/// Why the proxy secrets would never be sent, when the backend has no egress proxy (hosts no
/// allowlist reaches are a warning of the configuration itself).
pub(crate) fn unsendable_credentials(
    credentials: &[Credential],
    backend: Option<&str>,
) -> Vec<String> {
    let Some(backend) = backend else {
        return Vec::new();
    };
    credentials
        .iter()
        .map(|credential| {
            format!(
                "secret `{}` has scope `proxy`, but the {backend} backend has no egress proxy: it is never sent",
                credential.name
            )
        })
        .collect()
}

/// The first file under `dir` (relative path) holding a secret's value in any form, with the
/// secret's name. Every regular file is read through once, whatever its size; names and
/// symlink targets are checked too (links are not followed). What cannot be read is reported
/// the same way, in place of a name: it may hold a secret, and a layer is kept on disk.
pub(crate) async fn secret_in_tree(log: &TaskLog, dir: &Path) -> Option<(String, PathBuf)> {
    if !log.has_secrets() {
        return None;
    }
    let redactor = log.current_redactor();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || scan_tree(&redactor, &dir))
        .await
        .unwrap_or_else(|err| {
            Some((
                format!("(unknown: the scan for secrets stopped: {err})"),
                PathBuf::new(),
            ))
        })
}

/// Files up to this size are read through whatever they hold; above it, a file must be
/// mostly data (see [`scan_tree`]).
const SPARSE_SCAN_FLOOR: u64 = 64 << 20;

fn scan_tree(redactor: &Redactor, dir: &Path) -> Option<(String, PathBuf)> {
    let relative = |path: &Path| {
        path.strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let unchecked = |path: &Path, err: std::io::Error| {
        Some((
            format!("(unknown: it could not be read to check it: {err})"),
            relative(path),
        ))
    };
    let found_in_bytes = |bytes: &[u8]| redactor.found_in_reader(bytes).ok().flatten();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) => return unchecked(&current, err),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => return unchecked(&current, err),
            };
            let path = entry.path();
            if let Some(name) = found_in_bytes(entry.file_name().as_encoded_bytes()) {
                return Some((name, relative(&path)));
            }
            // The entry itself, not what a symlink points at.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) => return unchecked(&path, err),
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // A large file that is mostly holes (a sparse file setup made cost nothing to
                // write) would take the scan ages to read through: it is not checked, and so
                // discards the layer like any unchecked file.
                use std::os::unix::fs::MetadataExt;
                let allocated = meta.blocks().saturating_mul(512);
                if meta.len() > SPARSE_SCAN_FLOOR && allocated < meta.len() / 2 {
                    let err = std::io::Error::other(format!(
                        "a sparse file of {} bytes with {allocated} allocated",
                        meta.len()
                    ));
                    return unchecked(&path, err);
                }
                let found = std::fs::File::open(&path).and_then(|file| {
                    redactor.found_in_reader(std::io::BufReader::with_capacity(1 << 16, file))
                });
                match found {
                    Ok(Some(name)) => return Some((name, relative(&path))),
                    Ok(None) => {}
                    Err(err) => return unchecked(&path, err),
                }
            } else if meta.is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        if let Some(name) = found_in_bytes(target.as_os_str().as_encoded_bytes()) {
                            return Some((name, relative(&path)));
                        }
                    }
                    Err(err) => return unchecked(&path, err),
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_layer_scan_finds_encoded_values_names_and_link_targets_and_fails_closed() {
        const TOKEN: &str = "tok-5ecr3t-0123456789";
        let redactor = Redactor::new(&[("TOKEN".into(), TOKEN.into())]);
        let layer = |setup: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("home/.cache")).unwrap();
            std::fs::write(dir.path().join("home/.cache/clean"), "nothing\n").unwrap();
            setup(dir.path());
            scan_tree(&redactor, dir.path())
        };
        assert_eq!(layer(&|_| {}), None);
        let found = layer(&|dir| {
            let hex = hex_of(&format!("x{TOKEN}"));
            std::fs::write(dir.join("home/.cache/hex"), hex).unwrap();
        });
        assert_eq!(found, Some(("TOKEN".into(), "home/.cache/hex".into())));
        let found = layer(&|dir| {
            let reversed: String = TOKEN.chars().rev().collect();
            std::fs::write(dir.join(reversed), "").unwrap();
        });
        assert_eq!(found.unwrap().0, "TOKEN");
        let found = layer(&|dir| {
            std::os::unix::fs::symlink(format!("/tmp/{TOKEN}"), dir.join("link")).unwrap();
        });
        assert_eq!(found, Some(("TOKEN".into(), "link".into())));
        let (name, _) = scan_tree(&redactor, Path::new("/nonexistent/layer")).unwrap();
        assert!(name.starts_with("(unknown: it could not be read"), "{name}");
        // A terabyte of holes is not read through: it is unchecked, found at once.
        let started = Instant::now();
        let (name, file) = layer(&|dir| {
            let file = std::fs::File::create(dir.join("home/sparse")).unwrap();
            file.set_len(1 << 40).unwrap();
        })
        .unwrap();
        assert!(name.contains("a sparse file"), "{name}");
        assert_eq!(file, PathBuf::from("home/sparse"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    fn hex_of(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

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
