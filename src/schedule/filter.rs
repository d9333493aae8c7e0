//! Filters: each one looks at one host for one pod instance and either lets it through or says
//! why not. They run in the order [`super::Engine::check`] lists them; the first rejection is the
//! host's reason in an explanation.

use super::units::{Amount, Attribute, PortKey, Shape};
use super::{Node, NodeState};

/// Why a host cannot take a pod instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    Draining,
    Unreachable,
    /// The constraint's text, as the user wrote it.
    Constraint(String),
    /// `max_replicas_per_node` is reached.
    MaxPerNode(u32),
    /// Two of the pod's own services publish the same port: no host can run it.
    OwnPorts(PortKey),
    /// The port is already published on the host.
    Port(PortKey),
    /// Not enough memory: what is free.
    Memory {
        free: u64,
    },
    /// Not enough cpu: what is free (thousandths).
    Cpu {
        free: u64,
    },
}

/// Stage 1, host state: draining and unreachable hosts take no new replicas.
pub fn host_ready(node: &Node) -> Result<(), Reject> {
    match node.state {
        NodeState::Ready => Ok(()),
        NodeState::Draining => Err(Reject::Draining),
        NodeState::Unreachable => Err(Reject::Unreachable),
    }
}

/// Stage 2, `deploy.placement.constraints` (and `platform:`): every one must hold. A missing
/// label or unknown arch never equals anything, and so always satisfies `!=`.
pub fn constraints(shape: &Shape, node: &Node) -> Result<(), Reject> {
    for c in &shape.constraints {
        let actual: Option<&str> = match &c.attribute {
            Attribute::Hostname => Some(&node.name),
            Attribute::Label(k) => node.labels.get(k).map(String::as_str),
            Attribute::Arch => node.arch.as_deref(),
            Attribute::Os => Some("linux"),
        };
        let equal = actual == Some(c.value.as_str());
        if equal != c.equal {
            return Err(Reject::Constraint(c.text.clone()));
        }
    }
    Ok(())
}

/// Stage 3, `max_replicas_per_node`: `on_host(service)` counts that service's replicas already
/// on the host.
pub fn max_per_node(shape: &Shape, on_host: impl Fn(&str) -> u32) -> Result<(), Reject> {
    for (service, max) in &shape.limits {
        if on_host(service) >= *max {
            return Err(Reject::MaxPerNode(*max));
        }
    }
    Ok(())
}

/// Stage 4, published ports: per (host IP, port, protocol); binding every address conflicts
/// with any address.
pub fn ports(shape: &Shape, taken: &[PortKey]) -> Result<(), Reject> {
    if let Some(p) = &shape.self_conflict {
        return Err(Reject::OwnPorts(p.clone()));
    }
    for p in &shape.ports {
        if let Some(t) = taken.iter().find(|t| t.conflicts(p)) {
            // Name the port as the pod asks for it, or the narrower of the two.
            let shown = if p.ip.is_none() { t } else { p };
            return Err(Reject::Port(shown.clone()));
        }
    }
    Ok(())
}

/// Stage 5, memory: the demand fits in what is free (capacity minus reserved minus placed).
pub fn memory(demand: Amount, free: Amount) -> Result<(), Reject> {
    if demand.memory <= free.memory {
        Ok(())
    } else {
        Err(Reject::Memory { free: free.memory })
    }
}

/// Stage 6, cpu: the same for cpu.
pub fn cpu(demand: Amount, free: Amount) -> Result<(), Reject> {
    if demand.cpu_millis <= free.cpu_millis {
        Ok(())
    } else {
        Err(Reject::Cpu {
            free: free.cpu_millis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::units::{parse_constraint, Amount, PortKey, Shape};
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], arch: Option<&str>, state: NodeState) -> Node {
        Node {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            arch: arch.map(str::to_string),
            allocatable: Amount::default(),
            state,
        }
    }

    fn shape(constraints: &[&str], ports: &[PortKey], max: Option<u32>) -> Shape {
        Shape {
            group: 0,
            services: vec!["s".into()],
            demand: Amount::default(),
            ports: ports.to_vec(),
            self_conflict: None,
            constraints: constraints
                .iter()
                .map(|c| parse_constraint(c).unwrap())
                .collect(),
            limits: max.map(|m| ("s".to_string(), m)).into_iter().collect(),
        }
    }

    fn port(ip: Option<&str>, port: u16) -> PortKey {
        PortKey {
            ip: ip.map(str::to_string),
            port,
            protocol: "tcp".into(),
        }
    }

    #[test]
    fn host_state() {
        for (state, want) in [
            (NodeState::Ready, Ok(())),
            (NodeState::Draining, Err(Reject::Draining)),
            (NodeState::Unreachable, Err(Reject::Unreachable)),
        ] {
            assert_eq!(host_ready(&node("h", &[], None, state)), want);
        }
    }

    #[test]
    fn constraint_table() {
        let h = node(
            "web-1",
            &[("zone", "a"), ("group.web", "true")],
            Some("x86_64"),
            NodeState::Ready,
        );
        let bare = node("db-1", &[], None, NodeState::Ready);
        for (constraint, on_h, on_bare) in [
            ("node.hostname == web-1", true, false),
            ("node.hostname != web-1", false, true),
            ("node.labels.zone == a", true, false),
            ("node.labels.zone != a", false, true),
            ("node.labels.zone == b", false, false),
            ("node.labels.group.web == true", true, false),
            ("node.platform.arch == amd64", true, false),
            ("node.platform.arch != aarch64", true, true),
            ("node.platform.os == linux", true, true),
            ("node.platform.os == windows", false, false),
        ] {
            let s = shape(&[constraint], &[], None);
            assert_eq!(constraints(&s, &h).is_ok(), on_h, "{constraint} on web-1");
            assert_eq!(
                constraints(&s, &bare).is_ok(),
                on_bare,
                "{constraint} on db-1"
            );
            if !on_h {
                assert_eq!(
                    constraints(&s, &h),
                    Err(Reject::Constraint(constraint.into()))
                );
            }
        }
    }

    #[test]
    fn max_per_node_table() {
        for (max, on_host, ok) in [
            (None, 5, true),
            (Some(2), 1, true),
            (Some(2), 2, false),
            (Some(1), 0, true),
        ] {
            let s = shape(&[], &[], max);
            assert_eq!(
                max_per_node(&s, |_| on_host).is_ok(),
                ok,
                "{max:?} {on_host}"
            );
        }
    }

    #[test]
    fn ports_table() {
        let any80 = port(None, 80);
        let ip1_80 = port(Some("10.0.0.1"), 80);
        let ip2_80 = port(Some("10.0.0.2"), 80);
        for (wants, taken, ok) in [
            (vec![any80.clone()], vec![], true),
            (vec![any80.clone()], vec![port(None, 81)], true),
            (vec![any80.clone()], vec![any80.clone()], false),
            (vec![any80.clone()], vec![ip1_80.clone()], false),
            (vec![ip1_80.clone()], vec![any80.clone()], false),
            (vec![ip1_80.clone()], vec![ip2_80.clone()], true),
            (
                vec![any80.clone()],
                vec![PortKey {
                    protocol: "udp".into(),
                    ..any80.clone()
                }],
                true,
            ),
        ] {
            let s = shape(&[], &wants, None);
            assert_eq!(ports(&s, &taken).is_ok(), ok, "{wants:?} vs {taken:?}");
        }
        let s = shape(&[], std::slice::from_ref(&any80), None);
        assert_eq!(
            ports(&s, std::slice::from_ref(&ip1_80)),
            Err(Reject::Port(ip1_80))
        );
        let mut own = shape(&[], &[], None);
        own.self_conflict = Some(any80.clone());
        assert_eq!(ports(&own, &[]), Err(Reject::OwnPorts(any80)));
    }

    #[test]
    fn resources_table() {
        let a = |c, m| Amount {
            cpu_millis: c,
            memory: m,
        };
        for (demand, free, mem_ok, cpu_ok) in [
            (a(100, 10), a(100, 10), true, true),
            (a(101, 10), a(100, 10), true, false),
            (a(100, 11), a(100, 10), false, true),
            (a(0, 0), a(0, 0), true, true),
        ] {
            assert_eq!(memory(demand, free).is_ok(), mem_ok);
            assert_eq!(cpu(demand, free).is_ok(), cpu_ok);
        }
        assert_eq!(memory(a(0, 11), a(0, 10)), Err(Reject::Memory { free: 10 }));
        assert_eq!(cpu(a(200, 0), a(150, 0)), Err(Reject::Cpu { free: 150 }));
    }
}
