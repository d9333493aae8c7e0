//! Pod networking across two lab hosts on one L2 segment, through the agent's protocol: each
//! host gets its subnet and a route to the other's (host-gw); a pod on one host reaches a pod on
//! the other by address, a published port answers from the root namespace and from the other
//! host, a pod reaches the lab registry through masquerade, and removing the pods leaves each
//! host's `ip`/`nft` state as it was.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use compose_fleet::lab::images::HTTPD_INDEX;
use compose_fleet::proto::net::{assign_subnets, host_networks, Ipv4Net, DEFAULT_FLEET_CIDR};
use compose_fleet::proto::{
    ApplyRequest, ContainerSpec, ExecRequest, HostNetwork, PodSpec, PortMapping, Request, Response,
    StatusReport, Stream,
};
use compose_fleet::ssh::{connect_agent, AgentBinary, OpenSsh, Options, SshTarget, Transport};

use crate::support::{last_ok, rpc, Lab};

pub(crate) const PROJECT: &str = "net";
/// How long anything may take before the test gives up (not a timing assertion).
const DEADLINE: Duration = crate::support::AGENT_DEADLINE;

pub(crate) fn pod(
    name: &str,
    image: &str,
    command: Option<&[&str]>,
    ports: Vec<PortMapping>,
) -> PodSpec {
    PodSpec {
        name: name.into(),
        hostname: name.into(),
        spec_hash: format!("{name}-v1"),
        containers: vec![ContainerSpec {
            service: name.trim_end_matches("-1").into(),
            replica: 1,
            image: image.into(),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..ContainerSpec::default()
        }],
        ports,
        network: Default::default(),
    }
}

async fn status(target: &SshTarget, agent: &AgentBinary) -> StatusReport {
    match last_ok(
        &rpc(
            target,
            agent,
            Request::Status {
                project: Some(PROJECT.into()),
            },
        )
        .await,
    ) {
        Response::Status(s) => s,
        other => panic!("unexpected reply to Status: {other:?}"),
    }
}

/// Waits until the pod's container runs; returns the pod's address from `Status`.
pub(crate) async fn running_ip(target: &SshTarget, agent: &AgentBinary, pod: &str) -> String {
    let start = Instant::now();
    loop {
        let report = status(target, agent).await;
        if let Some(p) = report.pods.iter().find(|p| p.name == pod) {
            if p.containers.iter().all(|c| c.state == "running") {
                return p.ip.clone().expect("a running pod has an address");
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{pod} not running within {DEADLINE:?}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn exec(
    target: &SshTarget,
    agent: &AgentBinary,
    pod: &str,
    argv: &[&str],
) -> (String, i32) {
    let frames = rpc(
        target,
        agent,
        Request::Exec(ExecRequest {
            project: PROJECT.into(),
            pod: pod.into(),
            service: pod.trim_end_matches("-1").into(),
            command: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            stdin: false,
            tty: None,
        }),
    )
    .await;
    let mut out = String::new();
    let mut code = None;
    for f in &frames {
        if let Some(err) = &f.err {
            panic!("exec {argv:?} failed: {err}");
        }
        match &f.ok {
            Some(Response::ExecOutput { stream, data }) => {
                if *stream == Stream::Stdout {
                    out.push_str(data)
                } else {
                    eprintln!("{pod} stderr: {data}");
                }
            }
            Some(Response::ExecExit { code: c }) => code = Some(*c),
            _ => {}
        }
    }
    (out, code.expect("an exit code"))
}

/// Pushes the service map of [`PROJECT`] to every target, as `up` does after a deploy: one
/// service per pod (`web-1` runs `web`), on the default network, at the given (host, pod,
/// address). Pods reach pods of other hosts only once their host knows their networks.
pub(crate) async fn share_map(
    targets: &[SshTarget],
    agent: &AgentBinary,
    pods: &[(&str, &str, &str)],
) {
    use compose_fleet::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    let map = ServiceMap {
        project: PROJECT.into(),
        services: pods
            .iter()
            .map(|(host, pod, addr)| Service {
                name: pod.trim_end_matches("-1").into(),
                endpoint_mode: EndpointMode::Dnsrr,
                vip: None,
                networks: vec![],
                aliases: vec![],
                container_name: None,
                replicas: vec![Endpoint {
                    replica: 1,
                    pod: pod.to_string(),
                    host: host.to_string(),
                    addr: addr.parse().expect("an address"),
                    healthy: true,
                }],
            })
            .collect(),
    };
    for t in targets {
        let r = last_ok(&rpc(t, agent, Request::Services(map.clone())).await);
        assert!(matches!(r, Response::Services { .. }), "{r:?}");
    }
}

/// A host's addresses, routes, links and nftables ruleset, as its own tools show them.
pub(crate) fn host_state(lab: &Lab, host: &str) -> String {
    let run = |argv: &[&str]| -> String {
        let out = lab
            .faults()
            .exec(
                host,
                &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .expect("lab exec")
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addrs: Vec<String> = run(&["ip", "-4", "-br", "addr", "show"])
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", cols[0], cols.get(2..).unwrap_or(&[]).join(" "))
        })
        .collect();
    format!(
        "addrs {addrs:?}\nlinks {}\nroutes {}\nnft {}",
        run(&["sh", "-c", "ip -o link show | cut -d: -f2"]),
        run(&["ip", "-4", "route", "show"]),
        run(&["nft", "list", "ruleset"])
    )
}

/// An HTTP GET over a plain socket from this (the root) namespace.
fn http_get(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn pods_reach_each_other_across_hosts_publish_ports_and_leave_nothing_behind() {
    let Some(lab) = Lab::up(
        "pods_reach_each_other_across_hosts_publish_ports_and_leave_nothing_behind",
        2,
    ) else {
        return;
    };
    let (targets, agent) = lab.agents();
    let hosts = lab.host_names();
    let before: Vec<String> = hosts.iter().map(|h| host_state(&lab, h)).collect();

    // The CLI's decision: no host reports a subnet yet.
    let reported: BTreeMap<String, Option<Ipv4Net>> =
        hosts.iter().map(|h| (h.clone(), None)).collect();
    let subnets = assign_subnets(DEFAULT_FLEET_CIDR, &reported).expect("subnets");
    let addresses = hosts
        .iter()
        .map(|h| (h.clone(), lab.address(h).parse().unwrap()))
        .collect();
    let networks = host_networks(DEFAULT_FLEET_CIDR, &subnets, &addresses);
    // Each lab has its own registry address (labs live side by side).
    let registry = lab.registry();
    let (httpd_image, shell_image) = (lab.httpd_image(), lab.shell_image());
    let network = |me: &str| networks[me].clone();
    let apply = |me: &str, pods: Vec<PodSpec>| {
        Request::Apply(ApplyRequest {
            project: PROJECT.into(),
            pods,
            registry_auth: BTreeMap::new(),
            insecure_registries: vec![registry.clone()],
            network: Some(network(me)),
        })
    };

    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let (h1, h2) = (&targets[0], &targets[1]);
        let agent = &agent;
        let web = pod(
            "web-1",
            &httpd_image,
            None,
            vec![PortMapping {
                host_ip: None,
                published: 8080,
                target: 80,
                protocol: "tcp".into(),
            }],
        );
        let client = pod("client-1", &shell_image, Some(&["sleep", "3600"]), vec![]);
        let r = last_ok(&rpc(h1, agent, apply(&hosts[0], vec![web])).await);
        assert!(
            matches!(r, Response::Applied(ref a) if a.warnings.is_empty()),
            "{r:?}"
        );
        let r = last_ok(&rpc(h2, agent, apply(&hosts[1], vec![client])).await);
        assert!(
            matches!(r, Response::Applied(ref a) if a.warnings.is_empty()),
            "{r:?}"
        );
        let web_ip = running_ip(h1, agent, "web-1").await;
        let client_ip = running_ip(h2, agent, "client-1").await;
        assert_eq!(web_ip, "10.213.1.2");
        assert_eq!(client_ip, "10.213.2.2");
        share_map(
            &targets,
            agent,
            &[
                (&hosts[0], "web-1", &web_ip),
                (&hosts[1], "client-1", &client_ip),
            ],
        )
        .await;

        // The subnet is recorded on the host: Hello reports it.
        let ssh = OpenSsh::new(&Options::default()).unwrap();
        let session = ssh.connect(h1).await.unwrap();
        let (_, facts) = connect_agent(&session, &h1.name, agent, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(facts.facts.pod_subnet, Some(subnets[&hosts[0]]));
        // ...and that its pods' packets take the fast path.
        assert_eq!(facts.facts.fast_path.as_deref(), Some("on"));

        // Pod to pod across hosts, by address (host-gw).
        let (page, code) = exec(
            h2,
            agent,
            "client-1",
            &["wget", "-qO-", &format!("http://{web_ip}/")],
        )
        .await;
        assert_eq!((page.as_str(), code), (HTTPD_INDEX, 0));
        // Plain pod-to-pod traffic is not tracked on either host.
        for host in &hosts {
            let out = lab
                .faults()
                .exec(
                    host,
                    &[
                        "busybox".into(),
                        "cat".into(),
                        "/proc/net/nf_conntrack".into(),
                    ],
                )
                .unwrap()
                .output()
                .unwrap();
            let table = String::from_utf8_lossy(&out.stdout);
            let between = format!(" src={client_ip} dst={web_ip} ");
            assert!(
                out.status.success() && !table.contains(&between),
                "{host} tracks the pods' connection:\n{table}"
            );
        }

        // The published port from the root namespace and from the other host.
        let addr1 = lab.address(&hosts[0]);
        let reply = http_get(&format!("{addr1}:8080"));
        assert!(reply.ends_with(HTTPD_INDEX), "{reply}");
        let out = lab
            .faults()
            .exec(
                &hosts[1],
                &[
                    "busybox".into(),
                    "wget".into(),
                    "-qO-".into(),
                    format!("http://{addr1}:8080/"),
                ],
            )
            .unwrap()
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), HTTPD_INDEX);
        // ...and from the host itself.
        let out = lab
            .faults()
            .exec(
                &hosts[0],
                &[
                    "busybox".into(),
                    "wget".into(),
                    "-qO-".into(),
                    format!("http://{addr1}:8080/"),
                ],
            )
            .unwrap()
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), HTTPD_INDEX);

        // A pod reaches the lab registry, outside the fleet CIDR: only masquerade makes the
        // answer come back (the root namespace has no route to pod addresses).
        let (body, code) = exec(
            h2,
            agent,
            "client-1",
            &["wget", "-qO-", &format!("http://{registry}/v2/")],
        )
        .await;
        assert_eq!(code, 0, "the registry answers the pod: {body}");
        // ...and nothing is routed out of the lab: the root namespace keeps its guard routes,
        // and a pod address is unreachable from it (only masquerade brought the answer back).
        let guards = std::process::Command::new("ip")
            .args(["-4", "route", "show", "type", "unreachable"])
            .output()
            .expect("runs ip");
        let guards = String::from_utf8_lossy(&guards.stdout);
        for cidr in ["10.250.0.0/16", "10.213.0.0/16"] {
            assert!(guards.contains(cidr), "guard route {cidr} gone: {guards}");
        }
        let route = std::process::Command::new("ip")
            .args(["-4", "route", "get", &client_ip])
            .output()
            .expect("runs ip");
        assert!(
            !route.status.success(),
            "the root namespace routes to pod {client_ip}: {}",
            String::from_utf8_lossy(&route.stdout)
        );

        // Removing the pods removes our table, links, addresses and routes.
        for (target, me) in [(h1, &hosts[0]), (h2, &hosts[1])] {
            let r = last_ok(&rpc(target, agent, apply(me, vec![])).await);
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
            let r = last_ok(
                &rpc(
                    target,
                    agent,
                    Request::Apply(ApplyRequest {
                        project: PROJECT.into(),
                        pods: vec![],
                        registry_auth: BTreeMap::new(),
                        insecure_registries: vec![],
                        network: Some(HostNetwork {
                            peers: vec![],
                            ..network(me)
                        }),
                    }),
                )
                .await,
            );
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
        }
    });
    let after: Vec<String> = hosts.iter().map(|h| host_state(&lab, h)).collect();
    assert_eq!(after, before, "each host's network is as before");
}

/// Lab hosts share one kernel, so the lab gives each its own cgroup namespace, as a machine of
/// its own would have: the same project and pod on two hosts are two pods, and removing one
/// leaves the other running (it once killed the other, whose cgroup had the same path).
#[test]
fn the_same_pod_on_two_lab_hosts_lives_in_two_cgroups_and_dies_alone() {
    let Some(lab) = Lab::up(
        "the_same_pod_on_two_lab_hosts_lives_in_two_cgroups_and_dies_alone",
        2,
    ) else {
        return;
    };
    let (targets, agent) = lab.agents();
    let hosts = lab.host_names();
    let registry = lab.registry();
    let shell_image = lab.shell_image();
    let apply = |pods: Vec<PodSpec>| {
        Request::Apply(ApplyRequest {
            project: PROJECT.into(),
            pods,
            registry_auth: BTreeMap::new(),
            insecure_registries: vec![registry.clone()],
            network: None,
        })
    };
    let cgroup_of = |host: &str, pid: u32| -> String {
        let out = lab
            .faults()
            .exec(host, &["cat".into(), format!("/proc/{pid}/cgroup")])
            .expect("lab exec")
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(":memory:"))
            .unwrap_or_default()
            .to_string()
    };
    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let agent = &agent;
        let sleeper = || pod("job-1", &shell_image, Some(&["sleep", "3600"]), vec![]);
        for target in &targets {
            let r = last_ok(&rpc(target, agent, apply(vec![sleeper()])).await);
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
        }
        let mut pids = Vec::new();
        for target in &targets {
            let start = Instant::now();
            let pid = loop {
                let report = status(target, agent).await;
                let c = report.pods.first().and_then(|p| p.containers.first());
                if let Some(pid) = c.filter(|c| c.state == "running").and_then(|c| c.pid) {
                    break pid;
                }
                assert!(start.elapsed() < DEADLINE, "not running: {report:#?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            pids.push(pid);
        }
        // One path inside each host; two cgroups on the machine.
        let (c1, c2) = (cgroup_of(&hosts[0], pids[0]), cgroup_of(&hosts[1], pids[1]));
        for c in [&c1, &c2] {
            assert!(
                c.ends_with(&format!("compose-fleet/{PROJECT}/job-1/job")),
                "{c}"
            );
        }
        let machine = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(":memory:"))
                .unwrap_or_default()
                .to_string()
        };
        assert_ne!(machine(pids[0]), machine(pids[1]));

        let r = last_ok(&rpc(&targets[0], agent, apply(vec![])).await);
        assert!(matches!(r, Response::Applied(_)), "{r:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = status(&targets[1], agent).await;
        let c = &report.pods[0].containers[0];
        assert_eq!(
            (c.state.as_str(), c.pid),
            ("running", Some(pids[1])),
            "the other host's pod is untouched: {report:#?}"
        );
        let r = last_ok(&rpc(&targets[1], agent, apply(vec![])).await);
        assert!(matches!(r, Response::Applied(_)), "{r:?}");
    });
}
