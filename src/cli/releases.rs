//! `compose-fleet releases` (the project's numbered releases, as the hosts recorded them) and
//! `compose-fleet rollback [--to N]` (every host back on a recorded release, batch by batch as
//! `rollback_config` says). The work is [`crate::deploy::release`]'s and
//! [`crate::deploy::rollout`]'s; this module parses the flags and prints.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::project;
use super::up::{failure, ConnArgs};
use super::{table, CmdResult, Failure, GlobalArgs};
use crate::deploy::exec::{self, ExecError, Progress};
use crate::deploy::{lock, release, rollout};
use crate::output;
use crate::proto::{PodSpec, ReleaseStatus};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON object per release on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The release to go back to (default: the good release before the current one)
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    #[command(flatten)]
    pub lock: super::up::LockArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn unreachable_error(unreachable: &BTreeMap<String, String>) -> Option<String> {
    let (host, why) = unreachable.iter().next()?;
    Some(format!(
        "host `{host}` could not be reached ({why}); releases are recorded on the hosts, so every host must answer"
    ))
}

pub fn list(global: &GlobalArgs, args: ListArgs) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let name = checked.loaded.project.name.clone();
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let ssh = args.conn.ssh_options();
    let (per_host, failed) = rt
        .block_on(async {
            let connected = exec::connect(&fleet, &name, &ssh, &mut |p| {
                if let Progress::Unreachable { host, reason } = p {
                    output::error(&format!("{host}: {reason}"));
                }
            })
            .await?;
            let (per_host, mut failed) =
                rollout::fetch(&connected.hosts, &name, false, ssh.command_timeout).await;
            failed.extend(connected.unreachable);
            Ok::<_, ExecError>((per_host, failed))
        })
        .map_err(|e| failure(e, &checked.loaded.sources))?;
    for (host, why) in &failed {
        output::error(&format!("{host}: its releases are unknown: {why}"));
    }
    let rows = release::listing(&per_host);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let all = per_host.len();
    if args.json {
        for r in &rows {
            output::data(
                &serde_json::json!({
                    "release": r.number,
                    "started": r.started,
                    "owner": r.owner,
                    "status": r.status,
                    "changed": r.changed,
                    "rollback_of": r.rollback_of,
                    "message": r.message,
                    "hosts": r.hosts,
                })
                .to_string(),
            );
        }
    } else if rows.is_empty() {
        output::status(&format!(
            "no release of project `{name}` is recorded on any host"
        ));
    } else {
        let mut cells = vec![["RELEASE", "STARTED", "BY", "STATUS", "CHANGED", "HOSTS"]
            .map(String::from)
            .to_vec()];
        for r in &rows {
            let status = match (r.status, r.rollback_of) {
                (s, Some(n)) => format!("{} (rollback to {n})", s.as_str()),
                (s, None) => s.as_str().to_string(),
            };
            cells.push(vec![
                r.number.to_string(),
                format!(
                    "{} ago",
                    crate::human::format_duration(Duration::from_secs(
                        now.saturating_sub(r.started)
                    ))
                ),
                r.owner.clone(),
                status,
                r.changed.join(","),
                format!("{}/{all}", r.hosts.len()),
            ]);
        }
        output::data(table::render(&cells).trim_end());
        if let Some(r) = rows.iter().find(|r| r.message.is_some()) {
            output::status(&format!(
                "release {}: {}",
                r.number,
                r.message.clone().unwrap_or_default()
            ));
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn rollback(global: &GlobalArgs, args: RollbackArgs) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let project = &checked.loaded.project;
    let files = exec::read_files(project).map_err(|e| failure(e, &checked.loaded.sources))?;
    let auth = super::up::registry_auth(project, &fleet)?;
    let insecure: Vec<String> = fleet
        .registries
        .iter()
        .filter(|(_, r)| r.insecure)
        .map(|(name, _)| name.clone())
        .collect();
    let ssh = args.conn.ssh_options();
    let timeout = ssh.command_timeout;
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let outcome = rt.block_on(async {
        let connected = exec::connect(&fleet, &project.name, &ssh, &mut |p| {
            if let Progress::Unreachable { host, reason } = p {
                output::error(&format!("{host}: {reason}"));
            }
        })
        .await?;
        if let Some(e) = unreachable_error(&connected.unreachable) {
            return Err(ExecError::User(e));
        }
        let held = lock::acquire(
            &connected.hosts,
            &project.name,
            lock::owner(),
            args.lock.lock_ttl,
            args.lock.lock_wait.unwrap_or_default(),
            timeout,
        )
        .await?;
        let result = rollback_locked(
            &connected,
            &fleet,
            project,
            &checked.graph,
            &held.fences,
            &files,
            &auth,
            &insecure,
            args.to,
            timeout,
        )
        .await;
        held.release(timeout).await;
        result
    });
    match outcome {
        Ok((n, to, changed, took)) => {
            output::status(&format!(
                "release {n}: every host is on release {to}'s pods again ({} pod{} changed in {:.1}s{})",
                changed.len(),
                if changed.len() == 1 { "" } else { "s" },
                took.as_secs_f64(),
                if changed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", changed.join(", "))
                }
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(ExecError::User(m)) => Err(Failure::User(format!("rollback failed: {m}"))),
        Err(e) => Err(failure(e, &checked.loaded.sources)),
    }
}

/// Under the lock: picks the release, records the rollback as a new release, carries it out.
/// Returns (the new release, the one restored, the pods changed, how long it took).
#[allow(clippy::too_many_arguments)]
async fn rollback_locked(
    connected: &exec::Connected,
    fleet: &crate::inventory::Fleet,
    project: &crate::compose::model::Project,
    graph: &crate::graph::ServiceGraph,
    fences: &BTreeMap<String, u64>,
    files: &crate::plan::podspec::FileContents,
    auth: &BTreeMap<String, crate::proto::RegistryAuth>,
    insecure: &[String],
    to: Option<u64>,
    timeout: Duration,
) -> Result<(u64, u64, Vec<String>, Duration), ExecError> {
    let (history, failed) = rollout::fetch(&connected.hosts, &project.name, true, timeout).await;
    if let Some(e) = unreachable_error(&failed) {
        return Err(ExecError::User(e));
    }
    let to = release::rollback_target(&history, to).map_err(ExecError::User)?;
    let pods: BTreeMap<String, Vec<PodSpec>> = history
        .iter()
        .filter_map(|(h, rs)| {
            let r = rs.iter().find(|r| r.number == to)?;
            Some((h.clone(), r.pods.clone()))
        })
        .collect();
    // Everything the releases since `to` touched is put back.
    let scope: BTreeSet<String> =
        release::scope(history.values().flatten().filter(|r| r.number >= to));
    let head = rollout::Head {
        changed: scope.iter().cloned().collect(),
        managed: scope.iter().cloned().collect(),
        rollback_of: Some(to),
        keep: release::DEFAULT_KEEP,
    };
    let begun = rollout::begin(
        &connected.hosts,
        &project.name,
        &pods,
        head,
        fences,
        timeout,
    )
    .await
    .map_err(ExecError::User)?;
    output::status(&format!(
        "release {}: rolling back to release {to}",
        begun.number
    ));
    let (networks, why_not) = exec::fleet_networks(fleet, connected);
    if let Some(why) = why_not {
        output::warning(&why);
    }
    let target = rollout::Target {
        hosts: &connected.hosts,
        networks: &networks,
        project: &project.name,
        fences,
        registry_auth: auth,
        insecure,
        request_timeout: Duration::from_secs(300),
        ready_timeout: Duration::from_secs(120),
        poll: Duration::from_millis(300),
    };
    let order: Vec<String> = graph.order().into_iter().map(String::from).collect();
    let secrets = release::secrets_by_hash(&files.secrets);
    let back = rollout::Back {
        project,
        order: &order,
        records: &history,
        to,
        scope: &scope,
        secrets: &secrets,
    };
    let started = Instant::now();
    let result = rollout::roll_back(&target, &back, &mut super::up::show_note).await;
    let (status, message) = match &result {
        Ok(_) => (ReleaseStatus::Succeeded, None),
        Err(why) => (ReleaseStatus::Failed, Some(why.clone())),
    };
    let records = rollout::with_status(&begun.records, status, message);
    for (host, why) in rollout::record(
        &connected.hosts,
        records,
        release::DEFAULT_KEEP,
        fences,
        timeout,
    )
    .await
    {
        output::warning(&format!(
            "host `{host}` could not record how release {} ended: {why}",
            begun.number
        ));
    }
    for w in crate::deploy::services::publish(
        &connected.hosts,
        project,
        &connected.service_maps,
        timeout,
    )
    .await
    {
        output::warning(&w);
    }
    let changed = result.map_err(ExecError::User)?;
    Ok((begun.number, to, changed, started.elapsed()))
}
