//! The architecture, stated as tests (after rust-analyzer's `xtask tidy`): every Rust file opens
//! with a `//!` line; the pure core (`compose`, `graph`, `schedule`, `plan`, `pods`, `human`) does
//! no I/O, reads no clock and draws no random number (`compose/source.rs`, behind its trait, is
//! the one reader); nothing outside `src/cli` imports `crate::cli`; the agent links no CLI crate.
//!
//! The checker works on in-memory sources, so each rule is also shown to fail on a planted
//! violation. Code is scanned with comments and string literals removed: a word in a comment is
//! not a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that must stay pure, as path prefixes under the repository root.
const PURE: [&str; 6] = [
    "src/compose/",
    "src/graph.rs",
    "src/schedule/",
    "src/plan/",
    "src/pods.rs",
    "src/human.rs",
];

/// The one file of the pure core allowed to read files: the loader reads through its trait.
const PURE_EXCEPTIONS: [&str; 1] = ["src/compose/source.rs"];

/// Paths that reach the world: I/O, processes, the environment.
const FORBIDDEN_PATHS: [&str; 3] = ["fs", "process", "env"];

/// Names whose mere use in the pure core means async I/O, a clock or randomness.
const FORBIDDEN_NAMES: [&str; 7] = [
    "tokio",
    "Instant",
    "SystemTime",
    "rand",
    "getrandom",
    "fastrand",
    "thread_rng",
];

/// Crates only the CLI may link: the agent (pushed to every host) must not, directly or not.
const CLI_ONLY_CRATES: [&str; 5] = ["compose-fleet", "clap", "tera", "indicatif", "openssh"];

/// A broken rule, for the failure message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    rule: &'static str,
    detail: String,
}

/// Checks every rule on `files` (path relative to the repository root, text).
fn check_sources(files: &[(String, String)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (path, text) in files {
        if !path.ends_with(".rs") {
            continue;
        }
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        if !first.is_some_and(|l| l.starts_with("//!")) {
            out.push(Violation {
                file: path.clone(),
                rule: "every .rs file opens with a `//!` line saying what it owns",
                detail: format!("first line: {:?}", first.unwrap_or("")),
            });
        }
        let code = strip_comments_and_strings(text);
        let tokens = tokens(&code);
        let pure = PURE.iter().any(|p| path.starts_with(p)) && !PURE_EXCEPTIONS.contains(&&**path);
        if pure {
            // A module's own unit tests may read fixtures; the rule is about what ships.
            let shipped = code
                .find("#[cfg(test)]\nmod tests")
                .map_or(&code[..], |at| &code[..at]);
            let tokens = self::tokens(shipped);
            for used in std_paths(&tokens)
                .into_iter()
                .filter(|m| FORBIDDEN_PATHS.contains(&m.as_str()))
            {
                out.push(Violation {
                    file: path.clone(),
                    rule: "the pure core does no I/O",
                    detail: format!("uses std::{used}"),
                });
            }
            for name in FORBIDDEN_NAMES {
                if tokens.iter().any(|t| t == name) {
                    out.push(Violation {
                        file: path.clone(),
                        rule: "the pure core uses no async runtime, clock or randomness",
                        detail: format!("uses `{name}`"),
                    });
                }
            }
        }
        let in_cli = path.starts_with("src/cli/") || path == "src/main.rs";
        if path.starts_with("src/") && !in_cli && imports_cli(&tokens) {
            out.push(Violation {
                file: path.clone(),
                rule: "nothing outside src/cli imports crate::cli",
                detail: "imports `cli`".into(),
            });
        }
    }
    out.sort();
    out
}

/// Checks the resolved dependency graph (`Cargo.lock`): no CLI-only crate is reachable from the
/// agent or the protocol crate.
fn check_lock(lock: &str) -> Vec<Violation> {
    let deps = lock_graph(lock);
    let mut out = Vec::new();
    for root in ["compose-fleet-agent", "compose-fleet-proto"] {
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.to_string()];
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if name != root && CLI_ONLY_CRATES.contains(&name.as_str()) {
                out.push(Violation {
                    file: "Cargo.lock".into(),
                    rule: "the agent and the protocol link no CLI crate",
                    detail: format!("{root} depends on {name}"),
                });
            }
            stack.extend(deps.get(&name).into_iter().flatten().cloned());
        }
    }
    out
}

/// Package name → the names it depends on, from `Cargo.lock`.
fn lock_graph(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_deps = false;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
            in_deps = false;
        } else if let Some(name) = line.strip_prefix("name = ") {
            let name = name.trim_matches('"').to_string();
            graph.entry(name.clone()).or_default();
            current = Some(name);
        } else if line.starts_with("dependencies = [") {
            in_deps = !line.ends_with(']');
        } else if in_deps && line == "]" {
            in_deps = false;
        } else if in_deps {
            // `"name"`, `"name version"` or `"name version (source)"`.
            let dep = line.trim_end_matches(',').trim_matches('"');
            let dep = dep.split(' ').next().unwrap_or(dep).to_string();
            if let Some(c) = &current {
                graph.entry(c.clone()).or_default().push(dep);
            }
        }
    }
    graph
}

/// The text with comments, string and char literals blanked out (lengths kept, newlines kept).
fn strip_comments_and_strings(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"..." or r#"..."#, any number of hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime.
            let end = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    for _ in i..=e {
                        out.push(' ');
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Identifiers and the punctuation that matters for paths (`::`, `{`, `}`, `,`).
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if matches!(c, '{' | '}' | ',' | ';') {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The modules named right under `std` (and `core`): `std::fs::read` and `use std::{fs, io}`
/// both name `fs`.
fn std_paths(tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if (t != "std" && t != "core") || tokens.get(i + 1).map(String::as_str) != Some("::") {
            continue;
        }
        match tokens.get(i + 2).map(String::as_str) {
            Some("{") => out.extend(group_heads(&tokens[i + 3..])),
            Some(name) => out.push(name.to_string()),
            None => {}
        }
    }
    out
}

/// The first segment of each item of a `{...}` group (the tokens after its `{`).
fn group_heads(tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut at_item_start = true;
    for t in tokens {
        match t.as_str() {
            "{" => depth += 1,
            "}" if depth == 0 => break,
            "}" => depth -= 1,
            "," if depth == 0 => at_item_start = true,
            _ if at_item_start && depth == 0 && t != "::" => {
                out.push(t.clone());
                at_item_start = false;
            }
            _ => {}
        }
    }
    out
}

/// Whether the code names the `cli` module from elsewhere: `crate::cli`, `super::cli`,
/// `compose_fleet::cli`, or `cli` inside a `crate::{...}` group.
fn imports_cli(tokens: &[String]) -> bool {
    tokens.iter().enumerate().any(|(i, t)| {
        let root = matches!(t.as_str(), "crate" | "super" | "compose_fleet");
        if !root || tokens.get(i + 1).map(String::as_str) != Some("::") {
            return false;
        }
        match tokens.get(i + 2).map(String::as_str) {
            Some("cli") => true,
            Some("{") => group_heads(&tokens[i + 3..]).iter().any(|h| h == "cli"),
            _ => false,
        }
    })
}

/// Every `.rs` file of the repository (sources, tests, benches, crates, fuzz targets), with its
/// path relative to the root. `target/` is skipped.
fn repository_sources(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = ["src", "tests", "benches", "crates", "fuzz", "build.rs"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(path) = dirs.pop() {
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                let rel = path.strip_prefix(root).expect("under the root");
                out.push((rel.to_string_lossy().replace('\\', "/"), text));
            }
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            dirs.push(p);
        }
    }
    out.sort();
    out
}

fn report(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {} ({})", v.file, v.rule, v.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_repository_keeps_its_architecture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = repository_sources(root);
    assert!(
        files.iter().any(|(p, _)| p == "src/pods.rs") && files.len() > 100,
        "found only {} files",
        files.len()
    );
    let mut violations = check_sources(&files);
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    assert!(
        lock_graph(&lock).contains_key("compose-fleet-agent"),
        "Cargo.lock names the agent"
    );
    violations.extend(check_lock(&lock));
    assert!(violations.is_empty(), "\n{}", report(&violations));
}

fn file(path: &str, text: &str) -> (String, String) {
    (path.to_string(), text.to_string())
}

fn rules(violations: &[Violation]) -> Vec<(&str, &str)> {
    violations
        .iter()
        .map(|v| (v.file.as_str(), v.detail.as_str()))
        .collect()
}

#[test]
fn a_file_without_a_module_doc_fails() {
    let v = check_sources(&[
        file("src/new.rs", "use std::fmt;\n"),
        file("crates/agent/src/x.rs", "// a plain comment\nfn f() {}\n"),
        file("src/ok.rs", "\n//! Owns nothing.\nfn f() {}\n"),
        file("README.md", "no doc needed"),
    ]);
    assert_eq!(
        rules(&v),
        [
            (
                "crates/agent/src/x.rs",
                "first line: \"// a plain comment\""
            ),
            ("src/new.rs", "first line: \"use std::fmt;\""),
        ]
    );
}

#[test]
fn io_clocks_and_randomness_in_the_pure_core_fail() {
    let doc = "//! Pure.\n";
    let planted = [
        ("src/compose/merge.rs", "use std::fs;"),
        ("src/graph.rs", "fn f() { let _ = std::env::var(\"X\"); }"),
        (
            "src/schedule/score.rs",
            "use std::{collections::BTreeMap, process::Command};",
        ),
        ("src/plan/mod.rs", "use std::time::Instant;"),
        ("src/pods.rs", "fn f() -> std::time::SystemTime { todo!() }"),
        (
            "src/compose/yaml.rs",
            "async fn f() { tokio::task::yield_now().await }",
        ),
        ("src/schedule/units.rs", "fn f() -> u32 { rand::random() }"),
    ];
    let files: Vec<_> = planted
        .iter()
        .map(|(p, code)| file(p, &format!("{doc}{code}\n")))
        .collect();
    let v = check_sources(&files);
    assert_eq!(
        rules(&v),
        [
            ("src/compose/merge.rs", "uses std::fs"),
            ("src/compose/yaml.rs", "uses `tokio`"),
            ("src/graph.rs", "uses std::env"),
            ("src/plan/mod.rs", "uses `Instant`"),
            ("src/pods.rs", "uses `SystemTime`"),
            ("src/schedule/score.rs", "uses std::process"),
            ("src/schedule/units.rs", "uses `rand`"),
        ]
    );
}

#[test]
fn the_pure_core_rule_spares_comments_strings_the_reader_and_the_shell() {
    let v = check_sources(&[
        file(
            "src/graph.rs",
            "//! No std::fs here, no Instant either.\n\
             /* tokio? /* nested */ std::process */\n\
             const S: &str = \"std::env and rand\";\n\
             const R: &str = r#\"SystemTime \" std::fs\"#;\n\
             fn f<'a>(x: &'a str) -> char { let _ = x; '\"' }\n\
             use std::fmt::Write as _;\n",
        ),
        file("src/compose/source.rs", "//! The reader.\nuse std::fs;\n"),
        file(
            "src/ssh/mod.rs",
            "//! Effectful.\nuse std::process::Command;\nuse tokio::time::Instant;\n",
        ),
    ]);
    assert_eq!(v, [], "{}", report(&v));
}

#[test]
fn the_pure_core_rule_spares_a_modules_unit_tests_reading_fixtures_only() {
    let tests_read = "//! Pure.\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn t() { let _ = std::fs::read(\"x\"); }\n}\n";
    assert_eq!(check_sources(&[file("src/graph.rs", tests_read)]), []);
    let code_reads =
        "//! Pure.\nfn f() { let _ = std::fs::read(\"x\"); }\n#[cfg(test)]\nmod tests {}\n";
    let v = check_sources(&[file("src/graph.rs", code_reads)]);
    assert_eq!(
        rules(&v),
        [("src/graph.rs", "uses std::fs")],
        "{}",
        report(&v)
    );
}

#[test]
fn importing_the_cli_from_outside_it_fails() {
    let v = check_sources(&[
        file("src/lab/mod.rs", "//! Lab.\nuse crate::cli::output;\n"),
        file(
            "src/ssh/mod.rs",
            "//! Ssh.\nfn f() { crate::cli::output::error(\"x\"); }\n",
        ),
        file(
            "src/compose/options.rs",
            "//! Options.\nuse crate::{cli::GlobalArgs, diag};\n",
        ),
        file(
            "src/plan/report.rs",
            "//! Report.\nuse super::super::cli;\nuse super::cli::x;\n",
        ),
        file(
            "src/cli/plan.rs",
            "//! Plan.\nuse crate::cli::output;\nuse super::GlobalArgs;\n",
        ),
        file(
            "src/main.rs",
            "//! Main.\nfn main() { compose_fleet::cli::main(); }\n",
        ),
        file(
            "src/output.rs",
            "//! Printer. Not the cli: crate::output.\n",
        ),
    ]);
    assert_eq!(
        rules(&v),
        [
            ("src/compose/options.rs", "imports `cli`"),
            ("src/lab/mod.rs", "imports `cli`"),
            ("src/plan/report.rs", "imports `cli`"),
            ("src/ssh/mod.rs", "imports `cli`"),
        ]
    );
}

#[test]
fn the_agent_depending_on_a_cli_crate_fails() {
    let lock = r#"
[[package]]
name = "compose-fleet"
version = "0.1.0"
dependencies = [
 "clap",
 "compose-fleet-proto",
]

[[package]]
name = "compose-fleet-agent"
version = "0.1.0"
dependencies = [
 "compose-fleet-proto",
 "helper 1.0.0 (registry+https://github.com/rust-lang/crates.io-index)",
]

[[package]]
name = "compose-fleet-proto"
version = "0.1.0"
dependencies = ["serde"]

[[package]]
name = "helper"
version = "1.0.0"
dependencies = [
 "compose-fleet",
]
"#;
    let v = check_lock(lock);
    assert_eq!(
        v.iter().map(|v| v.detail.as_str()).collect::<Vec<_>>(),
        [
            "compose-fleet-agent depends on compose-fleet",
            "compose-fleet-agent depends on clap",
        ]
    );
    let clean = lock.replace(" \"compose-fleet\",\n", "");
    assert_eq!(check_lock(&clean), []);
}
