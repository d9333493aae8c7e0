//! The differential test: every inventory of the suite is read by the reference,
//! `ansible-inventory -i X --list` (ansible-core, pinned in `scripts/setup.sh`), and by
//! `compose-fleet -i X inventory --format json`; both are reduced to what compose-fleet uses
//! per host (name, address, user, port, identity file, connection, labels including every group)
//! and must be equal. Every inventory the reference rejects, we must reject with
//! `file:line:column`.
//!
//! The inventories: `tests/fixtures/inventories/*/` (one per finding of issue 16; each case
//! directory holds one inventory file or directory, beside optional `group_vars/`/`host_vars/`)
//! and `../shared/ansible-inventories/*/` when present. The reference is
//! `.reference/venv/bin/ansible-inventory` or `COMPOSE_FLEET_REFERENCE_ANSIBLE_INVENTORY`;
//! without it the test skips with a reason, unless `COMPOSE_FLEET_REQUIRE_REFERENCE=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Reduces either program's JSON to `{host: {address, user, port, identity_file, labels,
/// connection}}`, in Python so that numbers are spelled as Ansible's `json` spells them.
const NORMALIZE: &str = r#"
import json, sys
d = json.load(sys.stdin)
if isinstance(d.get('hosts'), list):
    out = {h['name']: {k: h[k] for k in ('address', 'user', 'port', 'identity_file', 'labels', 'connection')} for h in d['hosts']}
    json.dump(out, sys.stdout, sort_keys=True)
    sys.exit(0)
parents, members = {}, {}
for g, body in d.items():
    if g == '_meta':
        continue
    for c in body.get('children', []):
        parents.setdefault(c, set()).add(g)
    for h in body.get('hosts', []):
        members.setdefault(h, set()).add(g)
hv = d.get('_meta', {}).get('hostvars', {})
def closure(gs):
    out, stack = set(), list(gs)
    while stack:
        g = stack.pop()
        if g not in out:
            out.add(g)
            stack.extend(parents.get(g, ()))
    return out
def text(v):
    return v if isinstance(v, str) else json.dumps(v)
out = {}
for h in set(members) | set(hv):
    v = hv.get(h, {})
    def first(*ks):
        for k in ks:
            if k in v:
                return v[k]
        return None
    labels = {'group.' + g: 'true' for g in closure(members.get(h, ())) if g not in ('all', 'ungrouped')}
    for k, x in v.items():
        if k.startswith('ansible_') or k.startswith('compose_fleet_'):
            continue
        if x is None or isinstance(x, (list, dict)):
            continue
        labels[k] = text(x)
    addr, user = first('ansible_ssh_host', 'ansible_host'), first('ansible_ssh_user', 'ansible_user')
    port = first('ansible_ssh_port', 'ansible_port')
    key = first('ansible_ssh_private_key_file', 'ansible_private_key_file')
    conn = first('ansible_connection')
    out[h] = {
        'address': h if addr is None else text(addr),
        'user': None if user is None else text(user),
        'port': 22 if port is None else int(port),
        'identity_file': None if key is None else text(key),
        'labels': labels,
        'connection': 'local' if conn in ('local', 'ansible.builtin.local') else 'ssh',
    }
json.dump(out, sys.stdout, sort_keys=True)
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference `ansible-inventory`, or `None` with the reason printed.
fn reference() -> Option<PathBuf> {
    let candidate = std::env::var_os("COMPOSE_FLEET_REFERENCE_ANSIBLE_INVENTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".reference/venv/bin/ansible-inventory"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let reason = format!(
        "the reference is missing: no {} (run scripts/setup.sh, or set \
         COMPOSE_FLEET_REFERENCE_ANSIBLE_INVENTORY)",
        candidate.display()
    );
    if std::env::var("COMPOSE_FLEET_REQUIRE_REFERENCE").as_deref() == Ok("1") {
        panic!("{reason}");
    }
    eprintln!("skipping the inventory differential test: {reason}");
    None
}

/// `../shared/ansible-inventories` (or one level up, for a worktree), or `None` with the
/// reason printed.
fn shared_corpus() -> Option<PathBuf> {
    let root = repo();
    let candidates: Vec<PathBuf> = std::env::var_os("COMPOSE_FLEET_SHARED")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared"), root.join("../../shared")])
        .map(|p| p.join("ansible-inventories"))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_dir()) {
        return Some(found.clone());
    }
    let reason = format!("the shared corpus is missing: looked in {candidates:?}");
    if std::env::var("COMPOSE_FLEET_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("{reason}");
    }
    eprintln!("inventory differential: {reason}; testing our own corpus only");
    None
}

/// The inventory of each case directory: its one entry other than `group_vars`/`host_vars`.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(d)
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !matches!(
                        p.file_name().and_then(|n| n.to_str()),
                        Some("group_vars" | "host_vars" | "SOURCES.md")
                    )
                })
                .collect();
            assert_eq!(entries.len(), 1, "{}: one inventory per case", d.display());
            entries.remove(0)
        })
        .collect()
}

fn normalize(python: &Path, json: &[u8]) -> String {
    let mut child = Command::new(python)
        .args(["-c", NORMALIZE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    use std::io::Write as _;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(json).expect("write to python");
    drop(stdin);
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "normalizing failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One inventory through both programs: `Ok` when they agree, else what differs.
fn compare(reference: &Path, python: &Path, inventory: &Path) -> Result<(), String> {
    let scratch = tempfile::tempdir().expect("tempdir");
    // An empty ansible.cfg and working directory: no configuration or play vars leak in.
    std::fs::write(scratch.path().join("ansible.cfg"), "").expect("ansible.cfg");
    let theirs = Command::new(reference)
        .arg("-i")
        .arg(inventory)
        .arg("--list")
        .current_dir(scratch.path())
        .env("ANSIBLE_CONFIG", scratch.path().join("ansible.cfg"))
        .env("ANSIBLE_HOME", scratch.path())
        .env("ANSIBLE_LOCAL_TEMP", scratch.path())
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "1")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "1")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("run the reference");
    let ours = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(inventory)
        .args(["inventory", "--format", "json"])
        .output()
        .expect("run compose-fleet");
    let our_err = String::from_utf8_lossy(&ours.stderr);
    if !theirs.status.success() {
        if ours.status.code() != Some(1) {
            return Err(format!(
                "the reference rejects it, we accept it:\n{}",
                String::from_utf8_lossy(&theirs.stderr)
            ));
        }
        let located = our_err.lines().any(|l| {
            l.trim_start().strip_prefix("--> ").is_some_and(|loc| {
                let parts: Vec<&str> = loc.rsplitn(3, ':').collect();
                parts.len() == 3
                    && parts[0].parse::<u32>().is_ok()
                    && parts[1].parse::<u32>().is_ok()
            })
        });
        return if located {
            Ok(())
        } else {
            Err(format!("rejected without file:line:column:\n{our_err}"))
        };
    }
    if !ours.status.success() {
        return Err(format!(
            "the reference accepts it, we reject it:\n{our_err}"
        ));
    }
    let (a, b) = (
        normalize(python, &theirs.stdout),
        normalize(python, &ours.stdout),
    );
    if a == b {
        return Ok(());
    }
    let a: serde_json::Value = serde_json::from_str(&a).expect("json");
    let b: serde_json::Value = serde_json::from_str(&b).expect("json");
    let mut diff = String::new();
    let (am, bm) = (
        a.as_object().cloned().unwrap_or_default(),
        b.as_object().cloned().unwrap_or_default(),
    );
    let mut names: Vec<&String> = am.keys().chain(bm.keys()).collect();
    names.sort();
    names.dedup();
    for n in names.into_iter().take(5) {
        if am.get(n) != bm.get(n) {
            diff.push_str(&format!(
                "  {n}:\n    reference: {:?}\n    ours:      {:?}\n",
                am.get(n),
                bm.get(n)
            ));
        }
    }
    Err(diff)
}

#[test]
fn every_inventory_reads_as_ansible_inventory_reads_it() {
    let Some(reference) = reference() else {
        return;
    };
    let python = reference
        .parent()
        .map(|d| d.join("python3"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let mut inventories = cases(&repo().join("tests/fixtures/inventories"));
    if let Some(shared) = shared_corpus() {
        inventories.extend(cases(&shared));
    }
    // Two at a time: the reference takes about a second per inventory.
    let results: Vec<(PathBuf, Result<(), String>)> = std::thread::scope(|s| {
        let chunks: Vec<&[PathBuf]> = inventories
            .chunks(inventories.len().div_ceil(2).max(1))
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (reference, python) = (&reference, &python);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|i| (i.clone(), compare(reference, python, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{}:\n{e}", p.display())))
        .collect();
    eprintln!(
        "inventory differential: {} of {} inventories read the same as ansible-inventory",
        results.len() - failures.len(),
        results.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
