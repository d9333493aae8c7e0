//! Service discovery across three lab hosts, through the agent's protocol: replicas of `api` run
//! on hosts 2 and 3, a client pod on host 1 reaches `api` by name through its VIP (and `rr`, an
//! `endpoint_mode: dnsrr` service, through the replicas' own addresses), every replica answers,
//! aliases and `<service>.<project>` resolve, a service on another network does not, and a
//! replica taken out of the map and stopped during a stream of requests fails none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use compose_fleet::proto::net::{assign_subnets, host_networks, Ipv4Net, DEFAULT_FLEET_CIDR};
use compose_fleet::proto::service::{
    assign_vips, default_service_cidr, Alias, Endpoint, EndpointMode, Service, ServiceMap,
};
use compose_fleet::proto::{
    ApplyRequest, ContainerSpec, ExecRequest, PodSpec, Request, Response, StatusReport, Stream,
};
use compose_fleet::ssh::{AgentBinary, SshTarget};

use crate::support::{last_ok, rpc, Lab};

const PROJECT: &str = "svc";
const DEADLINE: Duration = crate::support::AGENT_DEADLINE;

/// A pod of one container; `api-2` runs service `api`, replica 2.
fn pod(name: &str, image: &str, command: &[&str]) -> PodSpec {
    let (service, replica) = name.rsplit_once('-').expect("service-replica");
    PodSpec {
        name: name.into(),
        hostname: name.into(),
        spec_hash: format!("{name}-v1"),
        containers: vec![ContainerSpec {
            service: service.into(),
            replica: replica.parse().expect("a replica number"),
            image: image.into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            ..ContainerSpec::default()
        }],
        ports: vec![],
        network: Default::default(),
    }
}

/// A web server that answers with its pod's hostname (so the test sees which replica answered).
fn server(name: &str, image: &str) -> PodSpec {
    pod(
        name,
        image,
        &[
            "sh",
            "-c",
            "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w",
        ],
    )
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

/// Waits until every pod of the project on `target` runs; returns pod → address.
async fn running(target: &SshTarget, agent: &AgentBinary, n: usize) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let report = status(target, agent).await;
        let up: BTreeMap<String, String> = report
            .pods
            .iter()
            .filter(|p| p.containers.iter().all(|c| c.state == "running"))
            .filter_map(|p| Some((p.name.clone(), p.ip.clone()?)))
            .collect();
        if up.len() == n {
            return up;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pods not running within {DEADLINE:?}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn exec(target: &SshTarget, agent: &AgentBinary, pod: &str, script: &str) -> (String, i32) {
    let frames = rpc(
        target,
        agent,
        Request::Exec(ExecRequest {
            project: PROJECT.into(),
            pod: pod.into(),
            service: pod.rsplit_once('-').unwrap().0.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
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
            panic!("exec {script:?} failed: {err}");
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

/// A shell function `get NAME`: resolves NAME with busybox's `nslookup` (through the pod's
/// resolv.conf, i.e. the agent), so that a failure says whether the name or the connection
/// failed, and fetches `http://ADDRESS/`. (No `wget -T`: busybox-static's wget segfaults with
/// it on this machine.)
const GET: &str = "get() { a=$(nslookup \"$1\" 2>/dev/null | awk '/^Name:/ {n=1} n && /^Address/ {print $NF; exit}'); [ -n \"$a\" ] || { echo FAIL; return 1; }; wget -qO- \"http://$a/$2\" || { echo FAIL; return 1; }; }; ";

/// `n` requests to service `name` from the client pod, one answer (or `FAIL`) per line.
fn fetch_loop(name: &str, n: u32, pause: &str) -> String {
    format!("{GET}i=0; while [ $i -lt {n} ]; do get {name}; i=$((i+1)); sleep {pause}; done")
}

fn answers(out: &str) -> BTreeSet<String> {
    out.lines().map(str::to_string).collect()
}

#[test]
fn a_pod_reaches_replicas_on_other_hosts_by_name_through_the_vip_and_dnsrr() {
    let Some(lab) = Lab::up(
        "a_pod_reaches_replicas_on_other_hosts_by_name_through_the_vip_and_dnsrr",
        3,
    ) else {
        return;
    };
    let (targets, agent) = lab.agents();
    let hosts = lab.host_names();
    let reported: BTreeMap<String, Option<Ipv4Net>> =
        hosts.iter().map(|h| (h.clone(), None)).collect();
    let subnets = assign_subnets(DEFAULT_FLEET_CIDR, &reported).expect("subnets");
    let addresses = hosts
        .iter()
        .map(|h| (h.clone(), lab.address(h).parse().unwrap()))
        .collect();
    let networks = host_networks(DEFAULT_FLEET_CIDR, &subnets, &addresses);
    let registry = lab.registry();
    let shell = lab.shell_image();
    let apply = |me: &str, pods: Vec<PodSpec>| {
        Request::Apply(ApplyRequest {
            project: PROJECT.into(),
            pods,
            registry_auth: BTreeMap::new(),
            insecure_registries: vec![registry.clone()],
            network: Some(networks[me].clone()),
        })
    };
    let vips = assign_vips(
        default_service_cidr(),
        &["svc/api", "svc/db"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
    .expect("vips");

    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let agent = &agent;
        let (h1, h2, h3) = (&targets[0], &targets[1], &targets[2]);
        let on_h2 = vec![server("api-1", &shell), server("rr-1", &shell)];
        let on_h3 = vec![
            server("api-2", &shell),
            server("rr-2", &shell),
            server("db-1", &shell),
        ];
        let client = pod("client-1", &shell, &["sleep", "3600"]);
        for (t, me, pods) in [
            (h1, &hosts[0], vec![client]),
            (h2, &hosts[1], on_h2),
            (h3, &hosts[2], on_h3.clone()),
        ] {
            let r = last_ok(&rpc(t, agent, apply(me, pods)).await);
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
        }
        running(h1, agent, 1).await;
        let mut ips = running(h2, agent, 2).await;
        ips.extend(running(h3, agent, 3).await);

        // The CLI's part: the fleet-wide map, pushed to every host.
        let endpoint = |pod: &str, host: &str| Endpoint {
            replica: pod.rsplit_once('-').unwrap().1.parse().unwrap(),
            pod: pod.into(),
            host: host.into(),
            addr: ips[pod].parse().unwrap(),
            healthy: true,
        };
        let service = |name: &str, mode, replicas: Vec<Endpoint>| Service {
            name: name.into(),
            endpoint_mode: mode,
            vip: (mode == EndpointMode::Vip).then(|| vips[&format!("{PROJECT}/{name}")]),
            networks: vec![],
            aliases: vec![],
            container_name: None,
            replicas,
        };
        let mut api = service(
            "api",
            EndpointMode::Vip,
            vec![endpoint("api-1", &hosts[1]), endpoint("api-2", &hosts[2])],
        );
        api.aliases = vec![Alias {
            network: "default".into(),
            name: "backend".into(),
        }];
        let rr = service(
            "rr",
            EndpointMode::Dnsrr,
            vec![endpoint("rr-1", &hosts[1]), endpoint("rr-2", &hosts[2])],
        );
        let mut db = service("db", EndpointMode::Vip, vec![endpoint("db-1", &hosts[2])]);
        db.networks = vec!["back".into()];
        // The client is in the map too, as `up` puts every service there: the replicas' hosts
        // let a pod of another host in only once they know its networks.
        let mut client_ips = running(h1, agent, 1).await;
        let client = Service {
            replicas: vec![Endpoint {
                replica: 1,
                pod: "client-1".into(),
                host: hosts[0].clone(),
                addr: client_ips
                    .remove("client-1")
                    .expect("client's address")
                    .parse()
                    .unwrap(),
                healthy: true,
            }],
            ..service("client", EndpointMode::Dnsrr, vec![])
        };
        let map = ServiceMap {
            project: PROJECT.into(),
            services: vec![api.clone(), rr.clone(), db.clone(), client.clone()],
        };
        for t in &targets {
            let r = last_ok(&rpc(t, agent, Request::Services(map.clone())).await);
            assert!(matches!(r, Response::Services { vips: 2, .. }), "{r:?}");
        }

        // By name, through the VIP: both replicas answer (a random choice per connection).
        let (out, _) = exec(h1, agent, "client-1", &fetch_loop("api", 24, "0")).await;
        if out.contains("FAIL") {
            let (diag, _) = exec(
                h1,
                agent,
                "client-1",
                "cat /etc/resolv.conf; nslookup api; ip route; wget -qO- http://10.213.2.2/ 2>&1",
            )
            .await;
            eprintln!("host 2: {:#?}", status(h2, agent).await);
            let nft = lab
                .faults()
                .exec(&hosts[0], &["nft".into(), "list".into(), "ruleset".into()])
                .unwrap()
                .output()
                .unwrap();
            panic!(
                "fetching api failed: {out}\nin the pod: {diag}\nnft on host 1: {}",
                String::from_utf8_lossy(&nft.stdout)
            );
        }
        assert_eq!(
            answers(&out),
            ["api-1", "api-2"].map(String::from).into(),
            "{out}"
        );
        // wget's own resolver (glibc's, in busybox-static) asks the agent too.
        let (out, code) = exec(h1, agent, "client-1", "wget -qO- http://api/").await;
        assert!(
            code == 0 && out.starts_with("api-"),
            "wget http://api/: {code} {out}"
        );
        // dnsrr: the name has both replica addresses, in turns.
        let (out, _) = exec(h1, agent, "client-1", &fetch_loop("rr", 8, "0")).await;
        assert_eq!(
            answers(&out),
            ["rr-1", "rr-2"].map(String::from).into(),
            "{out}"
        );
        // An alias, <service>.<project> and <service>-<replica>.
        for (name, want) in [
            ("backend", None),
            ("api.svc", None),
            ("api-2", Some("api-2")),
        ] {
            let (out, code) = exec(h1, agent, "client-1", &format!("{GET}get {name}")).await;
            assert_eq!(code, 0, "{name}: {out}");
            if let Some(w) = want {
                assert_eq!(out.trim(), w, "{name}");
            }
        }
        // db is on another network: its name does not resolve for the client.
        let (out, code) = exec(h1, agent, "client-1", "nslookup db 2>&1").await;
        assert_ne!(code, 0, "db resolved for a pod on another network: {out}");
        // Names outside the project are forwarded, not answered: an unknown one fails.
        let (_, code) = exec(h1, agent, "client-1", "nslookup nothing.invalid").await;
        assert_ne!(code, 0);

        // A stream of requests to the VIP while api-2 leaves: the map without it goes to every
        // host, then its host stops it. No request fails.
        let stream = {
            let (h1, agent) = (h1.clone(), agent.clone());
            tokio::spawn(async move {
                exec(&h1, &agent, "client-1", &fetch_loop("api", 60, "0.1")).await
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut without = api.clone();
        without.replicas.retain(|e| e.pod != "api-2");
        let map = ServiceMap {
            project: PROJECT.into(),
            services: vec![without, rr, db, client],
        };
        for t in &targets {
            let r = last_ok(&rpc(t, agent, Request::Services(map.clone())).await);
            assert!(matches!(r, Response::Services { .. }), "{r:?}");
        }
        let left: Vec<PodSpec> = on_h3.into_iter().filter(|p| p.name != "api-2").collect();
        let r = last_ok(&rpc(h3, agent, apply(&hosts[2], left)).await);
        assert!(
            matches!(r, Response::Applied(ref a) if a.removed == ["api-2"]),
            "{r:?}"
        );
        let (out, _) = stream.await.expect("the stream");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 60, "{out}");
        assert!(!lines.contains(&"FAIL"), "a request failed: {out}");
        assert_eq!(lines.last(), Some(&"api-1"), "{out}");

        for (t, me) in targets.iter().zip(&hosts) {
            let r = last_ok(&rpc(t, agent, apply(me, vec![])).await);
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
        }
    });
}
