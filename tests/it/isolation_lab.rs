//! Isolation between compose networks and between projects on a two-host lab, deployed with `up`
//! as a user would: a pod reaches another pod, on its host or the other, only when they share a
//! network of their project (by address, by name, through a VIP); another project reaches only
//! published ports; a pod only on an `internal` network does not leave the fleet; and `down` of
//! both projects leaves each host's `ip`/`nft` state as it was.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;

use compose_fleet::lab::images::HTTPD_INDEX;
use compose_fleet::proto::service::{assign_vips, default_service_cidr};

use crate::network_lab::host_state;
use crate::support::{describe, Lab};

struct Project<'a> {
    lab: &'a Lab,
    compose: PathBuf,
}

impl Project<'_> {
    fn cli(&self, args: &[&str]) -> Output {
        self.lab
            .cli()
            .arg("-f")
            .arg(&self.compose)
            .args(args)
            .env("REGISTRY", self.lab.registry())
            .env("H1", &self.lab.host_names()[0])
            .env("H2", &self.lab.host_names()[1])
            .output()
            .expect("runs the CLI")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        out
    }

    /// Each service's pod address, from `ps`.
    fn address(&self, service: &str) -> String {
        let out = self.ok(&["ps", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
        rows.iter()
            .find(|r| r["service"] == service)
            .and_then(|r| r["ip"].as_str())
            .unwrap_or_else(|| panic!("{service} has no address: {rows:#?}"))
            .to_string()
    }

    /// What `url` answers to `service`'s pod; `None` when it does not (a dropped connection
    /// is cut after 5 s; busybox's own `wget -T` crashes in these images).
    fn get(&self, service: &str, url: &str) -> Option<String> {
        let out = self.cli(&["exec", "-T", service, "timeout", "5", "wget", "-qO-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/isolation")
        .join(name)
}

#[test]
fn pods_reach_only_pods_on_a_shared_network_across_hosts_and_projects_stay_apart() {
    let Some(lab) = Lab::up(
        "pods_reach_only_pods_on_a_shared_network_across_hosts_and_projects_stay_apart",
        2,
    ) else {
        return;
    };
    let hosts = lab.host_names();
    let before: Vec<String> = hosts.iter().map(|h| host_state(&lab, h)).collect();
    let iso = Project {
        lab: &lab,
        compose: fixture("compose.yaml"),
    };
    let other = Project {
        lab: &lab,
        compose: fixture("other.yaml"),
    };
    iso.ok(&["up"]);
    other.ok(&["up"]);
    let ip = |s: &str| iso.address(s);
    let (web, api, db, vault) = (ip("web"), ip("api"), ip("db"), ip("vault"));
    let url = |addr: &str| format!("http://{addr}/");
    let page = Some(HTTPD_INDEX.to_string());

    // `client` (front, host 1): `web` on its host and `api` on the other share front.
    assert_eq!(
        iso.get("client", &url(&web)),
        page,
        "same host, shared network"
    );
    assert_eq!(
        iso.get("client", &url(&api)),
        page,
        "other host, shared network"
    );
    assert_eq!(
        iso.get("client", "http://api/"),
        page,
        "by name, through the VIP"
    );
    // ...and not `db` (back, host 2) nor `vault` (sealed, host 1), by any way.
    assert_eq!(
        iso.get("client", &url(&db)),
        None,
        "other host, no shared network"
    );
    assert_eq!(
        iso.get("client", &url(&vault)),
        None,
        "same host, no shared network"
    );
    assert_eq!(
        iso.get("client", "http://db/"),
        None,
        "db's name is not client's"
    );
    let services: BTreeSet<String> = ["api", "client", "db", "vault", "web"]
        .iter()
        .map(|s| format!("iso/{s}"))
        .collect();
    let vips = assign_vips(default_service_cidr(), &services).expect("VIPs");
    assert_eq!(
        iso.get("client", &url(&vips["iso/db"].to_string())),
        None,
        "db's VIP, by address"
    );
    // `api` (front and back, host 2) reaches `db` on its host (by name: a VIP DNAT'ed to a pod of
    // the same bridge) and `web` on the other; `db` does not reach `web`.
    assert_eq!(
        iso.get("api", "http://db/"),
        page,
        "VIP to a pod of the same host"
    );
    assert_eq!(iso.get("api", &url(&web)), page);
    assert_eq!(
        iso.get("db", &url(&web)),
        None,
        "other host, no shared network"
    );

    // `internal: true`: vault does not leave the fleet; client does.
    let registry = format!("http://{}/v2/", lab.registry());
    assert!(
        iso.get("client", &registry).is_some(),
        "egress through masquerade"
    );
    assert_eq!(
        iso.get("vault", &registry),
        None,
        "an internal-only pod has no egress"
    );

    // Another project: nothing of `iso` but its published port.
    assert_eq!(
        other.get("intruder", &url(&web)),
        None,
        "same host, other project"
    );
    assert_eq!(
        other.get("intruder", &url(&api)),
        None,
        "other host, other project"
    );
    assert_eq!(other.get("intruder", "http://web/"), None);
    let published = format!("http://{}:8088/", lab.address(&hosts[0]));
    assert_eq!(
        other.get("intruder", &published),
        page,
        "a published port is open"
    );
    let sealed = format!("http://{}:8089/", lab.address(&hosts[0]));
    assert_eq!(
        other.get("intruder", &sealed),
        None,
        "a port of a pod only on internal networks is not published"
    );

    other.ok(&["down"]);
    iso.ok(&["down"]);
    // Our table, links and addresses are gone; the routes to the other host's pod subnet stay
    // (`down` keeps the host's place in the fleet network; they carry our protocol number).
    let ours = |state: String| -> String {
        state
            .replace("routes ", "routes\n")
            .lines()
            .filter(|l| !l.contains("proto 213"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let after: Vec<String> = hosts.iter().map(|h| ours(host_state(&lab, h))).collect();
    let before: Vec<String> = before.into_iter().map(ours).collect();
    assert_eq!(after, before, "each host's network is as before");
}

/// An HTTP GET over a plain socket from the test's (the root) namespace.
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &addr.parse().expect("an address"),
        std::time::Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("a timeout");
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").expect("sends");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn network_mode_none_keeps_only_loopback_and_host_runs_in_the_hosts_namespace() {
    let Some(lab) = Lab::up(
        "network_mode_none_keeps_only_loopback_and_host_runs_in_the_hosts_namespace",
        2,
    ) else {
        return;
    };
    let hosts = lab.host_names();
    let modes = Project {
        lab: &lab,
        compose: fixture("modes.yaml"),
    };
    modes.ok(&["up"]);
    let web = modes.address("web");
    let links = |service: &str| {
        let out = modes.ok(&["exec", "-T", service, "cat", "/proc/net/dev"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
            .filter(|n| !n.contains('|'))
            .collect();
        names.sort();
        names
    };
    // none: loopback only, and no way to anything else.
    assert_eq!(links("loner"), ["lo"]);
    assert_eq!(modes.get("loner", &format!("http://{web}/")), None);
    // host: the host's links (its own interface and our bridge), its port 80 is the pod's.
    let host_links = links("hosted");
    assert!(
        host_links.contains(&"eth0".to_string()) && host_links.contains(&"cfbr0".to_string()),
        "{host_links:?}"
    );
    let page = http_get(&format!("{}:80", lab.address(&hosts[0])));
    assert!(page.ends_with(HTTPD_INDEX), "{page}");
    // ...and it reaches a pod by address, as the host does.
    assert_eq!(
        modes.get("hosted", &format!("http://{web}/")),
        Some(HTTPD_INDEX.to_string())
    );
    modes.ok(&["down"]);
}
