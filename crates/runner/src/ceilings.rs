//! The host's ceilings on what a repository may ask for: its `.nightshift.toml` sets `[limits]`,
//! but it is untrusted, so what it asks for is capped by the installation's own limits (the
//! `[limits]` of NIGHTSHIFT_HOME/config.toml), with a warning naming each cap.

use std::time::Duration;

use nightshift_env::config::{ByteSize, Check, HumanDuration, Limits};

/// The processes a task gets when its repository does not say (the sandbox's default).
const DEFAULT_PIDS: u32 = 1024;

/// The most a task may use, whatever its repository asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitCeilings {
    pub memory_bytes: u64,
    pub pids: u32,
    pub cpus: f64,
    pub disk_bytes: u64,
}

impl Default for LimitCeilings {
    /// 16 GiB of memory, 8,192 processes, every CPU of the host, 100 GiB of disk: room for a
    /// large build, not for one task to take the machine.
    fn default() -> Self {
        LimitCeilings {
            memory_bytes: 16 * ByteSize::GIB,
            pids: 8192,
            cpus: host_cpus(),
            disk_bytes: 100 * ByteSize::GIB,
        }
    }
}

/// The CPUs of this host.
fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

impl LimitCeilings {
    /// Lowers what `limits` asks for to the ceilings; one warning for each limit lowered.
    pub(crate) fn apply(&self, limits: &mut Limits) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut capped = |what: &str, asked: String, ceiling: String| {
            warnings.push(format!(
                "the repository asks for limits.{what} = {asked}, more than this installation allows: the task gets {ceiling} (the [limits] of nightshift's config.toml set the ceilings)"
            ));
        };
        if limits.memory.bytes() > self.memory_bytes {
            capped(
                "memory",
                limits.memory.to_string(),
                ByteSize::from_bytes(self.memory_bytes).to_string(),
            );
            limits.memory = ByteSize::from_bytes(self.memory_bytes);
        }
        if limits.disk.bytes() > self.disk_bytes {
            capped(
                "disk",
                limits.disk.to_string(),
                ByteSize::from_bytes(self.disk_bytes).to_string(),
            );
            limits.disk = ByteSize::from_bytes(self.disk_bytes);
        }
        match limits.pids {
            Some(pids) if pids > self.pids => {
                capped("pids", pids.to_string(), self.pids.to_string());
                limits.pids = Some(self.pids);
            }
            Some(_) => {}
            // Not asked for: the sandbox's usual 1024, never above the ceiling.
            None => limits.pids = Some(self.pids.min(DEFAULT_PIDS)),
        }
        match limits.cpus {
            Some(cpus) if cpus > self.cpus => {
                capped("cpus", cpus.to_string(), self.cpus.to_string());
                limits.cpus = Some(self.cpus);
            }
            Some(_) => {}
            None if self.cpus < host_cpus() => limits.cpus = Some(self.cpus),
            None => {}
        }
        warnings
    }
}

/// Lowers each check's `timeout` to `wall_time`, the longest any task may work (`[limits]
/// wall_time` of config.toml): a check asking for longer gets the ceiling, with a warning. A
/// check that names no timeout runs for `default` at most, and silently never past the ceiling
/// either.
pub(crate) fn cap_check_timeouts(
    checks: &mut [Check],
    wall_time: Option<Duration>,
    default: Duration,
) -> Vec<String> {
    let Some(ceiling) = wall_time else {
        return Vec::new();
    };
    let capped = HumanDuration::from_secs(ceiling.as_secs().max(1));
    let mut warnings = Vec::new();
    for check in checks {
        match check.timeout {
            Some(asked) if asked.as_duration() > capped.as_duration() => {
                warnings.push(format!(
                    "the repository asks for checks.{}.timeout = {asked}, longer than this installation lets a task work: the check gets {capped} (the [limits] wall_time of nightshift's config.toml sets the ceiling)",
                    check.name
                ));
                check.timeout = Some(capped);
            }
            Some(_) => {}
            None if default > capped.as_duration() => check.timeout = Some(capped),
            None => {}
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_timeout_is_capped_at_the_installations_wall_time() {
        let check = |name: &str, timeout: Option<u64>| Check {
            name: name.into(),
            run: "true".into(),
            timeout: timeout.map(HumanDuration::from_secs),
        };
        let mut checks = vec![
            check("slow", Some(48 * 3600)),
            check("quick", Some(60)),
            check("unsaid", None),
        ];
        let default = Duration::from_secs(15 * 60);
        let warnings = cap_check_timeouts(&mut checks, Some(Duration::from_secs(600)), default);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("checks.slow.timeout") && warnings[0].contains("wall_time"),
            "{warnings:?}"
        );
        let timeouts: Vec<_> = checks
            .iter()
            .map(|check| check.timeout.map(|t| t.as_duration().as_secs()))
            .collect();
        assert_eq!(timeouts, [Some(600), Some(60), Some(600)]);
        // A ceiling above the default leaves an unsaid timeout to the default; none, to all.
        let mut checks = vec![check("unsaid", None), check("slow", Some(48 * 3600))];
        assert!(
            cap_check_timeouts(&mut checks, Some(Duration::from_secs(3600)), default).len() == 1
        );
        assert_eq!(checks[0].timeout, None);
        let mut checks = vec![check("slow", Some(48 * 3600))];
        assert!(cap_check_timeouts(&mut checks, None, default).is_empty());
        assert_eq!(checks[0].timeout, Some(HumanDuration::from_secs(48 * 3600)));
    }

    #[test]
    fn what_a_repository_asks_for_is_capped_with_a_warning_each() {
        let ceilings = LimitCeilings {
            memory_bytes: 8 * ByteSize::GIB,
            pids: 2048,
            cpus: 2.0,
            disk_bytes: 20 * ByteSize::GIB,
        };
        let mut limits = Limits {
            memory: ByteSize::from_bytes(1024 * ByteSize::GIB),
            pids: Some(1_000_000),
            cpus: Some(64.0),
            disk: ByteSize::from_bytes(5 * ByteSize::GIB),
            ..Limits::default()
        };
        let warnings = ceilings.apply(&mut limits);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("limits.memory") && warnings[0].contains("8"),
            "{warnings:?}"
        );
        assert_eq!(limits.memory.bytes(), 8 * ByteSize::GIB);
        assert_eq!(limits.pids, Some(2048));
        assert_eq!(limits.cpus, Some(2.0));
        assert_eq!(
            limits.disk.bytes(),
            5 * ByteSize::GIB,
            "under the ceiling: kept"
        );
        let mut modest = Limits::default();
        assert!(LimitCeilings::default().apply(&mut modest).is_empty());
        assert_eq!(modest.memory, Limits::default().memory);
        // What a repository leaves unset gets the default or the ceiling, silently.
        let mut unset = Limits::default();
        assert!(ceilings.apply(&mut unset).is_empty());
        assert_eq!(
            (unset.pids, unset.cpus.is_some()),
            (
                Some(1024),
                2.0 < std::thread::available_parallelism().unwrap().get() as f64
            )
        );
    }
}
