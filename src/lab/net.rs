//! The lab's network: per site a bridge in the root namespace with the site's gateway address;
//! per host a network namespace joined to its site's bridge by a veth pair; and the `unreachable`
//! routes, shared by every lab, that keep every lab packet on this machine.
//!
//! Sites are separate L2 segments: a host reaches a host of another site only through the root
//! namespace, which forwards between the lab's own bridges (per-interface forwarding, so the
//! machine's `ip_forward` stays as it was), and each host routes the other sites' /24s via its
//! gateway. Hosts have no other routes.
//!
//! Uses `ip` (iproute2) rather than hand-written netlink messages.

use super::host::Host;
use super::index::Record;
use super::sys::{run, run_quiet};
use super::{Error, FENCED_CIDRS};

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

fn dotted([a, b, c, d]: [u8; 4]) -> String {
    format!("{a}.{b}.{c}.{d}")
}

/// Every site's bridge with its gateway address, forwarding between them when there are several,
/// and the fencing routes. Idempotent.
pub fn ensure_sites(lab: &Record) -> Result<(), Error> {
    for site in 0..lab.sites {
        let bridge = lab.bridge(site);
        if !link_exists(&bridge) {
            run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        }
        let cidr = format!("{}/24", dotted(lab.gateway(site)));
        let addrs = run("ip", &["-o", "addr", "show", "dev", &bridge])?;
        if !addrs.contains(&format!(" {cidr} ")) {
            run("ip", &["addr", "add", &cidr, "dev", &bridge])?;
        }
        run("ip", &["link", "set", &bridge, "up"])?;
        if lab.sites > 1 {
            // Only what arrives on this lab's bridges is forwarded; the hosts' routes name only
            // the lab's own sites, so no lab reaches another.
            let knob = format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding");
            std::fs::write(&knob, "1")
                .map_err(|e| Error::Env(format!("cannot enable forwarding ({knob}): {e}")))?;
        }
    }
    ensure_fences()
}

/// `unreachable` routes for the lab and pod ranges: a lab packet with no lab bridge to go to is
/// refused here instead of following the default route off the machine. Shared by all labs.
pub fn ensure_fences() -> Result<(), Error> {
    for cidr in FENCED_CIDRS {
        run("ip", &["route", "replace", "unreachable", cidr])?;
    }
    Ok(())
}

/// Removes the fencing routes (when the last lab goes).
pub fn remove_fences() {
    for cidr in FENCED_CIDRS {
        run_quiet("ip", &["route", "del", "unreachable", cidr]);
    }
}

/// A host's namespace, `eth0` with its address, `lo` up, routes to the lab's other sites via its
/// gateway and nothing beyond. Idempotent: repairs whatever part is missing.
pub fn ensure_host(lab: &Record, host: &Host) -> Result<(), Error> {
    let name = host.name.as_str();
    if !netns_exists(name) {
        run("ip", &["netns", "add", name])?;
    }
    let veth = lab.veth(host.index);
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
    let site = lab.site_of(host.index);
    run(
        "ip",
        &["link", "set", &veth, "master", &lab.bridge(site), "up"],
    )?;
    let cidr = format!("{}/24", host.address);
    let addrs = run("ip", &["-n", name, "-o", "addr", "show", "dev", "eth0"])?;
    if !addrs.contains(&format!(" {cidr} ")) {
        run("ip", &["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
    }
    run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    run("ip", &["-n", name, "link", "set", "eth0", "up"])?;
    let gateway = dotted(lab.gateway(site));
    for other in (0..lab.sites).filter(|s| *s != site) {
        run(
            "ip",
            &[
                "-n",
                name,
                "route",
                "replace",
                &lab.subnet(other),
                "via",
                &gateway,
                "dev",
                "eth0",
            ],
        )?;
    }
    Ok(())
}

/// Removes a host's namespace and its veth pair (processes must be gone first).
pub fn remove_host(name: &str, veth: &str) {
    run_quiet("ip", &["link", "del", veth]);
    if netns_exists(name) {
        run_quiet("ip", &["netns", "del", name]);
    }
}

/// Removes every site's bridge (the veths on it go with their namespaces).
pub fn remove_sites(lab: &Record) {
    for site in 0..lab.sites {
        let bridge = lab.bridge(site);
        if link_exists(&bridge) {
            run_quiet("ip", &["link", "del", &bridge]);
        }
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

/// Takes a host off the network (its `eth0` down) or puts it back. Routes via the gateway go
/// with the link: [`ensure_host`] puts them back.
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
