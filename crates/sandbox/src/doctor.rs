//! `nightshift doctor`: which isolation features this host offers, measured rather than
//! guessed, each missing one with the fix.

use std::ffi::CString;
use std::fmt;

use serde::Serialize;

use crate::linux::{CgroupVersion, probe_cgroups};

/// One isolation feature of the host.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier: `user_namespaces`, `landlock`, `seccomp`, `cgroups`, `overlayfs`.
    pub name: &'static str,
    pub available: bool,
    /// What was found (an ABI, a version, controllers).
    pub detail: String,
    /// What to do when it is missing, and what the sandbox does without it.
    pub fix: Option<String>,
}

/// Everything [`doctor`] found.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub kernel: String,
    pub features: Vec<Feature>,
}

impl DoctorReport {
    /// Whether the namespaced sandbox can run at all (user namespaces and overlayfs are
    /// required; the rest degrade with a warning).
    pub fn can_isolate(&self) -> bool {
        self.features
            .iter()
            .filter(|f| matches!(f.name, "user_namespaces" | "overlayfs" | "seccomp"))
            .all(|f| f.available)
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {}", self.kernel)?;
        for feature in &self.features {
            let mark = if feature.available {
                "ok     "
            } else {
                "MISSING"
            };
            writeln!(f, "{mark} {:<16} {}", feature.name, feature.detail)?;
            if let Some(fix) = &feature.fix {
                writeln!(f, "        fix: {fix}")?;
            }
        }
        let verdict = if self.can_isolate() {
            "tasks can run in the namespaced sandbox"
        } else {
            "tasks cannot be isolated on this host until the missing features are fixed"
        };
        writeln!(f, "{verdict}")
    }
}

/// Probes the host.
pub fn doctor() -> DoctorReport {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let userns = probe_in_child(false);
    let overlay = if userns { probe_in_child(true) } else { false };
    let mut features = vec![
        Feature {
            name: "user_namespaces",
            available: userns,
            detail: if userns {
                "unprivileged user namespaces work".into()
            } else {
                "cannot create a user namespace".into()
            },
            fix: (!userns).then(|| {
                "enable them: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian), \
                 `sysctl -w user.max_user_namespaces=15000`, or on Ubuntu 24.04+ \
                 `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
                    .into()
            }),
        },
        Feature {
            name: "overlayfs",
            available: overlay,
            detail: if overlay {
                "overlayfs mounts inside a user namespace".into()
            } else {
                "overlayfs cannot be mounted in a user namespace".into()
            },
            fix: (!overlay).then(|| {
                "use Linux 5.11 or newer with CONFIG_OVERLAY_FS (`modprobe overlay`)".into()
            }),
        },
    ];
    let abi = landlock_abi();
    features.push(Feature {
        name: "landlock",
        available: abi > 0,
        detail: if abi > 0 {
            format!("ABI {abi}")
        } else {
            "not available".into()
        },
        fix: (abi <= 0).then(|| {
            "boot with `lsm=landlock,...` (CONFIG_SECURITY_LANDLOCK, Linux 5.13+); without it \
             file writes are confined only by the read-only mounts"
                .into()
        }),
    });
    let seccomp = std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists();
    features.push(Feature {
        name: "seccomp",
        available: seccomp,
        detail: if seccomp {
            "seccomp filters available".into()
        } else {
            "no seccomp filter support".into()
        },
        fix: (!seccomp).then(|| "use a kernel built with CONFIG_SECCOMP_FILTER".into()),
    });
    let (version, controllers) = probe_cgroups();
    let wanted = ["memory", "pids", "cpu"];
    let complete = wanted.iter().all(|w| controllers.iter().any(|c| c == w));
    features.push(Feature {
        name: "cgroups",
        available: complete,
        detail: match version {
            Some(CgroupVersion::V1) => {
                format!("v1, usable controllers: {}", controllers.join(", "))
            }
            Some(CgroupVersion::V2) => {
                format!("v2, delegated controllers: {}", controllers.join(", "))
            }
            None => "no writable cgroup with memory, pids or cpu controllers".into(),
        },
        fix: (!complete).then(|| {
            "run nightshift as root, or as a systemd service with `Delegate=yes` (or \
             `systemd-run --user -p Delegate=yes`); without cgroups limits fall back to rlimits"
                .into()
        }),
    });
    DoctorReport { kernel, features }
}

fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a null attribute pointer with size 0 and the VERSION flag only queries the ABI.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// Forks a child that creates a user and mount namespace (and, with `overlay`, mounts an
/// overlay in it). Everything the child needs is prepared before the fork, so it only makes
/// raw system calls: this process may have other threads.
fn probe_in_child(overlay: bool) -> bool {
    let Ok(dir) = std::env::temp_dir().canonicalize() else {
        return false;
    };
    let base = dir.join(format!("nightshift-doctor-{}", std::process::id()));
    let parts = ["lower", "upper", "work", "merged"].map(|p| base.join(p));
    if overlay && parts.iter().any(|p| std::fs::create_dir_all(p).is_err()) {
        let _ = std::fs::remove_dir_all(&base);
        return false;
    }
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let files = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    let files: Vec<(CString, String)> = files
        .into_iter()
        .filter_map(|(path, text)| CString::new(path).ok().map(|p| (p, text)))
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        parts[0].display(),
        parts[1].display(),
        parts[2].display()
    );
    let (Ok(data), Ok(target), Ok(fstype)) = (
        CString::new(data),
        CString::new(parts[3].display().to_string()),
        CString::new("overlay"),
    ) else {
        return false;
    };
    // SAFETY: the child only makes raw system calls on memory prepared before the fork, then
    // _exits; the parent waits for it.
    let ok = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                libc::_exit(1);
            }
            for (path, text) in &files {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, text.as_ptr().cast(), text.len()) < 0 {
                    libc::_exit(2);
                }
                libc::close(fd);
            }
            if overlay
                && libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                ) != 0
            {
                libc::_exit(3);
            }
            libc::_exit(0);
        }
        let mut status = 0;
        pid > 0
            && libc::waitpid(pid, &mut status, 0) == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0
    };
    if overlay {
        let _ = std::fs::remove_dir_all(&base);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_renders_for_humans_and_machines() {
        let report = doctor();
        let text = report.to_string();
        assert!(text.contains("landlock"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["features"].as_array().unwrap().len(), 5);
    }
}
