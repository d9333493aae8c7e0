//! The input bounds (issue 14): every finding of the issue that the loader and the CLI own, each
//! with its message and location, run the way a user runs them (the built CLI, real files, a
//! memory cap), plus the flag and variable that raise each limit.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use compose_fleet::compose::{self, Environment, LoadOptions, MemoryFs};
use compose_fleet::limits::{Limit, Limits};

use super::compose::lines;
use crate::support;

/// A cap on the CLI's address space: far below the 15 GB that 10⁹ replicas once took, far above
/// what loading a small project needs (the debug binary maps ~100 MB).
const MEMORY_CAP: u64 = 1 << 30;

/// Runs the CLI in `dir` under [`MEMORY_CAP`].
fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(support::bin());
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: MEMORY_CAP,
                rlim_max: MEMORY_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run compose-fleet")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A project directory with `compose.yaml` and a one-host inventory that declares its capacity.
fn project(compose: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("compose.yaml"), compose).expect("write compose.yaml");
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "hosts:\n  a: { address: 10.0.0.1, capacity: { cpus: 4, memory: 8GiB } }\n",
    )
    .expect("write inventory.yaml");
    dir
}

/// Asserts exit code 1 (a user error, not a crash or an abort) and that stderr says each of
/// `needles`.
fn assert_user_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

const BILLION_REPLICAS: &str =
    "services:\n  web:\n    image: nginx\n    deploy: { replicas: 1000000000 }\n";

#[test]
fn a_billion_replicas_is_a_user_error_at_the_key_in_plan_and_config() {
    let dir = project(BILLION_REPLICAS);
    for args in [&["plan", "--offline"][..], &["config"][..]] {
        let out = cli(dir.path(), args, &[]);
        assert_user_error(
            &out,
            &[
                "`deploy.replicas` is 1000000000, over the limit of 10000 replicas of one service",
                "--> compose.yaml:4:25",
                "--limit replicas-per-service=N",
                "COMPOSE_FLEET_MAX_REPLICAS_PER_SERVICE=N",
            ],
        );
    }
}

#[test]
fn the_flag_and_the_variable_raise_the_replicas_limit_and_the_flag_wins() {
    let dir = project("services:\n  web:\n    image: nginx\n    scale: 20000\n");
    let refused = cli(dir.path(), &["config"], &[]);
    assert_user_error(&refused, &["`scale` is 20000", "--> compose.yaml:4:12"]);
    let raised = [
        ("--limit", "replicas-per-service=20000"),
        ("--limit", "replicas-total=20000"),
    ];
    let mut args = vec!["config"];
    for (f, v) in &raised {
        args.extend([*f, *v]);
    }
    let out = cli(dir.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let by_env = cli(
        dir.path(),
        &["config"],
        &[
            ("COMPOSE_FLEET_MAX_REPLICAS_PER_SERVICE", "20_000"),
            ("COMPOSE_FLEET_MAX_REPLICAS_TOTAL", "20000"),
        ],
    );
    assert!(by_env.status.success(), "{}", stderr(&by_env));
    // The command line wins over the environment.
    let lowered = cli(
        dir.path(),
        &["config", "--limit", "replicas-per-service=5"],
        &[("COMPOSE_FLEET_MAX_REPLICAS_PER_SERVICE", "20000")],
    );
    assert_user_error(&lowered, &["over the limit of 5 replicas of one service"]);
}

#[test]
fn an_unknown_or_bad_limit_is_refused_with_the_choices() {
    let dir = project("services:\n  web:\n    image: nginx\n");
    let out = cli(dir.path(), &["config", "--limit", "replica=5"], &[]);
    assert_user_error(
        &out,
        &[
            "no limit named `replica`",
            "replicas-per-service",
            "file-bytes",
        ],
    );
    let out = cli(
        dir.path(),
        &["config"],
        &[("COMPOSE_FLEET_MAX_FILE_BYTES", "lots")],
    );
    assert_user_error(
        &out,
        &["COMPOSE_FLEET_MAX_FILE_BYTES: `lots` is not a positive whole number"],
    );
}

#[test]
fn dev_zero_as_compose_file_or_env_file_is_refused_at_the_limit() {
    let dir = project("services:\n  web:\n    image: nginx\n");
    let out = cli(dir.path(), &["-f", "/dev/zero", "config"], &[]);
    assert_user_error(
        &out,
        &[
            "cannot read compose file /dev/zero: it holds more than 67108864 bytes",
            // Located like every other input error, though no line of it can be shown.
            "--> /dev/zero:1:1",
            "hint: check that this is the file you meant; if it is, raise the `file-bytes` \
             limit with `--limit file-bytes=N` or COMPOSE_FLEET_MAX_FILE_BYTES=N",
        ],
    );
    let out = cli(dir.path(), &["--env-file", "/dev/zero", "config"], &[]);
    assert_user_error(
        &out,
        &[
            "cannot read env file /dev/zero: it holds more than",
            "--> /dev/zero:1:1",
            "`--limit file-bytes=N`",
        ],
    );
    let dir = project("services:\n  web:\n    image: nginx\n    env_file: /dev/zero\n");
    let out = cli(dir.path(), &["plan", "--offline"], &[]);
    assert_user_error(
        &out,
        &[
            "cannot read env_file /dev/zero: it holds more than 67108864 bytes",
            "--> compose.yaml:4:15",
            "--limit file-bytes=N",
        ],
    );
}

#[test]
fn a_file_over_a_lowered_limit_is_refused_and_an_optional_one_is_not_skipped() {
    let dir = project("services:\n  web:\n    image: nginx\n    env_file:\n      - path: big.env\n        required: false\n");
    std::fs::write(
        dir.path().join("big.env"),
        "A=".to_string() + &"x".repeat(200),
    )
    .expect("write big.env");
    let out = cli(dir.path(), &["config", "--limit", "file-bytes=150"], &[]);
    assert_user_error(
        &out,
        &[
            "big.env: it holds more than 150 bytes",
            "--> compose.yaml:5:9",
        ],
    );
    let out = cli(dir.path(), &["config"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Loads `yaml` from memory with `limits`; the errors in their one-line form.
fn errors_with(yaml: &str, limits: Limits) -> Vec<String> {
    let fs = MemoryFs::new().with("/p/compose.yaml", yaml);
    let mut opts = LoadOptions::for_file("/p/compose.yaml");
    opts.limits = limits;
    match compose::load(&opts, &Environment::new(), &fs) {
        Ok(l) => panic!("loaded; warnings {:#?}", lines(&l.warnings)),
        Err(f) => f.diagnostics.errors().map(|d| d.to_string()).collect(),
    }
}

fn limits(pairs: &[(Limit, u64)]) -> Limits {
    let mut l = Limits::default();
    for (k, v) in pairs {
        l.set(*k, *v);
    }
    l
}

#[test]
fn the_total_of_replicas_is_bounded_and_names_the_biggest_service() {
    let yaml = "services:\n  a:\n    image: x\n    deploy: { replicas: 6 }\n  b:\n    image: x\n    scale: 3\n  c:\n    image: x\n";
    assert_eq!(
        errors_with(yaml, limits(&[(Limit::ReplicasTotal, 9)])),
        ["compose.yaml:2:3: error: the project has 10 replicas in all, over the limit of 9 replicas in one project"]
    );
    let fs = MemoryFs::new().with("/p/compose.yaml", yaml);
    let mut opts = LoadOptions::for_file("/p/compose.yaml");
    opts.limits = limits(&[(Limit::ReplicasTotal, 10)]);
    assert!(compose::load(&opts, &Environment::new(), &fs).is_ok());
}

#[test]
fn long_names_and_image_references_are_refused_where_written() {
    let long = "n".repeat(20);
    let yaml = format!(
        "services:\n  {long}:\n    image: registry.example/{long}\n    labels: {{ {long}: 1 }}\nnetworks:\n  {long}: {{}}\nvolumes:\n  v: {{ name: {long} }}\n"
    );
    assert_eq!(
        errors_with(
            &yaml,
            limits(&[(Limit::NameLength, 19), (Limit::ImageRefLength, 30)])
        ),
        [
            "compose.yaml:2:3: error: this service name is 20 characters long, over the limit of 19",
            "compose.yaml:4:15: error: this label key is 20 characters long, over the limit of 19",
            "compose.yaml:3:12: error: this image reference is 37 characters long, over the limit of 30",
            "compose.yaml:6:3: error: this network name is 20 characters long, over the limit of 19",
            "compose.yaml:8:14: error: this volume name is 20 characters long, over the limit of 19",
        ]
    );
}

/// Found by the memory benchmark: the text plan padded its columns with `{:w$}`, which panics
/// (exit 101) over a width of 65535 — the replica list of a host with ~12,000 replicas.
#[test]
fn plan_text_of_a_host_with_fifteen_thousand_replicas_does_not_panic() {
    let dir = project(
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 15000\n      \
         resources: { reservations: { cpus: \"0.001\", memory: 1M } }\n",
    );
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "hosts:\n  a: { address: 10.0.0.1, capacity: { cpus: 256, memory: 1TiB } }\n",
    )
    .expect("write inventory.yaml");
    let out = cli(
        dir.path(),
        &["--limit", "replicas-per-service=15000", "plan", "--offline"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  web      #1-#15000"),
        "{}",
        &text[..text.len().min(500)]
    );
}

/// `--agent-binary` is read whole to be pushed: a device must not fill memory either. It is the
/// user's input, so going over the bound is exit 1 with the path and the limit, not exit 2.
#[test]
fn agent_binary_dev_zero_is_refused_at_its_bound() {
    let dir = project("services:\n  web:\n    image: nginx\n");
    let out = cli(dir.path(), &["hosts", "--agent-binary", "/dev/zero"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "error: cannot read the agent binary /dev/zero: it holds more than 67108864 bytes, \
             the limit for an agent binary (an agent is about 4 MB); it is not a regular file"
        ),
        "{err}"
    );
    assert!(
        err.contains("hint: pass the path of a compose-fleet-agent built for the hosts"),
        "{err}"
    );
    // A file that is not an executable is the user's too.
    let not_elf = dir.path().join("agent.txt");
    std::fs::write(&not_elf, "not an agent").expect("write agent.txt");
    let out = cli(
        dir.path(),
        &["hosts", "--agent-binary", &not_elf.display().to_string()],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a static executable"), "{err}");
}

/// Issue 14's inventory findings through the CLI, each with its location: an address with
/// spaces, one and a user that start with `-` (which never get near ssh), and `-i /dev/zero`.
#[test]
fn inventory_values_ssh_would_misread_and_dev_zero_are_located_user_errors() {
    let dir = project("services:\n  web:\n    image: nginx\n");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "hosts:\n  a: { address: a b c }\n  b: { address: \"-oProxyCommand=touch x\" }\n  \
         c: { address: 10.0.0.3, user: \"-oProxyCommand=x\" }\n",
    )
    .expect("write bad.yaml");
    let out = cli(dir.path(), &["-i", "bad.yaml", "inventory"], &[]);
    assert_user_error(
        &out,
        &[
            "error: host `a`: `a b c` is not a host name or IP address: contains a space\n  --> bad.yaml:2:17",
            "error: host `b`: `-oProxyCommand=touch x` is not a host name or IP address: starts with `-`, which ssh would read as an option\n  --> bad.yaml:3:17",
            "error: host `c`: user `-oProxyCommand=x` starts with `-`, which ssh would read as an option\n  --> bad.yaml:4:33",
        ],
    );
    let out = cli(dir.path(), &["-i", "/dev/zero", "plan", "--offline"], &[]);
    assert_user_error(
        &out,
        &[
            "error: `/dev/zero` is larger than 67108864 bytes\n  --> /dev/zero:1:1",
            "--limit file-bytes=N",
        ],
    );
}

/// Found by the inventory fuzz target: a host variable whose name has an escaped backslash
/// before a multi-byte character put the variable's column inside that character, and the CLI
/// panicked (exit 101) slicing the line there, on a file that is valid. Now it loads.
#[test]
fn an_escape_before_a_multibyte_character_in_an_ini_host_line_does_not_panic() {
    let dir = project("services:\n  web:\n    image: nginx\n");
    std::fs::write(
        dir.path().join("hosts.ini"),
        "h1 ansible_us\u{e9}\\\\\u{e9}=dep\n",
    )
    .expect("write hosts.ini");
    let out = cli(
        dir.path(),
        &["-i", "hosts.ini", "inventory", "--format", "json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["hosts"][0]["name"], "h1");
}
