//! A session's cgroups: memory, pids and CPU limits, and the counters that tell a command which
//! limit it hit. Version 2 where the controllers are delegated to us, version 1 otherwise (this
//! project's machines have only v1 controllers). New groups nest under the one this process
//! sits in. Where none can be created, the session runs on rlimits alone and says so.
//!
//! Each session gets a group with two leaves: `init` holds the session's init and has no
//! limits, `commands` holds every command and has them all. So a fork bomb or a memory bomb
//! exhausts its own leaf, and the init can still kill it and report back.

mod v2;

use std::path::{Path, PathBuf};

use super::Limits;
use v2::{evacuate, v2_base};

/// Which hierarchy a session's limits live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The cgroups of one session.
#[derive(Debug)]
pub struct SessionCgroup {
    version: Version,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
}

/// Counters that only grow; an increase during a command is a limit it hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub oom_kills: u64,
    pub pids_max_hits: u64,
}

/// Where this process sits, per controller: (controller, directory). Read once: a process of
/// ours is not moved between cgroups, and every session's groups nest under these.
fn own_groups() -> &'static [(String, PathBuf, Version)] {
    static GROUPS: std::sync::OnceLock<Vec<(String, PathBuf, Version)>> =
        std::sync::OnceLock::new();
    GROUPS.get_or_init(read_own_groups)
}

fn read_own_groups() -> Vec<(String, PathBuf, Version)> {
    let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            if let Some(mount) = mount_point(&mountinfo, "cgroup2", None) {
                found.push((String::new(), v2_base(&mount.join(relative)), Version::V2));
            }
            continue;
        }
        for controller in controllers.split(',') {
            if let Some(mount) = mount_point(&mountinfo, "cgroup", Some(controller)) {
                found.push((controller.to_string(), mount.join(relative), Version::V1));
            }
        }
    }
    found
}

/// The mount point of a cgroup hierarchy (v1: the one with `controller` among its options).
fn mount_point(mountinfo: &str, fstype: &str, controller: Option<&str>) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some(fstype) {
            continue;
        }
        let options = right.nth(1).unwrap_or("");
        if controller.is_some_and(|c| !options.split(',').any(|o| o == c)) {
            continue;
        }
        return left.split(' ').nth(4).map(PathBuf::from);
    }
    None
}

const INIT: &str = "init";
const COMMANDS: &str = "commands";

/// Creates a session group with its two leaves.
fn create_group(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    std::fs::create_dir(dir.join(INIT))?;
    std::fs::create_dir(dir.join(COMMANDS))
}

fn remove_group(dir: &Path) {
    for sub in [dir.join(COMMANDS), dir.join(INIT), dir.to_path_buf()] {
        for attempt in 0..50 {
            match std::fs::remove_dir(&sub) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) if attempt < 49 => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => {
                    tracing::warn!(dir = %sub.display(), error = %e, "could not remove a sandbox cgroup")
                }
            }
        }
    }
}

/// Whether `name` (`nightshift-s<pid>-...` or `s<pid>-...`) belongs to a process that is gone.
pub(crate) fn is_stale(name: &str) -> bool {
    let rest = name.strip_prefix("nightshift-").unwrap_or(name);
    let Some(pid) = rest.strip_prefix('s').and_then(|r| r.split('-').next()) else {
        return false;
    };
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes empty groups left by sessions of processes that died before tearing them down.
pub(crate) fn sweep_stale_groups() {
    for (_, parent, _) in own_groups() {
        sweep_stale(parent);
    }
}

fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("nightshift-s") && is_stale(&name) {
            for sub in [
                entry.path().join(COMMANDS),
                entry.path().join(INIT),
                entry.path(),
            ] {
                let _ = std::fs::remove_dir(sub);
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
}

fn counter(dir: &Option<PathBuf>, file: &str, key: &str) -> u64 {
    let Some(dir) = dir else { return 0 };
    let Ok(text) = std::fs::read_to_string(dir.join(COMMANDS).join(file)) else {
        return 0;
    };
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl SessionCgroup {
    /// Creates the session's groups with their limits. Returns `None` with the reason when no
    /// controller could be used.
    pub fn create(name: &str, limits: &Limits) -> (Option<SessionCgroup>, Vec<String>) {
        let groups = own_groups();
        let mut notes = Vec::new();
        let mut v2_note = None;
        let v2 = groups
            .iter()
            .find(|(c, _, v)| c.is_empty() && *v == Version::V2);
        if let Some((_, parent, _)) = v2 {
            match Self::create_v2(parent, name, limits) {
                Ok(cgroup) => return (Some(cgroup), notes),
                Err(e) => {
                    v2_note = Some(format!("cgroup v2 unusable at {}: {e}", parent.display()))
                }
            }
        }
        let mut cgroup = SessionCgroup {
            version: Version::V1,
            memory: None,
            pids: None,
            cpu: None,
        };
        for (controller, parent, _) in groups.iter().filter(|(_, _, v)| *v == Version::V1) {
            let slot = match controller.as_str() {
                "memory" => &mut cgroup.memory,
                "pids" => &mut cgroup.pids,
                "cpu" => &mut cgroup.cpu,
                _ => continue,
            };
            let dir = parent.join(name);
            match create_group(&dir)
                .and_then(|()| apply_v1(controller, &dir.join(COMMANDS), limits))
            {
                Ok(()) => *slot = Some(dir),
                Err(e) => {
                    remove_group(&dir);
                    notes.push(format!(
                        "cgroup v1 {controller} unusable at {}: {e}",
                        parent.display()
                    ));
                }
            }
        }
        if cgroup.memory.is_none() && cgroup.pids.is_none() && cgroup.cpu.is_none() {
            notes.extend(v2_note);
            notes.push("no cgroup controller usable: limits fall back to rlimits".into());
            return (None, notes);
        }
        (Some(cgroup), notes)
    }

    fn create_v2(parent: &Path, name: &str, limits: &Limits) -> std::io::Result<SessionCgroup> {
        let wanted = ["memory", "pids", "cpu"];
        let delegated = std::fs::read_to_string(parent.join("cgroup.controllers"))?;
        if !wanted
            .iter()
            .all(|c| delegated.split_whitespace().any(|d| d == *c))
        {
            return Err(std::io::Error::other(format!(
                "controllers not delegated (have: {})",
                delegated.trim()
            )));
        }
        let available = std::fs::read_to_string(parent.join("cgroup.subtree_control"))?;
        for controller in wanted {
            if !available.split_whitespace().any(|c| c == controller) {
                let enable = format!("+{controller}");
                match write(parent, "cgroup.subtree_control", &enable) {
                    // Processes in the group (ours, and our children): they move to a leaf.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        evacuate(parent)?;
                        write(parent, "cgroup.subtree_control", &enable)?;
                    }
                    other => other?,
                }
            }
        }
        let dir = parent.join(name);
        std::fs::create_dir(&dir)?;
        let result = (|| {
            write(&dir, "cgroup.subtree_control", "+memory +pids +cpu")?;
            std::fs::create_dir(dir.join(INIT))?;
            std::fs::create_dir(dir.join(COMMANDS))?;
            let dir = dir.join(COMMANDS);
            if let Some(bytes) = limits.memory_bytes {
                write(&dir, "memory.max", &bytes.to_string())?;
                let _ = write(&dir, "memory.swap.max", "0");
            }
            if let Some(pids) = limits.pids {
                write(&dir, "pids.max", &pids.to_string())?;
            }
            if let Some(cpus) = limits.cpus {
                write(
                    &dir,
                    "cpu.max",
                    &format!("{} 100000", (cpus * 100_000.0) as u64),
                )?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            remove_group(&dir);
            return Err(e);
        }
        Ok(SessionCgroup {
            version: Version::V2,
            memory: Some(dir.clone()),
            pids: Some(dir.clone()),
            cpu: Some(dir),
        })
    }

    fn dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = [&self.memory, &self.pids, &self.cpu]
            .into_iter()
            .flatten()
            .collect();
        dirs.dedup();
        dirs
    }

    /// The file a single-threaded process writes `0` to, to move itself into `leaf`.
    ///
    /// In v1 that is `tasks`: moving one thread that is the caller skips the kernel's global
    /// threadgroup lock, whose write side waits for an RCU grace period (about 14 ms on an idle
    /// host) on every `cgroup.procs` write. A process that has a single thread moves whole.
    fn join_file(&self, leaf: &str) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.dirs()
            .into_iter()
            .map(|d| d.join(leaf).join(file))
            .collect()
    }

    /// The files the helper writes `0` to, joining the init's leaf of every group.
    pub fn init_procs(&self) -> Vec<PathBuf> {
        self.join_file(INIT)
    }

    /// The files every command writes `0` to, joining the limited leaf.
    pub fn commands_procs(&self) -> Vec<PathBuf> {
        self.join_file(COMMANDS)
    }

    /// What is limited, for the session's report.
    pub fn describe(&self) -> String {
        let have = |d: &Option<PathBuf>, name: &'static str| d.as_ref().map(|_| name);
        let names: Vec<&str> = [
            have(&self.memory, "memory"),
            have(&self.pids, "pids"),
            have(&self.cpu, "cpu"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let version = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        format!("cgroups {version}: {}", names.join(", "))
    }

    pub fn counters(&self) -> Counters {
        let oom_kills = match self.version {
            Version::V1 => counter(&self.memory, "memory.oom_control", "oom_kill"),
            Version::V2 => counter(&self.memory, "memory.events", "oom_kill"),
        };
        Counters {
            oom_kills,
            pids_max_hits: counter(&self.pids, "pids.events", "max"),
        }
    }

    /// CPU time the session's commands have used, when the cpu controller (with cpuacct on
    /// v1) is available.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let dir = self.cpu.as_ref()?.join(COMMANDS);
        match self.version {
            Version::V1 => {
                let nanos: u64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some(nanos as f64 / 1e9)
            }
            Version::V2 => {
                let micros = counter(&self.cpu, "cpu.stat", "usage_usec");
                Some(micros as f64 / 1e6)
            }
        }
    }

    pub fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    /// Kills every command of the session (not the init): what a fork bomb leaves behind when
    /// it backgrounds itself. Repeats while processes remain, for a second at most.
    pub fn kill_commands(&self) {
        for _ in 0..50 {
            let mut found = false;
            for dir in self.dirs() {
                let procs = std::fs::read_to_string(dir.join(COMMANDS).join("cgroup.procs"));
                for pid in procs
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                {
                    found = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !found {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Removes the groups, once their processes are gone (retrying for a moment while the
    /// kernel finishes tearing them down).
    pub fn remove(&self) {
        for dir in self.dirs() {
            remove_group(dir);
        }
    }
}

fn apply_v1(controller: &str, dir: &Path, limits: &Limits) -> std::io::Result<()> {
    match controller {
        "memory" => {
            if let Some(bytes) = limits.memory_bytes {
                write(dir, "memory.limit_in_bytes", &bytes.to_string())?;
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                }
            }
        }
        "pids" => {
            if let Some(pids) = limits.pids {
                write(dir, "pids.max", &pids.to_string())?;
            }
        }
        "cpu" => {
            if let Some(cpus) = limits.cpus {
                write(dir, "cpu.cfs_period_us", "100000")?;
                write(
                    dir,
                    "cpu.cfs_quota_us",
                    &((cpus * 100_000.0) as u64).to_string(),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the host offers, for the doctor: the version and the usable controllers.
pub fn probe() -> (Option<Version>, Vec<String>) {
    let groups = read_own_groups();
    let mut controllers = Vec::new();
    let mut version = None;
    for (controller, dir, v) in &groups {
        match v {
            Version::V1
                if ["memory", "pids", "cpu"].contains(&controller.as_str()) && writable(dir) =>
            {
                controllers.push(controller.clone());
                version = Some(Version::V1);
            }
            Version::V2 if controller.is_empty() => {
                let delegated =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let usable: Vec<String> = delegated
                    .split_whitespace()
                    .filter(|c| ["memory", "pids", "cpu"].contains(c))
                    .map(str::to_string)
                    .collect();
                if !usable.is_empty() && writable(dir) {
                    controllers = usable;
                    version = Some(Version::V2);
                    break;
                }
            }
            _ => {}
        }
    }
    (version, controllers)
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}
