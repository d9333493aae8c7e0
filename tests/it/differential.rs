//! The differential test: `compose-fleet config --format json` against docker compose v2's own
//! `config --format json`, on every compose project the suite has.
//!
//! The projects: the shared corpus (`compose-corpus/real-world/*.yaml` with their `NAME.env`, and
//! `compose-corpus/real-world-2/*/` as their `case.json` describes them), every fixture under
//! `tests/fixtures/` and `examples/`, and our own corpus under `tests/fixtures/differential/`
//! (multi-file overrides, `include`, `extends` across files, profiles, `.env` quoting, every
//! interpolation form, every short and long syntax). Both programs run on the same files with the
//! same environment (only `HOME`, and the case's variables); they must print the same project after
//! [`normalize`], and reject the same invalid projects. On our own corpus the YAML outputs, read
//! back as data, must be equal too.
//!
//! The reference is `.reference/bin/docker-compose` (installed by `scripts/setup.sh`, pinned) or
//! the binary `COMPOSE_FLEET_REFERENCE_COMPOSE` names. Without it the test says so and checks only
//! our own corpus, against docker compose's output recorded beside each case (`reference.json`),
//! unless `COMPOSE_FLEET_REQUIRE_REFERENCE=1` (CI) makes that a failure. Without `../shared` the
//! corpus projects are skipped with a printed reason, unless `COMPOSE_FLEET_REQUIRE_SHARED=1`.
//!
//! A difference that is not fixed yet is listed in [`KNOWN`] with its reason (differences kept on
//! purpose are normalized away and listed in the README's table "where compose-fleet deliberately
//! differs"); a listed difference that no longer occurs fails the test, so the list only shrinks.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// The docker compose release the test, its recordings and [`KNOWN`] are written against.
const REFERENCE_VERSION: &str = "2.40.3";

/// A known difference: the project, the JSON path prefix, the reason.
type Known = (&'static str, &'static str, &'static str);

/// Differences we keep, by project and JSON path prefix (`services.web.ports`), with the reason.
/// A path of `""` covers the whole project (e.g. one side rejects it).
const KNOWN: &[Known] = &[
    // Loader classes (issue 8) being fixed in the loader, not in the printer:
];

/// One compose project to run both programs on.
struct Case {
    /// Shown in the summary: `real-world/plex`, `real-world-2/jitsi`, `differential/include`…
    name: String,
    /// The working directory (the project directory unless `-f` says otherwise).
    dir: PathBuf,
    /// Global flags, the same for both programs: `-f`, `-p`, `--env-file`, `--profile`.
    flags: Vec<String>,
    /// The process environment besides `HOME`.
    env: Vec<(String, String)>,
    /// The project is invalid: both programs must reject it.
    invalid: bool,
    /// Where docker compose's output for this case is recorded (our own corpus only), so that
    /// the case is checked without the reference too.
    recorded: Option<PathBuf>,
    /// A copy of the case's directory, when the case writes a `.env` into it.
    _copy: Option<tempfile::TempDir>,
}

/// What came of one case.
enum Outcome {
    Equal,
    /// Both rejected the project (as required when it is marked invalid).
    BothRejected,
    /// Paths that differ, and whether each is a known difference.
    Differs(Vec<(Difference, Option<&'static Known>)>),
    /// One side rejected the project: which side, and its stderr.
    OneRejected {
        side: &'static str,
        stderr: String,
        known: Option<&'static Known>,
    },
    /// An invalid project that both accepted.
    BothAccepted,
    /// The harness itself failed (cannot copy, cannot run a program).
    Broken(String),
}

#[derive(Debug)]
struct Difference {
    path: String,
    ours: Option<Value>,
    reference: Option<Value>,
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The reference binary, or `None` (having printed why) when it is not installed.
fn reference() -> Option<PathBuf> {
    let (path, hint) = match std::env::var_os("COMPOSE_FLEET_REFERENCE_COMPOSE") {
        Some(p) => (
            PathBuf::from(p),
            "COMPOSE_FLEET_REFERENCE_COMPOSE names no file",
        ),
        None => (
            manifest().join(".reference/bin/docker-compose"),
            "run scripts/setup.sh, or set COMPOSE_FLEET_REFERENCE_COMPOSE to a docker compose v2.40.3 binary",
        ),
    };
    if path.is_file() {
        // Compose's output changes between releases: the recordings and `KNOWN` are for this one.
        let version = Command::new(&path)
            .args(["version", "--short"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("(cannot run it: {e})"));
        assert_eq!(
            version,
            REFERENCE_VERSION,
            "{} is docker compose {version}; the differential test is written against {REFERENCE_VERSION} (scripts/setup.sh installs it)",
            path.display()
        );
        return Some(path);
    }
    let why = format!(
        "the reference docker compose is not installed at {} ({hint})",
        path.display()
    );
    assert!(
        !flag("COMPOSE_FLEET_REQUIRE_REFERENCE"),
        "COMPOSE_FLEET_REQUIRE_REFERENCE=1 but {why}"
    );
    let _ = writeln!(std::io::stderr(), "skipped: differential test against the live reference: {why}; our own corpus runs against the recorded outputs only");
    None
}

/// `compose-corpus/` of the shared material, or `None` (having printed why).
fn corpus() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("COMPOSE_FLEET_SHARED")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            manifest().join("../shared"),
            manifest().join("../../shared"),
        ])
        .collect();
    if let Some(d) = candidates
        .iter()
        .find(|d| d.join("compose-corpus").is_dir())
    {
        return Some(d.join("compose-corpus"));
    }
    let why =
        format!("the shared corpus is missing (looked for compose-corpus/ in {candidates:?})");
    assert!(
        !flag("COMPOSE_FLEET_REQUIRE_SHARED"),
        "COMPOSE_FLEET_REQUIRE_SHARED=1 but {why}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipped: differential test of the shared corpus: {why}"
    );
    None
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    entries
}

/// `real-world/NAME.yaml`, with `NAME.env` as its env file, as project `NAME`.
fn real_world(corpus: &Path) -> Vec<Case> {
    sorted_dir(&corpus.join("real-world"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|file| {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut flags = vec![
                "-f".to_string(),
                file.display().to_string(),
                "-p".into(),
                stem.to_lowercase(),
            ];
            let env_file = file.with_extension("env");
            if env_file.is_file() {
                flags.extend(["--env-file".into(), env_file.display().to_string()]);
            }
            Case {
                name: format!("real-world/{stem}"),
                dir: corpus.join("real-world"),
                flags,
                env: Vec::new(),
                invalid: false,
                recorded: None,
                _copy: None,
            }
        })
        .collect()
}

/// Every directory under `root` holding a `case.json` or a compose file, as `prefix/REL`.
fn case_dirs(root: &Path, prefix: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let has_compose = ["compose.yaml", "compose.yml", "docker-compose.yml"]
            .iter()
            .any(|f| dir.join(f).is_file());
        if dir.join("case.json").is_file() || has_compose {
            let rel = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
            let name = if rel.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}/{rel}")
            };
            cases.push(case_from_dir(name, &dir));
            continue;
        }
        for p in sorted_dir(&dir).into_iter().rev() {
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// A case directory: `case.json` says `files` (`-f`, in order), `env_from` (copied to `.env` in
/// the project directory), `dotenv` (variables written to `.env`), `project_name` (`-p`), `env`
/// (process environment), `env_files` (`--env-file`), `profiles` (`--profile`) and `invalid`
/// (both must reject it). Without `case.json`: the compose file found in the directory.
fn case_from_dir(name: String, dir: &Path) -> Case {
    let spec: Value = match std::fs::read_to_string(dir.join("case.json")) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}/case.json is not JSON: {e}", dir.display())),
        Err(_) => Value::Object(Default::default()),
    };
    let strings = |key: &str| -> Vec<String> {
        spec.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let map = |key: &str| -> Vec<(String, String)> {
        spec.get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let files = strings("files");
    let env_from = spec.get("env_from").and_then(Value::as_str);
    let dotenv = map("dotenv");
    // `.env` goes beside the first file; a copy keeps the case directory untouched.
    let (dir, copy) = if env_from.is_some() || !dotenv.is_empty() {
        let tmp = tempfile::Builder::new()
            .prefix("cf-diff-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        // The directory's own name is the default project name: keep it.
        let base = dir.file_name().unwrap_or_default();
        let copy = tmp.path().join(base);
        copy_tree(dir, &copy);
        let project_dir = files
            .first()
            .and_then(|f| copy.join(f).parent().map(Path::to_path_buf))
            .unwrap_or_else(|| copy.clone());
        let mut text = match env_from {
            Some(f) => std::fs::read_to_string(copy.join(f))
                .unwrap_or_else(|e| panic!("cannot read {f} of {name}: {e}")),
            None => String::new(),
        };
        for (k, v) in &dotenv {
            text.push_str(&format!("\n{k}={v}\n"));
        }
        std::fs::write(project_dir.join(".env"), text)
            .unwrap_or_else(|e| panic!("cannot write .env for {name}: {e}"));
        (copy, Some(tmp))
    } else {
        (dir.to_path_buf(), None)
    };
    let mut flags = Vec::new();
    for f in &files {
        flags.extend(["-f".to_string(), f.clone()]);
    }
    if let Some(p) = spec.get("project_name").and_then(Value::as_str) {
        flags.extend(["-p".to_string(), p.to_string()]);
    }
    for f in strings("env_files") {
        flags.extend(["--env-file".to_string(), f]);
    }
    for p in strings("profiles") {
        flags.extend(["--profile".to_string(), p]);
    }
    Case {
        name,
        dir,
        flags,
        env: map("env"),
        invalid: spec
            .get("invalid")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        recorded: None,
        _copy: copy,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for p in sorted_dir(from) {
        let dest = to.join(p.file_name().unwrap_or_default());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", p.display()));
        }
    }
}

/// Runs `program FLAGS config --format json` in the case's directory with only the case's
/// environment: `Ok(json)` or `Err(stderr)` when it exits non-zero.
fn run(program: &Path, case: &Case) -> Result<Result<Value, String>, String> {
    run_as(program, case, Format::Json)
}

/// The two outputs of `config`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// Runs `program FLAGS config --format FORMAT` in the case's directory with only the case's
/// environment: `Ok(value)` (YAML read into the same data model) or `Err(stderr)` when it exits
/// non-zero.
fn run_as(program: &Path, case: &Case, format: Format) -> Result<Result<Value, String>, String> {
    let name = match format {
        Format::Json => "json",
        Format::Yaml => "yaml",
    };
    let out = Command::new(program)
        .current_dir(&case.dir)
        .env_clear()
        // A fixed home directory, so `~/…` reads the same for both, and nothing of the user's.
        .env("HOME", "/home/user")
        .envs(case.env.iter().map(|(k, v)| (k, v)))
        .args(&case.flags)
        .args(["config", "--format", name])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let parsed = match format {
        Format::Json => serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()),
        Format::Yaml => {
            serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).map_err(|e| e.to_string())
        }
    };
    parsed.map(Ok).map_err(|e| {
        format!(
            "{} printed something that is not {name}: {e}",
            program.display()
        )
    })
}

/// The normalizations applied before comparing, all of them:
/// - key order is ignored (JSON objects compare as maps);
/// - numbers compare by value (`1` equals `1.0`), in [`diff`];
/// - fields Go's JSON encoder always prints and compose's YAML omits: `command: null` and
///   `entrypoint: null` on every service, `resources: {}` and `placement: {}` in every `deploy`,
///   `exec: {command: null}` in every `develop.watch` entry, `ipam: {}` on every network.
fn normalize(reference: &mut Value) {
    if let Some(services) = reference.get_mut("services").and_then(Value::as_object_mut) {
        for svc in services.values_mut().filter_map(Value::as_object_mut) {
            for key in ["command", "entrypoint"] {
                if svc.get(key).is_some_and(Value::is_null) {
                    svc.remove(key);
                }
            }
            let watch = svc
                .get_mut("develop")
                .and_then(|d| d.get_mut("watch"))
                .and_then(Value::as_array_mut);
            for w in watch.into_iter().flatten().filter_map(Value::as_object_mut) {
                if w.get("exec") == Some(&json!({"command": null})) {
                    w.remove("exec");
                }
            }
            if let Some(deploy) = svc.get_mut("deploy").and_then(Value::as_object_mut) {
                for key in ["resources", "placement"] {
                    if deploy.get(key).is_some_and(is_empty_object) {
                        deploy.remove(key);
                    }
                }
            }
        }
    }
    if let Some(networks) = reference.get_mut("networks").and_then(Value::as_object_mut) {
        for net in networks.values_mut().filter_map(Value::as_object_mut) {
            if net.get("ipam").is_some_and(is_empty_object) {
                net.remove("ipam");
            }
        }
    }
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty)
}

/// Every path where the two values differ (the deepest one), `ours` and `reference` missing
/// where the key is absent.
fn diff(path: &str, ours: Option<&Value>, reference: Option<&Value>, out: &mut Vec<Difference>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (ours, reference) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff(&join(k), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&join(&i.to_string()), Some(x), Some(y), out);
            }
        }
        (Some(Value::Number(a)), Some(Value::Number(b))) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.to_string(),
            ours: a.cloned(),
            reference: b.cloned(),
        }),
    }
}

fn known(case: &str, path: &str) -> Option<&'static Known> {
    // A difference of the YAML output is known where the same path of the JSON one is.
    let path = path.strip_prefix("(yaml) ").unwrap_or(path);
    KNOWN.iter().find(|(c, prefix, _)| {
        *c == case
            && (prefix.is_empty() || path == *prefix || path.starts_with(&format!("{prefix}.")))
    })
}

/// The repository's directory in a recorded output, so that recordings do not depend on the clone.
const REPO: &str = "<REPO>";

fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|i| replace_strings(i, from, to)),
        Value::Object(m) => m.values_mut().for_each(|i| replace_strings(i, from, to)),
        _ => {}
    }
}

/// docker compose's answer for `case`: run live when the reference is installed (and checked
/// against, or with `COMPOSE_FLEET_RECORD_REFERENCE=1` written to, the case's recording), else
/// read from the recording. A rejection is recorded as `{"rejected": FIRST_LINE}`.
/// A stale recording is pushed to `stale` (the live output is still compared).
fn reference_output(
    reference: Option<&Path>,
    case: &Case,
    stale: &Mutex<Vec<String>>,
) -> Result<Result<Value, String>, String> {
    let dir = manifest().display().to_string();
    let Some(bin) = reference else {
        let Some(path) = &case.recorded else {
            return Err("no reference and no recording".into());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("cannot read the recording {}: {e} (record it with the reference installed and COMPOSE_FLEET_RECORD_REFERENCE=1)", path.display())
        })?;
        let mut v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        if let Some(msg) = v.get("rejected").and_then(Value::as_str) {
            return Ok(Err(msg.to_string()));
        }
        replace_strings(&mut v, REPO, &dir);
        return Ok(Ok(v));
    };
    let mut live = run(bin, case)?;
    if let Ok(v) = &mut live {
        normalize(v);
    }
    if let Some(path) = &case.recorded {
        let mut recording = match &live {
            Ok(v) => v.clone(),
            Err(stderr) => {
                let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                json!({"rejected": first})
            }
        };
        replace_strings(&mut recording, &dir, REPO);
        let text = format!(
            "{}\n",
            serde_json::to_string_pretty(&recording).map_err(|e| e.to_string())?
        );
        if flag("COMPOSE_FLEET_RECORD_REFERENCE") {
            std::fs::write(path, &text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        } else {
            let old: Option<Value> = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if old.as_ref() != Some(&recording) {
                stale.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                    "{}: the recording {} is missing or not what docker compose prints now: rerun with COMPOSE_FLEET_RECORD_REFERENCE=1",
                    case.name,
                    path.display()
                ));
            }
        }
    }
    Ok(live)
}

fn compare(
    ours_bin: &Path,
    reference_bin: Option<&Path>,
    case: &Case,
    stale: &Mutex<Vec<String>>,
) -> Outcome {
    let ours = match run(ours_bin, case) {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(e),
    };
    let reference = match reference_output(reference_bin, case, stale) {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(e),
    };
    match (ours, reference) {
        (Err(_), Err(_)) => Outcome::BothRejected,
        (Ok(_), Ok(_)) if case.invalid => Outcome::BothAccepted,
        (Err(stderr), Ok(_)) => Outcome::OneRejected {
            side: "compose-fleet",
            stderr,
            known: known(&case.name, ""),
        },
        (Ok(_), Err(stderr)) => Outcome::OneRejected {
            side: "docker compose",
            stderr,
            known: known(&case.name, ""),
        },
        (Ok(ours), Ok(reference)) => {
            let mut diffs = Vec::new();
            diff("", Some(&ours), Some(&reference), &mut diffs);
            // Our own corpus: the YAML (the default output) too, read back as data.
            if let (Some(bin), Some(_)) = (reference_bin, &case.recorded) {
                let yaml = |program: &Path| run_as(program, case, Format::Yaml);
                match (yaml(ours_bin), yaml(bin)) {
                    (Ok(Ok(ours)), Ok(Ok(reference))) => {
                        let mut yaml_diffs = Vec::new();
                        diff("", Some(&ours), Some(&reference), &mut yaml_diffs);
                        for mut d in yaml_diffs {
                            if !diffs.iter().any(|j| j.path == d.path) {
                                d.path = format!("(yaml) {}", d.path);
                                diffs.push(d);
                            }
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => return Outcome::Broken(e),
                    _ => return Outcome::Broken("only one side rejects the YAML form".into()),
                }
            }
            if diffs.is_empty() {
                Outcome::Equal
            } else {
                Outcome::Differs(
                    diffs
                        .into_iter()
                        .map(|d| {
                            let k = known(&case.name, &d.path);
                            (d, k)
                        })
                        .collect(),
                )
            }
        }
    }
}

fn short(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 120 {
                format!("{}…", s.chars().take(120).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    if let Some(corpus) = corpus() {
        cases.extend(real_world(&corpus));
        cases.extend(case_dirs(&corpus.join("real-world-2"), "real-world-2"));
    }
    // Our own fixtures: the differential corpus (recorded), every other fixture, the examples.
    let mut fixtures = case_dirs(&manifest().join("tests/fixtures"), "fixtures");
    for case in &mut fixtures {
        if case.name.starts_with("fixtures/differential/") {
            case.recorded = Some(case.dir.join("reference.json"));
        }
    }
    cases.extend(fixtures);
    cases.extend(case_dirs(&manifest().join("examples"), "examples"));
    cases
}

#[test]
fn config_json_equals_docker_compose_config_on_every_project() {
    let reference = reference();
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_compose-fleet"));
    let mut cases = all_cases();
    if reference.is_none() {
        // Our own corpus still runs, against docker compose's recorded outputs.
        cases.retain(|c| c.recorded.is_some());
    }

    // Each case runs two short processes: a few threads keep the machine busy.
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<BTreeMap<usize, Outcome>> = Mutex::new(BTreeMap::new());
    let stale = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(2, 8));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let outcome = compare(&ours, reference.as_deref(), case, &stale);
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(i, outcome);
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());

    let mut failures = stale.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut used_known = std::collections::BTreeSet::new();
    let mut equal = 0;
    // Equal projects and all projects, per group (`real-world`, `real-world-2`, `fixtures`, …).
    let mut groups: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut summary = String::new();
    for (i, outcome) in &outcomes {
        let case = &cases[*i];
        let group = groups
            .entry(case.name.split('/').next().unwrap_or(""))
            .or_default();
        group.1 += 1;
        if matches!(outcome, Outcome::Equal)
            || (case.invalid && matches!(outcome, Outcome::BothRejected))
        {
            group.0 += 1;
        }
        let line = match outcome {
            Outcome::Equal => {
                equal += 1;
                "equal".to_string()
            }
            Outcome::BothRejected if case.invalid => {
                equal += 1;
                "rejected by both (invalid, as expected)".to_string()
            }
            Outcome::BothRejected => {
                failures.push(format!("{}: rejected by both", case.name));
                "REJECTED BY BOTH (the case is not marked invalid)".to_string()
            }
            Outcome::BothAccepted => {
                failures.push(format!("{}: invalid but accepted by both", case.name));
                "ACCEPTED BY BOTH (the case is marked invalid)".to_string()
            }
            Outcome::OneRejected {
                side,
                stderr,
                known,
            } => {
                let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                match known {
                    Some((c, p, why)) => {
                        used_known.insert((*c, *p));
                        format!("known difference: only {side} rejects it ({why})")
                    }
                    None => {
                        failures.push(format!("{}: only {side} rejects it: {stderr}", case.name));
                        format!("ONLY {side} REJECTS IT: {first}")
                    }
                }
            }
            Outcome::Differs(diffs) => {
                let mut text = String::new();
                let unknown = diffs.iter().filter(|(_, k)| k.is_none()).count();
                for (d, k) in diffs {
                    if let Some((c, p, _)) = k {
                        used_known.insert((*c, *p));
                    }
                    text.push_str(&format!(
                        "\n      {}{}: ours {} | docker compose {}",
                        if k.is_some() { "(known) " } else { "" },
                        d.path,
                        short(&d.ours),
                        short(&d.reference)
                    ));
                }
                if unknown > 0 {
                    failures.push(format!("{}: {unknown} difference(s)", case.name));
                    format!("DIFFERS at {} path(s):{text}", diffs.len())
                } else {
                    format!("known differences only ({}):{text}", diffs.len())
                }
            }
            Outcome::Broken(e) => {
                failures.push(format!("{}: {e}", case.name));
                format!("BROKEN: {e}")
            }
        };
        summary.push_str(&format!("  {:<44} {line}\n", case.name));
    }
    for (c, p, why) in KNOWN {
        // The recordings hold the JSON output only: a known difference of the YAML output shows
        // only against the live reference, which is where stale entries are looked for (CI).
        let ran = reference.is_some() && cases.iter().any(|case| case.name == *c);
        if ran && !used_known.contains(&(*c, *p)) {
            failures.push(format!(
                "{c}: the known difference at `{p}` ({why}) no longer occurs: remove it from KNOWN and the README"
            ));
        }
    }
    // Straight to stderr, past the test harness's capture: the summary is the point of the test.
    let _ = writeln!(
        std::io::stderr(),
        "differential test against {}:\n{summary}equal: {equal}/{} projects ({})",
        reference.as_deref().map_or_else(
            || "docker compose's recorded outputs (tests/fixtures/differential/*/reference.json)"
                .to_string(),
            |r| r.display().to_string()
        ),
        cases.len(),
        groups
            .iter()
            .map(|(g, (e, t))| format!("{g} {e}/{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let own = cases
        .iter()
        .filter(|c| c.name.starts_with("fixtures/differential/"))
        .count();
    assert!(own >= 20, "the differential corpus has {own} projects");
    assert!(
        failures.is_empty(),
        "{} project(s) differ from docker compose:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
