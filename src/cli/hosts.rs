//! `compose-fleet hosts`: every host of the inventory, reached in parallel over SSH, with the facts
//! its agent reports (the agent is pushed where missing). Exit 1 if any host is unreachable.
//!
//! `hosts --pin` also records the host key each unpinned host presents into the inventory
//! (`host_key:` in compose-fleet's own format; for an Ansible inventory it prints the
//! `compose_fleet_host_key` lines to put in `host_vars/`). Pinned hosts are verified, never
//! overwritten: a host whose key differs from its pin fails the command and nothing is written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::project;
use super::{CmdResult, Failure, GlobalArgs};
use crate::human::format_bytes;
use crate::inventory::{self, Fleet};
use crate::output;
use crate::ssh::{self, HostReport, SshError, SshTarget, Totals};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Trust and record host keys seen for the first time (a changed key is still refused)
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// The agent binary to push (default: next to this executable, else the embedded one)
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Seconds to wait for each host's SSH connection
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds to wait for each remote command
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub command_timeout: u64,
    /// SSH handshakes in flight at once (sshd drops beyond ~10 by default)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        env = "COMPOSE_FLEET_MAX_HANDSHAKES"
    )]
    pub max_handshakes: usize,
    /// Record the host key each host without one presents into the inventory (`host_key:`);
    /// run it once from a trusted machine. Pinned keys are checked, never overwritten
    #[arg(long, conflicts_with = "accept_new_host_keys")]
    pub pin: bool,
}

/// One row of `hosts --format json`; the field set is a contract.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    address: String,
    reachable: bool,
    error: Option<String>,
    agent_version: Option<String>,
    arch: Option<String>,
    cpus: Option<u32>,
    memory: Option<u64>,
    kernel: Option<String>,
    cgroup: Option<String>,
    rtt_ms: Option<f64>,
    /// The host's pod subnet, once an `up` gave it one.
    pod_subnet: Option<String>,
    /// `on` when pod-to-pod packets take the agent's eBPF fast path, `off` when the host's
    /// kernel refused it; `null` without pods.
    fast_path: Option<String>,
    /// How this host reaches each other host's pods, and the health of that link.
    peers: Vec<PeerRow>,
}

#[derive(Debug, Serialize)]
struct PeerRow {
    host: String,
    /// `host-gw` or `wireguard`.
    mode: &'static str,
    /// `ok`, `down` (no WireGuard handshake for 180 s) or `idle` (no pods here: no device).
    health: &'static str,
    handshake_age_secs: Option<u64>,
    /// For `wireguard` peers: `kernel` or `userspace`, the WireGuard this host runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'static str>,
}

/// `h2 wireguard ok (12s, userspace)`, one per peer.
fn peers_cell(peers: &[PeerRow]) -> String {
    if peers.is_empty() {
        return "-".into();
    }
    let each: Vec<String> = peers
        .iter()
        .map(|p| match (p.mode, p.handshake_age_secs) {
            ("wireguard", Some(age)) => match p.device {
                Some(d) => format!("{} wireguard {} ({age}s, {d})", p.host, p.health),
                None => format!("{} wireguard {} ({age}s)", p.host, p.health),
            },
            ("wireguard", None) => match p.device {
                Some(d) => format!("{} wireguard {} ({d})", p.host, p.health),
                None => format!("{} wireguard {}", p.host, p.health),
            },
            _ => format!("{} {} {}", p.host, p.mode, p.health),
        })
        .collect();
    each.join(", ")
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let fleet = project::resolve(global)?.fleet()?;
    let targets = SshTarget::all(&fleet);
    let options = ssh::Options {
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        command_timeout: Duration::from_secs(args.command_timeout.max(1)),
        max_handshakes: args.max_handshakes.max(1),
        accept_new_host_keys: args.accept_new_host_keys,
        agent_binary: args.agent_binary.clone(),
        ..ssh::Options::default()
    };
    let to_failure = |e: SshError| match e.class {
        ssh::ErrorClass::Local => Failure::Internal(e.to_string()),
        ssh::ErrorClass::Input => Failure::User(match &e.hint {
            Some(hint) => format!("{}\nhint: {hint}", e.message),
            None => e.message.clone(),
        }),
        _ => Failure::User(e.to_string()),
    };
    let (reports, seen) = if args.pin {
        let rt = ssh::runtime().map_err(to_failure)?;
        rt.block_on(ssh::facts_and_keys(&targets, &options))
            .map_err(to_failure)?
    } else {
        (
            ssh::facts_blocking(&fleet, &options).map_err(to_failure)?,
            BTreeMap::new(),
        )
    };

    let rows = rows(&targets, &reports);
    match args.format {
        Format::Json => output::data(
            &serde_json::to_string_pretty(&rows)
                .map_err(|e| Failure::Internal(format!("serializing hosts: {e}")))?,
        ),
        Format::Text => output::data(&table(&rows)),
    }
    for result in reports.values() {
        if let Err(e) = result {
            output::error(&e.to_string());
        }
    }
    let totals = Totals::of(&reports);
    output::status(&totals.line());
    if args.pin {
        let pinned = pin(&fleet, &reports, &seen)?;
        if !pinned {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(if totals.unreachable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn rows(
    targets: &[SshTarget],
    reports: &BTreeMap<String, Result<HostReport, SshError>>,
) -> Vec<Row> {
    targets
        .iter()
        .map(|t| {
            let mut row = Row {
                name: t.name.clone(),
                address: t.address.clone(),
                reachable: false,
                error: None,
                agent_version: None,
                arch: None,
                cpus: None,
                memory: None,
                kernel: None,
                cgroup: None,
                rtt_ms: None,
                pod_subnet: None,
                fast_path: None,
                peers: Vec::new(),
            };
            match reports.get(&t.name) {
                Some(Ok(r)) => {
                    row.reachable = true;
                    row.agent_version = Some(r.facts.agent_version.clone());
                    row.arch = Some(r.facts.arch.clone());
                    row.cpus = Some(r.facts.cpus);
                    row.memory = Some(r.facts.memory);
                    row.kernel = Some(r.facts.kernel.clone());
                    row.cgroup = Some(r.facts.cgroup.clone());
                    row.rtt_ms = Some((r.rtt.as_secs_f64() * 10_000.0).round() / 10.0);
                    row.pod_subnet = r.facts.pod_subnet.map(|s| s.to_string());
                    row.fast_path = r.facts.fast_path.clone();
                    if let Some(mesh) = &r.facts.mesh {
                        row.peers = mesh
                            .peers
                            .iter()
                            .map(|p| PeerRow {
                                host: p.host.clone(),
                                mode: p.link.as_str(),
                                health: p.health(),
                                handshake_age_secs: p.handshake_age_secs,
                                device: (p.link == crate::proto::mesh::Link::Wireguard)
                                    .then(|| mesh.device.map(|d| d.as_str()))
                                    .flatten(),
                            })
                            .collect();
                    }
                }
                Some(Err(e)) => row.error = Some(e.reason()),
                None => row.error = Some("not contacted".into()),
            }
            row
        })
        .collect()
}

fn table(rows: &[Row]) -> String {
    let header = [
        "HOST",
        "ADDRESS",
        "STATUS",
        "AGENT",
        "ARCH",
        "CPUS",
        "MEMORY",
        "KERNEL",
        "CGROUP",
        "RTT",
        "POD SUBNET",
        "FAST PATH",
        "PEERS",
    ];
    let dash = || "-".to_string();
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            r.name.clone(),
            r.address.clone(),
            // The class only; the full reason and its hint follow the table.
            match &r.error {
                None => "ok".into(),
                Some(e) => e.split(':').next().unwrap_or(e).to_string(),
            },
            r.agent_version.clone().unwrap_or_else(dash),
            r.arch.clone().unwrap_or_else(dash),
            r.cpus.map(|c| c.to_string()).unwrap_or_else(dash),
            r.memory.map(format_bytes).unwrap_or_else(dash),
            r.kernel.clone().unwrap_or_else(dash),
            r.cgroup.clone().unwrap_or_else(dash),
            r.rtt_ms.map(|ms| format!("{ms:.1}ms")).unwrap_or_else(dash),
            r.pod_subnet.clone().unwrap_or_else(dash),
            r.fast_path.clone().unwrap_or_else(dash),
            peers_cell(&r.peers),
        ]);
    }
    super::table::render(&cells)
}

/// Records the keys seen into the inventory and says what changed. `false` when a pinned key
/// differs (nothing is written then) or a host could not be pinned.
fn pin(
    fleet: &Fleet,
    reports: &BTreeMap<String, Result<HostReport, SshError>>,
    seen: &BTreeMap<String, Vec<String>>,
) -> Result<bool, Failure> {
    let mut ok = true;
    let mut new: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in &fleet.hosts {
        match reports.get(&host.name) {
            Some(Err(e)) if e.class == ssh::ErrorClass::HostKeyChanged => {
                output::error(&format!(
                    "host `{}`: not pinned again: it presents a key other than its pinned one \
                     (see above); `--pin` never overwrites a pinned key",
                    host.name
                ));
                ok = false;
            }
            Some(Ok(_)) if !host.host_keys.is_empty() => {
                output::status(&format!("{}: unchanged (pinned key verified)", host.name));
            }
            Some(Ok(_)) => match seen.get(&host.name).filter(|k| !k.is_empty()) {
                Some(keys) => {
                    new.insert(host.name.clone(), keys.clone());
                }
                None => {
                    output::error(&format!(
                        "host `{}`: answered, but ssh recorded no host key for it (a \
                         `KnownHostsCommand` or `StrictHostKeyChecking` in your ssh config?)",
                        host.name
                    ));
                    ok = false;
                }
            },
            _ => {
                output::error(&format!(
                    "host `{}`: not pinned: it could not be reached (see above)",
                    host.name
                ));
                ok = false;
            }
        }
    }
    if !ok && fleet.hosts.iter().any(|h| {
        matches!(reports.get(&h.name), Some(Err(e)) if e.class == ssh::ErrorClass::HostKeyChanged)
    }) {
        output::error("nothing was written: a pinned key differs from what its host presents");
        return Ok(false);
    }
    if new.is_empty() {
        if ok {
            output::status("every host is pinned already; nothing to write");
        }
        return Ok(ok);
    }
    let Some(path) = fleet.source.as_deref() else {
        return Err(Failure::Internal(
            "the inventory has no file to write to".into(),
        ));
    };
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| {
            Failure::User(format!("cannot read the inventory {}: {e}", path.display()))
        })?
    } else {
        String::new()
    };
    let name = path.display().to_string();
    if !path.is_file() || inventory::detect(&name, &text) != inventory::Format::Own {
        // Ansible inventories are often generated or shared with playbooks: we print, the
        // user decides where the variable goes.
        output::status(&format!(
            "{name} is an Ansible inventory: nothing was written. Add these variables, e.g. \
             in host_vars/HOST.yml beside it:"
        ));
        for (host, keys) in &new {
            let value = if keys.len() == 1 {
                format!("\"{}\"", keys[0])
            } else {
                format!(
                    "[{}]",
                    keys.iter()
                        .map(|k| format!("\"{k}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            output::data(&format!(
                "# host_vars/{host}.yml\ncompose_fleet_host_key: {value}"
            ));
        }
        return Ok(ok);
    }
    let edited = inventory::pin::add_host_keys(&name, &text, &new).map_err(Failure::User)?;
    write_atomically(path, &edited)
        .map_err(|e| Failure::User(format!("cannot write the inventory {name}: {e}")))?;
    for (host, keys) in &new {
        for key in keys {
            output::status(&format!("{host}: pinned {}", short_key(key)));
        }
    }
    output::status(&format!(
        "{} host{} pinned in {name}; commit it so that CI checks the same keys",
        new.len(),
        if new.len() == 1 { "" } else { "s" }
    ));
    Ok(ok)
}

/// `ssh-ed25519 AAAAC3Nz…q9Xw`: enough to recognize a key in a message.
fn short_key(key: &str) -> String {
    match key.split_once(' ') {
        Some((kind, blob)) if blob.len() > 24 => {
            format!("{kind} {}…{}", &blob[..12], &blob[blob.len() - 8..])
        }
        _ => key.to_string(),
    }
}

/// Writes through a temporary file renamed over the old one, keeping its permissions.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("pin-tmp");
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path)
}
