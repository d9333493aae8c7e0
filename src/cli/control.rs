//! `compose-fleet stop|start|restart [SERVICE…]`: the containers of the project (or of these
//! services) stopped, started or restarted in place on every host, in parallel (one `Control`
//! per host that runs them); pods, specs and volumes stay. `compose-fleet pull [SERVICE…]`: each
//! host fetches the images of the pods `up` would place there (one `Pull` per host).
//!
//! A stopped container stays stopped through `up` (its pod is unchanged) until `start`.
//!
//! Exit codes: 0; 1 a host could not be reached or refused, an image could not be pulled, or a
//! service is unknown; 2 a bug or a broken environment.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::project;
use super::up::{failure, ConnArgs};
use super::{CmdResult, Failure, GlobalArgs};
use crate::deploy::exec::{self, HostConn, Progress};
use crate::output;
use crate::proto::{ControlAction, ControlRequest, PullRequest, Request, Response};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only these services (default: all)
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// Which of the project's commands.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Stop,
    Start,
    Restart,
    Pull,
}

impl Verb {
    fn done(self) -> &'static str {
        match self {
            Verb::Stop => "stopped",
            Verb::Start => "started",
            Verb::Restart => "restarted",
            Verb::Pull => "pulled",
        }
    }
}

pub fn run(verb: Verb, global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let project = &checked.loaded.project;
    for s in &args.services {
        if !project.services.contains_key(s) {
            let known: Vec<&str> = project.services.keys().map(String::as_str).collect();
            return Err(Failure::User(format!(
                "no service `{s}` in project `{}` (services: {})",
                project.name,
                known.join(", ")
            )));
        }
    }
    let insecure: Vec<String> = fleet
        .registries
        .iter()
        .filter(|(_, r)| r.insecure)
        .map(|(name, _)| name.clone())
        .collect();
    let opts = exec::Options {
        ssh: args.conn.ssh_options(),
        ..exec::Options::default()
    };
    let auth = match verb {
        Verb::Pull => super::up::registry_auth(project, &fleet)?,
        _ => BTreeMap::new(),
    };
    let wanted = |s: &str| args.services.is_empty() || args.services.iter().any(|w| w == s);
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let mut failed = 0usize;
    let results = rt
        .block_on(async {
            let connected = exec::connect(&fleet, &project.name, &opts.ssh, &mut |p| {
                if let Progress::Unreachable { host, reason } = p {
                    output::error(&format!("{host}: {reason}"));
                }
            })
            .await?;
            failed += connected.unreachable.len();
            // Per host: the request, for the hosts that have something to do.
            let mut work: Vec<(Arc<HostConn>, Request)> = Vec::new();
            match verb {
                Verb::Pull => {
                    let prepared = exec::prepare(
                        project,
                        &checked.graph,
                        &fleet,
                        &connected.facts,
                        &connected.observed,
                        &opts,
                    )?;
                    let mut images: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                    for pod in prepared.desired.pods() {
                        for c in pod.spec.containers.iter().filter(|c| wanted(&c.service)) {
                            images
                                .entry(pod.host.clone())
                                .or_default()
                                .insert(c.image.clone());
                        }
                    }
                    for (host, images) in images {
                        if let Some(conn) = connected.hosts.get(&host) {
                            work.push((
                                conn.clone(),
                                Request::Pull(PullRequest {
                                    images: images.into_iter().collect(),
                                    registry_auth: auth.clone(),
                                    insecure_registries: insecure.clone(),
                                }),
                            ));
                        }
                    }
                }
                Verb::Stop | Verb::Start | Verb::Restart => {
                    let action = match verb {
                        Verb::Stop => ControlAction::Stop,
                        Verb::Start => ControlAction::Start,
                        _ => ControlAction::Restart,
                    };
                    for (host, pods) in &connected.observed {
                        let runs = pods
                            .iter()
                            .flat_map(|p| &p.containers)
                            .any(|c| wanted(&c.service));
                        if let (true, Some(conn)) = (runs, connected.hosts.get(host)) {
                            work.push((
                                conn.clone(),
                                Request::Control(ControlRequest {
                                    project: project.name.clone(),
                                    services: args.services.clone(),
                                    action,
                                }),
                            ));
                        }
                    }
                }
            }
            let mut tasks = JoinSet::new();
            for (conn, request) in work {
                // A stop waits up to each container's grace period; a pull, for the registry.
                tasks.spawn(async move {
                    let r = conn.call(request, Duration::from_secs(600)).await;
                    (conn.name.clone(), r)
                });
            }
            let mut out = BTreeMap::new();
            while let Some(joined) = tasks.join_next().await {
                if let Ok((host, r)) = joined {
                    out.insert(host, r);
                }
            }
            Ok(out)
        })
        .map_err(|e| failure(e, &checked.loaded.sources))?;
    if results.is_empty() && failed == 0 {
        output::status("nothing to do: no host runs these services");
    }
    for (host, result) in results {
        match result {
            Ok(Response::Controlled { containers }) if containers.is_empty() => {
                output::status(&format!("{host}: nothing to change"));
            }
            Ok(Response::Controlled { containers }) => {
                output::status(&format!(
                    "{host}: {} {}",
                    verb.done(),
                    containers.join(", ")
                ));
            }
            Ok(Response::Pulled(report)) => {
                if !report.pulled.is_empty() {
                    output::status(&format!(
                        "{host}: {} {}",
                        verb.done(),
                        report.pulled.join(", ")
                    ));
                }
                for (image, why) in report.failed {
                    failed += 1;
                    output::error(&format!("{host}: pulling {image}: {why}"));
                }
            }
            Ok(other) => {
                return Err(Failure::Internal(format!(
                    "bug: {host} answered {other:?} to {verb:?}"
                )))
            }
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
