//! The lab fleet (`compose-fleet lab`): hosts with their own sshd, hostname and state, the seeded
//! registry, idempotent `lab up`, fault injection, and a `lab down` that leaves nothing behind.

use std::io::Read;
use std::process::Command;

use compose_fleet::lab::images;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use crate::support::{self, describe, Lab};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Live (non-zombie) processes whose command line contains `needle`.
fn live_processes(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle)
            && compose_fleet::lab::sys::alive(
                entry.file_name().to_string_lossy().parse().unwrap_or(0),
            )
        {
            found.push(cmdline);
        }
    }
    found
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

#[test]
fn lab_up_gives_hosts_with_own_sshd_state_and_registry_and_down_leaves_nothing() {
    let test = "lab_up_gives_hosts_with_own_sshd_state_and_registry_and_down_leaves_nothing";
    let Some(lab) = Lab::up(test, 3) else { return };
    let dir = lab.dir().to_path_buf();
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let record = compose_fleet::lab::index::get(lab.name()).expect("the lab is recorded");

    // Every host answers over SSH with strict host-key checking, under its own hostname.
    for host in lab.host_names() {
        let out = lab.ssh(&host, "hostname");
        assert!(out.status.success(), "ssh {host}: {}", describe(&out));
        assert_eq!(stdout(&out), host);
    }

    // Each host has its own /var/lib/compose-fleet, /tmp and /run, backed by DIR/hosts/NAME/.
    let out = lab.ssh(
        &h1,
        "echo one > /var/lib/compose-fleet/marker && echo t > /tmp/marker && echo r > /run/marker",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.ssh(
        &h1,
        "cat /var/lib/compose-fleet/marker /tmp/marker /run/marker",
    );
    assert_eq!(stdout(&out), "one\nt\nr", "{}", describe(&out));
    let out = lab.ssh(
        &h2,
        "ls /var/lib/compose-fleet/marker /tmp/marker /run/marker 2>/dev/null | wc -l",
    );
    assert_eq!(
        stdout(&out),
        "0",
        "{h2} sees {h1}'s files: {}",
        describe(&out)
    );
    let on_disk = std::fs::read_to_string(dir.join(format!("hosts/{h1}/state/marker"))).unwrap();
    assert_eq!(on_disk, "one\n");
    assert!(!std::path::Path::new("/var/lib/compose-fleet/marker").exists());

    // A host has the lab subnet and nothing beyond it.
    let out = lab.ssh(&h1, "ip route get 192.0.2.1 || echo no-route");
    assert!(
        stdout(&out).ends_with("no-route"),
        "{h1} reaches outside: {}",
        describe(&out)
    );
    // Hosts reach each other and the registry over the bridge.
    let out = lab.ssh(
        &h1,
        &format!(
            "echo | busybox nc -w 2 {} 22 | head -c 7; echo",
            lab.address(&h3)
        ),
    );
    assert_eq!(
        stdout(&out),
        "SSH-2.0",
        "{h1} → {h3}:22: {}",
        describe(&out)
    );

    // The root namespace refuses lab and pod ranges beyond the labs' /24s.
    for addr in [unused_lab_address(), "10.213.0.5".to_string()] {
        let addr = addr.as_str();
        let out = ip(&["route", "get", addr]);
        assert!(
            !out.status.success(),
            "route to {addr} exists: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains("No route to host"),
            "{}",
            describe(&out)
        );
    }

    // The inventory names every host with the lab's key and known_hosts.
    let inventory = std::fs::read_to_string(lab.inventory()).unwrap();
    assert!(inventory.contains(&format!("identity_file: {}", lab.identity().display())));
    assert!(inventory.contains(&format!(
        "registries: {{ \"{}\": {{ insecure: true }} }}",
        lab.registry()
    )));
    for (host, zone) in [(&h1, "a"), (&h2, "b"), (&h3, "c")] {
        let line = format!(
            "  {host}: {{ address: {}, labels: {{ zone: {zone} }}",
            lab.address(host)
        );
        assert!(
            inventory.contains(&line),
            "missing {line:?} in\n{inventory}"
        );
    }
    // … and the project's inventory loader reads it as the lab means it.
    let fleet = compose_fleet::inventory::load(&lab.inventory())
        .unwrap_or_else(|e| panic!("lab inventory does not load:\n{}", e.render()));
    assert_eq!(fleet.hosts.len(), 3);
    for host in &fleet.hosts {
        assert_eq!(host.address, lab.address(&host.name));
        assert_eq!(host.user.as_deref(), Some("root"));
        assert_eq!(host.port, 22);
        assert_eq!(
            host.identity_file.as_deref(),
            Some(lab.identity().as_path())
        );
        assert_eq!(
            host.known_hosts.as_deref(),
            Some(lab.known_hosts().as_path())
        );
        let capacity = host
            .capacity
            .as_ref()
            .expect("lab hosts declare a capacity");
        assert_eq!((capacity.cpus, capacity.memory), (2.0, 4 << 30));
    }
    assert!(fleet.registries[&lab.registry()].insecure);
    let known_hosts = std::fs::read_to_string(lab.known_hosts()).unwrap();
    assert_eq!(known_hosts.lines().count(), 3);
    assert!(known_hosts
        .lines()
        .all(|l| l.starts_with("10.250.") && l.contains(" ssh-ed25519 AAAA")));

    // The registry serves both images with the digests this machine's busybox gives, and they
    // are usable root file systems: busybox `sh` runs, and the httpd image serves its page.
    let layers = check_registry_images(&lab.registry());
    check_images_run(&lab, &layers);

    // `lab up` again reuses everything: same sshd processes, nothing pushed, same files.
    let pids_before: Vec<String> = lab
        .host_names()
        .iter()
        .map(|h| std::fs::read_to_string(dir.join(format!("hosts/{h}/run/sshd.pid"))).unwrap())
        .collect();
    let out = lab.run_lab(&["up", "--hosts", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!stderr(&out).contains("starting"), "{}", describe(&out));
    assert!(!stderr(&out).contains("pushed"), "{}", describe(&out));
    let pids_after: Vec<String> = lab
        .host_names()
        .iter()
        .map(|h| std::fs::read_to_string(dir.join(format!("hosts/{h}/run/sshd.pid"))).unwrap())
        .collect();
    assert_eq!(pids_before, pids_after);
    assert_eq!(
        std::fs::read_to_string(lab.known_hosts()).unwrap(),
        known_hosts
    );
    assert_eq!(std::fs::read_to_string(lab.inventory()).unwrap(), inventory);
    let out = lab.ssh(&h1, "cat /var/lib/compose-fleet/marker");
    assert_eq!(stdout(&out), "one", "state survives a second `lab up`");

    // `lab up` repairs: a killed sshd, a downed link and a frozen host come back.
    lab.faults().kill_sshd(&h2).unwrap();
    lab.faults().cut_off(&h3).unwrap();
    lab.faults().freeze(&h1).unwrap();
    let out = lab.run_lab(&["up", "--hosts", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    for host in [&h1, &h2, &h3] {
        let out = lab.ssh(host, "hostname");
        assert_eq!(
            stdout(&out),
            *host,
            "{host} not repaired: {}",
            describe(&out)
        );
    }

    // `lab down` leaves no namespace, link, route, mount, process or file of the lab.
    let sshds = sshd_pids(lab.faults());
    assert_eq!(sshds.len(), 3, "one sshd per host");
    let out = lab.run_lab(&["down"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_lab_gone(&record, &sshds);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_text = dir.to_string_lossy().to_string();
    assert!(!mounts.contains(&dir_text), "mounts left:\n{mounts}");
    assert_eq!(
        live_processes(&dir_text),
        Vec::<String>::new(),
        "processes left"
    );
    assert!(!dir.exists(), "{} left", dir.display());
}

/// The pids of the lab's listening sshds.
fn sshd_pids(lab: &compose_fleet::lab::Lab) -> Vec<i32> {
    lab.hosts().iter().filter_map(|h| h.sshd_pid()).collect()
}

/// Nothing of the lab `record` names is left: record, namespaces, links, routes, sshd processes.
fn assert_lab_gone(record: &compose_fleet::lab::Record, sshds: &[i32]) {
    let name = &record.name;
    assert_eq!(compose_fleet::lab::index::get(name), None, "record left");
    let netns = stdout(&ip(&["netns", "list"]));
    assert!(
        !netns.lines().any(|l| l.starts_with(&format!("{name}-"))),
        "netns left: {netns}"
    );
    let links = stdout(&ip(&["-o", "link"]));
    for site in 0..record.sites {
        let bridge = record.bridge(site);
        assert!(
            !links.contains(&format!(": {bridge}:")) && !links.contains(&format!(": {bridge}-")),
            "links of {bridge} left: {links}"
        );
        let routes = stdout(&ip(&["route", "show", "table", "all"]));
        let subnet = record.subnet(site);
        let prefix = subnet.trim_end_matches("0/24");
        assert!(
            !routes.contains(prefix),
            "routes of {subnet} left: {routes}"
        );
    }
    for pid in sshds {
        assert!(!compose_fleet::lab::sys::alive(*pid), "sshd {pid} left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/netns/{name}-")),
        "netns mounts left:\n{mounts}"
    );
}

/// An address in 10.250.0.0/16 on no lab's subnet: the root namespace must refuse it.
fn unused_lab_address() -> String {
    let labs = compose_fleet::lab::index::list();
    let free = (0..=255u16)
        .rev()
        .find(|k| {
            !labs
                .iter()
                .any(|r| (0..r.sites).any(|s| r.subnet(s) == format!("10.250.{k}.0/24")))
        })
        .expect("a free /24");
    format!("10.250.{free}.5")
}

/// Unpacks each image's layer and runs it with `chroot`: the shell image's `sh`, and the httpd
/// image's default command inside the lab's first host, fetched over the lab network.
fn check_images_run(lab: &Lab, layers: &[(String, Vec<u8>)]) {
    let shell_image = lab.shell_image();
    let httpd_image = lab.httpd_image();
    let rootfs = |reference: &str| {
        let (_, tar) = layers
            .iter()
            .find(|(r, _)| r == reference)
            .expect("layer pulled");
        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(tar.as_slice())
            .unpack(dir.path())
            .unwrap();
        dir
    };
    let shell = rootfs(&shell_image);
    let out = Command::new("chroot")
        .arg(shell.path())
        .args(["/bin/sh", "-c", "echo $((40 + 2)) | tr 2 3"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "43", "{}", describe(&out));

    let httpd = rootfs(&httpd_image);
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.host(1), "chroot"])
        .arg(httpd.path())
        .args(["httpd", "-f", "-p", "80", "-h", "/www"])
        .spawn()
        .unwrap();
    let mut page = String::new();
    for _ in 0..100 {
        if let Ok(mut conn) = std::net::TcpStream::connect((lab.address(&lab.host(1)).as_str(), 80))
        {
            use std::io::Write;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            conn.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
                .unwrap();
            conn.read_to_string(&mut page).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "httpd answered: {page:?}"
    );
    assert!(
        page.ends_with(images::HTTPD_INDEX),
        "httpd answered: {page:?}"
    );
}

/// Pulls both images' manifests, configs and layers with oci-client and checks every digest.
/// Returns each image's uncompressed layer.
fn check_registry_images(registry: &str) -> Vec<(String, Vec<u8>)> {
    let mut layers = Vec::new();
    let expected = images::build_all(registry).expect("images build");
    assert_eq!(
        expected
            .iter()
            .map(|i| i.reference.clone())
            .collect::<Vec<_>>(),
        [images::shell_image(registry), images::httpd_image(registry)]
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = images::client(registry);
        let auth = RegistryAuth::Anonymous;
        for image in &expected {
            let reference: Reference = image.reference.parse().unwrap();
            let (manifest, digest) = client
                .pull_image_manifest(&reference, &auth)
                .await
                .unwrap_or_else(|e| panic!("pull manifest of {}: {e}", image.reference));
            assert!(digest.starts_with("sha256:"));
            assert_eq!(
                manifest.media_type.as_deref(),
                Some("application/vnd.oci.image.manifest.v1+json")
            );
            assert_eq!(manifest.config.digest, image.config_digest());
            assert_eq!(manifest.layers.len(), 1);
            assert_eq!(manifest.layers[0].digest, image.layer_digest());
            assert_eq!(
                manifest.layers[0].media_type,
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );

            let mut layer = Vec::new();
            client
                .pull_blob(&reference, &manifest.layers[0], &mut layer)
                .await
                .unwrap();
            assert_eq!(images::sha256(&layer), manifest.layers[0].digest);
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(layer.as_slice())
                .read_to_end(&mut tar)
                .unwrap();
            let mut config = Vec::new();
            client
                .pull_blob(&reference, &manifest.config, &mut config)
                .await
                .unwrap();
            assert_eq!(images::sha256(&config), manifest.config.digest);
            let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
            assert_eq!(config["rootfs"]["diff_ids"][0], images::sha256(&tar));
            assert_eq!(config["os"], "linux");

            let mut archive = tar::Archive::new(tar.as_slice());
            let mut paths = Vec::new();
            for entry in archive.entries().unwrap() {
                let entry = entry.unwrap();
                paths.push(entry.path().unwrap().to_string_lossy().into_owned());
                if entry.path().unwrap().to_str() == Some("bin/sh") {
                    assert_eq!(
                        entry.link_name().unwrap().unwrap().to_str(),
                        Some("busybox")
                    );
                }
            }
            for path in [
                "bin/busybox",
                "bin/sh",
                "bin/nc",
                "bin/wget",
                "bin/httpd",
                "etc/passwd",
            ] {
                assert!(
                    paths.iter().any(|p| p == path),
                    "{} lacks {path}",
                    image.reference
                );
            }
            layers.push((image.reference.clone(), tar.clone()));
            if image.reference == images::httpd_image(registry) {
                assert!(paths.iter().any(|p| p == "www/index.html"));
                assert_eq!(
                    config["config"]["Cmd"],
                    serde_json::json!(["httpd", "-f", "-p", "80", "-h", "/www"])
                );
            } else {
                assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
            }
        }
    });
    layers
}

#[test]
fn lab_fault_injection_status_and_exec() {
    let test = "lab_fault_injection_status_and_exec";
    let Some(lab) = Lab::up(test, 2) else { return };
    let faults = lab.faults();
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));

    let out = lab.run_lab(&["status"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(&h2) && l.ends_with("up")),
        "{}",
        describe(&out)
    );

    // `lab exec` runs in the host's namespaces; the host's name finds its lab.
    let out = Command::new(support::bin())
        .args(["lab", "exec"])
        .args([
            h2.as_str(),
            "--",
            "sh",
            "-c",
            "hostname; ip -o -4 addr show eth0 | wc -l",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), format!("{h2}\n1"));
    let out = lab.run_lab(&["exec", &h1, "--", "hostname"]);
    assert_eq!(stdout(&out), h1, "{}", describe(&out));

    // Cut off: connections time out; reconnect: it answers again.
    faults.cut_off(&h1).unwrap();
    let out = lab.ssh(&h1, "true");
    assert!(!out.status.success(), "ssh to a cut-off host succeeded");
    faults.reconnect(&h1).unwrap();
    assert!(lab.ssh(&h1, "true").status.success());

    // Frozen: the handshake never completes (ConnectTimeout bounds it).
    faults.freeze(&h1).unwrap();
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=2",
        ])
        .arg("-i")
        .arg(lab.identity())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.known_hosts().display()
        ))
        .arg(format!("root@{}", lab.address(&h1)))
        .arg("true")
        .output()
        .unwrap();
    assert!(!out.status.success(), "ssh to a frozen host succeeded");
    faults.thaw(&h1).unwrap();
    assert!(lab.ssh(&h1, "true").status.success());

    // Killed sshd: refused, and `lab status` says so (exit 1).
    faults.kill_sshd(&h2).unwrap();
    let out = lab.ssh(&h2, "true");
    assert!(!out.status.success());
    let out = lab.run_lab(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(&h2) && l.ends_with("down")),
        "{}",
        describe(&out)
    );
    faults.start_sshd(&h2).unwrap();
    assert!(lab.ssh(&h2, "true").status.success());

    // `lab up` with another host count adds or removes hosts.
    let out = lab.run_lab(&["up", "--hosts", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.ssh(&h3, "hostname");
    assert_eq!(stdout(&out), h3, "{}", describe(&out));
    let out = lab.run_lab(&["up", "--hosts", "2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!stdout(&ip(&["netns", "list"])).lines().any(|l| l == h3));
    let veth = compose_fleet::lab::index::get(lab.name()).unwrap().veth(3);
    assert!(!stdout(&ip(&["-o", "link"])).contains(&format!(": {veth}@")));
    let inventory = std::fs::read_to_string(lab.inventory()).unwrap();
    assert!(
        inventory.contains(&format!("{h2}:")) && !inventory.contains(&format!("{h3}:")),
        "{inventory}"
    );
    assert_eq!(
        std::fs::read_to_string(lab.known_hosts())
            .unwrap()
            .lines()
            .count(),
        2
    );

    // A changed host key is refused by strict checking against the lab's known_hosts.
    faults.change_host_key(&h2).unwrap();
    let out = lab.ssh(&h2, "true");
    assert!(!out.status.success(), "a changed host key was accepted");
    assert!(
        stderr(&out).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        describe(&out)
    );
}

#[test]
fn lab_refuses_to_run_without_root() {
    let test = "lab_refuses_to_run_without_root";
    // Dropping privileges needs root; as another user, the CLI's own check is what runs anyway.
    if !support::is_root(test, "switching to an unprivileged user") {
        return;
    }
    // Every command that changes or enters a lab says so first, even for a lab that is up (the
    // default lab `lab` may be: the demo leaves it up) and without touching it.
    let name = support::lab_name();
    for args in [
        vec!["up", "--name", &name, "--dir", "/nonexistent/cf-lab"],
        vec!["up"],
        vec!["down"],
        vec!["status"],
        vec!["exec", "lab-1", "--", "true"],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(support::bin())
            .arg("lab")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("the lab needs root"),
            "{args:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn lab_images_are_deterministic() {
    if !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("skipped: lab_images_are_deterministic needs /bin/busybox (busybox-static)");
        return;
    }
    let a = images::build_all("10.250.0.1:5000").unwrap();
    let b = images::build_all("10.250.0.1:5000").unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.layer_digest(), b.layer_digest());
        assert_eq!(a.config_digest(), b.config_digest());
        assert_eq!(a.diff_id, b.diff_id);
    }
    assert_ne!(a[0].layer_digest(), a[1].layer_digest());
}

#[test]
fn a_lab_whose_directory_was_lost_is_replaced_by_the_next_lab_up() {
    let test = "a_lab_whose_directory_was_lost_is_replaced_by_the_next_lab_up";
    let Some(lab) = Lab::up(test, 2) else { return };
    let record = compose_fleet::lab::index::get(lab.name()).expect("recorded");
    let old_sshds = sshd_pids(lab.faults());
    // The directory disappears under a running lab (its pid files with it).
    let lost = lab.dir().with_extension("lost");
    std::fs::rename(lab.dir(), &lost).unwrap();
    let next = tempfile::Builder::new()
        .prefix("cf-lab-next-")
        .tempdir()
        .unwrap();
    let run = |args: &[&str]| {
        Command::new(support::bin())
            .arg("lab")
            .args(args)
            .args(["--name", lab.name(), "--dir"])
            .arg(next.path())
            .output()
            .unwrap()
    };
    let out = run(&["up", "--hosts", "2"]);
    let _ = std::fs::remove_dir_all(&lost);
    assert!(out.status.success(), "{}", describe(&out));
    let moved = compose_fleet::lab::Lab::new(lab.name(), next.path()).unwrap();
    assert_eq!(
        compose_fleet::lab::index::get(lab.name()).map(|r| r.dir),
        Some(moved.dir().to_path_buf())
    );
    // The hosts answer with the new lab's host keys: the old sshd and registry were replaced.
    for host in [lab.host(1), lab.host(2)] {
        let out = Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-i")
            .arg(next.path().join("id_ed25519"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                next.path().join("known_hosts").display()
            ))
            .arg(format!("root@{}", moved.host(&host).unwrap().address))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(stdout(&out), host, "{}", describe(&out));
    }
    for pid in &old_sshds {
        assert!(!compose_fleet::lab::sys::alive(*pid), "old sshd {pid} left");
    }
    let lost_text = lost.to_string_lossy().to_string();
    assert_eq!(live_processes(&lost_text), Vec::<String>::new());
    let next_text = next.path().to_string_lossy().to_string();
    let registries = live_processes(&format!("/usr/bin/docker-registry serve {next_text}"));
    assert_eq!(registries.len(), 1, "{registries:?}");
    let new_sshds = sshd_pids(&moved);
    let out = run(&["down"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_lab_gone(&record, &new_sshds);
    // The fixture's own `lab down` now finds nothing to do.
}

/// `compose-fleet -i INVENTORY hosts --format json`: the names of the hosts that answered.
fn reachable_hosts(lab: &Lab) -> Vec<String> {
    let out = lab
        .cli()
        .args(["hosts", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "hosts: {}", describe(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reachable"] == true)
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `compose-fleet lab list`: (name, up, subnets) of each lab.
fn lab_list() -> Vec<(String, String, String)> {
    let out = Command::new(support::bin())
        .args(["lab", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    stdout(&out)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[3].to_string())
        })
        .collect()
}

#[test]
fn two_labs_are_up_at_once_and_down_of_one_leaves_the_other_working() {
    let test = "two_labs_are_up_at_once_and_down_of_one_leaves_the_other_working";
    let Some(a) = Lab::up(test, 2) else { return };
    let Some(b) = Lab::up(test, 2) else { return };
    assert_ne!(a.registry(), b.registry());

    // Both listed as up, on subnets of their own; `hosts` works on each.
    let list = lab_list();
    let entry = |name: &str| list.iter().find(|(n, _, _)| n == name).cloned();
    let (_, a_up, a_subnets) = entry(a.name()).expect("lab a listed");
    let (_, b_up, b_subnets) = entry(b.name()).expect("lab b listed");
    assert_eq!((a_up.as_str(), b_up.as_str()), ("yes", "yes"), "{list:?}");
    assert_ne!(a_subnets, b_subnets);
    assert_eq!(reachable_hosts(&a), a.host_names());
    assert_eq!(reachable_hosts(&b), b.host_names());

    // A host of one lab has no route into the other.
    let out = a.ssh(
        &a.host(1),
        &format!("ip route get {} || echo no-route", b.address(&b.host(1))),
    );
    assert!(stdout(&out).ends_with("no-route"), "{}", describe(&out));

    // `lab down` of a leaves b as it was: listed, its status all up, `hosts` on every host.
    let record = compose_fleet::lab::index::get(a.name()).expect("a recorded");
    let sshds = sshd_pids(a.faults());
    let a_name = a.name().to_string();
    drop(a);
    assert_lab_gone(&record, &sshds);
    assert!(lab_list().iter().all(|(n, _, _)| *n != a_name));
    let out = b.run_lab(&["status"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(reachable_hosts(&b), b.host_names());
    // The shared routes stay while a lab is up.
    let out = ip(&["route", "get", &unused_lab_address()]);
    assert!(
        stderr(&out).contains("No route to host"),
        "{}",
        describe(&out)
    );
    drop(b);

    // The shared routes go with the last lab. Other labs (a user's, other tests') may be up:
    // with no test lab coming or going, the routes are there exactly when some lab is.
    let _exclusive = support::lab_lock(true);
    let labs = compose_fleet::lab::index::list();
    let routes = stdout(&ip(&["route", "show"]));
    for fence in compose_fleet::lab::FENCED_CIDRS {
        assert_eq!(
            routes.contains(&format!("unreachable {fence}")),
            !labs.is_empty(),
            "labs: {labs:?}\nroutes:\n{routes}"
        );
    }
}

#[test]
fn hosts_on_different_sites_reach_each_other_only_through_the_root_namespace() {
    let test = "hosts_on_different_sites_reach_each_other_only_through_the_root_namespace";
    let Some(lab) = Lab::up_on_sites(test, 4, 2) else {
        return;
    };
    let record = compose_fleet::lab::index::get(lab.name()).expect("recorded");
    assert_eq!(record.sites, 2);
    // Hosts 1 and 3 share site 1, host 2 is on site 2.
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let (a1, a2, a3) = (lab.address(&h1), lab.address(&h2), lab.address(&h3));
    let gateway = {
        let [a, b, c, d] = record.gateway(0);
        format!("{a}.{b}.{c}.{d}")
    };
    assert_ne!(record.subnet(0), record.subnet(1));

    // Same site: on-link, one hop (a reply keeps TTL 64). Other site: via the gateway in the
    // root namespace, which decrements the TTL, and a TTL of 1 does not get there.
    let route = stdout(&lab.ssh(&h1, &format!("ip route get {a3}")));
    assert!(!route.contains(" via "), "{route}");
    let route = stdout(&lab.ssh(&h1, &format!("ip route get {a2}")));
    assert!(route.contains(&format!(" via {gateway} ")), "{route}");
    let out = lab.ssh(&h1, &format!("busybox ping -c 1 -W 2 {a3}"));
    assert!(stdout(&out).contains("ttl=64"), "{}", describe(&out));
    let out = lab.ssh(&h1, &format!("busybox ping -c 1 -W 2 {a2}"));
    assert!(stdout(&out).contains("ttl=63"), "{}", describe(&out));
    let out = lab.ssh(&h1, &format!("busybox ping -c 1 -W 2 -t 1 {a2}"));
    assert!(
        !out.status.success(),
        "TTL 1 crossed sites: {}",
        describe(&out)
    );
    let out = lab.ssh(
        &h1,
        &format!("busybox traceroute -n -m 3 -q 1 -w 2 {a2} 2>/dev/null"),
    );
    let hops: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| n.parse::<u8>().is_ok()))
        .filter_map(|f| f.get(1).map(|a| a.to_string()))
        .collect();
    assert_eq!(hops, [gateway.clone(), a2.clone()], "{}", describe(&out));
    // And TCP across sites works both ways.
    for (from, to) in [(&h1, &a2), (&h2, &a1)] {
        let out = lab.ssh(
            from,
            &format!("echo | busybox nc -w 2 {to} 22 | head -c 7; echo"),
        );
        assert_eq!(stdout(&out), "SSH-2.0", "{from} → {to}: {}", describe(&out));
    }

    // The inventory labels the sites, and `hosts` works on every host of both.
    let inventory = std::fs::read_to_string(lab.inventory()).unwrap();
    assert!(
        inventory.contains(&format!(
            "  {h2}: {{ address: {a2}, labels: {{ zone: b, site: s2 }}"
        )),
        "{inventory}"
    );
    assert_eq!(reachable_hosts(&lab), lab.host_names());

    // A host cut off and reconnected gets its routes back.
    lab.faults().cut_off(&h1).unwrap();
    lab.faults().reconnect(&h1).unwrap();
    let out = lab.ssh(&h1, &format!("busybox ping -c 1 -W 2 {a2}"));
    assert!(stdout(&out).contains("ttl=63"), "{}", describe(&out));
}
