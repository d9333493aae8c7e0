//! The lab's network: the bridge in the root namespace, one network namespace per host joined to it
//! by a veth pair, and the `unreachable` routes that keep every lab packet on this machine.
//!
//! Uses `ip` (iproute2) rather than hand-written netlink messages.

use super::sys::{run, run_quiet};
use super::{Error, BRIDGE, BRIDGE_ADDR, FENCED_CIDRS, LAB_PREFIX_LEN};

/// Whether a link with this name exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The network namespaces `ip netns` knows.
pub fn netns_list() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// The bridge with the lab's gateway address, and the fencing routes. Idempotent.
pub fn ensure_bridge() -> Result<(), Error> {
    if !link_exists(BRIDGE) {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let cidr = format!("{BRIDGE_ADDR}/{LAB_PREFIX_LEN}");
    let addrs = run("ip", &["-o", "addr", "show", "dev", BRIDGE])?;
    if !addrs.contains(&format!(" {cidr} ")) {
        run("ip", &["addr", "add", &cidr, "dev", BRIDGE])?;
    }
    run("ip", &["link", "set", BRIDGE, "up"])?;
    ensure_fences()
}

/// `unreachable` routes for the lab and pod ranges: with the bridge gone, a lab packet is refused
/// here instead of following the default route off the machine.
pub fn ensure_fences() -> Result<(), Error> {
    for cidr in FENCED_CIDRS {
        run("ip", &["route", "replace", "unreachable", cidr])?;
    }
    Ok(())
}

/// The root-side veth of a host (the peer is `eth0` inside the host).
pub fn veth_name(index: usize) -> String {
    format!("{BRIDGE}-{index}")
}

/// A host's namespace, `eth0` with its address, `lo` up, no route beyond the lab subnet.
/// Idempotent: repairs whatever part is missing.
pub fn ensure_host(name: &str, index: usize, address: &str) -> Result<(), Error> {
    if !netns_exists(name) {
        run("ip", &["netns", "add", name])?;
    }
    let veth = veth_name(index);
    let has_eth0 = run_quiet("ip", &["-n", name, "link", "show", "eth0"]);
    if !link_exists(&veth) || !has_eth0 {
        // A half-made pair (one end lost) cannot be repaired in place.
        run_quiet("ip", &["link", "del", &veth]);
        run_quiet("ip", &["-n", name, "link", "del", "eth0"]);
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", name,
            ],
        )?;
    }
    run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
    let cidr = format!("{address}/{LAB_PREFIX_LEN}");
    let addrs = run("ip", &["-n", name, "-o", "addr", "show", "dev", "eth0"])?;
    if !addrs.contains(&format!(" {cidr} ")) {
        run("ip", &["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
    }
    run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    run("ip", &["-n", name, "link", "set", "eth0", "up"])?;
    Ok(())
}

/// Removes a host's namespace and its veth pair (processes must be gone first).
pub fn remove_host(name: &str, index: usize) {
    run_quiet("ip", &["link", "del", &veth_name(index)]);
    if netns_exists(name) {
        run_quiet("ip", &["netns", "del", name]);
    }
}

/// Removes the bridge and the fencing routes.
pub fn remove_bridge() {
    if link_exists(BRIDGE) {
        run_quiet("ip", &["link", "del", BRIDGE]);
    }
    for cidr in FENCED_CIDRS {
        run_quiet("ip", &["route", "del", "unreachable", cidr]);
    }
}

/// Pids of every process in a network namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", name])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Takes a host off the network (its `eth0` down) or puts it back.
pub fn set_host_link(name: &str, up: bool) -> Result<(), Error> {
    run(
        "ip",
        &[
            "-n",
            name,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ],
    )?;
    Ok(())
}
