//! Non-root SSH users with `become` on the lab fleet: the lab's `cf-NAME-sudo` (passwordless sudo,
//! only for the agent's two commands) deploys, and the agent's files are root-owned; the lab's
//! `cf-NAME-pw` (sudo wants a password) is refused with the sudoers line, and nothing ran there;
//! an Ansible `group_vars/all.yml` choosing the user and `ansible_become` is who `hosts` logs in
//! as.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support::{self, describe, Lab};

/// The lab, unless it has no `become` users (no sudo on this machine: skipped with the reason).
fn lab_with_users(test: &str, hosts: usize) -> Option<Lab> {
    let lab = Lab::up(test, hosts)?;
    if !compose_fleet::lab::users::sudo_installed() {
        support::skip(
            test,
            support::REQUIRE_ROOT,
            "needs sudo on this machine (scripts/setup.sh installs it)",
        );
        return None;
    }
    Some(lab)
}

/// An inventory of our own format with one lab host logged into as `user` with `become: true`.
fn inventory(lab: &Lab, dir: &Path, host: &str, user: &str) -> PathBuf {
    let text = format!(
        "defaults: {{ identity_file: {}, known_hosts: {} }}\n\
         registries: {{ \"{}\": {{ insecure: true }} }}\n\
         hosts:\n  {host}: {{ address: {}, user: {user}, become: true }}\n",
        lab.identity().display(),
        lab.known_hosts().display(),
        lab.registry(),
        lab.address(host),
    );
    let path = dir.join(format!("{user}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-service project from the lab's shell image.
fn project(lab: &Lab, dir: &Path) -> PathBuf {
    let path = dir.join("compose.yaml");
    std::fs::write(
        &path,
        format!(
            "name: sudoapp\nservices:\n  app:\n    image: {}\n    command: [\"sh\", \"-c\", \"while true; do sleep 5; done\"]\n    stop_grace_period: 1s\n",
            lab.shell_image()
        ),
    )
    .unwrap();
    path
}

fn cli(inventory: &Path, compose: &Path, args: &[&str]) -> Output {
    std::process::Command::new(support::bin())
        .arg("-i")
        .arg(inventory)
        .arg("-f")
        .arg(compose)
        .args(args)
        .output()
        .expect("runs the CLI")
}

/// The host's processes whose command line mentions `needle`, with their real uid.
fn processes_with(lab: &Lab, host: &str, needle: &str) -> Vec<(i32, u32)> {
    let host = lab.faults().host(host).expect("host");
    host.processes()
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.contains(needle) {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((pid, uid))
        })
        .collect()
}

/// The files under a host's private directory `private/rest`.
fn files(lab: &Lab, host: &str, private: &str, rest: &str) -> Vec<PathBuf> {
    let dir = lab.dir().join("hosts").join(host).join(private).join(rest);
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_sudo_user_deploys_with_root_owned_agent_files_and_a_password_sudo_is_refused() {
    let Some(lab) = lab_with_users("become_sudo", 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let compose = project(&lab, dir.path());
    let (h1, h2) = (lab.host(1), lab.host(2));
    let sudo_user = compose_fleet::lab::users::sudo_user(lab.name());
    let pw_user = compose_fleet::lab::users::password_user(lab.name());

    // 1. sudo wants a password: refused with the sudoers line, before anything is uploaded.
    let inv = inventory(&lab, dir.path(), &h2, &pw_user);
    let out = cli(&inv, &compose, &["hosts", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let error = rows[0]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("sudo refused: "), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{pw_user} ALL=(root) NOPASSWD: /var/lib/compose-fleet/bin/agent-");
    assert!(stderr.contains(&format!("host `{h2}`")), "{stderr}");
    assert!(stderr.contains(&expected), "no sudoers line in:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            " rpc, /usr/bin/install -D -o root -g root -m 0755 -t /var/lib/compose-fleet/bin /home/{pw_user}/.compose-fleet/agent-"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("uploaded_bytes=0"), "{stderr}");
    let out = cli(&inv, &compose, &["up"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sudo wants a password"),
        "{}",
        describe(&out)
    );
    // Nothing ran there: no agent, no file installed, nothing left in the user's home.
    assert_eq!(processes_with(&lab, &h2, "agent-"), vec![]);
    assert_eq!(files(&lab, &h2, "state", "bin"), Vec::<PathBuf>::new());
    assert_eq!(
        files(&lab, &h2, "home", &format!("{pw_user}/.compose-fleet")),
        Vec::<PathBuf>::new()
    );

    // 2. Passwordless sudo for the agent's two commands (the lab's pattern rule): `up` deploys.
    let inv = inventory(&lab, dir.path(), &h1, &sudo_user);
    let out = cli(&inv, &compose, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let out = cli(&inv, &compose, &["ps", "--format", "json"]);
    assert!(out.status.success(), "ps failed: {}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "running", "{rows:?}");
    // The agent's files are root-owned (the login user cannot change what runs as root), and
    // the daemon runs as root.
    let installed = files(&lab, &h1, "state", "bin");
    assert_eq!(installed.len(), 2, "the agent and its unit: {installed:?}");
    for f in &installed {
        let meta = std::fs::metadata(f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", f.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is writable by others",
            f.display()
        );
    }
    let daemons = processes_with(&lab, &h1, " daemon");
    assert!(!daemons.is_empty(), "no agent daemon on {h1}");
    assert!(daemons.iter().all(|(_, uid)| *uid == 0), "{daemons:?}");
    // The upload was staged in the user's home and is gone.
    assert_eq!(
        files(&lab, &h1, "home", &format!("{sudo_user}/.compose-fleet")),
        Vec::<PathBuf>::new()
    );
    let log = std::fs::read_to_string(lab.dir().join(format!("hosts/{h1}/run/sshd.log")))
        .unwrap_or_default();
    assert!(
        log.contains(&format!("Accepted publickey for {sudo_user} ")),
        "{log}"
    );
    assert!(!log.contains("Accepted publickey for root "), "{log}");
    let out = cli(&inv, &compose, &["down"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
    let out = cli(&inv, &compose, &["ps", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(rows.is_empty(), "{rows:?}");

    // 3. An Ansible inventory whose group_vars/all.yml picks the user and `become`: `hosts`
    //    logs in as that user (sshd's log says so) and reaches the agent through sudo.
    let ansible = dir.path().join("ansible");
    std::fs::create_dir_all(ansible.join("group_vars")).unwrap();
    std::fs::write(
        ansible.join("group_vars/all.yml"),
        format!("ansible_user: {sudo_user}\nansible_become: true\n"),
    )
    .unwrap();
    std::fs::write(
        ansible.join("hosts"),
        format!(
            "[lab]\n{h1} ansible_host={}\n[lab:vars]\nansible_ssh_private_key_file={}\ncompose_fleet_known_hosts={}\n",
            lab.address(&h1),
            lab.identity().display(),
            lab.known_hosts().display()
        ),
    )
    .unwrap();
    let before = log.matches("Accepted publickey").count();
    let out = cli(
        &ansible.join("hosts"),
        &compose,
        &["hosts", "--format", "json"],
    );
    assert!(out.status.success(), "hosts failed: {}", describe(&out));
    let log = std::fs::read_to_string(lab.dir().join(format!("hosts/{h1}/run/sshd.log")))
        .unwrap_or_default();
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Accepted publickey"))
        .skip(before)
        .collect();
    assert!(!accepted.is_empty(), "{log}");
    assert!(
        accepted
            .iter()
            .all(|l| l.contains(&format!("for {sudo_user} "))),
        "{accepted:?}"
    );

    // 4. `lab down` removes the users and their rules.
    let name = lab.name().to_string();
    drop(lab);
    for user in [&sudo_user, &pw_user] {
        assert_eq!(nix::unistd::User::from_name(user).ok().flatten(), None);
    }
    assert!(!Path::new(&format!("/etc/sudoers.d/compose-fleet-lab-{name}")).exists());
}
