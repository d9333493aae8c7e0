//! Crash safety on a 3-host lab fleet with `examples/jobs`: the CLI is killed (SIGKILL) at a
//! moment of `up` chosen at random, 20 times in a row, each time with a change to deploy. Each
//! following `up` succeeds without a manual unlock (the killed deploy's lease expires by itself),
//! and in the end the fleet holds exactly what a clean deploy of the same file leaves: the same
//! cgroups, pod network namespaces and mounts, veths, addresses and processes; and no nftables
//! rule on any host names a pod address that `ps` does not show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{describe, Lab};

const PROJECT: &str = "crashy";
const KILLS: u64 = 20;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/jobs/compose.yaml")
}

fn command(lab: &Lab, mode: &str, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(example())
        .args(["-p", PROJECT])
        .args(args)
        .env_remove("MIGRATE_EXIT")
        .env("API_MODE", mode)
        .env("REGISTRY", lab.registry());
    cmd
}

fn cli(lab: &Lab, mode: &str, args: &[&str]) -> Output {
    command(lab, mode, args).output().expect("runs the CLI")
}

/// A small deterministic generator (the delays are printed on failure, to replay a run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// What the project leaves on a host, line by line, in forms that do not depend on pids or
/// times: its cgroups (paths below the hierarchy), the mount points naming it, link names, IPv4
/// addresses, and how many processes run from its state directory; a pod's instance name is read
/// as the pod's (a start-first replacement may leave it under `<pod>.b`). (The nftables rules depend on
/// where pods run, which may differ after the kills: see [`nft_pod_addresses`].)
fn footprint(lab: &Lab, host: &str) -> BTreeMap<&'static str, String> {
    let run = |script: &str| -> String {
        let out = lab
            .faults()
            .exec(host, &["sh".into(), "-c".into(), script.into()])
            .expect("lab exec")
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut f = BTreeMap::new();
    f.insert(
        "cgroups",
        run(&format!(
            "find /sys/fs/cgroup -type d -path '*compose-fleet/{PROJECT}/*' 2>/dev/null \
             | sed 's#.*compose-fleet/#compose-fleet/#; s#\\.b/#/#g; s#\\.b$##' | sort -u"
        )),
    );
    f.insert(
        "mounts",
        run(&format!(
            "grep '{PROJECT}' /proc/self/mountinfo | cut -d' ' -f5 | sed 's#/[0-9a-f]\\{{64\\}}#/HASH#g; s#\\.b/#/#g; s#\\.b$##' | sort"
        )),
    );
    f.insert(
        "links",
        // Pod veths are numbered as they are made: their names, without the number.
        run("ip -o link show | cut -d: -f2 | sed 's/@.*//; s/[0-9]*$//' | sort"),
    );
    f.insert(
        "addresses",
        run("ip -4 -o addr show | awk '{print $2, $4}' | sort"),
    );
    f.insert(
        "processes",
        run(&format!(
            "({}) | wc -l",
            crate::support::project_processes_script(PROJECT)
        )),
    );
    f
}

/// Every host's [`footprint`], merged: a pod may sit on another host after the kills than after
/// a clean deploy (placement keeps what runs), but nothing may be missing or left over.
fn fleet_footprint(lab: &Lab) -> BTreeMap<&'static str, Vec<String>> {
    let mut all: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for host in lab.host_names() {
        for (what, text) in footprint(lab, &host) {
            let lines = all.entry(what).or_default();
            match text.parse::<u64>() {
                // Counts add up.
                Ok(n) => {
                    let sum = lines
                        .first()
                        .and_then(|l| l.parse::<u64>().ok())
                        .unwrap_or(0);
                    *lines = vec![(sum + n).to_string()];
                }
                Err(_) => lines.extend(text.lines().map(str::to_string)),
            }
        }
    }
    for lines in all.values_mut() {
        lines.sort();
    }
    all
}

/// The pod addresses (fleet CIDR, not a network or a bridge's `.1`) a host's nftables rules name.
fn nft_pod_addresses(lab: &Lab, host: &str) -> BTreeSet<String> {
    let out = lab
        .faults()
        .exec(host, &["nft".into(), "list".into(), "ruleset".into()])
        .expect("lab exec")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("10.213.") {
        let word: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '/')
            .collect();
        let last = word.rsplit('.').next().unwrap_or_default();
        if !word.contains('/') && last != "0" && last != "1" {
            found.insert(word);
        }
    }
    found
}

#[test]
fn up_killed_at_random_twenty_times_converges_each_time_and_leaves_no_orphan() {
    let Some(lab) = Lab::up(
        "up_killed_at_random_twenty_times_converges_each_time_and_leaves_no_orphan",
        3,
    ) else {
        return;
    };
    let mut rng = Lcg(0x5eed_c0de);
    let mut history = Vec::new();
    for i in 0..KILLS {
        let mode = format!("k{i}");
        // A short lease, so that the next `up` waits seconds for the killed one's to expire.
        let mut child = command(&lab, &mode, &["up", "--lock-ttl", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs up");
        let delay = Duration::from_millis(rng.below(4_000));
        let started = Instant::now();
        // Killed at `delay`, or found done already (a kill after the end proves nothing new,
        // but the next `up` must still succeed).
        let finished = loop {
            if let Ok(Some(_)) = child.try_wait() {
                break true;
            }
            if started.elapsed() >= delay {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !finished {
            let _ = child.kill();
        }
        let _ = child.wait();
        history.push(format!(
            "{i}: {} at {} ms",
            if finished { "finished" } else { "killed" },
            delay.as_millis()
        ));
        let out = cli(&lab, &mode, &["up", "--lock-wait", "60s"]);
        assert!(
            out.status.success(),
            "up after {}: {}",
            history.join(", "),
            describe(&out)
        );
    }
    let last = format!("k{}", KILLS - 1);
    let after_chaos = fleet_footprint(&lab);
    // Every service runs as the last file asks.
    let out = cli(&lab, &last, &["ps", "--format", "json"]);
    assert!(out.status.success(), "ps: {}", describe(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
    assert_eq!(rows.len(), 6, "{rows:?}");
    let pod_ips: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["ip"].as_str().map(str::to_string))
        .collect();
    for host in lab.host_names() {
        let named = nft_pod_addresses(&lab, &host);
        assert!(
            named.is_subset(&pod_ips),
            "{host}'s nftables rules name pods that do not run: {:?} (pods: {pod_ips:?})",
            named.difference(&pod_ips).collect::<Vec<_>>()
        );
    }

    // The reference: the same file deployed cleanly on the same hosts. (When the last kill
    // came after the changes, the `up` after it had nothing to do and took no lock: the killed
    // one's lease may still be running out.)
    let out = cli(&lab, &last, &["down", "--lock-wait", "60s"]);
    assert!(out.status.success(), "down: {}", describe(&out));
    let out = cli(&lab, &last, &["up"]);
    assert!(out.status.success(), "clean up: {}", describe(&out));
    assert_eq!(
        after_chaos,
        fleet_footprint(&lab),
        "after {} the fleet differs from a clean deploy",
        history.join(", ")
    );
    let out = cli(&lab, &last, &["down", "--volumes", "--lock-wait", "60s"]);
    assert!(out.status.success(), "down: {}", describe(&out));
}
