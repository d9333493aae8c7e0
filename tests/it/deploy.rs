//! `up`'s pure core: the desired state and its spec hashes, the diff against what runs, and the
//! dependency-driven flow, each feature as one compose snippet and one transcript.
//!
//! A transcript lists the actions the flow returns; lines starting with `>` are events the test
//! feeds, and the lines after each are what the flow answered:
//!
//! ```text
//! pull h1 db                      ← from `start()`
//! create h1 db-1
//! > started db.1@h1               ← an event
//! create h1 api-1                 ← the answer
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use compose_fleet::compose::{self, Environment, LoadOptions, MemoryFs};
use compose_fleet::deploy::desired::{self, Desired, PodInput};
use compose_fleet::deploy::diff::{self, Diff, ObservedPod, RemoveReason};
use compose_fleet::deploy::flow::{
    Action, At, Change, Dependency, Event, Flow, FlowError, Options,
};
use compose_fleet::deploy::sim::{self, Script};
use compose_fleet::graph;
use compose_fleet::proto::{self, ContainerSpec, PodSpec};

/// A project to deploy: the compose file, where each pod goes, what runs now.
pub struct Fixture {
    pub project: compose::model::Project,
    pub deps: Vec<Dependency>,
    /// Service order, dependencies first.
    pub order: Vec<String>,
    /// Pod name → host; pods not named go to `h1`.
    hosts: BTreeMap<String, String>,
    /// What runs now: (host, pod, how).
    running: Vec<(String, String, Running)>,
    remove_orphans: bool,
    opts: Options,
}

#[derive(Clone)]
enum Running {
    /// With the spec this run wants.
    Same,
    /// With another spec.
    Changed,
    /// A pod of these services (which the file may not define).
    Other(Vec<String>),
    /// With the spec this run wants, a container stopped by `compose-fleet stop`.
    Stopped,
}

impl Fixture {
    pub fn new(yaml: &str) -> Fixture {
        let fs = MemoryFs::new().with("/p/compose.yaml", yaml);
        let opts = LoadOptions::for_file(Path::new("/p/compose.yaml"));
        let loaded = compose::load(&opts, &Environment::new(), &fs)
            .unwrap_or_else(|e| panic!("fixture does not load: {:?}", e.diagnostics));
        let graph = graph::build(&loaded.project).expect("fixture graph");
        Fixture {
            deps: graph.edges().into_iter().map(Dependency::from).collect(),
            order: graph.order().into_iter().map(String::from).collect(),
            project: loaded.project,
            hosts: BTreeMap::new(),
            running: Vec::new(),
            remove_orphans: false,
            opts: Options::default(),
        }
    }

    /// `"db-1@h2 api-2@h3"`: where these pods go.
    pub fn place(mut self, spec: &str) -> Fixture {
        for (pod, host) in pod_hosts(spec) {
            self.hosts.insert(pod, host);
        }
        self
    }

    /// These pods run now, as this run wants them.
    pub fn runs(mut self, spec: &str) -> Fixture {
        for (pod, host) in pod_hosts(spec) {
            self.running.push((host, pod, Running::Same));
        }
        self
    }

    /// These pods exist as this run wants them, stopped by the user.
    pub fn stopped(mut self, spec: &str) -> Fixture {
        for (pod, host) in pod_hosts(spec) {
            self.running.push((host, pod, Running::Stopped));
        }
        self
    }

    /// These pods run now, with another spec.
    pub fn runs_changed(mut self, spec: &str) -> Fixture {
        for (pod, host) in pod_hosts(spec) {
            self.running.push((host, pod, Running::Changed));
        }
        self
    }

    /// A pod `pod@host` of `services` runs now.
    pub fn runs_other(mut self, spec: &str, services: &[&str]) -> Fixture {
        for (pod, host) in pod_hosts(spec) {
            let services = services.iter().map(|s| s.to_string()).collect();
            self.running.push((host, pod, Running::Other(services)));
        }
        self
    }

    pub fn remove_orphans(mut self) -> Fixture {
        self.remove_orphans = true;
        self
    }

    pub fn wait(mut self) -> Fixture {
        self.opts.wait = true;
        self
    }

    /// The pods of the project: one per graph pod and replica, named `<root>-<n>`, each container
    /// with the service's image, command, environment and healthcheck.
    pub fn inputs(&self) -> Vec<PodInput> {
        let graph = graph::build(&self.project).expect("fixture graph");
        let mut out = Vec::new();
        for pod in graph.pods() {
            let root = &self.project.services[&pod.name];
            let replicas = root.deploy.as_ref().and_then(|d| d.replicas).unwrap_or(1);
            for n in 1..=replicas {
                let name = format!("{}-{n}", pod.name);
                let containers = pod
                    .services
                    .iter()
                    .map(|m| container(&self.project.services[m], m, n))
                    .collect();
                out.push(PodInput {
                    host: self.hosts.get(&name).cloned().unwrap_or("h1".into()),
                    spec: PodSpec {
                        hostname: name.clone(),
                        name,
                        spec_hash: String::new(),
                        containers,
                        ports: Vec::new(),
                        network: Default::default(),
                    },
                    networks: vec!["default".into()],
                });
            }
        }
        out
    }

    pub fn desired(&self) -> Desired {
        let managed: BTreeSet<String> = self.project.services.keys().cloned().collect();
        let defined = managed
            .iter()
            .chain(self.project.disabled.keys())
            .cloned()
            .collect();
        desired::build(self.inputs(), &BTreeMap::new(), managed, defined).expect("desired")
    }

    pub fn observed(&self, desired: &Desired) -> diff::Observed {
        let mut observed = diff::Observed::new();
        for (host, pod, how) in &self.running {
            let services = |p: &str| -> Vec<String> {
                desired
                    .pods()
                    .find(|d| d.name == p)
                    .map(|d| d.containers.iter().map(|c| c.service.clone()).collect())
                    .unwrap_or_else(|| panic!("{p} is not a pod of the fixture"))
            };
            let (hash, services) = match how {
                Running::Same | Running::Stopped => {
                    let hash = desired
                        .pods()
                        .find(|d| &d.name == pod)
                        .map(|d| d.spec_hash.clone())
                        .unwrap_or_default();
                    (hash, services(pod))
                }
                Running::Changed => ("old".to_string(), services(pod)),
                Running::Other(s) => ("other".to_string(), s.clone()),
            };
            observed.entry(host.clone()).or_default().push(ObservedPod {
                name: pod.clone(),
                spec_hash: hash,
                services,
                stopped: matches!(how, Running::Stopped),
                outgoing: false,
            });
        }
        observed
    }

    pub fn diff(&self) -> (Desired, Diff) {
        let desired = self.desired();
        let d = diff::diff(&desired, &self.observed(&desired), self.remove_orphans);
        (desired, d)
    }

    pub fn flow(&self) -> Result<(Desired, Flow), FlowError> {
        let (desired, diff) = self.diff();
        let flow = Flow::new(&desired, &diff, &self.deps, self.opts)?;
        Ok((desired, flow))
    }

    pub fn order(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }
}

fn container(s: &compose::model::Service, name: &str, replica: u32) -> ContainerSpec {
    ContainerSpec {
        service: name.to_string(),
        replica,
        image: s.image.clone().unwrap_or_else(|| name.to_string()),
        command: s.command.clone(),
        env: s
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect(),
        healthcheck: s.healthcheck.as_ref().map(|h| proto::Healthcheck {
            test: if h.disable {
                vec!["NONE".into()]
            } else {
                h.test.clone()
            },
            interval_ms: 1000,
            timeout_ms: 1000,
            retries: 3,
            start_period_ms: 0,
            start_interval_ms: 0,
        }),
        ..ContainerSpec::default()
    }
}

/// `"db-1@h2 api-1@h3"` → `[(db-1, h2), (api-1, h3)]`.
fn pod_hosts(spec: &str) -> Vec<(String, String)> {
    spec.split_whitespace()
        .map(|w| {
            let (pod, host) = w.split_once('@').expect("pod@host");
            (pod.to_string(), host.to_string())
        })
        .collect()
}

/// Runs the transcript `expected` against the fixture's flow and compares, whole.
#[track_caller]
pub fn check(fixture: &Fixture, expected: &str) {
    let (_, mut flow) = fixture.flow().expect("flow");
    let mut got = String::new();
    for a in flow.start() {
        got.push_str(&render(&a));
        got.push('\n');
    }
    for line in expected.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some(event) = line.strip_prefix('>') else {
            continue;
        };
        got.push_str(&format!("> {}\n", event.trim()));
        for a in flow.on(parse_event(event.trim())) {
            got.push_str(&render(&a));
            got.push('\n');
        }
    }
    let want: String = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want, "\n--- got ---\n{got}\n--- want ---\n{want}");
}

pub fn render(a: &Action) -> String {
    match a {
        Action::Pull { host, image } => format!("pull {host} {image}"),
        Action::Create { host, pod } => format!("create {host} {pod}"),
        Action::Replace { host, pod } => format!("replace {host} {pod}"),
        Action::Restart { host, pod } => format!("restart {host} {pod}"),
        Action::Remove { host, pod, reason } => {
            let why = match reason {
                RemoveReason::Moved { to } => format!("moved to {to}"),
                RemoveReason::NotDesired => "not desired".into(),
                RemoveReason::Orphan => "orphan".into(),
            };
            format!("remove {host} {pod} ({why})")
        }
        Action::Retire { host, pod } => format!("retire {host} {pod}"),
        Action::Warn(w) => format!("warn: {w}"),
        Action::Fail(f) => format!("fail: {f}"),
        Action::Done(s) => {
            let mut line = format!(
                "done: created {}, replaced {}, restarted {}, removed {}, kept {}",
                s.created, s.replaced, s.restarted, s.removed, s.kept
            );
            if !s.ok() {
                line.push_str(&format!(", FAILED ({})", s.failures.len()));
            }
            if !s.incomplete.is_empty() {
                let pods: Vec<String> = s
                    .incomplete
                    .iter()
                    .map(|(h, p)| format!("{p}@{h}"))
                    .collect();
                line.push_str(&format!(", incomplete: {}", pods.join(" ")));
            }
            line
        }
    }
}

fn at(spec: &str) -> At {
    let (sr, host) = spec.split_once('@').expect("service.replica@host");
    let (service, replica) = sr.rsplit_once('.').expect("service.replica");
    At {
        host: host.into(),
        service: service.into(),
        replica: replica.parse().expect("replica number"),
    }
}

pub fn parse_event(line: &str) -> Event {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["pulled", host, image] => Event::PullDone {
            host: host.to_string(),
            image: image.to_string(),
        },
        ["pull-failed", host, image] => Event::PullFailed {
            host: host.to_string(),
            image: image.to_string(),
            reason: "manifest unknown".into(),
        },
        ["started", a] => Event::Started(at(a)),
        ["healthy", a] => Event::Healthy(at(a)),
        ["unhealthy", a] => Event::Unhealthy(at(a)),
        ["exited", a, code] => Event::Exited(at(a), code.parse().expect("exit code")),
        ["removed", host, pod] => Event::Removed {
            host: host.to_string(),
            pod: pod.to_string(),
        },
        ["failed", host, pod] => Event::ActionFailed {
            host: host.to_string(),
            pod: pod.to_string(),
            reason: "no space left on device".into(),
        },
        ["lost", host] => Event::HostLost {
            host: host.to_string(),
            reason: "ssh: connection reset".into(),
        },
        ["abort"] => Event::Abort {
            reason: "interrupted".into(),
        },
        _ => panic!("unknown event `{line}`"),
    }
}

const HEALTH: &str = "healthcheck: {test: [CMD, ok]}";

fn yaml(s: &str) -> String {
    s.replace("HEALTH", HEALTH)
}

// ---------------------------------------------------------------- desired state and spec hashes

fn base_spec() -> PodSpec {
    PodSpec {
        name: "web-1".into(),
        hostname: "web-1".into(),
        spec_hash: String::new(),
        containers: vec![ContainerSpec {
            service: "web".into(),
            replica: 1,
            image: "registry.lab:5000/web:1".into(),
            command: Some(vec!["serve".into()]),
            env: [("MODE".to_string(), "prod".to_string())].into(),
            mounts: vec![proto::Mount::Volume {
                name: "data".into(),
                target: "/data".into(),
                read_only: false,
            }],
            files: vec![proto::FileDelivery {
                target: "/run/secrets/db".into(),
                content_b64: "aHVudGVyMg==".into(),
                mode: 0o400,
                secret: true,
                uid: None,
                gid: None,
            }],
            ..ContainerSpec::default()
        }],
        ports: Vec::new(),
        network: Default::default(),
    }
}

fn hash(spec: &PodSpec, digests: &BTreeMap<String, String>, networks: &[&str]) -> String {
    let networks: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
    desired::spec_hash(spec, digests, &networks)
}

#[test]
fn spec_hash_changes_with_everything_that_changes_what_runs() {
    let digests: BTreeMap<String, String> = [(
        "registry.lab:5000/web:1".to_string(),
        "sha256:aaa".to_string(),
    )]
    .into();
    let base = hash(&base_spec(), &digests, &["default"]);
    type Change = (&'static str, Box<dyn Fn(&mut PodSpec)>);
    let changes: Vec<Change> = vec![
        (
            "image",
            Box::new(|s| s.containers[0].image = "web:2".into()),
        ),
        (
            "command",
            Box::new(|s| s.containers[0].command = Some(vec!["serve".into(), "-v".into()])),
        ),
        (
            "entrypoint",
            Box::new(|s| s.containers[0].entrypoint = Some(vec!["/init".into()])),
        ),
        (
            "env",
            Box::new(|s| {
                s.containers[0].env.insert("MODE".into(), "debug".into());
            }),
        ),
        (
            "mounts",
            Box::new(|s| {
                s.containers[0].mounts.push(proto::Mount::Tmpfs {
                    target: "/tmp".into(),
                    size: None,
                })
            }),
        ),
        (
            "secret content",
            Box::new(|s| s.containers[0].files[0].content_b64 = "c2VjcmV0Mg==".into()),
        ),
        (
            "resources",
            Box::new(|s| s.containers[0].resources.memory = Some(256 << 20)),
        ),
        (
            "cpus",
            Box::new(|s| s.containers[0].resources.cpus = Some(0.5)),
        ),
        (
            "ports",
            Box::new(|s| {
                s.ports.push(proto::PortMapping {
                    host_ip: None,
                    published: 8080,
                    target: 80,
                    protocol: "tcp".into(),
                })
            }),
        ),
        (
            "healthcheck",
            Box::new(|s| {
                s.containers[0].healthcheck = Some(proto::Healthcheck {
                    test: vec!["CMD".into(), "ok".into()],
                    interval_ms: 1000,
                    timeout_ms: 1000,
                    retries: 3,
                    start_period_ms: 0,
                    start_interval_ms: 0,
                })
            }),
        ),
        (
            "restart policy",
            Box::new(|s| s.containers[0].restart = proto::RestartPolicy::Always),
        ),
        (
            "user",
            Box::new(|s| s.containers[0].user = Some("1000".into())),
        ),
        ("hostname", Box::new(|s| s.hostname = "other".into())),
        (
            "a sidecar",
            Box::new(|s| {
                let mut c = s.containers[0].clone();
                c.service = "sidecar".into();
                s.containers.push(c);
            }),
        ),
    ];
    let mut seen = BTreeMap::from([(base.clone(), "base")]);
    for (what, change) in &changes {
        let mut spec = base_spec();
        change(&mut spec);
        let h = hash(&spec, &digests, &["default"]);
        if let Some(other) = seen.insert(h, what) {
            panic!("changing {what} gives the same hash as {other}");
        }
    }
    // What the spec does not carry: the digest a tag resolves to, and the networks.
    let moved_tag: BTreeMap<String, String> = [(
        "registry.lab:5000/web:1".to_string(),
        "sha256:bbb".to_string(),
    )]
    .into();
    assert_ne!(hash(&base_spec(), &moved_tag, &["default"]), base, "digest");
    assert_ne!(
        hash(&base_spec(), &BTreeMap::new(), &["default"]),
        base,
        "unresolved digest"
    );
    assert_ne!(
        hash(&base_spec(), &digests, &["default", "back"]),
        base,
        "networks"
    );
}

#[test]
fn spec_hash_ignores_its_own_field_the_network_order_and_other_images_digests() {
    let mut digests: BTreeMap<String, String> = [(
        "registry.lab:5000/web:1".to_string(),
        "sha256:aaa".to_string(),
    )]
    .into();
    let base = hash(&base_spec(), &digests, &["front", "back"]);
    assert_eq!(base.len(), 64);
    assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut spec = base_spec();
    spec.spec_hash = "whatever the agent had".into();
    assert_eq!(hash(&spec, &digests, &["back", "front"]), base);
    digests.insert("db:16".into(), "sha256:ccc".into());
    assert_eq!(hash(&base_spec(), &digests, &["front", "back"]), base);
}

#[test]
fn canonical_form_holds_secrets_only_as_hashes() {
    let text = desired::canonical(&base_spec(), &BTreeMap::new(), &[]);
    assert!(!text.contains("aHVudGVyMg=="), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("\"content_sha256\":\""), "{text}");
    // Sorted keys: the same text whatever the field order of the protocol's structs.
    assert!(text.starts_with("{\"digests\":"), "{text}");
}

#[test]
fn desired_pods_are_grouped_by_host_with_hashes_images_and_healthchecks() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: postgres, HEALTH}
           web: {image: nginx, deploy: {replicas: 2}}
           proxy: {image: envoy, network_mode: 'service:web'}
           idle: {image: idle, deploy: {replicas: 0}}",
    ))
    .place("db-1@h2 web-2@h3");
    let d = f.desired();
    let hosts: Vec<(&str, Vec<&str>)> = d
        .hosts
        .iter()
        .map(|(h, pods)| (h.as_str(), pods.iter().map(|p| p.name.as_str()).collect()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("h1", vec!["web-1"]),
            ("h2", vec!["db-1"]),
            ("h3", vec!["web-2"])
        ]
    );
    let web = d.pod("h3", "web-2").expect("web-2 on h3");
    assert_eq!(web.images, ["envoy", "nginx"]);
    assert_eq!(web.spec.spec_hash, web.spec_hash);
    let members: Vec<String> = web.containers.iter().map(|r| r.to_string()).collect();
    assert_eq!(members, ["proxy.2", "web.2"]);
    assert!(d
        .pod("h2", "db-1")
        .expect("db")
        .healthchecked
        .contains("db"));
    assert!(web.healthchecked.is_empty());
    assert_eq!(d.skipped(), ["idle"]);
    // Two replicas of one spec differ by replica number and hostname: different hashes.
    assert_ne!(
        d.pod("h1", "web-1").expect("web-1").spec_hash,
        web.spec_hash
    );
}

#[test]
fn desired_rejects_inconsistent_input_as_a_bug() {
    let f = Fixture::new("services: {web: {image: nginx}}");
    let managed: BTreeSet<String> = ["web".to_string()].into();
    let mut twice = f.inputs();
    twice.push(PodInput {
        host: "h2".into(),
        ..twice[0].clone()
    });
    let err = desired::build(twice, &BTreeMap::new(), managed.clone(), managed.clone())
        .expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "pod `web-1` is desired twice (on h1 and h2)"
    );
    let err = desired::build(f.inputs(), &BTreeMap::new(), BTreeSet::new(), managed)
        .expect_err("unmanaged");
    assert_eq!(
        err.to_string(),
        "pod `web-1` runs service `web`, which this run does not manage"
    );
}

// ------------------------------------------------------------------------------------ the diff

fn diff_text(d: &Diff) -> String {
    let mut out = String::new();
    for (host, hd) in &d.hosts {
        let list = |l: &[String]| l.join(" ");
        let removes: Vec<String> = hd
            .remove
            .iter()
            .map(|(p, r)| match r {
                RemoveReason::Moved { to } => format!("{p}(moved to {to})"),
                RemoveReason::NotDesired => format!("{p}(not desired)"),
                RemoveReason::Orphan => format!("{p}(orphan)"),
            })
            .collect();
        out.push_str(&format!(
            "{host}: create [{}] replace [{}] remove [{}] keep [{}] orphans [{}] untouched [{}]\n",
            list(&hd.create),
            list(&hd.replace),
            removes.join(" "),
            list(&hd.keep),
            list(&hd.orphans),
            list(&hd.untouched),
        ));
    }
    out
}

const SHOP: &str = "services:
  db: {image: postgres}
  web: {image: nginx, deploy: {replicas: 2}}
  debug: {image: busybox, profiles: [debug]}
";

#[test]
fn diff_sorts_pods_into_create_replace_remove_keep_per_host() {
    let f = Fixture::new(SHOP)
        .place("db-1@h1 web-1@h2 web-2@h3")
        .runs("db-1@h1")
        .runs_changed("web-1@h2")
        .runs_other("web-3@h3", &["web"]);
    let (_, d) = f.diff();
    assert_eq!(
        diff_text(&d),
        "h1: create [] replace [] remove [] keep [db-1] orphans [] untouched []\n\
         h2: create [] replace [web-1] remove [] keep [] orphans [] untouched []\n\
         h3: create [web-2] replace [] remove [web-3(not desired)] keep [] orphans [] untouched []\n"
    );
    assert!(!d.is_noop());
}

#[test]
fn diff_moves_a_pod_as_create_there_and_remove_here() {
    let f = Fixture::new(SHOP)
        .place("db-1@h2 web-1@h1 web-2@h1")
        .runs("db-1@h1 web-1@h1 web-2@h1");
    let (_, d) = f.diff();
    assert_eq!(
        diff_text(&d),
        "h1: create [] replace [] remove [db-1(moved to h2)] keep [web-1 web-2] orphans [] untouched []\n\
         h2: create [db-1] replace [] remove [] keep [] orphans [] untouched []\n"
    );
}

#[test]
fn services_dropped_from_the_file_are_orphans_removed_only_when_asked() {
    let f = Fixture::new(SHOP)
        .runs("db-1@h1 web-1@h1 web-2@h1")
        .runs_other("cache-1@h1", &["cache"])
        .runs_other("debug-1@h1", &["debug"]);
    let (_, d) = f.diff();
    assert_eq!(
        diff_text(&d),
        "h1: create [] replace [] remove [] keep [db-1 web-1 web-2] orphans [cache-1] untouched [debug-1]\n"
    );
    assert!(d.is_noop(), "orphans left running are not a change");
    assert_eq!(d.orphans(), [("h1", "cache-1")]);
    let (_, d) = f.remove_orphans().diff();
    assert_eq!(
        diff_text(&d),
        "h1: create [] replace [] remove [cache-1(orphan)] keep [db-1 web-1 web-2] orphans [] untouched [debug-1]\n"
    );
    assert!(!d.is_noop());
}

#[test]
fn nothing_changed_is_a_noop_diff() {
    let f = Fixture::new(SHOP)
        .place("web-2@h2")
        .runs("db-1@h1 web-1@h1 web-2@h2");
    let (_, d) = f.diff();
    assert!(d.is_noop());
}

// ------------------------------------------------------------------------------------ the flow

#[test]
fn a_noop_deploy_issues_no_actions() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           job: {image: job}
           api: {image: api, depends_on: {db: {condition: service_healthy}, job: {condition: service_completed_successfully}}}",
    ))
    .runs("db-1@h1 job-1@h1 api-1@h1");
    check(
        &f,
        "done: created 0, replaced 0, restarted 0, removed 0, kept 3",
    );
}

#[test]
fn every_pull_is_issued_at_once_and_a_service_starts_when_its_dependency_started() {
    let f = Fixture::new(
        "services:
           db: {image: db}
           api: {image: api, depends_on: [db]}",
    )
    .place("db-1@h1 api-1@h2");
    check(
        &f,
        "pull h1 db
         pull h2 api
         > pulled h2 api
         > pulled h1 db
         create h1 db-1
         > started db.1@h1
         create h2 api-1
         > started api.1@h2
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn a_pod_waits_for_its_own_pull_even_when_its_dependency_is_up() {
    let f = Fixture::new(
        "services:
           db: {image: db}
           api: {image: api, depends_on: [db]}",
    );
    check(
        &f,
        "pull h1 api
         pull h1 db
         > pulled h1 db
         create h1 db-1
         > started db.1@h1
         > pulled h1 api
         create h1 api-1
         > started api.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn service_healthy_waits_for_every_replica_to_be_healthy_on_another_host() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH, deploy: {replicas: 2}}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    ))
    .place("db-1@h1 db-2@h2 api-1@h3");
    check(
        &f,
        "pull h1 db
         pull h2 db
         pull h3 api
         > pulled h1 db
         create h1 db-1
         > pulled h3 api
         > pulled h2 db
         create h2 db-2
         > started db.1@h1
         > started db.2@h2
         > healthy db.2@h2
         > healthy db.1@h1
         create h3 api-1
         > started api.1@h3
         done: created 3, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn service_completed_successfully_starts_the_dependent_after_the_job_exits_0() {
    let f = Fixture::new(
        "services:
           migrate: {image: app}
           api: {image: app, depends_on: {migrate: {condition: service_completed_successfully}}}",
    )
    .place("migrate-1@h2 api-1@h1");
    check(
        &f,
        "pull h1 app
         pull h2 app
         > pulled h1 app
         > pulled h2 app
         create h2 migrate-1
         > started migrate.1@h2
         > exited migrate.1@h2 0
         create h1 api-1
         > started api.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn a_job_exiting_non_zero_fails_the_deploy_naming_service_replica_and_host() {
    let f = Fixture::new(
        "services:
           migrate: {image: app}
           cache: {image: cache}
           api: {image: app, depends_on: {migrate: {condition: service_completed_successfully}}}",
    )
    .place("migrate-1@h2 api-1@h1 cache-1@h3");
    check(
        &f,
        "pull h1 app
         pull h2 app
         pull h3 cache
         > pulled h2 app
         create h2 migrate-1
         > started migrate.1@h2
         > exited migrate.1@h2 1
         fail: `migrate` replica 1 on `h2`: exited with code 1; `api` waits for it (service_completed_successfully)
         done: created 1, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: api-1@h1 cache-1@h3",
    );
}

#[test]
fn an_unhealthy_required_dependency_fails_the_deploy() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    ));
    check(
        &f,
        "pull h1 api
         pull h1 db
         > pulled h1 db
         create h1 db-1
         > pulled h1 api
         > started db.1@h1
         > unhealthy db.1@h1
         fail: `db` replica 1 on `h1`: unhealthy; `api` waits for it (service_healthy)
         done: created 1, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: api-1@h1",
    );
}

#[test]
fn a_dependency_exiting_before_it_is_healthy_fails_those_that_wait_for_its_health() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    ));
    check(
        &f,
        "pull h1 api
         pull h1 db
         > pulled h1 api
         > pulled h1 db
         create h1 db-1
         > started db.1@h1
         > exited db.1@h1 0
         fail: `db` replica 1 on `h1`: exited with code 0; `api` waits for it (service_healthy)
         done: created 1, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: api-1@h1",
    );
}

#[test]
fn an_optional_dependency_that_fails_does_not_block_its_dependent() {
    let f = Fixture::new(&yaml(
        "services:
           metrics: {image: metrics, HEALTH}
           web: {image: web, depends_on: {metrics: {condition: service_healthy, required: false}}}",
    ));
    check(
        &f,
        "pull h1 metrics
         pull h1 web
         > pulled h1 metrics
         create h1 metrics-1
         > pulled h1 web
         > started metrics.1@h1
         > unhealthy metrics.1@h1
         warn: `web` starts without `metrics` (service_healthy, `required: false`): metrics.1@h1 is unhealthy
         create h1 web-1
         > started web.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn an_optional_dependency_still_waits_while_it_may_succeed() {
    let f = Fixture::new(&yaml(
        "services:
           metrics: {image: metrics, HEALTH}
           web: {image: web, depends_on: {metrics: {condition: service_healthy, required: false}}}",
    ));
    check(
        &f,
        "pull h1 metrics
         pull h1 web
         > pulled h1 web
         > pulled h1 metrics
         create h1 metrics-1
         > started metrics.1@h1
         > healthy metrics.1@h1
         create h1 web-1
         > started web.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn a_dependency_with_zero_replicas_is_skipped_and_holds_at_once() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH, deploy: {replicas: 0}}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    ));
    assert_eq!(f.desired().skipped(), ["db"]);
    check(
        &f,
        "pull h1 api
         > pulled h1 api
         create h1 api-1
         > started api.1@h1
         done: created 1, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn kept_dependencies_satisfy_conditions_at_once() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           migrate: {image: app}
           api: {image: app, environment: {V: '2'}, depends_on: {db: {condition: service_healthy}, migrate: {condition: service_completed_successfully}}}",
    ))
    .place("db-1@h2")
    .runs("db-1@h2 migrate-1@h1")
    .runs_changed("api-1@h1");
    check(
        &f,
        "pull h1 app
         > pulled h1 app
         replace h1 api-1
         > started api.1@h1
         done: created 0, replaced 1, restarted 0, removed 0, kept 2",
    );
}

#[test]
fn up_starts_what_the_user_stopped_after_its_dependencies_and_keeps_the_rest() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}
           web: {image: web}",
    ))
    .runs("db-1@h1 web-1@h1")
    .stopped("api-1@h1");
    check(
        &f,
        "restart h1 api-1
         > started api.1@h1
         done: created 0, replaced 0, restarted 1, removed 0, kept 2",
    );
    let (_, diff) = f.diff();
    assert!(!diff.is_noop(), "a stopped pod is a change");
    assert_eq!(diff.hosts["h1"].restart, ["api-1"]);
}

#[test]
fn restart_true_restarts_a_kept_dependent_when_its_dependency_is_replaced() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           api: {image: api, depends_on: {db: {condition: service_healthy, restart: true}}}
           web: {image: web, depends_on: {api: {condition: service_started, restart: true}}}
           worker: {image: worker, depends_on: {db: {condition: service_started}}}",
    ))
    .runs("api-1@h1 web-1@h1 worker-1@h1")
    .runs_changed("db-1@h1");
    check(
        &f,
        "pull h1 db
         > pulled h1 db
         replace h1 db-1
         > started db.1@h1
         > healthy db.1@h1
         restart h1 api-1
         > started api.1@h1
         restart h1 web-1
         > started web.1@h1
         done: created 0, replaced 1, restarted 2, removed 0, kept 1",
    );
}

#[test]
fn services_sharing_a_pod_start_together_and_gate_on_the_union_of_their_dependencies() {
    let f = Fixture::new(
        "services:
           db: {image: db}
           web: {image: web}
           proxy: {image: envoy, network_mode: 'service:web', depends_on: [db]}",
    )
    .place("db-1@h2");
    check(
        &f,
        "pull h1 envoy
         pull h1 web
         pull h2 db
         > pulled h1 envoy
         > pulled h1 web
         > pulled h2 db
         create h2 db-1
         > started db.1@h2
         create h1 web-1
         > started web.1@h1
         > started proxy.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn independent_branches_start_in_parallel_on_every_host() {
    let f = Fixture::new(&yaml(
        "services:
           a: {image: a, HEALTH}
           b: {image: b, depends_on: {a: {condition: service_healthy}}}
           x: {image: x}
           y: {image: y, depends_on: [x]}",
    ))
    .place("a-1@h1 b-1@h2 x-1@h3 y-1@h4");
    check(
        &f,
        "pull h1 a
         pull h2 b
         pull h3 x
         pull h4 y
         > pulled h1 a
         create h1 a-1
         > pulled h3 x
         create h3 x-1
         > pulled h2 b
         > pulled h4 y
         > started a.1@h1
         > started x.1@h3
         create h4 y-1
         > started y.1@h4
         > healthy a.1@h1
         create h2 b-1
         > started b.1@h2
         done: created 4, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn a_failed_pull_stops_new_work_and_waits_for_what_is_in_flight() {
    let f = Fixture::new(
        "services:
           a: {image: a}
           b: {image: b}
           c: {image: c, depends_on: [a]}",
    )
    .place("a-1@h1 b-1@h2 c-1@h3");
    check(
        &f,
        "pull h1 a
         pull h2 b
         pull h3 c
         > pulled h1 a
         create h1 a-1
         > pull-failed h3 c
         fail: host `h3`: pulling `c` failed: manifest unknown
         > pulled h2 b
         > started a.1@h1
         done: created 1, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: b-1@h2 c-1@h3",
    );
}

#[test]
fn a_refused_pod_fails_the_deploy_with_the_agents_reason() {
    let f = Fixture::new("services: {a: {image: a}, b: {image: b, depends_on: [a]}}");
    check(
        &f,
        "pull h1 a
         pull h1 b
         > pulled h1 a
         create h1 a-1
         > failed h1 a-1
         fail: pod `a-1` on `h1`: creating failed: no space left on device
         done: created 0, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: a-1@h1 b-1@h1",
    );
}

#[test]
fn a_lost_host_with_work_on_it_fails_the_deploy() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    ))
    .place("db-1@h2");
    check(
        &f,
        "pull h1 api
         pull h2 db
         > pulled h2 db
         create h2 db-1
         > pulled h1 api
         > started db.1@h2
         > lost h2
         fail: host `h2`: unreachable: ssh: connection reset
         done: created 0, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: api-1@h1 db-1@h2",
    );
}

#[test]
fn a_lost_host_with_only_kept_pods_is_a_warning() {
    let f = Fixture::new("services: {a: {image: a}, b: {image: b, depends_on: [a]}}")
        .place("a-1@h2")
        .runs("a-1@h2");
    check(
        &f,
        "pull h1 b
         > lost h2
         warn: host `h2` lost (ssh: connection reset); this deploy changes nothing there
         > pulled h1 b
         create h1 b-1
         > started b.1@h1
         done: created 1, replaced 0, restarted 0, removed 0, kept 1",
    );
}

#[test]
fn abort_stops_new_work_and_ends_when_nothing_is_in_flight() {
    let f = Fixture::new("services: {a: {image: a}, b: {image: b, depends_on: [a]}}");
    check(
        &f,
        "pull h1 a
         pull h1 b
         > pulled h1 a
         create h1 a-1
         > abort
         fail: stopped: interrupted
         > pulled h1 b
         > started a.1@h1
         done: created 1, replaced 0, restarted 0, removed 0, kept 0, FAILED (1), incomplete: b-1@h1",
    );
}

#[test]
fn a_moved_pod_is_removed_from_its_old_host_once_it_runs_on_the_new_one() {
    let f = Fixture::new("services: {db: {image: db}, web: {image: web}}")
        .place("db-1@h2")
        .runs("db-1@h1 web-1@h1")
        .runs_other("web-2@h1", &["web"]);
    check(
        &f,
        "pull h2 db
         remove h1 web-2 (not desired)
         > pulled h2 db
         create h2 db-1
         > removed h1 web-2
         > started db.1@h2
         remove h1 db-1 (moved to h2)
         > removed h1 db-1
         done: created 1, replaced 0, restarted 0, removed 2, kept 1",
    );
}

#[test]
fn a_stale_copy_of_a_kept_pod_is_removed_at_once() {
    let f = Fixture::new("services: {db: {image: db}}")
        .place("db-1@h2")
        .runs("db-1@h1 db-1@h2");
    check(
        &f,
        "remove h1 db-1 (moved to h2)
         > removed h1 db-1
         done: created 0, replaced 0, restarted 0, removed 1, kept 1",
    );
}

#[test]
fn a_failed_remove_fails_the_deploy() {
    let f = Fixture::new("services: {web: {image: web}}")
        .runs("web-1@h1")
        .runs_other("web-2@h1", &["web"]);
    check(
        &f,
        "remove h1 web-2 (not desired)
         > failed h1 web-2
         fail: pod `web-2` on `h1`: removing failed: no space left on device
         done: created 0, replaced 0, restarted 0, removed 0, kept 1, FAILED (1)",
    );
}

#[test]
fn orphans_are_removed_with_remove_orphans_and_left_otherwise() {
    let f = Fixture::new("services: {web: {image: web}}")
        .runs("web-1@h1")
        .runs_other("old-1@h1", &["old"]);
    check(
        &f,
        "done: created 0, replaced 0, restarted 0, removed 0, kept 1",
    );
    check(
        &f.remove_orphans(),
        "remove h1 old-1 (orphan)
         > removed h1 old-1
         done: created 0, replaced 0, restarted 0, removed 1, kept 1",
    );
}

#[test]
fn service_healthy_on_a_service_without_healthcheck_is_an_error_unless_optional() {
    let f = Fixture::new(
        "services:
           db: {image: db}
           api: {image: api, depends_on: {db: {condition: service_healthy}}}",
    );
    let err = f.flow().expect_err("no healthcheck");
    assert_eq!(
        err.to_string(),
        "service `api` waits for `db` to be healthy (`condition: service_healthy`), but `db` has \
         no healthcheck"
    );
    assert_eq!(
        err.hint(),
        "add a `healthcheck` to `db`, or wait for `condition: service_started`"
    );
    let f = Fixture::new(
        "services:
           db: {image: db}
           api: {image: api, depends_on: {db: {condition: service_healthy, required: false}}}",
    )
    .runs("db-1@h1");
    check(
        &f,
        "warn: `api` waits for `db` to be healthy, but `db` has no healthcheck; the dependency is optional (`required: false`) and is ignored
         pull h1 api
         > pulled h1 api
         create h1 api-1
         > started api.1@h1
         done: created 1, replaced 0, restarted 0, removed 0, kept 1",
    );
}

#[test]
fn wait_ends_only_when_everything_started_is_healthy() {
    let f = Fixture::new(&yaml(
        "services: {db: {image: db, HEALTH}, web: {image: web}}",
    ))
    .wait();
    check(
        &f,
        "pull h1 db
         pull h1 web
         > pulled h1 db
         create h1 db-1
         > pulled h1 web
         create h1 web-1
         > started db.1@h1
         > started web.1@h1
         > healthy db.1@h1
         done: created 2, replaced 0, restarted 0, removed 0, kept 0",
    );
    check(
        &f,
        "pull h1 db
         pull h1 web
         > pulled h1 db
         create h1 db-1
         > pulled h1 web
         create h1 web-1
         > started db.1@h1
         > started web.1@h1
         > unhealthy db.1@h1
         fail: `db` replica 1 on `h1`: unhealthy
         done: created 2, replaced 0, restarted 0, removed 0, kept 0, FAILED (1)",
    );
}

#[test]
fn a_crash_nobody_waits_for_is_a_warning_without_wait() {
    let f = Fixture::new("services: {web: {image: web}}");
    check(
        &f,
        "pull h1 web
         > pulled h1 web
         create h1 web-1
         > exited web.1@h1 137
         warn: `web` replica 1 on `h1`: exited with code 137
         done: created 1, replaced 0, restarted 0, removed 0, kept 0",
    );
}

#[test]
fn events_the_flow_did_not_ask_for_are_ignored() {
    let f =
        Fixture::new("services: {a: {image: a}, b: {image: b, depends_on: [a]}}").place("b-1@h2");
    check(
        &f,
        "pull h1 a
         pull h2 b
         > started a.1@h1
         > started b.1@h2
         > pulled h9 a
         > removed h1 a-1
         > failed h1 a-1
         > pulled h1 a
         create h1 a-1
         > started a.1@h2
         > started a.1@h1
         > pulled h2 b
         create h2 b-1
         > started b.1@h2
         done: created 2, replaced 0, restarted 0, removed 0, kept 0
         > started b.1@h2
         > abort",
    );
}

fn plan_text(f: &Fixture) -> String {
    let (_, flow) = f.flow().expect("flow");
    let mut out = String::new();
    for step in flow.plan() {
        let change = match &step.change {
            Change::Create => "create".to_string(),
            Change::Replace => "replace".to_string(),
            Change::Restart => "restart".to_string(),
            Change::Remove(RemoveReason::Moved { to }) => format!("remove (moved to {to})"),
            Change::Remove(RemoveReason::NotDesired) => "remove (not desired)".to_string(),
            Change::Remove(RemoveReason::Orphan) => "remove (orphan)".to_string(),
            Change::Retire => "retire".to_string(),
        };
        out.push_str(&format!("{} {}: {change}", step.host, step.pod));
        for d in &step.waits_for {
            out.push_str(&format!(
                ", after {} {}{}",
                d.to,
                graph::condition_str(d.condition),
                if d.required { "" } else { " (optional)" }
            ));
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_plan_lists_every_change_per_host_with_what_it_waits_for() {
    let f = Fixture::new(&yaml(
        "services:
           db: {image: db, HEALTH}
           migrate: {image: app, depends_on: {db: {condition: service_healthy}}}
           api: {image: app, depends_on: {db: {condition: service_healthy, restart: true}, migrate: {condition: service_completed_successfully}}}
           web: {image: web, depends_on: {api: {condition: service_started, required: false}}}
           cache: {image: cache}",
    ))
    .place("db-1@h2 cache-1@h2")
    .runs("api-1@h1 web-1@h1 cache-1@h1")
    .runs_changed("db-1@h2")
    .runs_other("old-1@h3", &["old"])
    .remove_orphans();
    assert_eq!(
        plan_text(&f),
        "h1 api-1: restart, after db service_healthy, after migrate service_completed_successfully\n\
         h1 cache-1: remove (moved to h2)\n\
         h1 migrate-1: create, after db service_healthy\n\
         h2 cache-1: create\n\
         h2 db-1: replace\n\
         h3 old-1: remove (orphan)\n"
    );
    let f = Fixture::new("services: {web: {image: web}}").runs("web-1@h1");
    assert_eq!(plan_text(&f), "", "nothing to do, nothing planned");
}

// ------------------------------------------------------------ wall time: the critical path

/// web ← api ← (db healthy, migrate completed ← db healthy), cache; with known times.
const CHAIN: &str = "services:
  db: {image: postgres, HEALTH}
  cache: {image: redis}
  migrate: {image: app, depends_on: {db: {condition: service_healthy}}}
  api: {image: app, deploy: {replicas: 2}, depends_on: {db: {condition: service_healthy}, migrate: {condition: service_completed_successfully}, cache: {condition: service_started}}}
  web: {image: nginx, depends_on: {api: {condition: service_started}}}
";

fn chain_script() -> Script {
    let ms = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    Script {
        pull: ms(&[
            ("postgres", 800),
            ("redis", 300),
            ("app", 2500),
            ("nginx", 400),
        ]),
        start: ms(&[
            ("db", 200),
            ("cache", 100),
            ("migrate", 150),
            ("api", 300),
            ("web", 100),
        ]),
        health: ms(&[("db", 3000)]),
        exit: [("migrate".to_string(), (1200, 0))].into(),
        ..Script::default()
    }
}

#[test]
fn wall_time_equals_the_critical_path_not_the_sum_of_waves() {
    let f = Fixture::new(&yaml(CHAIN))
        .place("db-1@h1 cache-1@h2 migrate-1@h3 api-1@h2 api-2@h3 web-1@h1");
    let (desired, mut flow) = f.flow().expect("flow");
    let script = chain_script();
    let run = sim::run(&mut flow, &desired, &script);
    let summary = run.summary.clone().expect("done");
    assert!(summary.ok(), "{:?}", summary.failures);
    let critical = sim::critical_path(&f.order(), &desired, &f.deps, &script);
    let waves = sim::waves(&f.order(), &desired, &f.deps, &script);
    // db: pulled 800, started 1000, healthy 4000; migrate: starts 4000, started 4150, exits 5350;
    // api: starts 5350 (its 2500 ms pull long done), started 5650; web: started 5750.
    assert_eq!(critical, 5750);
    assert_eq!(run.wall, critical);
    assert_eq!(run.issued("api-1"), Some(5350));
    assert_eq!(run.issued("web-1"), Some(5650));
    // Level by level, each level's pulls and waits add up.
    assert!(waves > critical, "waves {waves} vs critical {critical}");
}

#[test]
fn a_dependencys_wait_overlaps_its_dependents_pulls() {
    let f = Fixture::new(&yaml(CHAIN));
    let (desired, mut flow) = f.flow().expect("flow");
    let run = sim::run(&mut flow, &desired, &chain_script());
    let pulls: Vec<(u64, String)> = run
        .actions
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Pull { image, .. } => Some((*t, image.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        pulls,
        [
            (0, "app".to_string()),
            (0, "redis".to_string()),
            (0, "postgres".to_string()),
            (0, "nginx".to_string())
        ]
    );
}
