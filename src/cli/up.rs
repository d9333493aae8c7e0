//! `compose-fleet up`: converge the fleet to the compose file, in dependency order, changing only
//! what changed. The work is [`crate::deploy::exec`]'s; this module parses the flags and renders
//! its [`Progress`]: indicatif lines per pod on a terminal, plain timestamped lines otherwise,
//! one JSON object per line with `--json`.
//!
//! Exit codes: 0 converged; 1 the deploy failed (a job exited non-zero, a pod did not start, a
//! host was unreachable, the file cannot be placed); 2 a bug or a broken environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;

use super::project::{self, print_diagnostics};
use super::{CmdResult, Failure, GlobalArgs};
use crate::deploy::diff::RemoveReason;
use crate::deploy::exec::{self, ExecError, Progress};
use crate::deploy::flow::{Action, Change, Event, Step, Summary};
use crate::deploy::lock;
use crate::deploy::{release, rollout};
use crate::graph::condition_str;
use crate::inventory::Fleet;
use crate::lifetime;
use crate::output;
use crate::ssh;

/// How to reach the hosts: shared by `up`, `ps` and `down`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Trust and record host keys seen for the first time (a changed key is still refused)
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// The agent binary to push (default: next to this executable, else the embedded one)
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Seconds to wait for each host's SSH connection and handshake
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
}

impl ConnArgs {
    pub fn ssh_options(&self) -> ssh::Options {
        ssh::Options {
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            accept_new_host_keys: self.accept_new_host_keys,
            agent_binary: self.agent_binary.clone(),
            ..ssh::Options::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the changes per host (from the deploy plan) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Remove pods of services the compose file no longer defines
    #[arg(long)]
    pub remove_orphans: bool,
    /// One JSON event per line on stdout, for machines
    #[arg(long)]
    pub json: bool,
    /// Accepted for docker compose compatibility: `up` always returns once deployed
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Kept for docker compose's users: `up` always returns only once every container it
    /// started is healthy (with a healthcheck) or running (without), or has exited 0; an
    /// unhealthy container or a non-zero exit fails the release, which is rolled back
    #[arg(long)]
    pub wait: bool,
    /// Build images before deploying (default: build only services never built)
    #[arg(long)]
    pub build: bool,
    /// The image builder to use (default: the first that works)
    #[arg(long, value_enum)]
    pub builder: Option<crate::build::Builder>,
    /// Cap the upload of built images to the hosts, all hosts together, in bytes per second:
    /// `10M` = 10,000,000, `512K`, `8MiB`
    #[arg(long, value_name = "RATE", value_parser = crate::build::rate::parse_rate)]
    pub max_upload_rate: Option<u64>,
    /// What to do when a host does not answer: `fail` changes nothing anywhere; `skip`
    /// deploys to the others and leaves its pods as they are; `reschedule` also moves its
    /// replicas to the others, as far as they fit
    #[arg(long, value_enum, value_name = "MODE", default_value = "fail")]
    pub on_unreachable: exec::OnUnreachable,
    #[command(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Converge only these services (and what they depend on)
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// An `ExecError` as the CLI reports it.
pub fn failure(e: ExecError, sources: &crate::diag::SourceMap) -> Failure {
    match e {
        ExecError::User(m) => Failure::User(m),
        ExecError::Internal(m) => Failure::Internal(m),
        ExecError::Project(d) => {
            print_diagnostics(&d, sources);
            Failure::Reported(1)
        }
    }
}

/// The deploy lock's options, for every command that changes the fleet (`up`, `rollback`).
#[derive(Debug, Clone, clap::Args)]
pub struct LockArgs {
    /// When another deploy of this project holds the deploy lock, wait this long for it (e.g.
    /// `5m`) instead of failing at once
    #[arg(long, value_name = "DURATION", value_parser = crate::human::parse_duration)]
    pub lock_wait: Option<Duration>,
    /// How long the deploy lock outlives this process if it is killed (renewed while it runs)
    #[arg(long, value_name = "DURATION", value_parser = crate::human::parse_duration, default_value = "30s")]
    pub lock_ttl: Duration,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let mut summary_written = false;
    let result = run_up(global, args, &mut summary_written);
    let failed = match &result {
        Ok(code) => *code != ExitCode::SUCCESS,
        Err(_) => true,
    };
    if failed && !summary_written {
        // Failed before deploying (a compose or inventory error, no host): the step summary
        // still says why, as a table.
        if let Err(e) = failure_summary(&result) {
            output::warning(&format!("cannot write the GitHub step summary: {e}"));
        }
    }
    result
}

/// The step summary of an `up` that stopped before its deploy: the errors, where they are.
fn failure_summary(result: &CmdResult) -> std::io::Result<()> {
    if !matches!(output::Ci::detect(), output::Ci::GitHub { .. }) {
        return Ok(());
    }
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return Ok(());
    };
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut errors = output::errors_so_far();
    if let Err(Failure::User(m) | Failure::Internal(m)) = result {
        errors.push((String::new(), m.clone()));
    }
    let mut md = String::from(
        "### compose-fleet up: failed before deploying\n\n| Where | Error |\n|---|---|\n",
    );
    for (at, message) in &errors {
        md.push_str(&format!(
            "| {} | {} |\n",
            if at.is_empty() {
                "-".into()
            } else {
                format!("`{}`", cell(at))
            },
            cell(message)
        ));
    }
    md.push('\n');
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(md.as_bytes())
}

fn run_up(global: &GlobalArgs, args: Args, summary_written: &mut bool) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let mut render = Renderer::new(args.json);
    let started = Instant::now();
    for h in &fleet.hosts {
        render.running.insert(
            h.name.clone(),
            lifetime::activity(format!("connecting to host `{}`", h.name)),
        );
    }
    // Connected first: the hosts' facts say which architectures the builds are for.
    let ssh = args.conn.ssh_options();
    let connected = rt.block_on(async {
        let _section = output::section("connect", "compose-fleet: connecting to the hosts");
        exec::connect(&fleet, &checked.loaded.project.name, &ssh, &mut |p| {
            render.show(&p)
        })
        .await
    });
    // Services with `build:` are built here (on this machine) and named by digest.
    let mut project = checked.loaded.project.clone();
    let store = super::build::store()?;
    // (Nothing is built when connecting failed: that failure is reported below.)
    let built = if args.dry_run || connected.is_err() {
        crate::build::pin_recorded(&mut project, &store, &fleet.build);
        if args.dry_run {
            for route in crate::build::routes(&project, &fleet.build) {
                output::status(&route);
            }
        }
        Vec::new()
    } else {
        let facts = connected.as_ref().map(|c| &c.facts).ok();
        crate::build::prepare_up(
            &mut project,
            &args.services,
            args.build,
            args.builder,
            fleet.registries.values().any(|r| r.insecure),
            &crate::build::declared_hosts_with_facts(&fleet, facts),
            &store,
            &fleet.build,
        )
        .map_err(Failure::User)?
    };
    let project = &project;
    let opts = exec::Options {
        ssh,
        remove_orphans: args.remove_orphans,
        services: args.services.clone(),
        timeout: Duration::from_secs(300),
        // Releases are health-gated: `up` ends only once what it started is healthy (with a
        // health check), running, or exited 0, and anything else fails the release (which is
        // then rolled back). `--wait` is kept for docker compose's users.
        wait: true,
        files: exec::read_files(project).map_err(|e| failure(e, &checked.loaded.sources))?,
        registry_auth: registry_auth(project, &fleet)?,
        update_delay: project
            .services
            .keys()
            .map(|s| (s.clone(), release::policy(project, s, false).delay))
            .filter(|(_, d)| !d.is_zero())
            .collect(),
        ..exec::Options::default()
    };
    let insecure: Vec<String> = fleet
        .registries
        .iter()
        .filter(|(_, r)| r.insecure)
        .map(|(name, _)| name.clone())
        .collect();
    // Replicas `--on-unreachable reschedule` could not place: the run fails (exit 1).
    let mut unplaced = 0usize;
    let outcome = rt.block_on(async {
        let mut connected = connected?;
        // `--on-unreachable`: decided before anything changes.
        let opts =
            exec::on_unreachable(opts.clone(), &connected, args.on_unreachable, &project.name)
                .await?;
        let prepare = |observed: &BTreeMap<String, Vec<crate::proto::PodStatus>>| {
            exec::prepare(
                project,
                &checked.graph,
                &fleet,
                &connected.facts,
                observed,
                &opts,
            )
        };
        let first = prepare(&connected.observed)?;
        // Nothing to change (every pod runs as desired, so its images, built ones included, are
        // on its host): no lock and no write, so a no-op `up` costs the one `Status` per host it
        // has made. Without the lock the answer is that of the moment the hosts were read, as a
        // no-op `up` run just before a concurrent deploy would give.
        let noop = !args.dry_run && first.diff.is_noop();
        // The deploy lock, before anything changes; what runs is read again under it, since
        // the deploy that held it may have changed it.
        let (lock, prepared) = if args.dry_run || noop {
            (None, first)
        } else {
            let held = lock::acquire(
                &connected.hosts,
                &project.name,
                lock::owner(),
                args.lock.lock_ttl,
                args.lock.lock_wait.unwrap_or_default(),
                opts.ssh.command_timeout,
            )
            .await?;
            let mut observed = BTreeMap::new();
            let mut again = Ok(());
            for (name, conn) in &connected.hosts {
                match conn.status(&project.name, opts.ssh.command_timeout).await {
                    Ok(pods) => {
                        observed.insert(name.clone(), pods);
                    }
                    Err(e) => {
                        again = Err(ExecError::User(e.to_string()));
                        break;
                    }
                }
            }
            match again.and_then(|()| prepare(&observed)) {
                Ok(prepared) => {
                    connected.observed = observed;
                    (Some(held), prepared)
                }
                Err(e) => {
                    held.release(opts.ssh.command_timeout).await;
                    return Err(e);
                }
            }
        };
        if args.dry_run {
            for w in &prepared.warnings {
                render.show(&Progress::Warning(w.clone()));
            }
            let steps = prepared.flow.plan();
            return Ok((connected, Err(steps)));
        }
        // Built images go to the hosts that run them before any pod asks for them.
        let arches = crate::build::deliver::host_arches(&fleet, &connected.facts);
        let delivery = async {
            crate::build::deliver::check_architectures(&prepared.desired, &built, &arches)?;
            // `push: registry`: to the registry, which the hosts pull from; nothing over SSH.
            if fleet.build.push == crate::inventory::PushMode::Registry {
                let published = crate::build::push::publish(
                    &prepared.desired,
                    &built,
                    &store,
                    &fleet.registries,
                    &|w| output::warning(w),
                )
                .await?;
                for p in &published {
                    output::status(&match &p.pushed {
                        Some(pushed) => format!(
                            "service `{}`: pushed {} to {} ({} blobs, {} bytes; {} blobs were there already); the hosts pull it from there",
                            p.service, pushed.reference, p.target, pushed.blobs_pushed, pushed.bytes_pushed, pushed.blobs_present
                        ),
                        None => format!(
                            "service `{}`: {} has it already; the hosts pull it from there",
                            p.service, p.target
                        ),
                    });
                }
                return Ok(Vec::new());
            }
            let progress = if args.json {
                crate::build::progress::DeliveryProgress::quiet()
            } else {
                crate::build::progress::DeliveryProgress::for_stderr()
            };
            let mut delivery = crate::build::deliver::Options::new(
                Duration::from_secs(120),
                args.max_upload_rate,
                progress,
            );
            delivery.reconnect = Some(std::sync::Arc::new(
                crate::build::deliver::Reconnect::new(&fleet, opts.ssh.clone()),
            ));
            crate::build::deliver::deliver_all(
                &connected.hosts,
                &prepared.desired,
                &built,
                &store,
                &arches,
                &delivery,
            )
            .await
        };
        // A no-op run has every pod running as desired, its images on its host: nothing to ask.
        let result = if noop {
            drop(delivery);
            Ok(Vec::new())
        } else {
            delivery.await
        };
        let delivered = match result {
            Ok(d) => d,
            Err(e) => {
                // Nothing was changed: the lock goes now, not when its lease runs out.
                if let Some(held) = lock {
                    held.release(opts.ssh.command_timeout).await;
                }
                return Err(ExecError::User(e));
            }
        };
        for d in &delivered {
            output::status(&format!(
                "{}: delivered {} ({} blobs, {} bytes sent, {} received by the agent, {} layers unpacked, {} bytes on the wire) in {:.2}s{}",
                d.host,
                d.reference,
                d.blobs_sent,
                d.bytes_sent,
                d.bytes_received,
                d.layers_unpacked,
                d.wire_bytes,
                d.elapsed.as_secs_f64(),
                match d.reconnects {
                    0 => String::new(),
                    1 => ", after reconnecting once".to_string(),
                    n => format!(", after reconnecting {n} times"),
                }
            ));
        }
        let (networks, why_not) = exec::fleet_networks(&fleet, &connected);
        if let Some(why) = why_not {
            render.show(&Progress::Warning(why));
        }
        // A run that changes something is a numbered release, recorded on every host before
        // the first change (with each host's desired pods, to go back to).
        let steps = prepared.flow.plan();
        unplaced = prepared.unplaced.len();
        let fences = lock.as_ref().map(|h| h.fences.clone()).unwrap_or_default();
        let begun = if steps.is_empty() {
            None
        } else {
            let pods: BTreeMap<String, Vec<crate::proto::PodSpec>> = prepared
                .desired
                .hosts
                .iter()
                .map(|(h, ps)| (h.clone(), ps.iter().map(|p| p.spec.clone()).collect()))
                .collect();
            let head = rollout::Head {
                changed: release::changed_services(&steps, &prepared.desired, &connected.observed),
                managed: prepared.desired.managed.iter().cloned().collect(),
                rollback_of: None,
                keep: release::DEFAULT_KEEP,
            };
            match rollout::begin(
                &connected.hosts,
                &project.name,
                &pods,
                head,
                &fences,
                opts.ssh.command_timeout,
            )
            .await
            {
                Ok(b) => Some(b),
                Err(e) => {
                    if let Some(held) = lock {
                        held.release(opts.ssh.command_timeout).await;
                    }
                    return Err(ExecError::User(e));
                }
            }
        };
        let _section = output::section("deploy", "compose-fleet: deploying");
        // The global `--timeout` bounds the whole command. The deploy's own deadline comes a
        // little before it, so that a deploy that overruns stops gracefully (the flow says what
        // did not start, the step summary is written) before the process is ended.
        let mut opts = opts.clone();
        if let Some(held) = &lock {
            opts.fences = held.fences.clone();
            opts.lease_lost = Some(held.lost.clone());
        }
        if !noop {
            opts.service_map = Some(std::sync::Arc::new(project.clone()));
        }
        if let Some(left) = lifetime::remaining() {
            opts.timeout = left
                .saturating_sub(Duration::from_secs(2))
                .max(Duration::from_secs(1));
        }
        // The flow stops new work on the first SIGINT and waits for what is in flight.
        let _graceful = lifetime::graceful_interrupt();
        let monitored_specs: BTreeMap<(String, String), crate::proto::PodSpec> = prepared
            .desired
            .pods()
            .map(|p| ((p.host.clone(), p.name.clone()), p.spec.clone()))
            .collect();
        let mut ready_clock = rollout::ReadyClock::default();
        let summary = exec::run(
            &connected.hosts,
            &networks,
            &project.name,
            &insecure,
            prepared,
            &opts,
            &mut |p| {
                ready_clock.see(&p);
                render.show(&p)
            },
        )
        .await;
        let deploy_ended = Instant::now();
        // A failed release goes back to the previous one on every host that changed.
        let target = rollout::Target {
            hosts: &connected.hosts,
            networks: &networks,
            project: &project.name,
            fences: &opts.fences,
            registry_auth: &opts.registry_auth,
            insecure: &insecure,
            request_timeout: opts.request_timeout,
            ready_timeout: Duration::from_secs(120),
            poll: opts.poll,
        };
        let outcome = match &begun {
            None => None,
            Some(begun) => {
                let mut failure = (!summary.ok()).then(|| {
                    summary
                        .failures
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                // `monitor`: each replica the release replaced or restarted must stay healthy
                // for its services' monitor window, counted from when that replica became ready
                // (never shorter than their health check needs).
                if failure.is_none() {
                    let pods = release::updated_pods(&steps, &monitored_specs);
                    let due = ready_clock.deadlines(project, &pods, deploy_ended);
                    let now = Instant::now();
                    let open = due.iter().filter(|(_, _, until)| *until > now).count();
                    if let Some(last) = due.iter().map(|(_, _, until)| *until).max() {
                        if last > now {
                            output::status(&format!(
                                "monitoring {open} updated pod{} for up to {:.1}s more (`update_config.monitor`, counted per replica from when it became ready)",
                                if open == 1 { "" } else { "s" },
                                (last - now).as_secs_f64()
                            ));
                        }
                    }
                    if let Err(why) = rollout::watch_each(&target, &due).await {
                        failure = Some(why);
                    }
                }
                if failure.is_some() && begun.previous.is_some() {
                    output::status(&format!(
                        "release {} failed; rolling every host that changed back to release {}",
                        begun.number,
                        begun.previous.unwrap_or_default()
                    ));
                }
                let order: Vec<String> =
                    checked.graph.order().into_iter().map(String::from).collect();
                let secrets = release::secrets_by_hash(&opts.files.secrets);
                Some((
                    begun.number,
                    failure.clone(),
                    rollout::settle(
                        &target,
                        begun,
                        failure,
                        project,
                        &order,
                        &secrets,
                        release::DEFAULT_KEEP,
                        &mut show_note,
                    )
                    .await,
                ))
            }
        };
        // Service discovery: every agent learns where the project's replicas now run (after a
        // no-op, from what the hosts reported, and only where their map differs).
        // With `--on-unreachable skip` the map keeps the silent hosts' pods as recorded.
        let kept = opts.kept_pods();
        let published = if noop {
            let mut observed = connected.observed.clone();
            observed.extend(kept);
            crate::deploy::services::publish_observed(
                &connected.hosts,
                project,
                &observed,
                &connected.service_maps,
                opts.request_timeout,
            )
            .await
        } else {
            crate::deploy::services::publish_keeping(
                &connected.hosts,
                project,
                &connected.service_maps,
                &kept,
                opts.request_timeout,
            )
            .await
        };
        for w in published {
            render.show(&Progress::Warning(w));
        }
        if let Some(held) = lock {
            held.release(opts.ssh.command_timeout).await;
        }
        Ok((connected, Ok((summary, outcome))))
    });
    let (connected, result) = outcome.map_err(|e| failure(e, &checked.loaded.sources))?;
    if args.json {
        // What the run cost each host in round trips after the handshake (a no-op `up`: one).
        let per_host: BTreeMap<&str, u64> = connected
            .hosts
            .iter()
            .map(|(name, conn)| (name.as_str(), conn.requests_sent()))
            .collect();
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        output::data(
            &json!({ "event": "requests", "hosts": per_host, "time_ms": time_ms }).to_string(),
        );
    }
    let unreachable = connected.unreachable.len();
    drop(rt);
    let code = match result {
        Err(steps) => {
            print_plan(&steps, &fleet, args.json);
            0
        }
        Ok((summary, outcome)) => {
            render.finish(&summary, started.elapsed());
            // A failure the flow did not see (the monitor window's) is said here.
            if let Some((_, Some(why), _)) = &outcome {
                if summary.ok() {
                    output::error(why);
                }
            }
            let released = matches!(outcome, None | Some((_, _, rollout::Outcome::Succeeded)));
            match outcome {
                Some((n, _, rollout::Outcome::Succeeded)) => {
                    output::status(&format!("release {n} recorded on every host"))
                }
                Some((n, _, rollout::Outcome::RolledBack { to, changed, took })) => {
                    output::error(&format!(
                        "release {n} failed and was rolled back: every host that changed is on release {to} again ({} pod{} restored in {:.1}s: {})",
                        changed.len(),
                        if changed.len() == 1 { "" } else { "s" },
                        took.as_secs_f64(),
                        changed.join(", ")
                    ));
                }
                Some((n, _, rollout::Outcome::Left(why))) => {
                    output::error(&format!("release {n} failed and is left as it is: {why}"))
                }
                None => {}
            }
            if let Err(e) = render
                .summary
                .append(&project.name, &summary, started.elapsed())
            {
                output::warning(&format!("cannot write the GitHub step summary: {e}"));
            }
            *summary_written = true;
            u8::from(!summary.ok() || !released)
        }
    };
    if unreachable > 0 {
        // Only `skip` or `reschedule` get here (`fail` stopped before any change): the user
        // chose to go on without these hosts, so they do not fail the run by themselves.
        output::warning(&format!(
            "{unreachable} host{} did not answer and {}: {} (`compose-fleet hosts` says why; the next `up` after {} converges {})",
            if unreachable == 1 { "" } else { "s" },
            match (args.on_unreachable, unreachable == 1) {
                (exec::OnUnreachable::Reschedule, true) => "was treated as gone",
                (exec::OnUnreachable::Reschedule, false) => "were treated as gone",
                (_, true) => "was left as it is",
                (_, false) => "were left as they are",
            },
            connected
                .unreachable
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if unreachable == 1 { "it answers again" } else { "they answer again" },
            if unreachable == 1 { "it" } else { "them" },
        ));
    }
    if unplaced > 0 {
        output::error(&format!(
            "{unplaced} replica{} of the hosts that did not answer could not be placed on the others (see the warnings above); the fleet runs without {}",
            if unplaced == 1 { "" } else { "s" },
            if unplaced == 1 { "it" } else { "them" },
        ));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::from(code))
}

/// A rollout's news, as plain status lines.
pub fn show_note(n: rollout::Note) {
    match n {
        rollout::Note::Batch {
            service,
            number,
            of,
            moves,
        } => output::status(&format!(
            "rollback batch {number}/{of} ({service}): {}",
            moves.join(", ")
        )),
        rollout::Note::Ready { host, pod } => output::status(&format!("{pod}@{host}: ready")),
        rollout::Note::Warning(w) => output::warning(&w),
    }
}

/// The credentials for the registries of the project's images: the inventory's, else the user's
/// docker config's (what cannot be had from the docker config is a warning: a public registry
/// needs none; an inventory password that cannot be read is an error).
pub fn registry_auth(
    project: &crate::compose::model::Project,
    fleet: &crate::inventory::Fleet,
) -> Result<BTreeMap<String, crate::proto::RegistryAuth>, Failure> {
    let (auth, warnings) = crate::deploy::auth::for_images(
        project.services.values().filter_map(|s| s.image.as_deref()),
        &fleet.registries,
    )
    .map_err(Failure::User)?;
    for w in warnings {
        output::warning(&w);
    }
    Ok(auth)
}

/// `plan --detailed-exitcode`: the changes `up` would make, printed as `up --dry-run` prints
/// them; exit 0 for none, 2 for some, 1 for any error (an unreachable host included).
pub fn changes(global: &GlobalArgs, conn: &ConnArgs, json: bool) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let mut project = checked.loaded.project.clone();
    crate::build::pin_recorded(&mut project, &super::build::store()?, &fleet.build);
    let project = &project;
    let files = match exec::read_files(project) {
        Ok(files) => files,
        Err(e) => {
            if let Failure::User(m) | Failure::Internal(m) = failure(e, &checked.loaded.sources) {
                output::error(&m);
            }
            return Ok(ExitCode::from(1));
        }
    };
    let opts = exec::Options {
        ssh: conn.ssh_options(),
        files,
        ..exec::Options::default()
    };
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let outcome = rt.block_on(async {
        let connected = exec::connect(&fleet, &project.name, &opts.ssh, &mut |p| {
            if let Progress::Unreachable { host, reason } = p {
                output::error(&format!("{host}: {reason}"));
            }
        })
        .await?;
        let prepared = exec::prepare(
            project,
            &checked.graph,
            &fleet,
            &connected.facts,
            &connected.observed,
            &opts,
        )?;
        for w in &prepared.warnings {
            output::warning(w);
        }
        Ok((connected.unreachable.len(), prepared.flow.plan()))
    });
    // Every error is exit 1 here: 2 means "changes".
    let (unreachable, steps) = match outcome {
        Ok(v) => v,
        Err(e) => {
            return match failure(e, &checked.loaded.sources) {
                Failure::User(m) | Failure::Internal(m) => {
                    output::error(&m);
                    Ok(ExitCode::from(1))
                }
                Failure::Reported(_) => Ok(ExitCode::from(1)),
            }
        }
    };
    print_plan(&steps, &fleet, json);
    Ok(ExitCode::from(match (unreachable, steps.is_empty()) {
        (0, true) => 0,
        (0, false) => 2,
        _ => 1,
    }))
}

/// `up --dry-run`: the changes per host, every host of the fleet listed.
pub fn print_plan(steps: &[Step], fleet: &Fleet, json: bool) {
    if json {
        for s in steps {
            let line = json!({
                "host": s.host,
                "pod": s.pod,
                "change": change_str(&s.change),
                "waits_for": s.waits_for.iter().map(|d| json!({
                    "service": d.to, "condition": condition_str(d.condition), "by": d.from,
                })).collect::<Vec<_>>(),
            });
            output::data(&line.to_string());
        }
        return;
    }
    let mut by_host: BTreeMap<&str, Vec<&Step>> = BTreeMap::new();
    for s in steps {
        by_host.entry(s.host.as_str()).or_default().push(s);
    }
    let mut out = String::new();
    for h in &fleet.hosts {
        let Some(steps) = by_host.get(h.name.as_str()) else {
            out.push_str(&format!("{}: no changes\n", h.name));
            continue;
        };
        out.push_str(&format!("{}:\n", h.name));
        for s in steps {
            let waits: Vec<String> = s
                .waits_for
                .iter()
                .map(|d| format!("{} {}", d.to, condition_str(d.condition)))
                .collect();
            let waits = if waits.is_empty() {
                String::new()
            } else {
                format!("  (waits for {})", waits.join(", "))
            };
            out.push_str(&format!(
                "  {:<8} {}{waits}\n",
                change_str(&s.change),
                s.pod
            ));
        }
    }
    out.push_str(&format!(
        "{} change{}\n",
        steps.len(),
        if steps.len() == 1 { "" } else { "s" }
    ));
    output::data(&out);
}

fn change_str(c: &Change) -> String {
    match c {
        Change::Create => "create".into(),
        Change::Replace => "replace".into(),
        Change::Restart => "restart".into(),
        Change::Remove(r) => format!("remove ({})", reason_str(r)),
        Change::Retire => "retire the outgoing generation".into(),
    }
}

fn reason_str(r: &RemoveReason) -> String {
    match r {
        RemoveReason::Moved { to } => format!("moved to {to}"),
        RemoveReason::NotDesired => "not desired".into(),
        RemoveReason::Orphan => "orphan".into(),
    }
}

/// Renders progress one of three ways.
enum Mode {
    Json,
    Plain,
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<String, ProgressBar>,
    },
}

struct Renderer {
    mode: Mode,
    /// What is in flight, by host or `pod@host`, named by `--timeout` when it expires.
    running: BTreeMap<String, lifetime::Activity>,
    /// The release as GitHub's step summary shows it.
    summary: StepSummary,
}

impl Renderer {
    fn new(json: bool) -> Renderer {
        let mode = if json {
            Mode::Json
        } else if output::interactive() {
            Mode::Bars {
                multi: MultiProgress::new(),
                bars: BTreeMap::new(),
            }
        } else {
            Mode::Plain
        };
        Renderer {
            mode,
            running: BTreeMap::new(),
            summary: StepSummary::default(),
        }
    }

    fn show(&mut self, p: &Progress) {
        self.track(p);
        self.summary.record(p);
        match &mut self.mode {
            Mode::Json => output::data(&to_json(p).to_string()),
            Mode::Plain => {
                if let Some((subject, text)) = describe(p) {
                    output::status(&format!("{} {subject} {text}", timestamp()));
                }
            }
            Mode::Bars { multi, bars } => {
                let Some((subject, text)) = describe(p) else {
                    return;
                };
                match p {
                    Progress::Issued(_) | Progress::Event(_) if !subject.is_empty() => {
                        let mut key = pod_key(p).unwrap_or_else(|| subject.clone());
                        // A container's events go to its pod's line: a pod of one service is
                        // named `service-replica`.
                        if let Progress::Event(
                            Event::Started(at)
                            | Event::Healthy(at)
                            | Event::Unhealthy(at)
                            | Event::Exited(at, _),
                        ) = p
                        {
                            let pod = format!("{}-{}@{}", at.service, at.replica, at.host);
                            if bars.contains_key(&pod) {
                                key = pod;
                            }
                        }
                        let bar = bars.entry(key.clone()).or_insert_with(|| {
                            let bar = multi.add(ProgressBar::new_spinner());
                            bar.set_style(
                                ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            bar.set_prefix(key);
                            bar.enable_steady_tick(Duration::from_millis(120));
                            bar
                        });
                        if is_final(p) {
                            bar.finish_with_message(text);
                        } else {
                            bar.set_message(text);
                        }
                    }
                    _ => {
                        let _ = multi.println(format!("{subject} {text}").trim());
                    }
                }
            }
        }
    }

    fn finish(&mut self, summary: &Summary, took: Duration) {
        if let Mode::Bars { bars, .. } = &mut self.mode {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.finish();
                }
            }
        }
        if matches!(self.mode, Mode::Json) {
            return;
        }
        let line = format!(
            "created {}, replaced {}, restarted {}, removed {}, unchanged {} in {:.1}s",
            summary.created,
            summary.replaced,
            summary.restarted,
            summary.removed,
            summary.kept,
            took.as_secs_f64()
        );
        if summary.ok() {
            output::status(&line);
        } else {
            // Plain lines said each failure as it happened; bars may have hidden them.
            if matches!(self.mode, Mode::Bars { .. }) {
                for f in &summary.failures {
                    output::error(&f.to_string());
                }
            }
            output::error(&format!("the deploy failed ({line})"));
        }
    }
}

impl Renderer {
    /// Keeps [`Renderer::running`] up to date: hosts until they answer, pods until they are
    /// healthy, exited, removed or failed.
    fn track(&mut self, p: &Progress) {
        match p {
            Progress::Connected { host, .. } | Progress::Unreachable { host, .. } => {
                self.running.remove(host);
            }
            Progress::Issued(_) => {
                if let (Some(key), Some((_, text))) = (pod_key(p), describe(p)) {
                    let what = format!("{text} {key}");
                    self.running.insert(key, lifetime::activity(what));
                }
            }
            Progress::Event(Event::Started(at)) => {
                let key = format!("{}-{}@{}", at.service, at.replica, at.host);
                if self.running.contains_key(&key) {
                    let what = format!("waiting for {at} (started, not yet healthy or done)");
                    self.running.insert(key, lifetime::activity(what));
                }
            }
            Progress::Event(Event::Healthy(at) | Event::Unhealthy(at) | Event::Exited(at, _)) => {
                self.running
                    .remove(&format!("{}-{}@{}", at.service, at.replica, at.host));
            }
            Progress::Event(
                Event::Removed { host, pod } | Event::ActionFailed { host, pod, .. },
            ) => {
                self.running.remove(&format!("{pod}@{host}"));
            }
            Progress::Done(_) => self.running.clear(),
            _ => {}
        }
    }
}

/// What `up` did, as a markdown summary for `$GITHUB_STEP_SUMMARY`: the hosts, the services,
/// every change with its result and how long it took.
#[derive(Default)]
struct StepSummary {
    /// host → (pods of the project before, round trip) or why unreachable.
    hosts: BTreeMap<String, Result<(usize, Duration), String>>,
    /// `pod@host` → (change, host, pod, issued at, result and when).
    changes: BTreeMap<String, PodChange>,
    /// service → host → last state seen.
    services: BTreeMap<String, BTreeMap<String, String>>,
}

struct PodChange {
    change: String,
    host: String,
    pod: String,
    issued: Instant,
    result: Option<(String, Duration)>,
}

impl StepSummary {
    fn record(&mut self, p: &Progress) {
        let now = Instant::now();
        let mut finish = |key: String, result: String| {
            if let Some(c) = self.changes.get_mut(&key) {
                let took = now.duration_since(c.issued);
                c.result = Some((result, took));
            }
        };
        match p {
            Progress::Connected { host, pods, rtt } => {
                self.hosts.insert(host.clone(), Ok((*pods, *rtt)));
            }
            Progress::Unreachable { host, reason } => {
                self.hosts.insert(host.clone(), Err(reason.clone()));
            }
            Progress::Issued(
                Action::Create { host, pod }
                | Action::Replace { host, pod }
                | Action::Restart { host, pod }
                | Action::Remove { host, pod, .. },
            ) => {
                let change = describe(p).map(|(_, t)| t).unwrap_or_default();
                self.changes.insert(
                    format!("{pod}@{host}"),
                    PodChange {
                        change,
                        host: host.clone(),
                        pod: pod.clone(),
                        issued: now,
                        result: None,
                    },
                );
            }
            Progress::Event(e) => {
                let (at, state) = match e {
                    Event::Started(at) => (at, "started".to_string()),
                    Event::Healthy(at) => (at, "healthy".to_string()),
                    Event::Unhealthy(at) => (at, "unhealthy".to_string()),
                    Event::Exited(at, code) => (at, format!("exited ({code})")),
                    Event::Removed { host, pod } => {
                        finish(format!("{pod}@{host}"), "removed".into());
                        return;
                    }
                    Event::ActionFailed { host, pod, reason } => {
                        finish(format!("{pod}@{host}"), format!("failed: {reason}"));
                        return;
                    }
                    _ => return,
                };
                finish(
                    format!("{}-{}@{}", at.service, at.replica, at.host),
                    state.clone(),
                );
                self.services
                    .entry(at.service.clone())
                    .or_default()
                    .insert(format!("{}.{}@{}", at.service, at.replica, at.host), state);
            }
            _ => {}
        }
    }

    /// The markdown of the release.
    fn markdown(&self, project: &str, summary: &Summary, took: Duration) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut md = format!(
            "### compose-fleet up: `{}` {}\n\ncreated {}, replaced {}, restarted {}, removed {}, \
             unchanged {} in {}\n\n",
            cell(project),
            if summary.ok() { "converged" } else { "failed" },
            summary.created,
            summary.replaced,
            summary.restarted,
            summary.removed,
            summary.kept,
            crate::human::format_duration(took)
        );
        md.push_str("| Host | Status | Pods before | Round trip |\n|---|---|---|---|\n");
        for (host, state) in &self.hosts {
            match state {
                Ok((pods, rtt)) => md.push_str(&format!(
                    "| {} | connected | {pods} | {:.0} ms |\n",
                    cell(host),
                    rtt.as_secs_f64() * 1000.0
                )),
                Err(why) => md.push_str(&format!(
                    "| {} | unreachable: {} | - | - |\n",
                    cell(host),
                    cell(why)
                )),
            }
        }
        if !self.services.is_empty() {
            md.push_str("\n| Service | Replicas |\n|---|---|\n");
            for (service, replicas) in &self.services {
                let list: Vec<String> = replicas
                    .iter()
                    .map(|(r, state)| format!("{} {}", cell(r), cell(state)))
                    .collect();
                md.push_str(&format!("| {} | {} |\n", cell(service), list.join(", ")));
            }
        }
        md.push_str("\n| Change | Pod | Host | Result | Took |\n|---|---|---|---|---|\n");
        if self.changes.is_empty() {
            md.push_str("| none | - | - | - | - |\n");
        }
        for c in self.changes.values() {
            let (result, took) = match &c.result {
                Some((r, t)) => (r.clone(), crate::human::format_duration(*t)),
                None => ("not finished".into(), "-".into()),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&c.change),
                cell(&c.pod),
                cell(&c.host),
                cell(&result),
                took
            ));
        }
        for f in &summary.failures {
            md.push_str(&format!("\n> **error:** {}\n", cell(&f.to_string())));
        }
        md.push('\n');
        md
    }

    /// Appends the markdown to `$GITHUB_STEP_SUMMARY` under GitHub Actions.
    fn append(&self, project: &str, summary: &Summary, took: Duration) -> std::io::Result<()> {
        if !matches!(output::Ci::detect(), output::Ci::GitHub { .. }) {
            return Ok(());
        }
        let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
            return Ok(());
        };
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(self.markdown(project, summary, took).as_bytes())
    }
}

/// The pod a progress item is about, as `pod@host`, to group bars.
fn pod_key(p: &Progress) -> Option<String> {
    match p {
        Progress::Issued(
            Action::Create { host, pod }
            | Action::Replace { host, pod }
            | Action::Restart { host, pod }
            | Action::Remove { host, pod, .. },
        ) => Some(format!("{pod}@{host}")),
        Progress::Event(
            Event::Started(at) | Event::Healthy(at) | Event::Unhealthy(at) | Event::Exited(at, _),
        ) => Some(at.to_string()),
        Progress::Event(Event::Removed { host, pod } | Event::ActionFailed { host, pod, .. }) => {
            Some(format!("{pod}@{host}"))
        }
        _ => None,
    }
}

fn is_final(p: &Progress) -> bool {
    matches!(
        p,
        Progress::Event(
            Event::Healthy(_)
                | Event::Unhealthy(_)
                | Event::Exited(..)
                | Event::Removed { .. }
                | Event::ActionFailed { .. }
        )
    )
}

/// `(subject, text)` of a progress item for humans; `None` for what is not worth a line.
fn describe(p: &Progress) -> Option<(String, String)> {
    Some(match p {
        Progress::Connected { host, pods, rtt } => (
            host.clone(),
            format!(
                "connected ({pods} pod{} of the project, {:.0}ms)",
                if *pods == 1 { "" } else { "s" },
                rtt.as_secs_f64() * 1000.0
            ),
        ),
        Progress::Unreachable { host, reason } => (host.clone(), format!("unreachable: {reason}")),
        Progress::Warning(w) => ("warning:".into(), w.clone()),
        Progress::Issued(a) => match a {
            Action::Create { host, pod } => (format!("{pod}@{host}"), "creating".into()),
            Action::Replace { host, pod } => (format!("{pod}@{host}"), "replacing".into()),
            Action::Restart { host, pod } => (format!("{pod}@{host}"), "restarting".into()),
            Action::Remove { host, pod, reason } => (
                format!("{pod}@{host}"),
                format!("removing ({})", reason_str(reason)),
            ),
            Action::Retire { host, pod } => (
                format!("{pod}@{host}"),
                "retiring the outgoing generation (out of the service map, then stopped)".into(),
            ),
            _ => return None,
        },
        Progress::Event(e) => match e {
            Event::Started(at) => (at.to_string(), "started".into()),
            Event::Healthy(at) => (at.to_string(), "healthy".into()),
            Event::Unhealthy(at) => (at.to_string(), "unhealthy".into()),
            Event::Exited(at, code) => (at.to_string(), format!("exited with code {code}")),
            Event::Removed { host, pod } => (format!("{pod}@{host}"), "removed".into()),
            Event::Retired { host, pod } => (
                format!("{pod}@{host}"),
                "outgoing generation retired".into(),
            ),
            Event::ActionFailed { host, pod, reason } => {
                (format!("{pod}@{host}"), format!("failed: {reason}"))
            }
            Event::HostLost { host, reason } => (host.clone(), format!("lost: {reason}")),
            Event::Abort { reason } => ("stopping:".into(), reason.clone()),
            Event::PullDone { host, image } => (host.clone(), format!("pulled {image}")),
            Event::PullFailed {
                host,
                image,
                reason,
            } => (host.clone(), format!("pulling {image} failed: {reason}")),
        },
        Progress::Logs { at, lines } => (
            at.to_string(),
            format!(
                "last log lines:\n{}",
                lines
                    .iter()
                    .map(|l| format!("    | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ),
        Progress::Failed(f) => ("error:".into(), f.to_string()),
        Progress::Done(_) => return None,
    })
}

/// The `--json` form of a progress item: `{"time_ms": …, "event": "…", …}`.
fn to_json(p: &Progress) -> serde_json::Value {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut v = match p {
        Progress::Connected { host, pods, rtt } => json!({
            "event": "connected", "host": host, "pods": pods,
            "rtt_ms": rtt.as_secs_f64() * 1000.0,
        }),
        Progress::Unreachable { host, reason } => {
            json!({"event": "unreachable", "host": host, "reason": reason})
        }
        Progress::Warning(w) => json!({"event": "warning", "message": w}),
        Progress::Issued(a) => match a {
            Action::Create { host, pod } => json!({"event": "create", "host": host, "pod": pod}),
            Action::Replace { host, pod } => json!({"event": "replace", "host": host, "pod": pod}),
            Action::Restart { host, pod } => json!({"event": "restart", "host": host, "pod": pod}),
            Action::Remove { host, pod, reason } => json!({
                "event": "remove", "host": host, "pod": pod, "reason": reason_str(reason),
            }),
            Action::Retire { host, pod } => json!({"event": "retire", "host": host, "pod": pod}),
            other => json!({"event": "action", "action": format!("{other:?}")}),
        },
        Progress::Event(e) => {
            let at = |name: &str, at: &crate::deploy::flow::At| json!({"event": name, "host": at.host, "service": at.service, "replica": at.replica});
            match e {
                Event::Started(a) => at("started", a),
                Event::Healthy(a) => at("healthy", a),
                Event::Unhealthy(a) => at("unhealthy", a),
                Event::Exited(a, code) => {
                    let mut v = at("exited", a);
                    v["code"] = json!(code);
                    v
                }
                Event::Removed { host, pod } => {
                    json!({"event": "removed", "host": host, "pod": pod})
                }
                Event::Retired { host, pod } => {
                    json!({"event": "retired", "host": host, "pod": pod})
                }
                Event::ActionFailed { host, pod, reason } => {
                    json!({"event": "action_failed", "host": host, "pod": pod, "reason": reason})
                }
                Event::HostLost { host, reason } => {
                    json!({"event": "host_lost", "host": host, "reason": reason})
                }
                Event::Abort { reason } => json!({"event": "abort", "reason": reason}),
                Event::PullDone { host, image } => {
                    json!({"event": "pulled", "host": host, "image": image})
                }
                Event::PullFailed {
                    host,
                    image,
                    reason,
                } => {
                    json!({"event": "pull_failed", "host": host, "image": image, "reason": reason})
                }
            }
        }
        Progress::Logs { at, lines } => json!({
            "event": "logs", "host": at.host, "service": at.service, "replica": at.replica,
            "lines": lines,
        }),
        Progress::Failed(f) => json!({
            "event": "failed", "host": f.host, "pod": f.pod,
            "service": f.replica.as_ref().map(|r| r.service.clone()),
            "replica": f.replica.as_ref().map(|r| r.replica),
            "message": f.to_string(),
        }),
        Progress::Done(s) => json!({
            "event": "done", "ok": s.ok(), "created": s.created, "replaced": s.replaced,
            "restarted": s.restarted, "removed": s.removed, "unchanged": s.kept,
            "failures": s.failures.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    };
    v["time_ms"] = json!(time_ms);
    v
}

/// `HH:MM:SS.mmm` in UTC, for plain lines.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}
