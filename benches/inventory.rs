//! Inventory loading: 1,000, 10,000 and 100,000 hosts, as an INI file with ranges and as a YAML
//! file with nested groups, read by compose-fleet (`inventory::load`, in this process) and by
//! the reference, `ansible-inventory --list` (ansible-core from `.reference/venv`, or
//! `COMPOSE_FLEET_REFERENCE_ANSIBLE_INVENTORY`), on the same files in the same run.
//!
//! ```text
//! cargo bench --bench inventory                          # all sizes, the reference included
//! cargo bench --bench inventory -- --sizes 1000,10000    # chosen sizes
//! cargo bench --bench inventory -- --no-reference
//! ```
//!
//! Prints wall and CPU time (this thread's for compose-fleet, the child's user + system for the
//! reference); asserts nothing about time. Issue 14's target: 100k hosts in about a second,
//! growing linearly.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compose_fleet::inventory;
use compose_fleet::limits::{Limit, Limits};

/// The INI shape: four groups of ranges with a few variables each, a `:children` parent.
fn ini(hosts: usize) -> String {
    let per = hosts / 4;
    let mut s = String::new();
    for (g, zone) in ["web", "api", "db", "cache"]
        .iter()
        .zip(["a", "b", "c", "a"])
    {
        s.push_str(&format!(
            "[{g}]\n{g}-[000000:{:06}].example.com ansible_user=deploy zone={zone}\n",
            per - 1
        ));
        s.push_str(&format!("[{g}:vars]\ntier={g}\nansible_port=2222\n"));
    }
    s.push_str("[prod:children]\nweb\napi\ndb\ncache\n[prod:vars]\nenv=prod\n");
    s
}

/// The YAML shape: `all` → 10 regions → 10 racks each → hosts with their own variables.
fn yaml(hosts: usize) -> String {
    let per_rack = hosts / 100;
    let mut s = String::from("all:\n  vars:\n    ansible_user: deploy\n  children:\n");
    let mut n = 0;
    for region in 0..10 {
        s.push_str(&format!(
            "    region{region}:\n      vars: {{ region: r{region} }}\n      children:\n"
        ));
        for rack in 0..10 {
            s.push_str(&format!(
                "        rack{region}_{rack}:\n          vars: {{ rack: k{rack} }}\n          hosts:\n"
            ));
            for _ in 0..per_rack {
                s.push_str(&format!(
                    "            h{n}: {{ ansible_host: 10.{}.{}.{}, disk: ssd }}\n",
                    n >> 16,
                    (n >> 8) & 255,
                    n & 255
                ));
                n += 1;
            }
        }
    }
    s
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn children_cpu() -> Duration {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the valid, exclusively borrowed `ru`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ours(path: &Path, limits: &Limits, hosts: usize) -> (Duration, Duration) {
    let runs = if hosts >= 100_000 { 3 } else { 10 };
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        let (w, c) = (Instant::now(), thread_cpu());
        let fleet = inventory::load_with(path, limits).unwrap_or_else(|e| panic!("{}", e.render()));
        let got = (w.elapsed(), thread_cpu() - c);
        assert_eq!(black_box(fleet).hosts.len(), hosts);
        best = (best.0.min(got.0), best.1.min(got.1));
    }
    best
}

fn reference(bin: &Path, path: &Path) -> Option<(Duration, Duration)> {
    let scratch = std::env::temp_dir().join(format!("inventory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).ok()?;
    std::fs::write(scratch.join("ansible.cfg"), "").ok()?;
    let (w, c) = (Instant::now(), children_cpu());
    let status = Command::new(bin)
        .arg("-i")
        .arg(path)
        .arg("--list")
        .current_dir(&scratch)
        .env("ANSIBLE_CONFIG", scratch.join("ansible.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let got = (w.elapsed(), children_cpu() - c);
    status.success().then_some(got)
}

fn main() {
    let mut sizes = vec![1_000, 10_000, 100_000];
    let mut with_reference = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--no-reference" => with_reference = false,
            "--sizes" => {
                sizes = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            other => eprintln!("inventory bench: ignoring argument {other}"),
        }
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("COMPOSE_FLEET_REFERENCE_ANSIBLE_INVENTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".reference/venv/bin/ansible-inventory"));
    let with_reference = with_reference && bin.is_file();
    if !with_reference {
        println!(
            "(no reference: {} is missing or --no-reference)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut limits = Limits::default();
    limits.set(Limit::Hosts, 1_000_000);
    println!(
        "{:<6} {:>8}  {:>24}  {:>28}",
        "format", "hosts", "compose-fleet wall / cpu", "ansible-inventory wall / cpu"
    );
    for &n in &sizes {
        for (kind, text, name) in [("ini", ini(n), "hosts.ini"), ("yaml", yaml(n), "hosts.yml")] {
            let path = dir.path().join(format!("{n}-{name}"));
            std::fs::write(&path, text).expect("write");
            let (w, c) = ours(&path, &limits, n);
            let theirs = if with_reference {
                reference(&bin, &path)
                    .map(|(w, c)| format!("{} / {}", ms(w), ms(c)))
                    .unwrap_or_else(|| "failed".into())
            } else {
                "-".into()
            };
            println!(
                "{kind:<6} {n:>8}  {:>24}  {theirs:>28}",
                format!("{} / {}", ms(w), ms(c))
            );
        }
    }
}
