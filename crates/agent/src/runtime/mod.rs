//! The container runtime: namespaces, cgroups, overlay rootfs, capabilities, seccomp.
