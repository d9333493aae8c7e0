//! `compose-fleet inventory`: the fleet as compose-fleet will use it, like
//! `ansible-inventory --list` — for our own format and Ansible's alike. `--host NAME` shows one
//! host with where each of its values was set.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;

use super::{output, CmdResult, Failure, GlobalArgs};
use crate::inventory::{self, Capacity, Host};

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
    /// Show one host, with where each value was set (file:line:column)
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

/// One host of `inventory --format json`; the field set is a contract.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    address: String,
    user: Option<String>,
    port: u16,
    identity_file: Option<String>,
    labels: BTreeMap<String, String>,
    capacity: Option<Cap>,
    reserved: Cap,
    arch: Option<String>,
    drain: bool,
    connection: &'static str,
    r#become: bool,
    become_user: Option<String>,
    /// Only with `--host`: field → `file:line:column`.
    #[serde(skip_serializing_if = "Option::is_none")]
    origins: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
struct Cap {
    cpus: f64,
    memory: u64,
}

impl From<Capacity> for Cap {
    fn from(c: Capacity) -> Cap {
        Cap {
            cpus: c.cpus,
            memory: c.memory,
        }
    }
}

fn row(h: &Host, with_origins: bool) -> Row {
    Row {
        name: h.name.clone(),
        address: h.address.clone(),
        user: h.user.clone(),
        port: h.port,
        identity_file: h.identity_file.as_ref().map(|p| p.display().to_string()),
        labels: h.labels.clone(),
        capacity: h.capacity.map(Cap::from),
        reserved: h.reserved.into(),
        arch: h.arch.clone(),
        drain: h.drain,
        connection: h.connection.as_str(),
        r#become: h.use_become,
        become_user: h.become_user.clone(),
        origins: with_origins.then(|| {
            h.origins
                .iter()
                .map(|(k, l)| (k.clone(), l.to_string()))
                .collect()
        }),
    }
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    // Found as every command finds it (`-i`, COMPOSE_FLEET_INVENTORY, beside the compose files).
    let workspace = super::project::resolve(global)?;
    let path = workspace.inventory_path().to_path_buf();
    let fleet = match inventory::load_with(&path, workspace.limits()) {
        Ok(fleet) => fleet,
        Err(e) => {
            output::diagnostic(&format!("{}\n", e.render()));
            return Err(Failure::Reported(1));
        }
    };
    for w in &fleet.warnings {
        output::diagnostic(&format!("{w}\n"));
    }
    if let Some(name) = &args.host {
        let Some(h) = fleet.host(name) else {
            let known: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
            let hint = match inventory::did_you_mean(name, &known) {
                Some(k) => format!("did you mean `{k}`?"),
                None => "`compose-fleet inventory` lists every host".to_string(),
            };
            return Err(Failure::User(format!(
                "no host `{name}` in `{}`\nhint: {hint}",
                path.display()
            )));
        };
        let r = row(h, true);
        match args.format {
            Format::Json => output::data(&to_json(&r)?),
            Format::Text => output::data(&host_text(&r)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Row> = fleet.hosts.iter().map(|h| row(h, false)).collect();
    match args.format {
        Format::Json => {
            #[derive(Serialize)]
            struct Out<'a> {
                hosts: &'a [Row],
            }
            output::data(&to_json(&Out { hosts: &rows })?);
        }
        Format::Text => output::data(&table(&rows)),
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json<T: Serialize>(v: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(v)
        .map_err(|e| Failure::Internal(format!("serializing the inventory: {e}")))
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn capacity(c: &Option<Cap>) -> String {
    match c {
        Some(c) => format!("{} cpus, {}", c.cpus, human_bytes(c.memory)),
        None => "from facts".into(),
    }
}

fn labels(r: &Row) -> String {
    r.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn table(rows: &[Row]) -> String {
    let header = ["HOST", "ADDRESS", "USER", "PORT", "CAPACITY", "LABELS"];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let address = if r.connection == "local" {
            "local".to_string()
        } else {
            r.address.clone()
        };
        cells.push(vec![
            r.name.clone(),
            address,
            dash(r.user.clone()),
            r.port.to_string(),
            capacity(&r.capacity),
            labels(r),
        ]);
    }
    super::table::render(&cells)
}

fn host_text(r: &Row) -> String {
    let origins = r.origins.clone().unwrap_or_default();
    let from = |field: &str| {
        origins
            .get(field)
            .map(|o| format!("  ({o})"))
            .unwrap_or_default()
    };
    let mut out = format!("host {}{}\n", r.name, from("name"));
    // Field names line up, label keys included.
    let width = r
        .labels
        .keys()
        .map(|k| k.chars().count() + "labels.".len())
        .chain(["identity_file".len()])
        .max()
        .unwrap_or(0)
        + 2;
    let mut line = |field: &str, value: String| {
        out.push_str(&format!("  {field:<width$}{value}{}\n", from(field)));
    };
    line("address", r.address.clone());
    line("connection", r.connection.to_string());
    line("user", dash(r.user.clone()));
    line("port", r.port.to_string());
    line("identity_file", dash(r.identity_file.clone()));
    line("become", r.r#become.to_string());
    line("become_user", dash(r.become_user.clone()));
    line("capacity", capacity(&r.capacity));
    line("arch", dash(r.arch.clone()));
    line("drain", r.drain.to_string());
    for (k, v) in &r.labels {
        line(&format!("labels.{k}"), v.clone());
    }
    out
}

/// Binary units, as compose writes memory (`512m` = 512 MiB).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
