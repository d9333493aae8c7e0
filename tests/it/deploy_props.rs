//! Properties of the deploy flow on random projects (proptest): random dependency graphs with every
//! condition kind, random replicas, hosts and running pods, random outcomes (unhealthy, failing
//! jobs, failed pulls, refused pods, lost hosts), and the hosts' answers delivered in random order.
//!
//! Whatever happens: no pod starts before its conditions hold (checked against the events fed so
//! far, independently of the flow), no pod starts before its images are pulled on its host, no pod
//! starts twice, nothing new starts after a failure, `Done` comes exactly once and by the time the
//! hosts have nothing more to say, and the same inputs give the same actions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use compose_fleet::compose::model::Condition;
use compose_fleet::deploy::desired::{self, Desired, PodInput};
use compose_fleet::deploy::diff::{self, ObservedPod};
use compose_fleet::deploy::flow::{Action, At, Dependency, Event, Flow, Options};
use compose_fleet::deploy::sim;
use compose_fleet::proto::{self, ContainerSpec, PodSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Service {
    replicas: u32,
    healthcheck: bool,
    unhealthy: bool,
    /// A one-shot job: exits with this code after starting.
    job: Option<i32>,
}

#[derive(Debug, Clone)]
struct Case {
    services: Vec<Service>,
    deps: Vec<Dependency>,
    /// Per pod (service, replica): host index and what runs now (0 nothing, 1 same, 2 changed).
    pods: BTreeMap<(usize, u32), (usize, u8)>,

    failing_images: BTreeSet<usize>,
    refused: BTreeSet<(usize, u32)>,
    /// Lose this host after this many events.
    lose: Option<(usize, usize)>,
    wait: bool,
    /// Which pending answer is delivered next, for each step.
    choices: Vec<u32>,
}

fn name(s: usize) -> String {
    format!("s{s}")
}

fn image(s: usize) -> String {
    format!("img{}", s % 3)
}

fn condition(i: u8) -> Condition {
    match i % 3 {
        0 => Condition::ServiceStarted,
        1 => Condition::ServiceHealthy,
        _ => Condition::ServiceCompletedSuccessfully,
    }
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..=8, 1usize..=3).prop_flat_map(|(n, hosts)| {
        let edges = proptest::collection::vec(
            (
                0..n,
                0..n,
                any::<u8>(),
                prop::bool::weighted(0.8),
                any::<bool>(),
            ),
            0..=n * 2,
        );
        let services = proptest::collection::vec(
            (
                prop_oneof![1 => Just(0u32), 4 => 1u32..=3],
                any::<bool>(),
                prop::bool::weighted(0.15),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
            ),
            n,
        );
        // What runs now: mostly nothing or another spec, so that most cases have work to do.
        let runs = prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
        let placement = proptest::collection::vec((0..hosts, runs), n * 3);
        (
            Just((n, hosts)),
            edges,
            services,
            placement,
            proptest::option::weighted(0.15, 0usize..3)
                .prop_map(|i| i.into_iter().collect::<BTreeSet<usize>>()),
            proptest::option::weighted(0.15, (0..n, 1u32..=3))
                .prop_map(|p| p.into_iter().collect::<BTreeSet<(usize, u32)>>()),
            proptest::option::weighted(0.2, (0..hosts, 0usize..20)),
            any::<bool>(),
            proptest::collection::vec(any::<u32>(), 0..300),
        )
            .prop_map(
                |(_, edges, svcs, placement, failing, refused, lose, wait, choices)| {
                    // Edges only from a higher index to a lower one: acyclic.
                    let mut deps: BTreeMap<(usize, usize), Dependency> = BTreeMap::new();
                    for (a, b, c, required, restart) in edges {
                        if a == b {
                            continue;
                        }
                        let (from, to) = (a.max(b), a.min(b));
                        deps.entry((from, to)).or_insert(Dependency {
                            from: name(from),
                            to: name(to),
                            condition: condition(c),
                            required,
                            restart,
                        });
                    }
                    let mut services: Vec<Service> = svcs
                        .into_iter()
                        .map(|(replicas, hc, unhealthy, job, fails)| Service {
                            replicas,
                            healthcheck: hc,
                            unhealthy,
                            job: job.then_some(if fails { 1 } else { 0 }),
                        })
                        .collect();
                    // What is waited for must be able to answer: a required health wait needs a
                    // healthcheck, a completion wait a job.
                    for ((_, to), d) in &deps {
                        match d.condition {
                            Condition::ServiceHealthy if d.required => {
                                services[*to].healthcheck = true
                            }
                            Condition::ServiceCompletedSuccessfully
                                if services[*to].job.is_none() =>
                            {
                                services[*to].job = Some(0)
                            }
                            _ => {}
                        }
                    }
                    let mut pods = BTreeMap::new();
                    for (s, svc) in services.iter().enumerate() {
                        for r in 1..=svc.replicas {
                            pods.insert((s, r), placement[s * 3 + (r as usize - 1)]);
                        }
                    }
                    Case {
                        services,
                        deps: deps.into_values().collect(),
                        pods,

                        failing_images: failing,
                        refused,
                        lose,
                        wait,
                        choices,
                    }
                },
            )
    })
}

fn host(h: usize) -> String {
    format!("h{h}")
}

fn pod_name(s: usize, r: u32) -> String {
    format!("{}-{r}", name(s))
}

fn build(case: &Case) -> (Desired, Flow) {
    let mut inputs = Vec::new();
    for (&(s, r), &(h, _)) in &case.pods {
        let svc = &case.services[s];
        inputs.push(PodInput {
            host: host(h),
            spec: PodSpec {
                name: pod_name(s, r),
                hostname: pod_name(s, r),
                spec_hash: String::new(),
                containers: vec![ContainerSpec {
                    service: name(s),
                    replica: r,
                    image: image(s),
                    healthcheck: svc.healthcheck.then(|| proto::Healthcheck {
                        test: vec!["CMD".into(), "ok".into()],
                        interval_ms: 1000,
                        timeout_ms: 1000,
                        retries: 3,
                        start_period_ms: 0,
                        start_interval_ms: 0,
                    }),
                    ..ContainerSpec::default()
                }],
                ports: Vec::new(),
                network: Default::default(),
            },
            networks: Vec::new(),
        });
    }
    let managed: BTreeSet<String> = (0..case.services.len()).map(name).collect();
    let desired =
        desired::build(inputs, &BTreeMap::new(), managed.clone(), managed).expect("desired");
    let mut observed = diff::Observed::new();
    for (&(s, r), &(h, runs)) in &case.pods {
        let hash = match runs {
            1 => desired
                .pod(&host(h), &pod_name(s, r))
                .map(|p| p.spec_hash.clone())
                .unwrap_or_default(),
            2 => "old".into(),
            _ => continue,
        };
        observed.entry(host(h)).or_default().push(ObservedPod {
            name: pod_name(s, r),
            spec_hash: hash,
            services: vec![name(s)],
            stopped: false,
            outgoing: false,
        });
    }
    let d = diff::diff(&desired, &observed, false);
    let flow = Flow::new(&desired, &d, &case.deps, Options { wait: case.wait }).expect("flow");
    (desired, flow)
}

/// What the oracle knows of a container from the events fed since its pod's last action.
#[derive(Debug, Default, Clone)]
struct Seen {
    issued: bool,
    started: bool,
    healthy: bool,
    unhealthy: bool,
    exit: Option<i32>,
    /// Its action failed or its host was lost.
    failed: bool,
}

struct World<'a> {
    case: &'a Case,
    /// Chains of answers not yet delivered; each chain in order.
    pending: Vec<VecDeque<Event>>,
    seen: BTreeMap<(String, u32), Seen>,
    pulled: BTreeSet<(String, String)>,
    failed_pulls: BTreeSet<(String, String)>,
    issued: BTreeSet<String>,
    lost: BTreeSet<String>,
    log: Vec<String>,
    done: usize,
    failed: bool,
}

impl World<'_> {
    fn pod_of(&self, pod: &str) -> (usize, u32) {
        let (s, r) = pod.rsplit_once('-').expect("pod name");
        (
            s[1..].parse().expect("service index"),
            r.parse().expect("replica"),
        )
    }

    fn act(&mut self, action: &Action) -> Result<(), TestCaseError> {
        self.log.push(format!("{action:?}"));
        prop_assert_eq!(self.done, 0, "an action after Done: {:?}", action);
        match action {
            Action::Pull { host, image } => {
                let answer = if self.failing_image(image) {
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
                self.pending.push(VecDeque::from([answer]));
            }
            Action::Create { host, pod }
            | Action::Replace { host, pod }
            | Action::Restart { host, pod } => {
                prop_assert!(!self.failed, "{pod} started after a failure");
                prop_assert!(self.issued.insert(pod.clone()), "{pod} started twice");
                let (s, r) = self.pod_of(pod);
                self.check_gate(s, pod)?;
                if matches!(action, Action::Create { .. } | Action::Replace { .. }) {
                    prop_assert!(
                        self.pulled.contains(&(host.clone(), image(s))),
                        "{pod} started before its image was pulled on {host}"
                    );
                }
                self.seen.insert(
                    (name(s), r),
                    Seen {
                        issued: true,
                        ..Seen::default()
                    },
                );
                let svc = &self.case.services[s];
                let at = At {
                    host: host.clone(),
                    service: name(s),
                    replica: r,
                };
                let mut chain = VecDeque::new();
                if self.case.refused.contains(&(s, r)) {
                    chain.push_back(Event::ActionFailed {
                        host: host.clone(),
                        pod: pod.clone(),
                        reason: "refused".into(),
                    });
                } else {
                    chain.push_back(Event::Started(at.clone()));
                    if svc.healthcheck {
                        chain.push_back(if svc.unhealthy {
                            Event::Unhealthy(at.clone())
                        } else {
                            Event::Healthy(at.clone())
                        });
                    }
                    if let Some(code) = svc.job {
                        chain.push_back(Event::Exited(at, code));
                    }
                }
                self.pending.push(chain);
            }
            Action::Retire { host, pod } => {
                self.pending.push(VecDeque::from([Event::Retired {
                    host: host.clone(),
                    pod: pod.clone(),
                }]));
            }
            Action::Remove { host, pod, .. } => {
                self.pending.push(VecDeque::from([Event::Removed {
                    host: host.clone(),
                    pod: pod.clone(),
                }]));
            }
            Action::Warn(_) => {}
            Action::Fail(_) => self.failed = true,
            Action::Done(summary) => {
                self.done += 1;
                prop_assert_eq!(summary.ok(), !self.failed);
            }
        }
        Ok(())
    }

    fn failing_image(&self, image: &str) -> bool {
        self.case
            .failing_images
            .iter()
            .any(|i| format!("img{i}") == image)
    }

    /// Every edge from service `s` holds by what was fed so far (an optional one may instead
    /// never hold).
    fn check_gate(&self, s: usize, pod: &str) -> Result<(), TestCaseError> {
        for d in self.case.deps.iter().filter(|d| d.from == name(s)) {
            let to: usize = d.to[1..].parse().expect("index");
            let mut holds = true;
            let mut never = false;
            for (&(t, r), &(h, _)) in self.case.pods.iter().filter(|((t, _), _)| *t == to) {
                let pod_t = pod_name(t, r);
                let kept = !self.desired_changes(&pod_t);
                let seen = self.seen.get(&(name(t), r)).cloned().unwrap_or_default();
                if kept && !seen.issued {
                    continue; // running as wanted: satisfies at once
                }
                let pull_failed = self.failed_pulls.contains(&(host(h), image(t)));
                let failed = seen.failed || pull_failed || self.lost.contains(&host(h));
                let (ok, bad) = match d.condition {
                    Condition::ServiceStarted => (seen.started, failed),
                    Condition::ServiceHealthy => (
                        seen.healthy,
                        failed
                            || seen.unhealthy
                            || seen.exit.is_some()
                            || !self.case.services[t].healthcheck,
                    ),
                    Condition::ServiceCompletedSuccessfully => (
                        seen.exit == Some(0),
                        failed || seen.exit.is_some_and(|c| c != 0),
                    ),
                };
                holds &= ok;
                never |= bad && !ok;
            }
            if d.required {
                prop_assert!(
                    holds,
                    "{pod} started before {} held for {}",
                    d.to,
                    format!("{:?}", d.condition)
                );
            } else {
                prop_assert!(
                    holds || never,
                    "{pod} started while optional {} may still hold ({:?})",
                    d.to,
                    d.condition
                );
            }
        }
        Ok(())
    }

    /// Whether the desired state changes this pod (not running, or running another spec).
    fn desired_changes(&self, pod: &str) -> bool {
        let (s, r) = self.pod_of(pod);
        self.case
            .pods
            .get(&(s, r))
            .is_some_and(|&(_, runs)| runs != 1)
    }

    fn feed(&mut self, event: &Event) {
        self.log.push(format!("> {event:?}"));
        let mut mark = |at: &At, f: &dyn Fn(&mut Seen)| {
            if let Some(s) = self.seen.get_mut(&(at.service.clone(), at.replica)) {
                f(s)
            }
        };
        match event {
            Event::PullDone { host, image } => {
                self.pulled.insert((host.clone(), image.clone()));
            }
            Event::PullFailed { host, image, .. } => {
                self.failed_pulls.insert((host.clone(), image.clone()));
            }
            Event::Started(at) => mark(at, &|s| s.started = true),
            Event::Healthy(at) => mark(at, &|s| {
                s.started = true;
                s.healthy = true;
            }),
            Event::Unhealthy(at) => mark(at, &|s| {
                s.started = true;
                s.unhealthy = true;
            }),
            Event::Exited(at, code) => mark(at, &|s| {
                s.started = true;
                s.exit = Some(*code);
            }),
            Event::ActionFailed { pod, .. } => {
                let (s, r) = self.pod_of(pod);
                if let Some(seen) = self.seen.get_mut(&(name(s), r)) {
                    seen.failed = true;
                }
            }
            Event::HostLost { host, .. } => {
                self.lost.insert(host.clone());
            }
            Event::Removed { .. } | Event::Retired { .. } | Event::Abort { .. } => {}
        }
    }
}

/// Runs a case to the end; returns the log of actions and events.
fn drive(case: &Case) -> Result<Vec<String>, TestCaseError> {
    let (_, mut flow) = build(case);
    let mut world = World {
        case,
        pending: Vec::new(),
        seen: BTreeMap::new(),
        pulled: BTreeSet::new(),
        failed_pulls: BTreeSet::new(),
        issued: BTreeSet::new(),
        lost: BTreeSet::new(),
        log: Vec::new(),
        done: 0,
        failed: false,
    };
    for a in flow.start() {
        world.act(&a)?;
    }
    let mut step = 0usize;
    // Each action adds at most one chain of at most three answers: this bounds the run.
    let bound = 10 * (case.pods.len() + 8) * 4;
    while world.done == 0 {
        prop_assert!(step < bound, "no end after {step} events");
        if let Some((h, after)) = case.lose {
            if step == after && !world.lost.contains(&host(h)) {
                let lost = host(h);
                // The lost host answers nothing more.
                world.pending.retain(|chain| {
                    chain
                        .front()
                        .is_none_or(|e| event_host(e).is_none_or(|x| x != lost))
                });
                let event = Event::HostLost {
                    host: lost,
                    reason: "gone".into(),
                };
                world.feed(&event);
                for a in flow.on(event) {
                    world.act(&a)?;
                }
                step += 1;
                continue;
            }
        }
        world.pending.retain(|c| !c.is_empty());
        if world.pending.is_empty() {
            break;
        }
        let pick = case.choices.get(step).copied().unwrap_or(0) as usize % world.pending.len();
        let Some(event) = world.pending[pick].pop_front() else {
            continue;
        };
        world.feed(&event);
        for a in flow.on(event) {
            world.act(&a)?;
        }
        step += 1;
    }
    prop_assert_eq!(
        world.done,
        1,
        "the hosts said everything and the flow did not end:\n{}",
        world.log.join("\n")
    );
    prop_assert!(flow.is_done());
    if !world.failed {
        // Every pod to create or replace was started.
        for (&(s, r), &(_, runs)) in &case.pods {
            if runs != 1 {
                prop_assert!(
                    world.issued.contains(&pod_name(s, r)),
                    "{} never started",
                    pod_name(s, r)
                );
            }
        }
    }
    Ok(world.log)
}

fn event_host(e: &Event) -> Option<&str> {
    match e {
        Event::PullDone { host, .. }
        | Event::PullFailed { host, .. }
        | Event::Removed { host, .. }
        | Event::Retired { host, .. }
        | Event::ActionFailed { host, .. }
        | Event::HostLost { host, .. } => Some(host),
        Event::Started(at) | Event::Healthy(at) | Event::Unhealthy(at) | Event::Exited(at, _) => {
            Some(&at.host)
        }
        Event::Abort { .. } => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn flow_keeps_every_condition_and_always_ends(case in case()) {
        drive(&case)?;
    }

    #[test]
    fn flow_is_deterministic(case in case()) {
        let first = drive(&case)?;
        let second = drive(&case)?;
        prop_assert_eq!(first, second);
    }
}

/// A random DAG (edges from higher to lower index, so `s0, s1, …` is a valid order) where every
/// wait can be answered, with random durations and nothing failing.
fn timed() -> impl Strategy<Value = (Case, sim::Script)> {
    (2usize..=10, 1usize..=4).prop_flat_map(|(n, hosts)| {
        (
            proptest::collection::vec((0..n, 0..n, any::<u8>(), any::<bool>()), 0..=n * 2),
            proptest::collection::vec((1u32..=3, 0u64..2000, 0u64..500, 0u64..3000, 0u64..2000), n),
            proptest::collection::vec(0..hosts, n * 3),
        )
            .prop_map(move |(edges, times, placement)| {
                let mut deps: BTreeMap<(usize, usize), Dependency> = BTreeMap::new();
                for (a, b, c, required) in edges {
                    if a != b {
                        let (from, to) = (a.max(b), a.min(b));
                        deps.entry((from, to)).or_insert(Dependency {
                            from: name(from),
                            to: name(to),
                            condition: condition(c),
                            required,
                            restart: false,
                        });
                    }
                }
                let waited = |cond: Condition, s: usize| {
                    deps.values()
                        .any(|d| d.to == name(s) && d.condition == cond)
                };
                let mut script = sim::Script::default();
                let mut services = Vec::new();
                for (s, &(replicas, pull, start, health, run)) in times.iter().enumerate() {
                    let healthcheck = waited(Condition::ServiceHealthy, s);
                    let job = waited(Condition::ServiceCompletedSuccessfully, s);
                    services.push(Service {
                        replicas,
                        healthcheck,
                        unhealthy: false,
                        job: job.then_some(0),
                    });
                    // Images are shared by services s, s+3, …: one pull may serve several.
                    script.pull.insert(image(s), pull);
                    script.start.insert(name(s), start);
                    script.health.insert(name(s), health);
                    if job {
                        // A job waited for healthy exits after its health check passed.
                        let after = if healthcheck { health + 1 } else { 0 };
                        script.exit.insert(name(s), (after + run, 0));
                    }
                }
                let mut pods = BTreeMap::new();
                for (s, svc) in services.iter().enumerate() {
                    for r in 1..=svc.replicas {
                        pods.insert((s, r), (placement[s * 3 + (r as usize - 1)], 0u8));
                    }
                }
                let case = Case {
                    services,
                    deps: deps.into_values().collect(),
                    pods,
                    failing_images: BTreeSet::new(),
                    refused: BTreeSet::new(),
                    lose: None,
                    wait: false,
                    choices: Vec::new(),
                };
                (case, script)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Unbounded parallelism and no failure: the flow's simulated wall time is exactly the
    /// critical path, whatever the graph and the durations.
    #[test]
    fn flow_wall_time_is_the_critical_path((case, script) in timed()) {
        let (desired, mut flow) = build(&case);
        let run = sim::run(&mut flow, &desired, &script);
        let summary = run.summary.clone().expect("done");
        prop_assert!(summary.ok(), "{:?}", summary.failures);
        let order: Vec<String> = (0..case.services.len()).map(name).collect();
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        let critical = sim::critical_path(&order, &desired, &case.deps, &script);
        prop_assert_eq!(run.wall, critical);
        prop_assert!(sim::waves(&order, &desired, &case.deps, &script) >= critical);
    }
}
