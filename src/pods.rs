//! The one pod model: which services share a network namespace (a *pod*), and which pods must
//! share a host (a *colocation*). Worked out from the project alone; `graph`, placement
//! (`schedule::units`), `plan` and the agent's pod specs all read it, so they name every pod alike.
//!
//! - **Pod**: the services joined by `network_mode: service:X`, directly or through a chain. On a
//!   host a pod is one network namespace (with its uts and ipc namespaces) shared by its
//!   containers. A service that joins nobody and that nobody joins is a pod of one.
//! - **Colocation**: pods that must run on the same host, because one service mounts another's
//!   volumes (`volumes_from`) or several services mount the same named *local* volume (a volume
//!   with the `local` driver lives on one host's disk). A pod that shares nothing is a colocation
//!   of one. Placement puts one colocation instance (replica `r` of each of its services) on one
//!   host.
//!
//! **Names.** A pod is named after its *root*: the service whose network namespace the others
//! join (the one member without `network_mode: service:`). Service names are unique, so pod names
//! are; the name survives adding or removing other members. Only a `network_mode` cycle (which
//! the graph rejects) has no root: such a pod is named after its alphabetically first service so
//! that the model stays total. A colocation is named after its alphabetically first pod.
//!
//! **What does not make a pod.** `ipc: service:X`, `pid: service:X` and `uts: service:X` are
//! accepted but not honoured (the ledger says so): every pod already has its own ipc and uts
//! namespace and each container its own pid namespace, so these keys neither join pods nor pin
//! hosts. `network_mode: container:X` and `volumes_from: container:X` name containers outside the
//! project: the loader rejects the first, and the second joins nothing. References to services
//! that do not exist or are disabled join nothing here; the graph reports them as errors.
//!
//! Pure: no I/O; the same project gives the same pods in the same order.

use std::collections::BTreeMap;

use crate::compose::model::{volumes_from_service, Project};

/// Services sharing one network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name: its root service (see the module documentation).
    pub name: String,
    /// Every service of the pod, sorted by name, the root included.
    pub services: Vec<String>,
}

impl Pod {
    /// Whether the pod runs more than one service.
    pub fn is_shared(&self) -> bool {
        self.services.len() > 1
    }
}

/// Why two pods must share a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tie {
    /// A service mounts another's volumes (`volumes_from`).
    VolumesFrom,
    /// Services mount one named local volume.
    LocalVolume,
}

/// Pods that must run on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colocation {
    /// Its alphabetically first pod's name.
    pub name: String,
    /// Indexes into [`Pods::pods`], in name order.
    pub pods: Vec<usize>,
    /// What ties the pods together (empty for a colocation of one pod).
    pub ties: Vec<Tie>,
}

/// The pods and colocations of a project's enabled services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pods {
    /// Sorted by name.
    pub pods: Vec<Pod>,
    /// Sorted by name; every pod is in exactly one.
    pub colocations: Vec<Colocation>,
    /// Service → index into `pods`.
    pod_of: BTreeMap<String, usize>,
    /// Pod index → index into `colocations`.
    colocation_of: Vec<usize>,
}

impl Pods {
    /// The pod `service` runs in; `None` for a service that is not enabled.
    pub fn pod_of(&self, service: &str) -> Option<&Pod> {
        self.pod_of.get(service).map(|&i| &self.pods[i])
    }

    /// The index of `service`'s pod in [`Pods::pods`].
    pub fn pod_index(&self, service: &str) -> Option<usize> {
        self.pod_of.get(service).copied()
    }

    /// The colocation the pod at `pod` (an index into [`Pods::pods`]) belongs to.
    pub fn colocation_of(&self, pod: usize) -> &Colocation {
        &self.colocations[self.colocation_of[pod]]
    }

    /// Every service of a colocation, sorted by name.
    pub fn services_of(&self, colocation: &Colocation) -> Vec<String> {
        let mut out: Vec<String> = colocation
            .pods
            .iter()
            .flat_map(|&p| self.pods[p].services.iter().cloned())
            .collect();
        out.sort();
        out
    }
}

/// Works out the pods and colocations of `project`'s enabled services.
///
/// Linear in the services and their references (sets are grouped by their representative in
/// vectors, not maps, and each tie is filed under its colocation once): it runs on every load,
/// for projects of tens of thousands of services.
pub fn of(project: &Project) -> Pods {
    // Sorted (the services are a `BTreeMap`): a name's index is found by binary search.
    let names: Vec<&str> = project.services.keys().map(String::as_str).collect();
    let index = |name: &str| names.binary_search(&name).ok();

    // Pods: network namespaces joined by `network_mode: service:X`.
    let joins: Vec<Option<usize>> = project
        .services
        .values()
        .map(|s| s.network_mode_service().and_then(index))
        .collect();
    let mut netns = Sets::new(names.len());
    for (i, j) in joins.iter().enumerate() {
        if let Some(j) = *j {
            netns.union(i, j);
        }
    }
    // A set's representative is its smallest member, so groups come out in name order of their
    // first member, each with its members in name order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_root = vec![usize::MAX; names.len()];
    for i in 0..names.len() {
        let r = netns.find(i);
        if group_of_root[r] == usize::MAX {
            group_of_root[r] = groups.len();
            groups.push(Vec::new());
        }
        groups[group_of_root[r]].push(i);
    }
    // Each pod with its members' indexes, which give the services' pod indexes once the pods
    // are sorted (no name is looked up again).
    let mut pods: Vec<(Pod, Vec<usize>)> = groups
        .into_iter()
        .map(|members| {
            // Members are in name order: with no root (a cycle) the first one names the pod.
            let root = members
                .iter()
                .copied()
                .find(|&i| joins[i].is_none())
                .unwrap_or(members[0]);
            let pod = Pod {
                name: names[root].to_string(),
                services: members.iter().map(|&i| names[i].to_string()).collect(),
            };
            (pod, members)
        })
        .collect();
    pods.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    // Service index → pod index.
    let mut pod_index = vec![0; names.len()];
    for (p, (_, members)) in pods.iter().enumerate() {
        for &i in members {
            pod_index[i] = p;
        }
    }
    let pods: Vec<Pod> = pods.into_iter().map(|(pod, _)| pod).collect();
    let pod_of: BTreeMap<String, usize> = names
        .iter()
        .zip(&pod_index)
        .map(|(n, &p)| (n.to_string(), p))
        .collect();

    // Colocations: pods tied to one host by `volumes_from` or a shared local volume.
    let mut host = Sets::new(pods.len());
    let mut ties: Vec<(usize, Tie)> = Vec::new();
    let mut volume_users: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, service) in project.services.values().enumerate() {
        let p = pod_index[i];
        for entry in &service.volumes_from {
            if let Some(q) = volumes_from_service(entry).and_then(index) {
                if host.union(p, pod_index[q]) {
                    ties.push((p, Tie::VolumesFrom));
                }
            }
        }
        for v in &service.volumes {
            let Some(source) = v.source.as_deref() else {
                continue;
            };
            let local = v.kind == "volume"
                && project.volumes.get(source).is_some_and(|vol| {
                    !vol.external && vol.driver.as_deref().unwrap_or("local") == "local"
                });
            if local {
                volume_users.entry(source).or_default().push(p);
            }
        }
    }
    for users in volume_users.values() {
        for w in users.windows(2) {
            if host.union(w[0], w[1]) {
                ties.push((w[0], Tie::LocalVolume));
            }
        }
    }
    // Pods are in name order, so each list is too, and its first pod names the colocation.
    let mut lists: Vec<Vec<usize>> = Vec::new();
    let mut list_of_root = vec![usize::MAX; pods.len()];
    for p in 0..pods.len() {
        let r = host.find(p);
        if list_of_root[r] == usize::MAX {
            list_of_root[r] = lists.len();
            lists.push(Vec::new());
        }
        lists[list_of_root[r]].push(p);
    }
    let mut why: Vec<Vec<Tie>> = vec![Vec::new(); lists.len()];
    for (p, tie) in &ties {
        why[list_of_root[host.find(*p)]].push(*tie);
    }
    let mut colocations: Vec<Colocation> = lists
        .into_iter()
        .zip(why)
        .map(|(list, mut why)| {
            why.sort();
            why.dedup();
            Colocation {
                name: pods[list[0]].name.clone(),
                pods: list,
                ties: why,
            }
        })
        .collect();
    colocations.sort_by(|a, b| a.name.cmp(&b.name));
    let mut colocation_of = vec![0; pods.len()];
    for (c, colocation) in colocations.iter().enumerate() {
        for &p in &colocation.pods {
            colocation_of[p] = c;
        }
    }
    Pods {
        pods,
        colocations,
        pod_of,
        colocation_of,
    }
}

/// Union-find with path halving; the smaller index becomes the representative.
struct Sets(Vec<usize>);

impl Sets {
    fn new(n: usize) -> Sets {
        Sets((0..n).collect())
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }

    /// Joins the sets of `a` and `b`; whether they were apart.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        self.0[ra.max(rb)] = ra.min(rb);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::{Service, ServiceVolume, Volume};

    type Edit = fn(&mut Service);

    fn project(services: &[(&str, Edit)]) -> Project {
        let mut p = Project::default();
        for (name, edit) in services {
            let mut s = Service {
                name: name.to_string(),
                ..Service::default()
            };
            edit(&mut s);
            p.services.insert(name.to_string(), s);
        }
        p
    }

    fn names(pods: &Pods) -> Vec<(String, Vec<String>)> {
        pods.pods
            .iter()
            .map(|p| (p.name.clone(), p.services.clone()))
            .collect()
    }

    fn volume(s: &mut Service, source: &str) {
        s.volumes.push(ServiceVolume {
            kind: "volume".into(),
            source: Some(source.into()),
            target: "/data".into(),
            ..ServiceVolume::default()
        });
    }

    #[test]
    fn a_pod_is_named_after_the_service_owning_the_namespace() {
        let p = project(&[
            ("web", |_| {}),
            ("a-sidecar", |s| s.network_mode = Some("service:web".into())),
            ("metrics", |s| {
                s.network_mode = Some("service:a-sidecar".into())
            }),
            ("db", |s| s.network_mode = Some("host".into())),
        ]);
        let pods = of(&p);
        assert_eq!(
            names(&pods),
            [
                ("db".to_string(), vec!["db".to_string()]),
                (
                    "web".to_string(),
                    vec!["a-sidecar".into(), "metrics".into(), "web".into()]
                ),
            ]
        );
        assert_eq!(pods.pod_of("metrics").map(|p| p.name.as_str()), Some("web"));
        assert_eq!(pods.pod_of("nope"), None);
        assert_eq!(pods.colocations.len(), 2, "no tie between them");
    }

    #[test]
    fn volumes_from_and_local_volumes_colocate_pods_without_merging_them() {
        let mut p = project(&[
            ("db", |s| volume(s, "data")),
            ("backup", |s| volume(s, "data")),
            ("web", |_| {}),
            ("logs", |s| s.volumes_from.push("web:ro".into())),
            ("remote", |s| volume(s, "shared")),
            ("remote2", |s| volume(s, "shared")),
            ("outside", |s| s.volumes_from.push("container:abc".into())),
        ]);
        p.volumes.insert("data".into(), Volume::default());
        p.volumes.insert(
            "shared".into(),
            Volume {
                driver: Some("nfs".into()),
                ..Volume::default()
            },
        );
        let pods = of(&p);
        assert_eq!(pods.pods.len(), 7, "every service is its own pod");
        let colocations: Vec<(&str, Vec<&str>, &[Tie])> = pods
            .colocations
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.pods.iter().map(|&i| pods.pods[i].name.as_str()).collect(),
                    &c.ties[..],
                )
            })
            .collect();
        assert_eq!(
            colocations,
            [
                ("backup", vec!["backup", "db"], &[Tie::LocalVolume][..]),
                ("logs", vec!["logs", "web"], &[Tie::VolumesFrom][..]),
                ("outside", vec!["outside"], &[][..]),
                ("remote", vec!["remote"], &[][..]),
                ("remote2", vec!["remote2"], &[][..]),
            ]
        );
        let db = pods.pod_index("db").unwrap();
        assert_eq!(pods.colocation_of(db).name, "backup");
        assert_eq!(
            pods.services_of(pods.colocation_of(db)),
            ["backup".to_string(), "db".to_string()]
        );
    }

    #[test]
    fn broken_references_join_nothing_and_a_cycle_still_gets_a_name() {
        let p = project(&[
            ("a", |s| s.network_mode = Some("service:b".into())),
            ("b", |s| s.network_mode = Some("service:a".into())),
            ("c", |s| s.network_mode = Some("service:nope".into())),
            ("d", |s| s.volumes_from.push("nope".into())),
        ]);
        let pods = of(&p);
        assert_eq!(
            names(&pods),
            [
                ("a".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("c".to_string(), vec!["c".to_string()]),
                ("d".to_string(), vec!["d".to_string()]),
            ]
        );
    }
}
