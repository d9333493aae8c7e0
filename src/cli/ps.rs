//! `compose-fleet ps`: every container of the project on every host (one `Status` per host, in
//! parallel): service, replica, host, pod, IP, state, health, published ports, restarts, uptime.
//! Exit 1 when a host could not be reached (what it runs is unknown).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::project;
use super::up::{failure, ConnArgs};
use super::{CmdResult, GlobalArgs};
use crate::deploy::exec::{self, Progress};
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Show only these services
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// One row of `ps --format json`; the field set is a contract.
#[derive(Debug, Serialize)]
struct Row {
    service: String,
    replica: u32,
    host: String,
    pod: String,
    ip: Option<String>,
    state: String,
    health: Option<String>,
    exit_code: Option<i32>,
    ports: Vec<String>,
    restarts: u32,
    pid: Option<u32>,
    uptime_s: Option<u64>,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let project = &checked.loaded.project;
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let connected = rt
        .block_on(exec::connect(
            &fleet,
            &project.name,
            &args.conn.ssh_options(),
            &mut |p| {
                if let Progress::Unreachable { host, reason } = p {
                    output::error(&format!("{host}: {reason}"));
                }
            },
        ))
        .map_err(|e| failure(e, &checked.loaded.sources))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rows = Vec::new();
    for (host, pods) in &connected.observed {
        let address = fleet
            .hosts
            .iter()
            .find(|h| &h.name == host)
            .map(|h| h.address.clone())
            .unwrap_or_default();
        for pod in pods {
            for c in &pod.containers {
                if !args.services.is_empty() && !args.services.contains(&c.service) {
                    continue;
                }
                let ports = project
                    .services
                    .get(&c.service)
                    .map(|s| {
                        s.ports
                            .iter()
                            .flat_map(|p| {
                                let proto = if p.protocol.is_empty() {
                                    "tcp"
                                } else {
                                    &p.protocol
                                };
                                p.published_ports()
                                    .into_iter()
                                    .map(|pp| format!("{address}:{pp}->{}/{proto}", p.target))
                                    .collect::<Vec<_>>()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                rows.push(Row {
                    service: c.service.clone(),
                    replica: c.replica,
                    host: host.clone(),
                    pod: pod.name.clone(),
                    ip: pod.ip.clone(),
                    state: c.state.clone(),
                    health: c.health.clone(),
                    exit_code: c.exit_code,
                    ports,
                    restarts: c.restarts,
                    pid: c.pid,
                    uptime_s: c
                        .started_at
                        .filter(|_| c.state == "running")
                        .map(|t| now.saturating_sub(t)),
                });
            }
        }
    }
    rows.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    match args.format {
        Format::Json => output::data(
            &serde_json::to_string_pretty(&rows)
                .map_err(|e| super::Failure::Internal(format!("serializing ps: {e}")))?,
        ),
        Format::Table => output::data(&table(&rows)),
    }
    Ok(if connected.unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn table(rows: &[Row]) -> String {
    let header = [
        "SERVICE", "REPLICA", "HOST", "POD", "IP", "STATE", "HEALTH", "PORTS", "RESTARTS", "UPTIME",
    ];
    let dash = || "-".to_string();
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let state = match (r.state.as_str(), r.exit_code) {
            ("exited", Some(code)) => format!("exited ({code})"),
            (s, _) => s.to_string(),
        };
        cells.push(vec![
            r.service.clone(),
            r.replica.to_string(),
            r.host.clone(),
            r.pod.clone(),
            r.ip.clone().unwrap_or_else(dash),
            state,
            r.health.clone().unwrap_or_else(dash),
            if r.ports.is_empty() {
                dash()
            } else {
                r.ports.join(",")
            },
            r.restarts.to_string(),
            r.uptime_s.map(uptime).unwrap_or_else(dash),
        ]);
    }
    super::table::render(&cells)
}

/// `42s`, `7m`, `3h`, `2d`: as long as it has run, roughly.
fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
