//! compose-fleet in a CI deploy step: host keys pinned in the inventory and no `known_hosts`
//! (`up` succeeds; a changed key is refused before anything runs; `hosts --pin` records every
//! lab host and never overwrites), the private key only in `COMPOSE_FLEET_SSH_KEY` (works, and
//! no key file is left, also after SIGTERM) or in an ssh-agent (`SSH_AUTH_SOCK`), GitHub annotations and the step summary, the global
//! `--timeout`, and the recipes in `examples/ci/` run step by step against a lab fleet with
//! `CI=true`, no TTY and an empty `HOME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, describe, Lab};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The public host key a lab host presents (`ssh-ed25519 AAAA…`).
fn host_key(lab: &Lab, host: &str) -> String {
    let line = lab
        .faults()
        .host(host)
        .and_then(|h| h.known_hosts_line())
        .unwrap_or_else(|e| panic!("{e}"));
    line.split_once(' ').expect("ADDRESS KEY").1.to_string()
}

/// A checkout-like directory: `examples/ci/compose.yaml` and an inventory of the lab's hosts
/// (root, the lab's registry; `identity` and pinned keys as asked; never a `known_hosts`).
struct Checkout {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Checkout {
    fn new(lab: &Lab, identity: bool, pinned: bool) -> Checkout {
        let dir = tempfile::tempdir().expect("temp dir");
        let ci = dir.path().join("examples/ci");
        std::fs::create_dir_all(&ci).expect("mkdir");
        std::fs::copy(
            repo().join("examples/ci/compose.yaml"),
            ci.join("compose.yaml"),
        )
        .expect("copy compose.yaml");
        let mut text = String::from("# written by the ci test\ndefaults: { user: root");
        if identity {
            text.push_str(&format!(", identity_file: {}", lab.identity().display()));
        }
        text.push_str(&format!(
            " }}\nregistries: {{ \"{}\": {{ insecure: true }} }}\nhosts:\n",
            lab.registry()
        ));
        for h in lab.host_names() {
            let pin = if pinned {
                format!(", host_key: \"{}\"", host_key(lab, &h))
            } else {
                String::new()
            };
            text.push_str(&format!("  {h}: {{ address: {}{pin} }}\n", lab.address(&h)));
        }
        std::fs::write(ci.join("inventory.yaml"), text).expect("write inventory");
        Checkout {
            dir,
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("examples/ci/inventory.yaml")
    }

    /// `compose-fleet -i INVENTORY -f compose.yaml` in the checkout, as CI runs it: `HOME` an
    /// empty directory (no known_hosts, no ssh config), `CI=true`, stdin closed, no SSH agent.
    fn cli(&self, lab: &Lab) -> Command {
        let mut cmd = Command::new(support::bin());
        cmd.current_dir(self.dir.path())
            .arg("-i")
            .arg(self.inventory())
            .arg("-f")
            .arg(self.dir.path().join("examples/ci/compose.yaml"))
            .env("HOME", self.home.path())
            .env("CI", "true")
            .env("REGISTRY", lab.registry())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .env_remove("COMPOSE_FLEET_SSH_KEY")
            .env_remove("COMPOSE_FLEET_SSH_KEY_FILE")
            .env_remove("COMPOSE_FLEET_INVENTORY")
            .stdin(Stdio::null());
        cmd
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("runs the CLI")
}

#[test]
fn pinned_host_keys_deploy_without_known_hosts_and_a_changed_key_is_refused() {
    let Some(lab) = Lab::up("pinned_host_keys_deploy", 2) else {
        return;
    };
    let checkout = Checkout::new(&lab, true, true);
    let out = run(checkout.cli(&lab).args(["-p", "pinned", "up"]));
    assert!(
        out.status.success(),
        "up with pinned keys failed: {}",
        describe(&out)
    );
    assert!(
        !checkout.home.path().join(".ssh/known_hosts").exists(),
        "nothing was recorded in the user's known_hosts"
    );

    // The second host gets a new key: refused before anything runs there.
    let changed = lab.host(2);
    lab.faults()
        .change_host_key(&changed)
        .expect("new host key");
    let out = run(checkout.cli(&lab).args(["-p", "pinned", "up", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    // With `--json` the refusal is the host's `unreachable` event.
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("not among the 1 pinned for it in the inventory")
            && all.contains("nothing was run on it"),
        "{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON events");
        if v["host"] == changed.as_str() {
            assert_eq!(
                v["event"], "unreachable",
                "only refused on {changed}: {line}"
            );
        }
    }
}

#[test]
fn hosts_pin_records_every_lab_host_and_refuses_to_overwrite() {
    let Some(lab) = Lab::up("hosts_pin_records", 2) else {
        return;
    };
    let checkout = Checkout::new(&lab, true, false);
    let out = run(checkout.cli(&lab).args(["hosts", "--pin"]));
    assert!(
        out.status.success(),
        "hosts --pin failed: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pinned = std::fs::read_to_string(checkout.inventory()).expect("inventory");
    let fleet = compose_fleet::inventory::load(&checkout.inventory()).expect("reads back");
    for h in lab.host_names() {
        assert!(
            stderr.contains(&format!("{h}: pinned ssh-ed25519")),
            "{stderr}"
        );
        let host = fleet.host(&h).expect("host");
        assert_eq!(host.host_keys, [host_key(&lab, &h)], "{pinned}");
    }
    assert!(
        pinned.starts_with("# written by the ci test\n"),
        "the rest of the file stays"
    );

    // Again: every key verified, nothing written.
    let out = run(checkout.cli(&lab).args(["hosts", "--pin"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unchanged (pinned key verified)"));
    assert_eq!(
        std::fs::read_to_string(checkout.inventory()).ok(),
        Some(pinned.clone())
    );

    // An Ansible inventory is not edited: the lines for host_vars/ are printed, and once put
    // there the hosts are checked against them.
    let ansible = checkout.dir.path().join("ansible");
    std::fs::create_dir_all(&ansible).expect("mkdir");
    let mut ini = String::from("[lab]\n");
    for h in lab.host_names() {
        ini.push_str(&format!(
            "{h} ansible_host={} ansible_user=root ansible_ssh_private_key_file={}\n",
            lab.address(&h),
            lab.identity().display()
        ));
    }
    std::fs::write(ansible.join("hosts"), &ini).expect("write ini");
    let ansible_cli = |args: &[&str]| {
        run(Command::new(support::bin())
            .arg("-i")
            .arg(ansible.join("hosts"))
            .args(args)
            .env("HOME", checkout.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("COMPOSE_FLEET_SSH_KEY")
            .env_remove("COMPOSE_FLEET_SSH_KEY_FILE")
            .stdin(Stdio::null()))
    };
    let out = ansible_cli(&["hosts", "--pin"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::create_dir_all(ansible.join("host_vars")).expect("mkdir");
    for h in lab.host_names() {
        let line = format!("compose_fleet_host_key: \"{}\"", host_key(&lab, &h));
        assert!(
            stdout.contains(&format!("# host_vars/{h}.yml\n{line}\n")),
            "{stdout}"
        );
        std::fs::write(
            ansible.join(format!("host_vars/{h}.yml")),
            format!("{line}\n"),
        )
        .expect("write host_vars");
    }
    assert_eq!(
        std::fs::read_to_string(ansible.join("hosts")).ok(),
        Some(ini)
    );
    let out = ansible_cli(&["hosts", "--pin"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unchanged (pinned key verified)"));

    // A host with another key now: refused, and the file is left as it was.
    lab.faults()
        .change_host_key(&lab.host(1))
        .expect("new host key");
    let out = run(checkout.cli(&lab).args(["hosts", "--pin"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never overwrites a pinned key"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(checkout.inventory()).ok(),
        Some(pinned)
    );
}

/// Every entry of `dir` (a private `TMPDIR`), recursively, as relative paths.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_key_only_in_the_environment_works_and_leaves_no_file_even_after_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    let Some(lab) = Lab::up("key_only_in_the_environment", 1) else {
        return;
    };
    let checkout = Checkout::new(&lab, false, true);
    let key = std::fs::read_to_string(lab.identity()).expect("lab key");
    let tmp = tempfile::tempdir().expect("TMPDIR");
    // A secret pasted with CRLF and no final newline still works.
    let pasted = key.trim_end().replace('\n', "\r\n");
    let out = run(checkout
        .cli(&lab)
        .args(["hosts"])
        .env("TMPDIR", tmp.path())
        .env("COMPOSE_FLEET_SSH_KEY", &pasted));
    assert!(
        out.status.success(),
        "hosts with the key in the environment: {}",
        describe(&out)
    );
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "no file is left behind"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let secret_line = key.lines().nth(1).expect("a key line");
    assert!(!all.contains(secret_line), "the key is never printed");

    // Without the variable (and no identity_file, no agent) the host refuses us.
    let out = run(checkout.cli(&lab).args(["hosts"]).env("TMPDIR", tmp.path()));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // Killed with SIGTERM while the key file exists: it is removed all the same.
    let child = checkout
        .cli(&lab)
        .args(["-p", "sigterm", "up"])
        .env("TMPDIR", tmp.path())
        .env("COMPOSE_FLEET_SSH_KEY", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn up");
    let started = Instant::now();
    let key_file = loop {
        let found = entries(tmp.path())
            .into_iter()
            .find(|e| e.ends_with("/id"))
            .map(|e| tmp.path().join(e));
        if let Some(f) = found {
            break f;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no key file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mode = std::fs::metadata(&key_file).map(|m| m.permissions().mode() & 0o777);
    let dir_mode =
        std::fs::metadata(key_file.parent().expect("dir")).map(|m| m.permissions().mode() & 0o777);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().expect("wait");
    let status = out.status;
    if let Ok(mode) = mode {
        assert_eq!(mode, 0o600, "the key file is 0600");
    }
    if let Ok(mode) = dir_mode {
        assert_eq!(mode, 0o700, "in a 0700 directory");
    }
    assert_eq!(
        status.code(),
        Some(143),
        "exit 128+SIGTERM: {}",
        describe(&out)
    );
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "SIGTERM leaves no key file"
    );

    // The key in an ssh-agent instead: SSH_AUTH_SOCK is honoured as OpenSSH honours it.
    let sock = tmp.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let started = Instant::now();
    while !sock.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg(lab.identity())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(added.status.success(), "{}", describe(&added));
    let out = run(checkout
        .cli(&lab)
        .args(["hosts"])
        .env("SSH_AUTH_SOCK", &sock));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        out.status.success(),
        "hosts through ssh-agent: {}",
        describe(&out)
    );
}

#[test]
fn under_github_actions_a_compose_error_is_an_annotation_and_a_summary_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    imgae: nginx\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "hosts:\n  h1: { address: 192.0.2.1 }\n",
    )
    .expect("write");
    let summary = dir.path().join("summary.md");
    let out = Command::new(support::bin())
        .current_dir(dir.path())
        .args(["-f", "compose.yaml", "up"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_WORKSPACE", dir.path())
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env_remove("COMPOSE_FLEET_INVENTORY")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("::error file=compose.yaml,line=3,col=5::unknown key `imgae`")),
        "{stderr}"
    );
    assert!(
        stderr.contains("  --> compose.yaml:3:5"),
        "the human form stays: {stderr}"
    );
    let md = std::fs::read_to_string(&summary).expect("the step summary is written");
    assert!(md.contains("| Where | Error |\n|---|---|\n"), "{md}");
    assert!(
        md.contains("| `compose.yaml:3:5` | unknown key `imgae`"),
        "{md}"
    );

    // Not under GitHub: no workflow commands.
    let out = Command::new(support::bin())
        .current_dir(dir.path())
        .args(["-f", "compose.yaml", "up"])
        .env_remove("GITHUB_ACTIONS")
        .env_remove("COMPOSE_FLEET_INVENTORY")
        .output()
        .expect("runs");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("::error"));
}

#[test]
fn timeout_bounds_the_whole_command_and_names_what_was_running() {
    // A host that accepts the connection and never says a word: ssh waits for its banner.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "hosts:\n  silent: {{ address: 127.0.0.1, port: {port}, host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5\" }}\n"
        ),
    )
    .expect("write");
    let started = Instant::now();
    let out = Command::new(support::bin())
        .args(["--timeout", "1500ms", "-i"])
        .arg(&inventory)
        .args(["hosts", "--connect-timeout", "30"])
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let took = started.elapsed();
    drop(listener);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`hosts` did not finish within --timeout 1.5s")
            && stderr.contains("waiting for host `silent`"),
        "{stderr}"
    );
    // Generous: the point is that it did not wait the 30 s connect timeout.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// A recipe's steps: (name, environment, script), with `${{ secrets.X }}`/`${{ github.sha }}`
/// (GitHub) or `$X` (GitLab variables) resolved from `given`.
type Steps = Vec<(String, BTreeMap<String, String>, String)>;

fn github_steps(path: &Path, given: &BTreeMap<&str, String>) -> Steps {
    let text = std::fs::read_to_string(path).expect("recipe");
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("recipe YAML");
    let expr = |v: &str| -> String {
        let mut out = v.to_string();
        while let Some(start) = out.find("${{") {
            let end = out[start..].find("}}").expect("closed expression") + start;
            let name = out[start + 3..end].trim();
            let key = name.rsplit('.').next().unwrap_or(name);
            let value = given
                .get(key)
                .unwrap_or_else(|| panic!("the test gives no value for `{name}`"));
            out.replace_range(start..end + 2, value);
        }
        out
    };
    let env_of = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), expr(v.as_str().unwrap_or_default())))
            .collect()
    };
    let mut env = env_of(&doc["env"]);
    let jobs = doc["jobs"].as_object().expect("jobs");
    let mut steps = Vec::new();
    for job in jobs.values() {
        env.extend(env_of(&job["env"]));
        for step in job["steps"].as_array().expect("steps") {
            let Some(script) = step["run"].as_str() else {
                continue; // `uses:` actions (checkout) are the runner's business
            };
            let mut step_env = env.clone();
            step_env.extend(env_of(&step["env"]));
            steps.push((
                step["name"].as_str().unwrap_or("run").to_string(),
                step_env,
                script.to_string(),
            ));
        }
    }
    steps
}

fn gitlab_steps(path: &Path, given: &BTreeMap<&str, String>) -> Steps {
    let text = std::fs::read_to_string(path).expect("recipe");
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("recipe YAML");
    let job = &doc["deploy"];
    let mut env = BTreeMap::new();
    for (k, v) in job["variables"].as_object().expect("variables") {
        let v = v.as_str().unwrap_or_default();
        let value = match v.strip_prefix('$') {
            Some(name) => given
                .get(name)
                .unwrap_or_else(|| panic!("the test gives no value for `${name}`"))
                .clone(),
            None => v.to_string(),
        };
        env.insert(k.clone(), value);
    }
    let mut steps = Vec::new();
    for part in ["before_script", "script"] {
        for line in job[part].as_array().expect(part) {
            let line = line.as_str().expect("a shell line").to_string();
            steps.push((line.clone(), env.clone(), line));
        }
    }
    steps
}

/// Runs the steps as the CI would: bash `-e`, in the checkout, `CI=true`, no TTY (`setsid`,
/// stdin closed), an empty `HOME`, the built binary first on `PATH`.
fn run_steps(lab: &Lab, checkout: &Checkout, steps: &Steps, extra: &[(&str, &str)]) -> Vec<Output> {
    let bin_dir = support::bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outs = Vec::new();
    for (name, env, script) in steps {
        let out = Command::new("setsid")
            .args([
                "--wait",
                "bash",
                "--noprofile",
                "--norc",
                "-eo",
                "pipefail",
                "-c",
            ])
            .arg(script)
            .current_dir(checkout.dir.path())
            .env_clear()
            .env("PATH", &path)
            .env("HOME", checkout.home.path())
            .env("CI", "true")
            .env("REGISTRY", lab.registry())
            .envs(env)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("runs a step");
        assert!(
            out.status.success(),
            "step `{name}` failed: {}",
            describe(&out)
        );
        outs.push(out);
    }
    outs
}

#[test]
fn the_ci_recipes_deploy_to_the_lab_with_pinned_keys_and_a_secret_key() {
    let Some(lab) = Lab::up("ci_recipes", 2) else {
        return;
    };
    let key = std::fs::read_to_string(lab.identity()).expect("lab key");

    // Pinned from a trusted machine first (this test, with the lab's key), as the recipes say.
    let checkout = Checkout::new(&lab, true, false);
    let out = run(checkout.cli(&lab).args(["hosts", "--pin"]));
    assert!(out.status.success(), "hosts --pin: {}", describe(&out));
    // The committed inventory holds no key path: CI gives the key.
    let text = std::fs::read_to_string(checkout.inventory()).expect("inventory");
    let without_identity = text.replace(
        &format!(", identity_file: {}", lab.identity().display()),
        "",
    );
    std::fs::write(checkout.inventory(), without_identity).expect("write");

    // GitHub Actions.
    let summary = checkout.dir.path().join("step-summary.md");
    let given: BTreeMap<&str, String> = [
        ("DEPLOY_SSH_KEY", key.clone()),
        ("sha", "0123abc".to_string()),
    ]
    .into_iter()
    .collect();
    let steps = github_steps(&repo().join("examples/ci/github-actions.yml"), &given);
    assert_eq!(
        steps.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        [
            "Install compose-fleet",
            "Check the hosts",
            "Show what will change",
            "Deploy"
        ]
    );
    let outs = run_steps(
        &lab,
        &checkout,
        &steps,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", &summary.display().to_string()),
            (
                "GITHUB_WORKSPACE",
                &checkout.dir.path().display().to_string(),
            ),
        ],
    );
    let deploy = String::from_utf8_lossy(&outs[3].stderr);
    assert!(
        deploy.contains("::group::compose-fleet: deploying"),
        "{deploy}"
    );
    let md = std::fs::read_to_string(&summary).expect("step summary");
    assert!(
        md.contains("### compose-fleet up: `ci-demo` converged"),
        "{md}"
    );
    assert!(
        md.contains("| Change | Pod | Host | Result | Took |"),
        "{md}"
    );
    assert!(md.contains("| creating | web-1 |"), "{md}");

    // GitLab CI: the key as a "File" variable (its path), readable by others as GitLab leaves it.
    let key_file = checkout.home.path().join("DEPLOY_SSH_KEY");
    std::fs::write(&key_file, &key).expect("write key");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let given: BTreeMap<&str, String> = [
        ("DEPLOY_SSH_KEY", key_file.display().to_string()),
        ("CI_COMMIT_SHORT_SHA", "4567def".to_string()),
    ]
    .into_iter()
    .collect();
    let steps = gitlab_steps(&repo().join("examples/ci/gitlab-ci.yml"), &given);
    let outs = run_steps(&lab, &checkout, &steps, &[("GITLAB_CI", "true")]);
    let deploy = String::from_utf8_lossy(&outs.last().expect("steps").stderr);
    assert!(deploy.contains("section_start:"), "{deploy}");
    assert!(deploy.contains("section_end:"), "{deploy}");
    // RELEASE changed: web's pods were replaced with the new release.
    assert!(deploy.contains("replacing"), "{deploy}");
    assert!(
        !checkout.home.path().join(".ssh").exists(),
        "nothing was written to ~/.ssh"
    );
}

#[test]
fn host_keys_are_read_from_our_format_and_ansible_and_bad_ones_are_located() {
    use compose_fleet::inventory::parse;
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5";
    const EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY";
    let own = parse(
        "inventory.yaml",
        &format!(
            "hosts:\n  a: {{ address: 10.0.0.1, host_key: \"{ED} root@a\" }}\n  b:\n    host_key:\n      - \"{ED}\"\n      - \"{EC}\"\n"
        ),
    )
    .expect("own format");
    assert_eq!(own.hosts[0].host_keys, [ED], "the comment is dropped");
    assert_eq!(own.hosts[1].host_keys, [ED, EC]);

    let ini = parse(
        "hosts",
        &format!("[web]\nweb1 ansible_host=10.0.0.2 compose_fleet_host_key=\"{ED}\"\n"),
    )
    .expect("ansible ini");
    assert_eq!(ini.hosts[0].host_keys, [ED]);
    assert!(
        !ini.hosts[0].labels.contains_key("compose_fleet_host_key"),
        "not a label"
    );
    let yaml = parse(
        "hosts.yml",
        &format!("all:\n  hosts:\n    web2:\n      compose_fleet_host_key: [\"{ED}\", \"{EC}\"]\n"),
    )
    .expect("ansible yaml");
    assert_eq!(yaml.hosts[0].host_keys, [ED, EC]);

    let bad = parse(
        "inventory.yaml",
        "hosts:\n  a: { address: 10.0.0.1, host_key: \"ssh-ed2519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5\" }\n",
    )
    .expect_err("a misspelt key type");
    let text = bad.render();
    assert!(text.contains("--> inventory.yaml:2:"), "{text}");
    assert!(text.contains("did you mean `ssh-ed25519`?"), "{text}");
    assert!(text.contains("hosts --pin"), "{text}");
}

#[test]
fn sigint_or_timeout_during_a_deploy_stops_it_gracefully_and_removes_the_key() {
    use std::io::BufRead as _;
    let Some(lab) = Lab::up("sigint_during_a_deploy", 1) else {
        return;
    };
    let checkout = Checkout::new(&lab, false, true);
    // `after` waits for `slow` to turn healthy, which it never does: the deploy waits.
    let compose = checkout.dir.path().join("examples/ci/compose.yaml");
    std::fs::write(
        &compose,
        "services:\n  slow:\n    image: ${REGISTRY}/lab/busybox:latest\n    command: [\"sleep\", \"600\"]\n    stop_grace_period: 1s\n    healthcheck: { test: [\"CMD\", \"false\"], interval: 1s, retries: 1000 }\n  after:\n    image: ${REGISTRY}/lab/busybox:latest\n    command: [\"sleep\", \"600\"]\n    depends_on: { slow: { condition: service_healthy } }\n",
    )
    .expect("write compose");
    let key = std::fs::read_to_string(lab.identity()).expect("lab key");
    let tmp = tempfile::tempdir().expect("TMPDIR");
    let mut child = checkout
        .cli(&lab)
        .args(["-p", "sigint", "up"])
        .env("TMPDIR", tmp.path())
        .env("COMPOSE_FLEET_SSH_KEY", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn up");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        seen.push(line.clone());
        if line.contains("slow.1@") && line.contains("started") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("started")),
        "slow never started: {seen:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("wait");
    let text = seen.join("\n");
    // The flow heard it (not the default action, nor our exit 130): it stopped and said why.
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "no key file is left"
    );

    // The same wait (another project: a kept pod satisfies its dependents at once) bounded by
    // `--timeout`: the deploy stops before the deadline and says why.
    let started = Instant::now();
    let out = run(checkout
        .cli(&lab)
        .args(["-p", "bounded", "--timeout", "8s", "up"])
        .env("TMPDIR", tmp.path())
        .env("COMPOSE_FLEET_SSH_KEY", &key));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not finish within"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "no key file is left"
    );
}
