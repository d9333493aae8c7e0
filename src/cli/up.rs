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
use crate::graph::condition_str;
use crate::inventory::Fleet;
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
    /// Seconds the whole deploy may wait for containers to start, turn healthy or exit
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Accepted for docker compose compatibility: `up` always returns once deployed
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Build images before deploying (default: build only services never built)
    #[arg(long)]
    pub build: bool,
    /// The image builder to use (default: the first that works)
    #[arg(long, value_enum)]
    pub builder: Option<crate::build::Builder>,
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

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    // Services with `build:` are built here (on this machine) and named by digest.
    let mut project = checked.loaded.project.clone();
    let store = super::build::store()?;
    let built = if args.dry_run {
        crate::build::pin_recorded(&mut project, &store);
        Vec::new()
    } else {
        crate::build::prepare_up(
            &mut project,
            &args.services,
            args.build,
            args.builder,
            fleet.registries.values().any(|r| r.insecure),
            &store,
        )
        .map_err(Failure::User)?
    };
    let project = &project;
    let opts = exec::Options {
        ssh: args.conn.ssh_options(),
        remove_orphans: args.remove_orphans,
        services: args.services.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        ..exec::Options::default()
    };
    let insecure: Vec<String> = fleet
        .registries
        .iter()
        .filter(|(_, r)| r.insecure)
        .map(|(name, _)| name.clone())
        .collect();
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let mut render = Renderer::new(args.json);
    let started = Instant::now();
    let outcome = rt.block_on(async {
        let connected =
            exec::connect(&fleet, &project.name, &opts.ssh, &mut |p| render.show(&p)).await?;
        let prepared = exec::prepare(
            project,
            &checked.graph,
            &fleet,
            &connected.facts,
            &connected.observed,
            &opts,
        )?;
        if args.dry_run {
            for w in &prepared.warnings {
                render.show(&Progress::Warning(w.clone()));
            }
            let steps = prepared.flow.plan();
            return Ok((connected, Err(steps)));
        }
        // Built images go to the hosts that run them before any pod asks for them.
        crate::build::deliver::check_architectures(&prepared.desired, &built, &connected.facts)
            .map_err(ExecError::User)?;
        let delivered = crate::build::deliver::deliver_all(
            &connected.hosts,
            &prepared.desired,
            &built,
            &store,
            Duration::from_secs(120),
        )
        .await
        .map_err(ExecError::User)?;
        for d in &delivered {
            output::status(&format!(
                "{}: delivered {} ({} blobs, {} bytes sent, {} received by the agent, {} layers unpacked) in {:.2}s",
                d.host,
                d.reference,
                d.blobs_sent,
                d.bytes_sent,
                d.bytes_received,
                d.layers_unpacked,
                d.elapsed.as_secs_f64()
            ));
        }
        let (networks, why_not) = exec::fleet_networks(&fleet, &connected);
        if let Some(why) = why_not {
            render.show(&Progress::Warning(why));
        }
        let summary = exec::run(
            &connected.hosts,
            &networks,
            &project.name,
            &insecure,
            prepared,
            &opts,
            &mut |p| render.show(&p),
        )
        .await;
        Ok((connected, Ok(summary)))
    });
    let (connected, result) = outcome.map_err(|e| failure(e, &checked.loaded.sources))?;
    let unreachable = connected.unreachable.len();
    drop(rt);
    let code = match result {
        Err(steps) => {
            print_plan(&steps, &fleet, args.json);
            0
        }
        Ok(summary) => {
            render.finish(&summary, started.elapsed());
            u8::from(!summary.ok())
        }
    };
    if unreachable > 0 {
        output::error(&format!(
            "{unreachable} host{} could not be reached: {} (the fleet is not converged; `compose-fleet hosts` says why)",
            if unreachable == 1 { "" } else { "s" },
            connected
                .unreachable
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::from(code))
}

/// `plan --detailed-exitcode`: the changes `up` would make, printed as `up --dry-run` prints
/// them; exit 0 for none, 2 for some, 1 for any error (an unreachable host included).
pub fn changes(global: &GlobalArgs, conn: &ConnArgs, json: bool) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let mut project = checked.loaded.project.clone();
    crate::build::pin_recorded(&mut project, &super::build::store()?);
    let project = &project;
    let opts = exec::Options {
        ssh: conn.ssh_options(),
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
        Renderer { mode }
    }

    fn show(&mut self, p: &Progress) {
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
            _ => return None,
        },
        Progress::Event(e) => match e {
            Event::Started(at) => (at.to_string(), "started".into()),
            Event::Healthy(at) => (at.to_string(), "healthy".into()),
            Event::Unhealthy(at) => (at.to_string(), "unhealthy".into()),
            Event::Exited(at, code) => (at.to_string(), format!("exited with code {code}")),
            Event::Removed { host, pod } => (format!("{pod}@{host}"), "removed".into()),
            Event::ActionFailed { host, pod, reason } => {
                (format!("{pod}@{host}"), format!("failed: {reason}"))
            }
            Event::HostLost { host, reason } => (host.clone(), format!("lost: {reason}")),
            Event::Abort { reason } => ("stopping:".into(), reason.clone()),
            Event::PullDone { .. } | Event::PullFailed { .. } => return None,
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
