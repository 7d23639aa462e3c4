//! The last layer, applied by the init to itself once the sandbox is built, and so inherited by
//! every command: resource limits, `no_new_privs`, Landlock and a seccomp filter.
//!
//! Namespaces decide what a command can see; this decides what it can do with what it sees.
//! Landlock is best effort by ABI (reported, never fatal on an old kernel); the seccomp filter is
//! mandatory, because without it the namespaces can be undone from inside.

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::wire::RlimitSpec;

/// Paths where commands may write. Everything else visible is read-only.
const WRITABLE_DIRS: &[&str] = &["/workspace", "/tmp", "/dev/shm", "/dev/pts"];
/// Device files commands may write to.
const WRITABLE_FILES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
];

/// Applies everything, returning one line per layer saying what was enforced. `seccomp` is
/// what [`compiled_filters`] gave the host.
pub fn apply(
    rlimits: &RlimitSpec,
    seccomp: &[Vec<u64>],
    writable: &[String],
) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    apply_rlimits(rlimits)?;
    report.push(format!("rlimits: {}", describe_rlimits(rlimits)));
    // SAFETY: prctl with integer arguments only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    report.push("no_new_privs: set".into());
    report.push(apply_landlock(writable)?);
    apply_seccomp(seccomp)?;
    report.push(format!(
        "seccomp: {} syscalls denied, socket families restricted",
        denied().len()
    ));
    Ok(report)
}

fn describe_rlimits(spec: &RlimitSpec) -> String {
    let show = |value: Option<u64>| value.map_or("inherited".to_string(), |v| v.to_string());
    format!(
        "core=0 nofile={} fsize={} nproc={} data={}",
        show(spec.nofile),
        show(spec.fsize),
        show(spec.nproc),
        show(spec.data)
    )
}

fn set_rlimit(resource: nix::sys::resource::Resource, value: u64) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit};
    // Never raise: a hard limit above the current one would fail, and the host's is a ceiling.
    let (_, hard) = getrlimit(resource).map_err(|e| format!("getrlimit {resource:?}: {e}"))?;
    let value = value.min(hard);
    setrlimit(resource, value, value).map_err(|e| format!("setrlimit {resource:?}: {e}"))
}

fn apply_rlimits(spec: &RlimitSpec) -> Result<(), String> {
    use nix::sys::resource::Resource;
    set_rlimit(Resource::RLIMIT_CORE, 0)?;
    if let Some(value) = spec.nofile {
        set_rlimit(Resource::RLIMIT_NOFILE, value)?;
    }
    if let Some(value) = spec.fsize {
        set_rlimit(Resource::RLIMIT_FSIZE, value)?;
    }
    if let Some(value) = spec.nproc {
        set_rlimit(Resource::RLIMIT_NPROC, value)?;
    }
    if let Some(value) = spec.data {
        set_rlimit(Resource::RLIMIT_DATA, value)?;
    }
    Ok(())
}

fn apply_landlock(writable: &[String]) -> Result<String, String> {
    let abi = ABI::V6;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let file = AccessFs::from_file(abi);
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], read)))
        .and_then(|r| r.add_rules(path_beneath_rules(WRITABLE_DIRS, all)))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, all)))
        .and_then(|r| r.add_rules(path_beneath_rules(WRITABLE_FILES, file)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    let enforced = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel ABI)",
        RulesetStatus::NotEnforced => "not enforced (kernel without Landlock)",
    };
    let mut places: Vec<&str> = vec!["/workspace"];
    places.extend(writable.iter().map(String::as_str));
    places.extend(["/tmp", "/dev/shm"]);
    Ok(format!(
        "landlock: {enforced}; writes only under {}",
        places.join(", ")
    ))
}

/// Syscalls that fail with EPERM whatever their arguments.
fn denied() -> Vec<i64> {
    let mut list = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_clock_settime,
        libc::SYS_settimeofday,
        libc::SYS_adjtimex,
        libc::SYS_clock_adjtime,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_chroot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_userfaultfd,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_quotactl,
        libc::SYS_acct,
        libc::SYS_pidfd_getfd,
        libc::SYS_personality,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    list
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// The filter that answers EPERM; one that answers EAFNOSUPPORT for the socket families that
/// are not allowed, as a kernel without them would (so that programs that probe for one, such
/// as `useradd` for the audit netlink socket, carry on without it); and one that answers ENOSYS
/// for clone3 (whose flags a filter cannot read), so that libc falls back to clone, whose flags
/// we check.
fn build_filters() -> Result<Vec<BpfProgram>, String> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    // socket(): only unix, IPv4 and IPv6.
    let socket_rules = [(
        libc::SYS_socket,
        vec![rule(vec![
            cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?,
            cond(0, SeccompCmpOp::Ne, libc::AF_INET as u64)?,
            cond(0, SeccompCmpOp::Ne, libc::AF_INET6 as u64)?,
        ])?],
    )];
    // clone(): no new namespaces; any namespace flag set denies.
    let mut clone_rules = Vec::new();
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ] {
        let flag = flag as u64;
        clone_rules.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // ioctl(): no pushing keystrokes into a terminal.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCLINUX)?])?,
        ],
    );
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let eafnosupport = SeccompFilter::new(
        socket_rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut programs = Vec::new();
    for filter in [eperm, eafnosupport, enosys] {
        programs.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);
    }
    Ok(programs)
}

/// The filters, compiled once per host process (compiling takes a few hundred microseconds,
/// which every session start would pay in its helper), packed for the helper's configuration:
/// one `u64` per instruction (code, jt, jf, k).
pub fn compiled_filters() -> Result<Vec<Vec<u64>>, String> {
    static COMPILED: std::sync::OnceLock<Result<Vec<Vec<u64>>, String>> =
        std::sync::OnceLock::new();
    COMPILED
        .get_or_init(|| {
            let programs = build_filters()?;
            Ok(programs
                .iter()
                .map(|program| program.iter().map(pack).collect())
                .collect())
        })
        .clone()
}

fn pack(insn: &sock_filter) -> u64 {
    u64::from(insn.code)
        | (u64::from(insn.jt) << 16)
        | (u64::from(insn.jf) << 24)
        | (u64::from(insn.k) << 32)
}

fn unpack(word: u64) -> sock_filter {
    sock_filter {
        code: word as u16,
        jt: (word >> 16) as u8,
        jf: (word >> 24) as u8,
        k: (word >> 32) as u32,
    }
}

fn apply_seccomp(programs: &[Vec<u64>]) -> Result<(), String> {
    // The filter is mandatory: an empty or short list is a broken host, not a weaker sandbox.
    if programs.len() != 3 || programs.iter().any(Vec::is_empty) {
        return Err("seccomp: the host sent no filter".into());
    }
    for program in programs {
        let program: BpfProgram = program.iter().copied().map(unpack).collect();
        seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let programs = build_filters().unwrap();
        assert_eq!(programs.len(), 3);
        assert!(programs[0].len() > denied().len());
    }

    #[test]
    fn packed_filters_unpack_to_the_same_program() {
        let programs = build_filters().unwrap();
        let packed = compiled_filters().unwrap();
        for (program, packed) in programs.iter().zip(&packed) {
            let unpacked: BpfProgram = packed.iter().copied().map(unpack).collect();
            assert_eq!(&unpacked, program);
        }
    }
}
