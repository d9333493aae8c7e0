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

/// In the command line of every listening lab sshd.
const LAB_SSHD: &str = compose_fleet::lab::host::SSHD_LISTENER;

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

#[test]
fn lab_up_gives_hosts_with_own_sshd_state_and_registry_and_down_leaves_nothing() {
    let test = "lab_up_gives_hosts_with_own_sshd_state_and_registry_and_down_leaves_nothing";
    let Some(lab) = Lab::up(test, 3) else { return };
    let dir = lab.dir().to_path_buf();

    // Every host answers over SSH with strict host-key checking, under its own hostname.
    for host in lab.host_names() {
        let out = lab.ssh(&host, "hostname");
        assert!(out.status.success(), "ssh {host}: {}", describe(&out));
        assert_eq!(stdout(&out), host);
    }

    // Each host has its own /var/lib/compose-fleet, /tmp and /run, backed by DIR/hosts/NAME/.
    let out = lab.ssh(
        "lab-1",
        "echo one > /var/lib/compose-fleet/marker && echo t > /tmp/marker && echo r > /run/marker",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.ssh(
        "lab-1",
        "cat /var/lib/compose-fleet/marker /tmp/marker /run/marker",
    );
    assert_eq!(stdout(&out), "one\nt\nr", "{}", describe(&out));
    let out = lab.ssh(
        "lab-2",
        "ls /var/lib/compose-fleet/marker /tmp/marker /run/marker 2>/dev/null | wc -l",
    );
    assert_eq!(
        stdout(&out),
        "0",
        "lab-2 sees lab-1's files: {}",
        describe(&out)
    );
    let on_disk = std::fs::read_to_string(dir.join("hosts/lab-1/state/marker")).unwrap();
    assert_eq!(on_disk, "one\n");
    assert!(!std::path::Path::new("/var/lib/compose-fleet/marker").exists());

    // A host has the lab subnet and nothing beyond it.
    let out = lab.ssh("lab-1", "ip route get 192.0.2.1 || echo no-route");
    assert!(
        stdout(&out).ends_with("no-route"),
        "lab-1 reaches outside: {}",
        describe(&out)
    );
    // Hosts reach each other and the registry over the bridge.
    let out = lab.ssh(
        "lab-1",
        "echo | busybox nc -w 2 10.250.0.13 22 | head -c 7; echo",
    );
    assert_eq!(
        stdout(&out),
        "SSH-2.0",
        "lab-1 → lab-3:22: {}",
        describe(&out)
    );

    // The root namespace refuses lab and pod ranges beyond the bridge's /24.
    for addr in ["10.250.1.5", "10.213.0.5"] {
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
    assert!(inventory.contains("registries: { \"10.250.0.1:5000\": { insecure: true } }"));
    for (host, zone) in [("lab-1", "a"), ("lab-2", "b"), ("lab-3", "c")] {
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
    assert!(fleet.registries["10.250.0.1:5000"].insecure);
    let known_hosts = std::fs::read_to_string(lab.known_hosts()).unwrap();
    assert_eq!(known_hosts.lines().count(), 3);
    assert!(known_hosts
        .lines()
        .all(|l| l.starts_with("10.250.0.1") && l.contains(" ssh-ed25519 AAAA")));

    // The registry serves both images with the digests this machine's busybox gives, and they
    // are usable root file systems: busybox `sh` runs, and the httpd image serves its page.
    let layers = check_registry_images();
    check_images_run(&layers);

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
    let out = lab.ssh("lab-1", "cat /var/lib/compose-fleet/marker");
    assert_eq!(stdout(&out), "one", "state survives a second `lab up`");

    // `lab up` repairs: a killed sshd, a downed link and a frozen host come back.
    lab.faults().kill_sshd("lab-2").unwrap();
    lab.faults().cut_off("lab-3").unwrap();
    lab.faults().freeze("lab-1").unwrap();
    let out = lab.run_lab(&["up", "--hosts", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    for host in ["lab-1", "lab-2", "lab-3"] {
        let out = lab.ssh(host, "hostname");
        assert_eq!(
            stdout(&out),
            host,
            "{host} not repaired: {}",
            describe(&out)
        );
    }

    // `lab down` leaves no namespace, link, route, mount, process or file.
    let out = lab.run_lab(&["down"]);
    assert!(out.status.success(), "{}", describe(&out));
    let netns = stdout(&ip(&["netns", "list"]));
    assert!(
        !netns.lines().any(|l| l.starts_with("lab-")),
        "netns left: {netns}"
    );
    let links = stdout(&ip(&["-o", "link"]));
    assert!(!links.contains("cflab0"), "links left: {links}");
    let routes = stdout(&ip(&["route", "show", "table", "all"]));
    assert!(
        !routes.contains("10.250.") && !routes.contains("10.213."),
        "routes left: {routes}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_text = dir.to_string_lossy().to_string();
    assert!(!mounts.contains(&dir_text), "mounts left:\n{mounts}");
    assert!(
        !mounts.contains("/run/netns/lab-"),
        "netns mounts left:\n{mounts}"
    );
    assert_eq!(live_processes(LAB_SSHD), Vec::<String>::new(), "sshd left");
    assert_eq!(
        live_processes(&dir_text),
        Vec::<String>::new(),
        "processes left"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(!std::path::Path::new(compose_fleet::lab::ACTIVE_MARKER).exists());
}

/// Unpacks each image's layer and runs it with `chroot`: the shell image's `sh`, and the httpd
/// image's default command inside host lab-1, fetched over the lab network.
fn check_images_run(layers: &[(String, Vec<u8>)]) {
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
    let shell = rootfs(images::SHELL_IMAGE);
    let out = Command::new("chroot")
        .arg(shell.path())
        .args(["/bin/sh", "-c", "echo $((40 + 2)) | tr 2 3"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "43", "{}", describe(&out));

    let httpd = rootfs(images::HTTPD_IMAGE);
    let mut server = Command::new("ip")
        .args(["netns", "exec", "lab-1", "chroot"])
        .arg(httpd.path())
        .args(["httpd", "-f", "-p", "80", "-h", "/www"])
        .spawn()
        .unwrap();
    let mut page = String::new();
    for _ in 0..100 {
        if let Ok(mut conn) = std::net::TcpStream::connect("10.250.0.11:80") {
            use std::io::Write;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            conn.write_all(b"GET / HTTP/1.0\r\nHost: lab-1\r\n\r\n")
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
fn check_registry_images() -> Vec<(String, Vec<u8>)> {
    let mut layers = Vec::new();
    let expected = images::build_all().expect("images build");
    assert_eq!(
        expected
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        [images::SHELL_IMAGE, images::HTTPD_IMAGE]
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = images::client();
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
            if image.reference == images::HTTPD_IMAGE {
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

    let out = lab.run_lab(&["status"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("lab-2") && l.ends_with("up")),
        "{}",
        describe(&out)
    );

    // `lab exec` runs in the host's namespaces.
    let out = Command::new(support::bin())
        .args(["lab", "exec", "--dir"])
        .arg(lab.dir())
        .args([
            "lab-2",
            "--",
            "sh",
            "-c",
            "hostname; ip -o -4 addr show eth0 | wc -l",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "lab-2\n1");

    // Cut off: connections time out; reconnect: it answers again.
    faults.cut_off("lab-1").unwrap();
    let out = lab.ssh("lab-1", "true");
    assert!(!out.status.success(), "ssh to a cut-off host succeeded");
    faults.reconnect("lab-1").unwrap();
    assert!(lab.ssh("lab-1", "true").status.success());

    // Frozen: the handshake never completes (ConnectTimeout bounds it).
    faults.freeze("lab-1").unwrap();
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
        .args(["root@10.250.0.11", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ssh to a frozen host succeeded");
    faults.thaw("lab-1").unwrap();
    assert!(lab.ssh("lab-1", "true").status.success());

    // Killed sshd: refused, and `lab status` says so (exit 1).
    faults.kill_sshd("lab-2").unwrap();
    let out = lab.ssh("lab-2", "true");
    assert!(!out.status.success());
    let out = lab.run_lab(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("lab-2") && l.ends_with("down")),
        "{}",
        describe(&out)
    );
    faults.start_sshd("lab-2").unwrap();
    assert!(lab.ssh("lab-2", "true").status.success());

    // `lab up` with another host count adds or removes hosts.
    let out = lab.run_lab(&["up", "--hosts", "3"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.ssh("lab-3", "hostname");
    assert_eq!(stdout(&out), "lab-3", "{}", describe(&out));
    let out = lab.run_lab(&["up", "--hosts", "2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!stdout(&ip(&["netns", "list"]))
        .lines()
        .any(|l| l.starts_with("lab-3")));
    assert!(!stdout(&ip(&["-o", "link"])).contains("cflab0-3"));
    let inventory = std::fs::read_to_string(lab.inventory()).unwrap();
    assert!(
        inventory.contains("lab-2:") && !inventory.contains("lab-3:"),
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
    faults.change_host_key("lab-2").unwrap();
    let out = lab.ssh("lab-2", "true");
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
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(support::bin())
        .args(["lab", "up", "--dir", "/nonexistent/cf-lab"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("the lab needs root"),
        "{}",
        describe(&out)
    );
}

#[test]
fn lab_images_are_deterministic() {
    if !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("skipped: lab_images_are_deterministic needs /bin/busybox (busybox-static)");
        return;
    }
    let a = images::build_all().unwrap();
    let b = images::build_all().unwrap();
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
    // The directory disappears under a running lab (its pid files with it).
    let lost = lab.dir().with_extension("lost");
    std::fs::rename(lab.dir(), &lost).unwrap();
    let next = tempfile::Builder::new()
        .prefix("cf-lab-next-")
        .tempdir()
        .unwrap();
    let up = |args: &[&str]| {
        Command::new(support::bin())
            .arg("lab")
            .args(args)
            .arg("--dir")
            .arg(next.path())
            .output()
            .unwrap()
    };
    let out = up(&["up", "--hosts", "2"]);
    let _ = std::fs::remove_dir_all(&lost);
    assert!(out.status.success(), "{}", describe(&out));
    // The hosts answer with the new lab's host keys: the old sshd and registry were replaced.
    for host in ["lab-1", "lab-2"] {
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
            .arg(format!("root@{}", lab.address(host)))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(stdout(&out), host, "{}", describe(&out));
    }
    assert_eq!(live_processes(LAB_SSHD).len(), 2, "one sshd per host");
    let registries = live_processes("/usr/bin/docker-registry serve");
    assert_eq!(registries.len(), 1, "{registries:?}");
    assert!(registries[0].contains(&next.path().to_string_lossy().to_string()));
    let out = up(&["down"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(live_processes(LAB_SSHD), Vec::<String>::new());
    // The fixture's own `lab down` now finds nothing to do.
}
