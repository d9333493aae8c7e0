//! The default seccomp profile, compiled with `seccompiler`.
//!
//! Like Docker's default profile in effect, but written as a deny list (allow by default, `EPERM`
//! for the dangerous calls) because `seccompiler` has one match action per filter:
//! - always denied: kernel modules, kexec, reboot, swap, keyrings, bpf, perf_event_open,
//!   userfaultfd, open_by_handle_at, clock/time setting, acct, syslog, quotactl, lookup_dcookie,
//!   `personality` changes, ...;
//! - denied unless the container has `CAP_SYS_ADMIN` (Docker gates them the same way): mount,
//!   umount2, pivot_root, setns, unshare, fsopen & co, and any `clone`/`unshare` asking for a new
//!   user namespace — plus `clone3` answers `ENOSYS` so that libcs fall back to `clone`, whose flags
//!   a filter can inspect (Docker does the same);
//! - `ptrace` is allowed: Docker allows it on kernels ≥ 4.8, where seccomp can no longer be
//!   bypassed through it, and it is what `strace`/debuggers in a container need. Without
//!   `CAP_SYS_PTRACE` it only reaches the container's own processes of the same user anyway.
//!
//! Not covered: 32-bit (`int 0x80`/x32) entry points are killed by the architecture check rather
//! than filtered like Docker does. `privileged` containers get no filter.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::caps;
use super::error::{Context, Result};

/// Syscalls always denied with `EPERM`.
fn always_denied() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_clock_settime,
        libc::SYS_settimeofday,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_acct,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_lookup_dcookie,
        libc::SYS_move_pages,
        libc::SYS_mbind,
        libc::SYS_set_mempolicy,
        libc::SYS_get_mempolicy,
        libc::SYS_name_to_handle_at,
        libc::SYS_nfsservctl,
        libc::SYS_vhangup,
        libc::SYS_fanotify_init,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ]);
    v.retain(|n| *n >= 0);
    v
}

/// Syscalls that need `CAP_SYS_ADMIN` in Docker's profile.
fn sys_admin_only() -> Vec<i64> {
    vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_mount_setattr,
    ]
}

fn arch() -> Result<TargetArch> {
    std::env::consts::ARCH.try_into().with_context(|| {
        format!(
            "seccomp: unsupported architecture {}",
            std::env::consts::ARCH
        )
    })
}

/// The filters to install for a container with capability mask `capabilities`.
pub fn default_filters(capabilities: u64) -> Result<Vec<BpfProgram>> {
    let sys_admin = caps::bit("SYS_ADMIN").map(|b| capabilities & (1 << b) != 0) == Some(true);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in always_denied() {
        rules.insert(nr, vec![]);
    }
    if !sys_admin {
        for nr in sys_admin_only() {
            rules.insert(nr, vec![]);
        }
        // A new user namespace through clone(2): arg 0 carries the flags.
        let new_user = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
            libc::CLONE_NEWUSER as u64,
        )
        .context("seccomp: clone condition")?;
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![new_user]).context("seccomp: clone rule")?],
        );
    }
    let arch = arch()?;
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .context("seccomp: building the filter")?;
    let mut out: Vec<BpfProgram> = vec![eperm.try_into().context("seccomp: compiling")?];
    if !sys_admin {
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .context("seccomp: building the clone3 filter")?;
        out.push(clone3.try_into().context("seccomp: compiling")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filters_compile_and_sys_admin_relaxes_them() {
        let plain = default_filters(caps::mask(caps::DOCKER_DEFAULT)).unwrap();
        assert_eq!(plain.len(), 2);
        let admin = default_filters(
            caps::mask(caps::DOCKER_DEFAULT) | 1 << caps::bit("SYS_ADMIN").unwrap(),
        )
        .unwrap();
        assert_eq!(admin.len(), 1);
        assert!(admin[0].len() < plain[0].len());
    }
}
