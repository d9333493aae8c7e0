//! `compose-fleet down`: stop and remove the project's pods on every host, in parallel (one
//! `Remove` per host, under the deploy lock, with its fencing number), and its named volumes
//! with `--volumes`. Exit 1 when a host could not be
//! reached or refused: something of the project may still run there.

use std::process::ExitCode;
use std::time::Duration;

use super::project;
use super::up::{failure, ConnArgs};
use super::{CmdResult, GlobalArgs};
use crate::deploy::exec::{self, Progress};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also remove the project's named volumes
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Accepted for docker compose compatibility: `down` removes every pod of the project,
    /// orphans included
    #[arg(long)]
    pub remove_orphans: bool,
    /// When another deploy of this project holds the deploy lock, wait this long for it
    #[arg(long, value_name = "DURATION", value_parser = crate::human::parse_duration)]
    pub lock_wait: Option<Duration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let name = &checked.loaded.project.name;
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let mut failed = 0;
    let results = rt
        .block_on(async {
            let connected = exec::connect(&fleet, name, &args.conn.ssh_options(), &mut |p| {
                if let Progress::Unreachable { host, reason } = p {
                    output::error(&format!("{host}: {reason}"));
                }
            })
            .await?;
            failed += connected.unreachable.len();
            // One deploy at a time, `down` included: it takes the deploy lock as `up` does, and
            // every removal carries the fencing number, so a `down` that lost its lease (paused
            // past its TTL) removes nothing another deploy has put there since.
            let held = crate::deploy::lock::acquire(
                &connected.hosts,
                name,
                crate::deploy::lock::owner(),
                Duration::from_secs(30),
                args.lock_wait.unwrap_or_default(),
                args.conn.ssh_options().command_timeout,
            )
            .await?;
            let removed = exec::remove_all(
                &connected.hosts,
                name,
                args.volumes,
                &held.fences,
                Duration::from_secs(120),
            )
            .await;
            held.release(args.conn.ssh_options().command_timeout).await;
            Ok(removed)
        })
        .map_err(|e| failure(e, &checked.loaded.sources))?;
    for (host, result) in results {
        match result {
            Ok(pods) if pods.is_empty() => output::status(&format!("{host}: nothing to remove")),
            Ok(pods) => output::status(&format!("{host}: removed {}", pods.join(", "))),
            Err(e) => {
                failed += 1;
                output::error(&e.to_string());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
