//! The default seccomp profile, compiled with `seccompiler`.
//!
//! Like Docker's default profile in effect, but written as a deny list (allow by default, `EPERM`
//! for the dangerous calls) because `seccompiler` has one match action per filter:
//! - always denied: keyrings (keyctl, add_key, request_key), userfaultfd, lookup_dcookie,
//!   nfsservctl, uselib, ustat, sysfs, _sysctl;
//! - denied unless the container holds the capability Docker's profile asks for: SYS_ADMIN for
//!   mount, umount2, pivot_root, setns, unshare, the new mount API, swapon/off, quotactl,
//!   fanotify_init, name_to_handle_at and `clone` with `CLONE_NEWUSER`; SYS_ADMIN or BPF for bpf;
//!   SYS_ADMIN or PERFMON for perf_event_open; SYS_BOOT for reboot and kexec; SYS_MODULE for
//!   modules; SYS_PACCT for acct; SYS_TIME for setting clocks; SYS_NICE for memory policies;
//!   SYSLOG for syslog; DAC_READ_SEARCH for open_by_handle_at; SYS_TTY_CONFIG for vhangup;
//!   SYS_RAWIO for iopl/ioperm;
//! - without SYS_ADMIN, `clone3` answers `ENOSYS` so that libcs fall back to `clone`, whose flags
//!   a filter can inspect (Docker does the same);
//! - `ptrace` is allowed: Docker allows it on kernels ≥ 4.8, where seccomp can no longer be
//!   bypassed through it, and it is what `strace`/debuggers in a container need. Without
//!   `CAP_SYS_PTRACE` it only reaches the container's own processes of the same user anyway.
//!
//! 32-bit `int 0x80` calls fail the architecture check (the process is killed); x32 calls (same
//! arch, bit 30 in the number) get the same denials plus their compat range. `privileged`
//! containers get no filter.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::caps;
use super::error::{Context, Result};

/// Syscalls denied with `EPERM` whatever the capabilities (Docker denies them too).
fn always_denied() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_nfsservctl,
        libc::SYS_lookup_dcookie,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
    ]);
    v
}

/// Syscalls Docker's profile allows only with a capability (any of `caps`).
fn cap_gated() -> Vec<(&'static [&'static str], Vec<i64>)> {
    let mut v: Vec<(&'static [&'static str], Vec<i64>)> = vec![
        (
            &["SYS_ADMIN"],
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
                libc::SYS_swapon,
                libc::SYS_swapoff,
                libc::SYS_quotactl,
                libc::SYS_fanotify_init,
                libc::SYS_name_to_handle_at,
            ],
        ),
        (&["SYS_ADMIN", "BPF"], vec![libc::SYS_bpf]),
        (&["SYS_ADMIN", "PERFMON"], vec![libc::SYS_perf_event_open]),
        (
            &["SYS_BOOT"],
            vec![
                libc::SYS_reboot,
                libc::SYS_kexec_load,
                libc::SYS_kexec_file_load,
            ],
        ),
        (
            &["SYS_MODULE"],
            vec![
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_delete_module,
            ],
        ),
        (&["SYS_PACCT"], vec![libc::SYS_acct]),
        (
            &["SYS_TIME"],
            vec![
                libc::SYS_settimeofday,
                libc::SYS_clock_settime,
                libc::SYS_clock_adjtime,
                libc::SYS_adjtimex,
            ],
        ),
        (
            &["SYS_NICE"],
            vec![
                libc::SYS_mbind,
                libc::SYS_set_mempolicy,
                libc::SYS_get_mempolicy,
                libc::SYS_move_pages,
            ],
        ),
        (&["SYSLOG"], vec![libc::SYS_syslog]),
        (&["DAC_READ_SEARCH"], vec![libc::SYS_open_by_handle_at]),
        (&["SYS_TTY_CONFIG"], vec![libc::SYS_vhangup]),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push((&["SYS_RAWIO"], vec![libc::SYS_iopl, libc::SYS_ioperm]));
    v
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
    let has = |name: &str| caps::bit(name).map(|b| capabilities & (1 << b) != 0) == Some(true);
    let sys_admin = has("SYS_ADMIN");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in always_denied() {
        rules.insert(nr, vec![]);
    }
    for (needs, syscalls) in cap_gated() {
        if !needs.iter().any(|c| has(c)) {
            for nr in syscalls {
                rules.insert(nr, vec![]);
            }
        }
    }
    if !sys_admin {
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
    // x32 syscalls share the x86_64 audit arch with bit 30 set in the number: deny the same
    // calls there, and the x32-only compat range (512-547) outright.
    #[cfg(target_arch = "x86_64")]
    {
        const X32: i64 = 0x4000_0000;
        let native: Vec<(i64, Vec<SeccompRule>)> =
            rules.iter().map(|(n, r)| (*n | X32, r.clone())).collect();
        rules.extend(native);
        for nr in 512..=547 {
            rules.insert(nr | X32, vec![]);
        }
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
        let syslog =
            default_filters(caps::mask(caps::DOCKER_DEFAULT) | 1 << caps::bit("SYSLOG").unwrap())
                .unwrap();
        assert!(syslog[0].len() < plain[0].len());
    }
}
