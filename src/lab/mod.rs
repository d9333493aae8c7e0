//! The lab fleet: N hosts on this machine (network namespaces running sshd) and a registry, for
//! tests, examples and trying compose-fleet out.
