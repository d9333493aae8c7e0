//! The service dependency graph (petgraph): edges with their conditions, pods, cycle reports, and
//! the text/DOT/JSON views `compose-fleet graph` prints.
//!
//! [`build`] turns a loaded [`Project`] into a [`ServiceGraph`]: one node per enabled service, one
//! edge per (dependent, dependency) pair, whether declared with `depends_on` or implied by `links`,
//! `volumes_from` or `network_mode: service:X`. Every problem (unknown, self, disabled dependency,
//! cycles) is reported in one run, each at the location of the edge that causes it.
//!
//! Pods (services sharing a network namespace) and colocations come from [`crate::pods`], the one
//! pod model placement reads too, so `graph` and `plan` name every pod alike.
//!
//! `graph` does no I/O and knows nothing about hosts. Every command that loads a project checks
//! its graph ([`build`]) before going further; the deployer will read [`ServiceGraph::order`] and
//! [`ServiceGraph::dependencies`].

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use petgraph::algo::{astar, tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::NodeFiltered;
use petgraph::Direction;
use serde::Serialize;

use crate::compose::model::{
    link_service, volumes_from_service, Condition, Location, Project, Service,
};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::pods::{self, Pod, Pods};

/// How an edge was declared. Only `depends_on` carries a condition of the user's choosing; the
/// implicit kinds wait for `service_started`, as docker compose does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    DependsOn,
    /// `network_mode: service:X`: the dependent joins X's network namespace (same pod).
    NetworkMode,
    VolumesFrom,
    Links,
}

impl EdgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::DependsOn => "depends_on",
            EdgeKind::NetworkMode => "network_mode",
            EdgeKind::VolumesFrom => "volumes_from",
            EdgeKind::Links => "links",
        }
    }

    pub fn is_implicit(self) -> bool {
        self != EdgeKind::DependsOn
    }
}

/// The name compose gives a condition (`service_healthy`, ...).
pub fn condition_str(c: Condition) -> &'static str {
    match c {
        Condition::ServiceStarted => "service_started",
        Condition::ServiceHealthy => "service_healthy",
        Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
    }
}

/// `from` depends on `to`: `to` must satisfy `condition` before `from` starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub condition: Condition,
    pub required: bool,
    /// `depends_on.<x>.restart`: restart `from` when `to` is updated.
    pub restart: bool,
    /// How the edge was declared; when several keys name the same service, `depends_on` wins
    /// (it carries the condition), then `network_mode`, `volumes_from`, `links`.
    pub kind: EdgeKind,
    /// Where the edge is written, for diagnostics.
    #[serde(skip)]
    pub location: Location,
}

/// The dependency graph of a project's enabled services. Built by [`build`]; acyclic by
/// construction.
#[derive(Debug, Clone)]
pub struct ServiceGraph {
    /// Node weight: service name. Edge: dependent → dependency.
    graph: DiGraph<String, Edge>,
    index: HashMap<String, NodeIndex>,
    /// Topological order, dependencies first.
    order: Vec<NodeIndex>,
    pods: Pods,
    /// Optional (`required: false`) edges that were dropped, with a warning saying why.
    warnings: Diagnostics,
}

/// Builds the graph of `project`'s enabled services, or every problem found.
pub fn build(project: &Project) -> Result<ServiceGraph, Diagnostics> {
    let mut problems = Diagnostics::default();
    let mut warnings = Diagnostics::default();
    let mut graph: DiGraph<String, Edge> =
        DiGraph::with_capacity(project.services.len(), project.services.len());
    let mut index = HashMap::with_capacity(project.services.len());
    for name in project.services.keys() {
        index.insert(name.clone(), graph.add_node(name.clone()));
    }

    for (i, (name, service)) in project.services.iter().enumerate() {
        // Services were added in the map's order: the dependent's node is the `i`-th.
        let from = NodeIndex::new(i);
        for edge in declared_edges(name, service) {
            let to = index.get(&edge.to).copied();
            match check_edge(project, &edge, to.is_some()) {
                Check::Keep => {
                    if let Some(to) = to {
                        graph.add_edge(from, to, edge);
                    }
                }
                Check::Drop(warning) => warnings.push(warning),
                Check::Reject(problem) => problems.push(problem),
            }
        }
    }

    // Most graphs have no cycle: the topological sort proves it without the component search,
    // which allocates a list per service.
    let order = match toposort(&graph, None) {
        // Edges point from dependent to dependency, so petgraph's order lists dependents first.
        Ok(mut order) => {
            order.reverse();
            Some(order)
        }
        Err(_) => None,
    };
    if order.is_none() {
        for cycle in cycles(&graph) {
            problems.push(cycle_diagnostic(&graph, &cycle));
        }
    }
    if problems.has_errors() {
        return Err(problems);
    }
    let Some(order) = order else {
        // Unreachable: the sort found a cycle, and `cycles` reported it. Say so rather than panic.
        return Err(Diagnostics(vec![Diagnostic::error(
            "internal error: a dependency cycle was found but not reported; please report this bug",
        )]));
    };

    Ok(ServiceGraph {
        graph,
        index,
        order,
        pods: pods::of(project),
        warnings,
    })
}

/// The edges `service` declares, one per service depended upon, in a stable order: `depends_on`
/// first (sorted), then `network_mode`, `volumes_from`, `links` for services not already named.
fn declared_edges(name: &str, service: &Service) -> Vec<Edge> {
    let location = |to: &str| {
        service
            .spans
            .dependencies
            .get(to)
            .unwrap_or(&service.spans.name)
            .clone()
    };
    let mut edges: Vec<Edge> = service
        .depends_on
        .iter()
        .map(|(to, dep)| Edge {
            from: name.to_string(),
            to: to.clone(),
            condition: dep.condition,
            required: dep.required,
            restart: dep.restart,
            kind: EdgeKind::DependsOn,
            location: location(to),
        })
        .collect();
    let mut implicit: Vec<(String, EdgeKind)> = Vec::new();
    if let Some(to) = service.network_mode_service() {
        implicit.push((to.to_string(), EdgeKind::NetworkMode));
    }
    for entry in &service.volumes_from {
        if let Some(to) = volumes_from_service(entry) {
            implicit.push((to.to_string(), EdgeKind::VolumesFrom));
        }
    }
    for entry in &service.links {
        implicit.push((link_service(entry).to_string(), EdgeKind::Links));
    }
    for (to, kind) in implicit {
        if edges.iter().any(|e| e.to == to) {
            continue;
        }
        edges.push(Edge {
            from: name.to_string(),
            location: location(&to),
            to,
            condition: Condition::ServiceStarted,
            required: true,
            restart: false,
            kind,
        });
    }
    edges
}

enum Check {
    Keep,
    Drop(Diagnostic),
    Reject(Diagnostic),
}

/// `defined`: whether `edge.to` is an enabled service.
fn check_edge(project: &Project, edge: &Edge, defined: bool) -> Check {
    let how = match edge.kind {
        EdgeKind::DependsOn => "depends on",
        EdgeKind::NetworkMode => "shares the network namespace of",
        EdgeKind::VolumesFrom => "mounts the volumes of",
        EdgeKind::Links => "links to",
    };
    if edge.from == edge.to {
        return Check::Reject(
            Diagnostic::error(format!(
                "service `{}` {how} itself (`{}`)",
                edge.from,
                edge.kind.as_str()
            ))
            .at(edge.location.clone())
            .label("a service cannot wait for itself")
            .hint(format!(
                "remove `{}` from `{}`",
                edge.to,
                edge.kind.as_str()
            )),
        );
    }
    if defined {
        return Check::Keep;
    }
    if let Some(disabled) = project.disabled.get(&edge.to) {
        let profiles = disabled
            .profiles
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let enable = match disabled.profiles.first() {
            Some(p) => format!("enable it with `--profile {p}` (its profiles: {profiles})"),
            None => "enable one of its profiles".to_string(),
        };
        if !edge.required {
            return Check::Drop(
                Diagnostic::warning(format!(
                    "service `{}` depends on `{}`, which is disabled by profiles; the dependency is \
                     optional (`required: false`) and is ignored",
                    edge.from, edge.to
                ))
                .at(edge.location.clone())
                .hint(enable),
            );
        }
        return Check::Reject(
            Diagnostic::error(format!(
                "service `{}` {how} `{}`, which is disabled by profiles",
                edge.from, edge.to
            ))
            .at(edge.location.clone())
            .label(format!("`{}` is not enabled", edge.to))
            .hint(format!(
                "{enable}, or mark the dependency `required: false`"
            )),
        );
    }
    // `required: false` excuses a service disabled by profiles, not one that does not exist:
    // docker compose refuses that too.
    let suggestion = did_you_mean(&edge.to, project.services.keys().map(String::as_str));
    let mut d = Diagnostic::error(format!(
        "service `{}` {how} `{}`, which is not defined",
        edge.from, edge.to
    ))
    .at(edge.location.clone());
    d = match suggestion {
        Some(s) => d.label(format!("did you mean `{s}`?")),
        None => d.label("no service of this name").hint(format!(
            "define service `{}` under `services:`, or remove this dependency",
            edge.to
        )),
    };
    Check::Reject(d)
}

/// One concrete cycle (as a node list, first node not repeated) per strongly connected component
/// with more than one service. Self-edges never reach the graph.
fn cycles(graph: &DiGraph<String, Edge>) -> Vec<Vec<NodeIndex>> {
    let mut found: Vec<Vec<NodeIndex>> = Vec::new();
    for scc in tarjan_scc(graph) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        // Start from the alphabetically first service so the report is stable.
        let Some(&start) = scc.iter().min_by(|a, b| graph[**a].cmp(&graph[**b])) else {
            continue;
        };
        let inside = NodeFiltered::from_fn(graph, |n| members.contains(&n));
        // The shortest way back to `start`: from `start` to a service that depends on `start`.
        let path = astar(
            &inside,
            start,
            |n| n != start && graph.contains_edge(n, start),
            |_| 1u32,
            |_| 0,
        );
        if let Some((_, path)) = path {
            found.push(path);
        }
    }
    found.sort_by(|a, b| graph[a[0]].cmp(&graph[b[0]]));
    found
}

fn cycle_diagnostic(graph: &DiGraph<String, Edge>, cycle: &[NodeIndex]) -> Diagnostic {
    let mut names: Vec<&str> = cycle.iter().map(|n| graph[*n].as_str()).collect();
    names.push(&graph[cycle[0]]);
    let closed: Vec<NodeIndex> = cycle.iter().chain(cycle.first()).copied().collect();
    let edges: Vec<&Edge> = closed
        .windows(2)
        .filter_map(|w| graph.find_edge(w[0], w[1]).map(|e| &graph[e]))
        .collect();
    let describe = |e: &Edge| match e.kind {
        EdgeKind::DependsOn => format!("`{}` depends on `{}`", e.from, e.to),
        kind => format!("`{}` depends on `{}` ({})", e.from, e.to, kind.as_str()),
    };
    let mut d = Diagnostic::error(format!("dependency cycle: {}", names.join(" → ")));
    if let Some((first, rest)) = edges.split_first() {
        d = d.at(first.location.clone()).label(describe(first));
        for e in rest {
            d = d.note(e.location.clone(), describe(e));
        }
    }
    d.hint("services cannot start until the services they depend on have; remove one of these dependencies to break the cycle")
}

impl ServiceGraph {
    /// Service names, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.graph.node_weights().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn contains(&self, service: &str) -> bool {
        self.index.contains_key(service)
    }

    /// Every service, each after all the services it depends on.
    pub fn order(&self) -> Vec<&str> {
        self.order.iter().map(|n| self.graph[*n].as_str()).collect()
    }

    /// Every edge, sorted by (from, to).
    pub fn edges(&self) -> Vec<&Edge> {
        let mut edges: Vec<&Edge> = self.graph.edge_weights().collect();
        edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        edges
    }

    /// What `service` waits for, sorted by the name of the service depended upon; empty for an
    /// unknown service.
    pub fn dependencies(&self, service: &str) -> Vec<&Edge> {
        self.adjacent(service, Direction::Outgoing, |e| &e.to)
    }

    /// The services that wait for `service`, sorted by name; empty for an unknown service.
    pub fn dependents(&self, service: &str) -> Vec<&Edge> {
        self.adjacent(service, Direction::Incoming, |e| &e.from)
    }

    fn adjacent(
        &self,
        service: &str,
        dir: Direction,
        key: impl Fn(&Edge) -> &String,
    ) -> Vec<&Edge> {
        let Some(&n) = self.index.get(service) else {
            return Vec::new();
        };
        let mut edges: Vec<&Edge> = self
            .graph
            .edges_directed(n, dir)
            .map(|e| e.weight())
            .collect();
        edges.sort_by(|a, b| key(a).cmp(key(b)));
        edges
    }

    /// Every pod, each service in exactly one; sorted by name.
    pub fn pods(&self) -> &[Pod] {
        &self.pods.pods
    }

    /// The pods and the colocations (pods that must share a host) of the project.
    pub fn pod_model(&self) -> &Pods {
        &self.pods
    }

    /// Pods of more than one service.
    pub fn shared_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.pods.iter().filter(|p| p.is_shared())
    }

    /// The pod `service` belongs to.
    pub fn pod_of(&self, service: &str) -> Option<&Pod> {
        self.pods.pod_of(service)
    }

    /// Optional dependencies (`required: false`) on services disabled by profiles: dropped from
    /// the graph, each with a warning the CLI prints.
    pub fn warnings(&self) -> &Diagnostics {
        &self.warnings
    }

    /// The longest chain of dependencies when starting a service costs `cost(service)`: the
    /// least wall time a deploy that starts each service as soon as its dependencies are up can
    /// take. Returns the total and the chain, dependencies first.
    pub fn critical_path(&self, cost: impl Fn(&str) -> u64) -> (u64, Vec<&str>) {
        // finish[n] = cost(n) + max finish of its dependencies; the order visits those first.
        let mut finish: Vec<u64> = vec![0; self.graph.node_count()];
        let mut via: Vec<Option<NodeIndex>> = vec![None; self.graph.node_count()];
        for &n in &self.order {
            let before = self
                .graph
                .neighbors_directed(n, Direction::Outgoing)
                .max_by(|a, b| {
                    finish[a.index()]
                        .cmp(&finish[b.index()])
                        .then_with(|| self.graph[*b].cmp(&self.graph[*a]))
                });
            let start = before.map_or(0, |b| finish[b.index()]);
            finish[n.index()] = start.saturating_add(cost(&self.graph[n]));
            via[n.index()] = before;
        }
        let Some(end) = self.order.iter().copied().max_by(|a, b| {
            finish[a.index()]
                .cmp(&finish[b.index()])
                .then_with(|| self.graph[*b].cmp(&self.graph[*a]))
        }) else {
            return (0, Vec::new());
        };
        let mut chain = vec![self.graph[end].as_str()];
        let mut at = end;
        while let Some(prev) = via[at.index()] {
            chain.push(self.graph[prev].as_str());
            at = prev;
        }
        chain.reverse();
        (finish[end.index()], chain)
    }

    /// Human-readable: services in start order, each with what it waits for.
    ///
    /// ```text
    /// db
    /// api
    ///   waits for db: service_healthy
    /// web
    ///   waits for api: service_started
    ///   waits for cache: service_started (links)
    /// pod web: web, web-proxy
    /// same host: pods backup, db
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for name in self.order() {
            let _ = writeln!(out, "{name}");
            for e in self.dependencies(name) {
                let _ = write!(out, "  waits for {}: {}", e.to, condition_str(e.condition));
                let mut notes: Vec<&str> = Vec::new();
                if e.kind.is_implicit() {
                    notes.push(e.kind.as_str());
                }
                if !e.required {
                    notes.push("required: false");
                }
                if e.restart {
                    notes.push("restart: true");
                }
                if !notes.is_empty() {
                    let _ = write!(out, " ({})", notes.join(", "));
                }
                out.push('\n');
            }
        }
        for pod in self.shared_pods() {
            let _ = writeln!(out, "pod {}: {}", pod.name, pod.services.join(", "));
        }
        for c in self.colocations() {
            let pods: Vec<&str> = c
                .pods
                .iter()
                .map(|&p| self.pods.pods[p].name.as_str())
                .collect();
            let _ = writeln!(out, "same host: pods {}", pods.join(", "));
        }
        out
    }

    /// Graphviz: an arrow from each service to what it waits for, labelled with the condition;
    /// implicit edges dashed; services sharing a pod drawn inside one cluster.
    pub fn to_dot(&self, project_name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", dot_id(project_name));
        let _ = writeln!(out, "  node [shape=box];");
        for (i, pod) in self.shared_pods().enumerate() {
            let _ = writeln!(out, "  subgraph cluster_pod_{i} {{");
            let _ = writeln!(out, "    label={};", dot_id(&format!("pod {}", pod.name)));
            let _ = writeln!(out, "    style=rounded;");
            for m in &pod.services {
                let _ = writeln!(out, "    {};", dot_id(m));
            }
            let _ = writeln!(out, "  }}");
        }
        for name in self.services() {
            if self.pod_of(name).is_none_or(|p| !p.is_shared()) {
                let _ = writeln!(out, "  {};", dot_id(name));
            }
        }
        for e in self.edges() {
            let mut attrs = vec![format!("label={}", dot_id(condition_str(e.condition)))];
            if e.kind.is_implicit() {
                attrs.push("style=dashed".into());
            }
            if !e.required {
                attrs.push("arrowhead=empty".into());
            }
            let _ = writeln!(
                out,
                "  {} -> {} [{}];",
                dot_id(&e.from),
                dot_id(&e.to),
                attrs.join(", ")
            );
        }
        out.push_str("}\n");
        out
    }

    /// The stable JSON structure of `compose-fleet graph --format json`:
    ///
    /// ```json
    /// {
    ///   "services": ["api", "db", "web"],
    ///   "edges": [{"from": "web", "to": "api", "condition": "service_started",
    ///              "required": true, "restart": false, "kind": "depends_on"}],
    ///   "order": ["db", "api", "web"],
    ///   "pods": [{"name": "api", "services": ["api"]}, {"name": "db", "services": ["db"]},
    ///            {"name": "web", "services": ["web", "web-proxy"]}],
    ///   "colocations": [{"name": "api", "pods": ["api", "db"]}]
    /// }
    /// ```
    ///
    /// `services` sorted; `edges` sorted by (from, to), `from` waits for `to`, `kind` one of
    /// `depends_on`, `network_mode`, `volumes_from`, `links`; `order` dependencies first; `pods`
    /// lists every pod by name (the service owning the shared network namespace), each service
    /// in exactly one, its services sorted; `colocations` lists the groups of two or more pods
    /// that must share a host (`volumes_from`, a shared local volume), named after their first
    /// pod. `plan --format json` names every replica's pod the same way.
    pub fn to_json(&self) -> serde_json::Value {
        let pods: Vec<serde_json::Value> = self
            .pods()
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "services": p.services}))
            .collect();
        let colocations: Vec<serde_json::Value> = self
            .colocations()
            .map(|c| {
                let pods: Vec<&str> = c
                    .pods
                    .iter()
                    .map(|&p| self.pods.pods[p].name.as_str())
                    .collect();
                serde_json::json!({"name": c.name, "pods": pods})
            })
            .collect();
        serde_json::json!({
            "services": self.services(),
            "edges": self.edges(),
            "order": self.order(),
            "pods": pods,
            "colocations": colocations,
        })
    }

    /// Colocations of two or more pods.
    pub fn colocations(&self) -> impl Iterator<Item = &pods::Colocation> {
        self.pods.colocations.iter().filter(|c| c.pods.len() > 1)
    }
}

/// A Graphviz quoted ID.
fn dot_id(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::{Condition::*, Dependency};

    /// Builds projects in code. Every edge is given the line it is "written" on, so that tests
    /// can assert where diagnostics point.
    #[derive(Default)]
    struct Fixture {
        project: Project,
    }

    fn loc(line: u32) -> Location {
        Location {
            file: "compose.yaml".into(),
            line,
            column: 7,
            offset: 0,
            len: 3,
        }
    }

    impl Fixture {
        fn new(names: &[&str]) -> Self {
            let mut f = Fixture::default();
            for (i, n) in names.iter().enumerate() {
                f.project
                    .services
                    .insert(n.to_string(), service(n, i as u32 + 1));
            }
            f
        }

        fn svc(&mut self, name: &str) -> &mut Service {
            self.project
                .services
                .get_mut(name)
                .or_else(|| self.project.disabled.get_mut(name))
                .expect("fixture names a service it defined")
        }

        fn disabled(mut self, name: &str, profile: &str) -> Self {
            let mut s = service(name, 90);
            s.profiles = vec![profile.to_string()];
            self.project.disabled.insert(name.to_string(), s);
            self
        }

        fn dep(self, from: &str, to: &str, condition: Condition, line: u32) -> Self {
            self.dep_full(from, to, condition, true, false, line)
        }

        fn dep_full(
            mut self,
            from: &str,
            to: &str,
            condition: Condition,
            required: bool,
            restart: bool,
            line: u32,
        ) -> Self {
            let s = self.svc(from);
            s.depends_on.insert(
                to.to_string(),
                Dependency {
                    condition,
                    required,
                    restart,
                    extensions: Default::default(),
                },
            );
            s.spans.dependencies.insert(to.to_string(), loc(line));
            self
        }

        fn link(mut self, from: &str, entry: &str, line: u32) -> Self {
            let s = self.svc(from);
            s.links.push(entry.to_string());
            s.spans
                .dependencies
                .insert(link_service(entry).to_string(), loc(line));
            self
        }

        fn volumes_from(mut self, from: &str, entry: &str, line: u32) -> Self {
            let s = self.svc(from);
            s.volumes_from.push(entry.to_string());
            if let Some(to) = volumes_from_service(entry) {
                s.spans.dependencies.insert(to.to_string(), loc(line));
            }
            self
        }

        fn network_mode(mut self, from: &str, mode: &str, line: u32) -> Self {
            let s = self.svc(from);
            s.network_mode = Some(mode.to_string());
            if let Some(to) = mode.strip_prefix("service:") {
                s.spans.dependencies.insert(to.to_string(), loc(line));
            }
            self
        }

        fn build(&self) -> Result<ServiceGraph, Diagnostics> {
            build(&self.project)
        }

        fn ok(&self) -> ServiceGraph {
            match self.build() {
                Ok(g) => g,
                Err(d) => panic!("expected a graph, got:\n{}", errors(&d)),
            }
        }

        /// Every diagnostic in its one-line form, plus each note's location and text.
        fn err(&self) -> String {
            match self.build() {
                Ok(g) => panic!("expected errors, got order {:?}", g.order()),
                Err(d) => errors(&d),
            }
        }
    }

    fn service(name: &str, line: u32) -> Service {
        let mut s = Service {
            name: name.to_string(),
            image: Some("busybox".into()),
            ..Service::default()
        };
        s.spans.name = loc(line);
        s
    }

    fn errors(d: &Diagnostics) -> String {
        let mut out = String::new();
        for d in &d.0 {
            let _ = writeln!(out, "{d}");
            if let Some(label) = &d.label {
                let _ = writeln!(out, "  label: {label}");
            }
            for (l, text) in &d.notes {
                let _ = writeln!(out, "  note {l}: {text}");
            }
            if let Some(hint) = &d.hint {
                let _ = writeln!(out, "  hint: {hint}");
            }
        }
        out
    }

    /// `order` lists every service once, each after everything it depends on.
    fn assert_valid_order(g: &ServiceGraph) {
        let order = g.order();
        assert_eq!(order.len(), g.services().len());
        let pos: HashMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for e in g.edges() {
            assert!(
                pos[e.to.as_str()] < pos[e.from.as_str()],
                "{} must come before {} in {order:?}",
                e.to,
                e.from
            );
        }
    }

    #[test]
    fn empty_project_has_empty_graph() {
        let g = Fixture::new(&[]).ok();
        assert!(g.order().is_empty());
        assert!(g.pods().is_empty());
        assert_eq!(g.critical_path(|_| 1), (0, vec![]));
    }

    #[test]
    fn order_puts_dependencies_first() {
        let g = Fixture::new(&["web", "api", "db", "cache", "worker"])
            .dep("web", "api", ServiceStarted, 10)
            .dep("api", "db", ServiceHealthy, 11)
            .dep("api", "cache", ServiceStarted, 12)
            .dep("worker", "db", ServiceCompletedSuccessfully, 13)
            .ok();
        assert_valid_order(&g);
        assert_eq!(g.services(), ["api", "cache", "db", "web", "worker"]);
        // Deterministic: the same project gives the same order.
        let again = Fixture::new(&["web", "api", "db", "cache", "worker"])
            .dep("web", "api", ServiceStarted, 10)
            .dep("api", "db", ServiceHealthy, 11)
            .dep("api", "cache", ServiceStarted, 12)
            .dep("worker", "db", ServiceCompletedSuccessfully, 13)
            .ok();
        assert_eq!(g.order(), again.order());
    }

    #[test]
    fn dependencies_and_dependents_carry_conditions() {
        let g = Fixture::new(&["web", "api", "db"])
            .dep("web", "db", ServiceHealthy, 10)
            .dep_full("api", "db", ServiceCompletedSuccessfully, true, true, 11)
            .dep("web", "api", ServiceStarted, 12)
            .ok();
        let deps: Vec<(&str, Condition)> = g
            .dependencies("web")
            .iter()
            .map(|e| (e.to.as_str(), e.condition))
            .collect();
        assert_eq!(deps, [("api", ServiceStarted), ("db", ServiceHealthy)]);
        let dependents: Vec<(&str, Condition, bool)> = g
            .dependents("db")
            .iter()
            .map(|e| (e.from.as_str(), e.condition, e.restart))
            .collect();
        assert_eq!(
            dependents,
            [
                ("api", ServiceCompletedSuccessfully, true),
                ("web", ServiceHealthy, false)
            ]
        );
        assert!(g.dependencies("db").is_empty());
        assert!(g.dependencies("nope").is_empty());
        assert!(g.dependents("nope").is_empty());
        assert_eq!(g.edges()[0].location, loc(11));
    }

    #[test]
    fn implicit_edges_from_links_volumes_from_and_network_mode() {
        let g = Fixture::new(&["web", "db", "data", "cache", "proxy", "legacy"])
            .link("web", "db:database", 10)
            .volumes_from("web", "data:ro", 11)
            .volumes_from("legacy", "cache:rw", 12)
            .volumes_from("legacy", "container:some-container", 13)
            .network_mode("proxy", "service:web", 14)
            .ok();
        assert_valid_order(&g);
        let edges: Vec<(&str, &str, EdgeKind, Condition, bool)> = g
            .edges()
            .iter()
            .map(|e| {
                (
                    e.from.as_str(),
                    e.to.as_str(),
                    e.kind,
                    e.condition,
                    e.required,
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                (
                    "legacy",
                    "cache",
                    EdgeKind::VolumesFrom,
                    ServiceStarted,
                    true
                ),
                ("proxy", "web", EdgeKind::NetworkMode, ServiceStarted, true),
                ("web", "data", EdgeKind::VolumesFrom, ServiceStarted, true),
                ("web", "db", EdgeKind::Links, ServiceStarted, true),
            ]
        );
        assert_eq!(g.dependencies("proxy")[0].location, loc(14));
    }

    #[test]
    fn depends_on_wins_over_implicit_edge_to_same_service() {
        let g = Fixture::new(&["web", "db"])
            .link("web", "db", 10)
            .dep("web", "db", ServiceHealthy, 11)
            .ok();
        let edges = g.edges();
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].kind, EdgeKind::DependsOn);
        assert_eq!(edges[0].condition, ServiceHealthy);
    }

    #[test]
    fn volumes_from_and_link_parsing() {
        assert_eq!(volumes_from_service("db"), Some("db"));
        assert_eq!(volumes_from_service("db:ro"), Some("db"));
        // compose reads the first field as the service: `service:db` names `service`.
        assert_eq!(volumes_from_service("service:db"), Some("service"));
        assert_eq!(volumes_from_service("service:db:rw"), Some("service"));
        assert_eq!(volumes_from_service("container:abc"), None);
        assert_eq!(volumes_from_service("container:abc:ro"), None);
        assert_eq!(link_service("db"), "db");
        assert_eq!(link_service("db:alias"), "db");
    }

    #[test]
    fn unknown_dependency_suggests_close_name() {
        let out = Fixture::new(&["web", "postgres"])
            .dep("web", "postgress", ServiceHealthy, 7)
            .err();
        assert_eq!(
            out,
            "compose.yaml:7:7: error: service `web` depends on `postgress`, which is not defined\n  \
             label: did you mean `postgres`?\n"
        );
    }

    #[test]
    fn unknown_dependency_without_close_name_hints_to_define_it() {
        let out = Fixture::new(&["web", "db"])
            .link("web", "elasticsearch", 8)
            .err();
        assert_eq!(
            out,
            "compose.yaml:8:7: error: service `web` links to `elasticsearch`, which is not defined\n  \
             label: no service of this name\n  \
             hint: define service `elasticsearch` under `services:`, or remove this dependency\n"
        );
    }

    #[test]
    fn unknown_optional_dependency_is_an_error_as_in_compose() {
        // `required: false` excuses a service disabled by profiles, not a missing one.
        let out = Fixture::new(&["web", "db"])
            .dep_full("web", "dbb", ServiceStarted, false, false, 9)
            .err();
        assert_eq!(
            out,
            "compose.yaml:9:7: error: service `web` depends on `dbb`, which is not defined\n  \
             label: did you mean `db`?\n"
        );
    }

    #[test]
    fn self_dependency_is_an_error_for_every_kind() {
        let out = Fixture::new(&["a", "b", "c"])
            .dep("a", "a", ServiceStarted, 3)
            .link("b", "b", 4)
            .network_mode("c", "service:c", 5)
            .err();
        assert_eq!(
            out,
            "compose.yaml:3:7: error: service `a` depends on itself (`depends_on`)\n  \
             label: a service cannot wait for itself\n  \
             hint: remove `a` from `depends_on`\n\
             compose.yaml:4:7: error: service `b` links to itself (`links`)\n  \
             label: a service cannot wait for itself\n  \
             hint: remove `b` from `links`\n\
             compose.yaml:5:7: error: service `c` shares the network namespace of itself (`network_mode`)\n  \
             label: a service cannot wait for itself\n  \
             hint: remove `c` from `network_mode`\n"
        );
    }

    #[test]
    fn dependency_on_disabled_service_says_which_profile() {
        let out = Fixture::new(&["web"])
            .disabled("debug", "tools")
            .dep("web", "debug", ServiceStarted, 6)
            .err();
        assert_eq!(
            out,
            "compose.yaml:6:7: error: service `web` depends on `debug`, which is disabled by profiles\n  \
             label: `debug` is not enabled\n  \
             hint: enable it with `--profile tools` (its profiles: `tools`), or mark the dependency \
             `required: false`\n"
        );
    }

    #[test]
    fn optional_dependency_on_disabled_service_is_dropped() {
        let g = Fixture::new(&["web", "db"])
            .disabled("debug", "tools")
            .dep_full("web", "debug", ServiceStarted, false, false, 6)
            .dep("web", "db", ServiceStarted, 7)
            .ok();
        let edges: Vec<&str> = g.edges().iter().map(|e| e.to.as_str()).collect();
        assert_eq!(edges, ["db"]);
        assert!(!g.contains("debug"));
        assert_eq!(g.warnings().0.len(), 1);
        assert_eq!(g.warnings().0[0].location, Some(loc(6)));
        assert!(!g.warnings().has_errors());
    }

    #[test]
    fn implicit_edge_to_disabled_service_is_an_error() {
        let out = Fixture::new(&["web"])
            .disabled("data", "backup")
            .volumes_from("web", "data", 4)
            .err();
        assert!(
            out.starts_with(
                "compose.yaml:4:7: error: service `web` mounts the volumes of `data`, which is \
                 disabled by profiles\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn cycle_prints_whole_cycle_with_a_note_per_edge() {
        let out = Fixture::new(&["web", "api", "db", "cache"])
            .dep("web", "api", ServiceStarted, 10)
            .dep("api", "db", ServiceHealthy, 20)
            .link("db", "web", 30)
            .dep("web", "cache", ServiceStarted, 40)
            .err();
        // `api` is the alphabetically first service of the cycle: the report starts there.
        assert_eq!(
            out,
            "compose.yaml:20:7: error: dependency cycle: api → db → web → api\n  \
             label: `api` depends on `db`\n  \
             note compose.yaml:30:7: `db` depends on `web` (links)\n  \
             note compose.yaml:10:7: `web` depends on `api`\n  \
             hint: services cannot start until the services they depend on have; remove one of \
             these dependencies to break the cycle\n"
        );
    }

    #[test]
    fn two_service_cycle() {
        let out = Fixture::new(&["a", "b"])
            .dep("a", "b", ServiceStarted, 1)
            .network_mode("b", "service:a", 2)
            .err();
        assert!(out.starts_with("compose.yaml:1:7: error: dependency cycle: a → b → a\n"));
        assert!(out.contains("note compose.yaml:2:7: `b` depends on `a` (network_mode)\n"));
    }

    #[test]
    fn each_separate_cycle_is_reported_with_the_other_problems() {
        let out = Fixture::new(&["a", "b", "c", "d", "e"])
            .dep("a", "b", ServiceStarted, 1)
            .dep("b", "a", ServiceStarted, 2)
            .dep("c", "d", ServiceStarted, 3)
            .dep("d", "c", ServiceStarted, 4)
            .dep("e", "zzz", ServiceStarted, 5)
            .dep("e", "e", ServiceStarted, 6)
            .err();
        let headlines: Vec<&str> = out.lines().filter(|l| !l.starts_with("  ")).collect();
        assert_eq!(
            headlines,
            [
                "compose.yaml:6:7: error: service `e` depends on itself (`depends_on`)",
                "compose.yaml:5:7: error: service `e` depends on `zzz`, which is not defined",
                "compose.yaml:1:7: error: dependency cycle: a → b → a",
                "compose.yaml:3:7: error: dependency cycle: c → d → c",
            ]
        );
    }

    #[test]
    fn cycle_report_takes_shortest_way_back() {
        // One strongly connected component with a long and a short cycle through `a`.
        let out = Fixture::new(&["a", "b", "c", "d"])
            .dep("a", "b", ServiceStarted, 1)
            .dep("b", "c", ServiceStarted, 2)
            .dep("c", "d", ServiceStarted, 3)
            .dep("d", "a", ServiceStarted, 4)
            .dep("b", "a", ServiceStarted, 5)
            .err();
        assert!(
            out.starts_with("compose.yaml:1:7: error: dependency cycle: a → b → a\n"),
            "{out}"
        );
        assert_eq!(out.matches("error:").count(), 1, "one report per component");
    }

    #[test]
    fn edge_without_recorded_location_points_at_service_name() {
        let mut f = Fixture::new(&["web"]);
        f.svc("web").links.push("nope".into());
        let out = f.err();
        assert!(out.starts_with("compose.yaml:1:7: error: service `web` links to `nope`"));
    }

    #[test]
    fn pods_group_network_mode_chains() {
        let g = Fixture::new(&["web", "sidecar", "metrics", "db", "logger"])
            .network_mode("sidecar", "service:web", 10)
            .network_mode("metrics", "service:sidecar", 11)
            .network_mode("logger", "host", 12)
            .dep("web", "db", ServiceHealthy, 13)
            .ok();
        let pods: Vec<(&str, Vec<&str>)> = g
            .pods()
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.services.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            pods,
            [
                ("db", vec!["db"]),
                ("logger", vec!["logger"]),
                ("web", vec!["metrics", "sidecar", "web"]),
            ]
        );
        assert_eq!(g.pod_of("metrics").map(|p| p.name.as_str()), Some("web"));
        assert_eq!(g.pod_of("db").map(|p| p.services.len()), Some(1));
        assert_eq!(g.pod_of("nope"), None);
        assert_eq!(g.shared_pods().count(), 1);
        assert_valid_order(&g);
    }

    #[test]
    fn critical_path_is_the_longest_weighted_chain() {
        let g = Fixture::new(&["web", "api", "db", "cache", "cdn"])
            .dep("web", "api", ServiceStarted, 1)
            .dep("api", "db", ServiceHealthy, 2)
            .dep("api", "cache", ServiceStarted, 3)
            .dep("web", "cdn", ServiceStarted, 4)
            .ok();
        let cost = |s: &str| match s {
            "db" => 30,
            "cache" => 5,
            "cdn" => 40,
            _ => 10,
        };
        assert_eq!(g.critical_path(cost), (50, vec!["db", "api", "web"]));
        let cdn_heavy = |s: &str| if s == "cdn" { 100 } else { 1 };
        assert_eq!(g.critical_path(cdn_heavy), (101, vec!["cdn", "web"]));
    }

    #[test]
    fn text_lists_services_in_order_with_conditions() {
        let g = Fixture::new(&["web", "db", "cache"])
            .dep("web", "db", ServiceHealthy, 1)
            .dep_full("web", "cache", ServiceStarted, false, true, 2)
            .link("db", "cache", 3)
            .ok();
        assert_eq!(
            g.to_text(),
            "cache\ndb\n  waits for cache: service_started (links)\nweb\n  waits for cache: \
             service_started (required: false, restart: true)\n  waits for db: service_healthy\n"
        );
    }

    #[test]
    fn dot_has_labels_dashes_and_pod_clusters() {
        let g = Fixture::new(&["web", "proxy", "db"])
            .dep("web", "db", ServiceHealthy, 1)
            .network_mode("proxy", "service:web", 2)
            .ok();
        assert_eq!(
            g.to_dot("shop"),
            "digraph \"shop\" {\n  node [shape=box];\n  subgraph cluster_pod_0 {\n    \
             label=\"pod web\";\n    style=rounded;\n    \"proxy\";\n    \"web\";\n  }\n  \
             \"db\";\n  \"proxy\" -> \"web\" [label=\"service_started\", style=dashed];\n  \
             \"web\" -> \"db\" [label=\"service_healthy\"];\n}\n"
        );
        assert_eq!(dot_id("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn json_has_the_documented_structure() {
        let g = Fixture::new(&["web", "proxy", "db"])
            .dep("web", "db", ServiceHealthy, 1)
            .network_mode("proxy", "service:web", 2)
            .ok();
        assert_eq!(
            g.to_json(),
            serde_json::json!({
                "services": ["db", "proxy", "web"],
                "edges": [
                    {"from": "proxy", "to": "web", "condition": "service_started",
                     "required": true, "restart": false, "kind": "network_mode"},
                    {"from": "web", "to": "db", "condition": "service_healthy",
                     "required": true, "restart": false, "kind": "depends_on"},
                ],
                "order": ["db", "web", "proxy"],
                "pods": [{"name": "db", "services": ["db"]},
                         {"name": "web", "services": ["proxy", "web"]}],
                "colocations": [],
            })
        );
    }

    #[test]
    fn large_chain_builds_and_orders() {
        // A 2,000-long chain: no recursion limits, order is the chain.
        let names: Vec<String> = (0..2000).map(|i| format!("s{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut f = Fixture::new(&refs);
        for i in 1..names.len() {
            f = f.dep(&names[i], &names[i - 1], ServiceStarted, i as u32);
        }
        let g = f.ok();
        assert_eq!(g.order(), refs);
        assert_eq!(g.critical_path(|_| 1).0, 2000);
    }
}
