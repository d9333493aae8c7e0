//! Linux capabilities by name, and Docker's default set with compose's `cap_add`/`cap_drop`.

use super::error::{Error, Result};

/// Capability names by bit number (`capability.h`), without the `CAP_` prefix.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's (moby `oci/caps/defaults.go`) default set: what `CapEff` shows for root in a
/// `docker run` container, `00000000a80425fb`.
pub const DOCKER_DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability's bit, from `NET_ADMIN`, `CAP_NET_ADMIN` or `net_admin`.
pub fn bit(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// A set as a mask, from names.
pub fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| bit(n))
        .fold(0, |m, b| m | (1 << b))
}

/// Docker's semantics: start from the default set, add `cap_add`, remove `cap_drop`; `ALL` in
/// either list means every capability. Unknown names are the user's error.
pub fn effective_set(cap_add: &[String], cap_drop: &[String]) -> Result<u64> {
    let all = (1u64 << NAMES.len()) - 1;
    let parse = |list: &[String], field: &str| -> Result<u64> {
        let mut m = 0;
        for name in list {
            if name.eq_ignore_ascii_case("ALL") {
                m = all;
                continue;
            }
            match bit(name) {
                Some(b) => m |= 1 << b,
                None => {
                    return Err(Error::user(format!(
                        "unknown capability {name:?} in {field}; use names like NET_ADMIN or CAP_NET_ADMIN"
                    )))
                }
            }
        }
        Ok(m)
    };
    let add = parse(cap_add, "cap_add")?;
    let drop = parse(cap_drop, "cap_drop")?;
    // As in moby: drops apply to the defaults, adds win over drops of the same capability
    // except when `ALL` is dropped and the capability is added explicitly (then it is kept).
    Ok((mask(DOCKER_DEFAULT) & !drop) | add)
}

/// Names of the capabilities in a mask, for messages and tests.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_set_is_the_known_mask() {
        assert_eq!(mask(DOCKER_DEFAULT), 0xa80425fb);
    }

    #[test]
    fn cap_add_and_drop_apply_over_the_default_set() {
        let set = effective_set(&["net_admin".into()], &["CAP_MKNOD".into()]).unwrap();
        assert!(set & (1 << bit("NET_ADMIN").unwrap()) != 0);
        assert!(set & (1 << bit("MKNOD").unwrap()) == 0);
        let only_chown = effective_set(&["CHOWN".into()], &["ALL".into()]).unwrap();
        assert_eq!(names(only_chown), vec!["CHOWN"]);
    }

    #[test]
    fn unknown_capability_is_a_user_error() {
        let err = effective_set(&["NET_ADMINN".into()], &[]).unwrap_err();
        assert!(err.user);
        assert!(err.message.contains("NET_ADMINN"), "{err}");
    }
}
