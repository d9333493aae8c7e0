//! A discrete-event simulation of a deploy, for tests and the deploy benchmark: hosts that answer
//! each action after a scripted time, a simulated clock, and two reference models to compare the
//! [`Flow`]'s wall time with — the critical path (the least any deploy can take) and level-by-level
//! waves (what tools that start dependencies in batches take). Pure: time is a number.
//!
//! The model, per service (every replica alike): a pull of an image takes `pull[image]`; a
//! container is `Started` `start[service]` after its pod's action; then `Healthy` (or `Unhealthy`)
//! `health[service]` later when it has a healthcheck; a one-shot job `Exited` `exit[service].0`
//! after starting. A remove answers after `remove`. Unlisted durations are 0.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::desired::Desired;
use super::flow::{Action, At, Dependency, Event, Flow, Summary};
use crate::compose::model::Condition;

/// How long everything takes, and what fails.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Image → pull time.
    pub pull: BTreeMap<String, u64>,
    /// Images whose pull fails.
    pub pull_fails: BTreeSet<String>,
    /// Service → time from its pod's action to `Started`.
    pub start: BTreeMap<String, u64>,
    /// Service → time from `Started` to `Healthy` (healthchecked containers only).
    pub health: BTreeMap<String, u64>,
    /// Services that turn `Unhealthy` instead of healthy.
    pub unhealthy: BTreeSet<String>,
    /// Service → (time from `Started` to `Exited`, exit code): one-shot jobs.
    pub exit: BTreeMap<String, (u64, i32)>,
    /// Time a remove takes.
    pub remove: u64,
}

impl Script {
    fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
        map.get(key).copied().unwrap_or(0)
    }
}

/// What a simulated run did.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The simulated time `Done` came out.
    pub wall: u64,
    pub summary: Option<Summary>,
    /// Every action with the time it was issued, in order.
    pub actions: Vec<(u64, Action)>,
    /// Every event with the time it was fed, in order.
    pub events: Vec<(u64, Event)>,
}

impl Run {
    /// When the action creating, replacing or restarting `pod` was issued.
    pub fn issued(&self, pod: &str) -> Option<u64> {
        self.actions.iter().find_map(|(t, a)| match a {
            Action::Create { pod: p, .. }
            | Action::Replace { pod: p, .. }
            | Action::Restart { pod: p, .. }
                if p == pod =>
            {
                Some(*t)
            }
            _ => None,
        })
    }
}

/// Runs `flow` against hosts behaving as `script` says. Events due at the same time are fed in
/// the order their actions were issued. Stops at `Done`, or when nothing is left to happen.
pub fn run(flow: &mut Flow, desired: &Desired, script: &Script) -> Run {
    // (time, sequence number) → event: ties go in the order they were scheduled.
    let mut queue: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut pending: BTreeMap<u64, Event> = BTreeMap::new();
    let mut seq = 0u64;
    let mut out = Run::default();
    let mut now = 0u64;
    let mut actions = flow.start();
    loop {
        for a in actions {
            for (dt, e) in reactions(&a, desired, script) {
                queue.push(Reverse((now + dt, seq)));
                pending.insert(seq, e);
                seq += 1;
            }
            if let Action::Done(s) = &a {
                out.wall = now;
                out.summary = Some(s.clone());
            }
            out.actions.push((now, a));
        }
        if out.summary.is_some() {
            break;
        }
        let Some(Reverse((at, id))) = queue.pop() else {
            break;
        };
        now = at;
        let Some(event) = pending.remove(&id) else {
            break;
        };
        out.events.push((now, event.clone()));
        actions = flow.on(event);
    }
    out
}

/// The events an action causes, each with its delay.
fn reactions(action: &Action, desired: &Desired, script: &Script) -> Vec<(u64, Event)> {
    match action {
        Action::Pull { host, image } => {
            let dt = Script::get(&script.pull, image);
            let e = if script.pull_fails.contains(image) {
                Event::PullFailed {
                    host: host.clone(),
                    image: image.clone(),
                    reason: "manifest unknown".into(),
                }
            } else {
                Event::PullDone {
                    host: host.clone(),
                    image: image.clone(),
                }
            };
            vec![(dt, e)]
        }
        Action::Create { host, pod }
        | Action::Replace { host, pod }
        | Action::Restart { host, pod } => {
            let Some(pod) = desired.pod(host, pod) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for r in &pod.containers {
                let at = At {
                    host: host.clone(),
                    service: r.service.clone(),
                    replica: r.replica,
                };
                let started = Script::get(&script.start, &r.service);
                out.push((started, Event::Started(at.clone())));
                if pod.healthchecked.contains(&r.service) {
                    let t = started + Script::get(&script.health, &r.service);
                    if script.unhealthy.contains(&r.service) {
                        out.push((t, Event::Unhealthy(at.clone())));
                    } else {
                        out.push((t, Event::Healthy(at.clone())));
                    }
                }
                if let Some((dt, code)) = script.exit.get(&r.service) {
                    out.push((started + dt, Event::Exited(at, *code)));
                }
            }
            out
        }
        Action::Remove { host, pod, .. } => vec![(
            script.remove,
            Event::Removed {
                host: host.clone(),
                pod: pod.clone(),
            },
        )],
        Action::Retire { host, pod } => vec![(
            script.remove,
            Event::Retired {
                host: host.clone(),
                pod: pod.clone(),
            },
        )],
        Action::Warn(_) | Action::Fail(_) | Action::Done(_) => Vec::new(),
    }
}

/// When each service's condition holds, per the model, if every service starts the moment its
/// dependencies' conditions hold and its images are pulled (pulls all begin at 0): `(started,
/// healthy, completed)` per service. `order` lists services dependencies first.
fn model_times(
    order: &[&str],
    images: &BTreeMap<&str, BTreeSet<&str>>,
    deps: &[Dependency],
    script: &Script,
) -> BTreeMap<String, [u64; 3]> {
    let mut times: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for &s in order {
        let pulled = images
            .get(s)
            .into_iter()
            .flatten()
            .map(|i| Script::get(&script.pull, i))
            .max()
            .unwrap_or(0);
        let ready = deps
            .iter()
            .filter(|d| d.from == s)
            .filter_map(|d| times.get(&d.to).map(|t| t[cond_index(d.condition)]))
            .max()
            .unwrap_or(0);
        let started = pulled.max(ready) + Script::get(&script.start, s);
        let healthy = started + Script::get(&script.health, s);
        let completed = started + script.exit.get(s).map_or(0, |e| e.0);
        times.insert(s.to_string(), [started, healthy, completed]);
    }
    times
}

fn cond_index(c: Condition) -> usize {
    match c {
        Condition::ServiceStarted => 0,
        Condition::ServiceHealthy => 1,
        Condition::ServiceCompletedSuccessfully => 2,
    }
}

fn images_of(desired: &Desired) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut images: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for pod in desired.pods() {
        for (r, c) in pod.containers.iter().zip(&pod.spec.containers) {
            images
                .entry(r.service.as_str())
                .or_default()
                .insert(c.image.as_str());
        }
    }
    images
}

/// The least wall time of deploying every service of `desired` from nothing: the longest chain of
/// pull, start and waited-for condition through the graph (`order`: dependencies first). A
/// deploy ends when every container has started.
pub fn critical_path(
    order: &[&str],
    desired: &Desired,
    deps: &[Dependency],
    script: &Script,
) -> u64 {
    let images = images_of(desired);
    let times = model_times(order, &images, deps, script);
    times.values().map(|t| t[0]).max().unwrap_or(0)
}

/// The wall time of starting the same services level by level: level k (the services whose
/// longest chain of dependencies has k edges) is pulled and started once every service of level
/// k−1 is ready (healthy, completed or started: the strongest condition anything waits for).
pub fn waves(order: &[&str], desired: &Desired, deps: &[Dependency], script: &Script) -> u64 {
    let images = images_of(desired);
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    for &s in order {
        let l = deps
            .iter()
            .filter(|d| d.from == s)
            .filter_map(|d| level.get(d.to.as_str()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level.insert(s, l);
    }
    let strongest = |s: &str| {
        deps.iter()
            .filter(|d| d.to == s)
            .map(|d| cond_index(d.condition))
            .max()
    };
    let mut t = 0u64;
    let top = level.values().copied().max().unwrap_or(0);
    for l in 0..=top {
        let wave: Vec<&str> = order
            .iter()
            .copied()
            .filter(|s| level.get(s) == Some(&l))
            .collect();
        let end = wave
            .iter()
            .map(|s| {
                let pulled = images
                    .get(s)
                    .into_iter()
                    .flatten()
                    .map(|i| Script::get(&script.pull, i))
                    .max()
                    .unwrap_or(0);
                let started = t + pulled + Script::get(&script.start, s);
                match strongest(s) {
                    Some(1) => started + Script::get(&script.health, s),
                    Some(2) => started + script.exit.get(*s).map_or(0, |e| e.0),
                    _ => started,
                }
            })
            .max()
            .unwrap_or(t);
        t = end;
    }
    t
}
