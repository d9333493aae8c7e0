//! Property tests over the loader (issue 2: "never a panic on any input"): random YAML-ish
//! documents built from compose vocabulary, and random mutations of real compose files and of
//! generated projects. Whatever the input, `compose::load` (then `graph::build`) returns, never
//! panics, and every diagnostic points inside the file it names.

use std::path::Path;
use std::sync::OnceLock;

use compose_fleet::compose::model::Location;
use compose_fleet::compose::{self, Environment, LoadOptions, MemoryFs};
use compose_fleet::diag::{Diagnostics, SourceMap};
use compose_fleet::{graph, testgen};
use proptest::prelude::*;

const FILE: &str = "/prop/compose.yaml";

/// Loads `text` as the only compose file, builds the graph, and checks every location reported.
fn load_and_check(text: &str) -> Result<(), TestCaseError> {
    load_with_env(text, None)
}

/// As [`load_and_check`], with a `.env` beside the file.
fn load_with_env(text: &str, dotenv: Option<&str>) -> Result<(), TestCaseError> {
    let mut fs = MemoryFs::new().with(FILE, text.to_string());
    if let Some(dotenv) = dotenv {
        fs.insert("/prop/.env", dotenv.to_string());
    }
    let env: Environment = [("TAG", "1.0"), ("EMPTY", ""), ("PORT", "8080")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match compose::load(&LoadOptions::for_file(FILE), &env, &fs) {
        Ok(loaded) => {
            check_all(&loaded.warnings, &loaded.sources, text)?;
            if let Err(problems) = graph::build(&loaded.project) {
                prop_assert!(problems.has_errors(), "graph failed without an error");
                check_all(&problems, &loaded.sources, text)?;
            }
        }
        Err(failure) => {
            prop_assert!(
                failure.diagnostics.has_errors(),
                "load failed without an error: {:?}",
                failure.diagnostics
            );
            check_all(&failure.diagnostics, &failure.sources, text)?;
        }
    }
    Ok(())
}

fn check_all(diags: &Diagnostics, sources: &SourceMap, text: &str) -> Result<(), TestCaseError> {
    for d in &diags.0 {
        prop_assert!(!d.message.is_empty());
        for loc in d.location.iter().chain(d.notes.iter().map(|(l, _)| l)) {
            check_location(loc, text, &d.message)?;
        }
        // Rendering quotes the line under the caret: it must not panic on any location.
        let _ = sources.render(d);
    }
    Ok(())
}

fn check_location(loc: &Location, text: &str, message: &str) -> Result<(), TestCaseError> {
    // Diagnostics about this file must point into it; other files (none here) are not checked.
    if !loc.file.ends_with("compose.yaml") {
        return Ok(());
    }
    prop_assert!(loc.line >= 1 && loc.column >= 1, "{loc}: {message}");
    let lines = compose_fleet::diag::source_lines(text).count() as u32;
    prop_assert!(
        loc.line <= lines,
        "{loc}: line past the end ({lines} lines): {message}"
    );
    prop_assert!(
        loc.offset + loc.len <= text.len(),
        "{loc}: span {}+{} past the end ({} bytes): {message}",
        loc.offset,
        loc.len,
        text.len()
    );
    // The byte offset and the line agree.
    let line_of_offset = compose_fleet::diag::line_of_offset(text, loc.offset);
    prop_assert_eq!(
        line_of_offset,
        loc.line,
        "{}: offset {} is on another line: {}",
        loc,
        loc.offset,
        message
    );
    Ok(())
}

/// Words compose files are made of, valid and not.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("services".to_string()),
        Just("image".to_string()),
        Just("depends_on".to_string()),
        Just("condition".to_string()),
        Just("service_healthy".to_string()),
        Just("required".to_string()),
        Just("ports".to_string()),
        Just("volumes".to_string()),
        Just("volumes_from".to_string()),
        Just("links".to_string()),
        Just("network_mode".to_string()),
        Just("service:web".to_string()),
        Just("environment".to_string()),
        Just("env_file".to_string()),
        Just("deploy".to_string()),
        Just("resources".to_string()),
        Just("limits".to_string()),
        Just("memory".to_string()),
        Just("512m".to_string()),
        Just("cpus".to_string()),
        Just("healthcheck".to_string()),
        Just("interval".to_string()),
        Just("30s".to_string()),
        Just("extends".to_string()),
        Just("include".to_string()),
        Just("profiles".to_string()),
        Just("secrets".to_string()),
        Just("networks".to_string()),
        Just("x-common".to_string()),
        Just("web".to_string()),
        Just("db".to_string()),
        Just("api".to_string()),
        Just("<<".to_string()),
        Just("&a".to_string()),
        Just("*a".to_string()),
        Just("${TAG}".to_string()),
        Just("${TAG:-x}".to_string()),
        Just("${UNSET:?needed}".to_string()),
        Just("${EMPTY:?empty}".to_string()),
        Just("${".to_string()),
        Just("$$".to_string()),
        Just("8080:80/udp".to_string()),
        Just("127.0.0.1:1-5:1-5".to_string()),
        Just("99999:80".to_string()),
        Just("~".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("1.5G".to_string()),
        Just("\"quoted\"".to_string()),
        Just("[a, b]".to_string()),
        Just("{a: 1}".to_string()),
        Just("|".to_string()),
        Just("é☃".to_string()),
        "[a-z_]{1,8}",
        "[ -~]{0,6}",
    ]
}

/// A YAML-ish line: indentation, an optional list dash, a key and maybe a value.
fn line() -> impl Strategy<Value = String> {
    (0usize..4, any::<bool>(), word(), prop::option::of(word())).prop_map(
        |(depth, dash, key, value)| {
            let mut l = "  ".repeat(depth);
            if dash {
                l.push_str("- ");
            }
            l.push_str(&key);
            if let Some(v) = value {
                l.push_str(": ");
                l.push_str(&v);
            } else if !dash {
                l.push(':');
            }
            l
        },
    )
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..40).prop_map(|lines| {
        let mut doc = String::from("services:\n");
        for l in lines {
            doc.push_str(&l);
            doc.push('\n');
        }
        doc
    })
}

/// A YAML tree, rendered in block style so that it parses: what the loader's semantic checks see.
#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    Seq(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

/// Keys found in services and the blocks inside them, plus a few that are wrong.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "image", "build", "context", "command", "entrypoint", "environment", "env_file",
            "ports", "target", "published", "protocol", "host_ip", "mode", "expose", "volumes",
            "type", "source", "read_only", "volumes_from", "depends_on", "condition", "required",
            "restart", "links", "healthcheck", "test", "interval", "retries", "deploy",
            "replicas", "resources", "limits", "reservations", "cpus", "memory", "placement",
            "constraints", "networks", "aliases", "network_mode", "secrets", "configs",
            "profiles", "extends", "service", "file", "labels", "scale", "mem_limit", "ulimits",
            "x-extra", "<<", "web", "db", "api",
        ])
        .prop_map(str::to_string),
        1 => word(),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    word()
        .prop_map(Tree::Scalar)
        .prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::Seq),
                prop::collection::vec((key(), inner), 0..5).prop_map(Tree::Map),
            ]
        })
}

fn render(tree: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Scalar(s) => {
            out.push_str(&pad);
            out.push_str(s);
            out.push('\n');
        }
        Tree::Seq(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                render_child(item, indent, out);
            }
        }
        Tree::Map(entries) => {
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(k);
                out.push(':');
                render_child(v, indent, out);
            }
        }
    }
}

/// The value after `key:` or `-`: inline when it is a scalar or empty, else on the next lines.
fn render_child(tree: &Tree, indent: usize, out: &mut String) {
    match tree {
        Tree::Scalar(s) => {
            out.push(' ');
            out.push_str(s);
            out.push('\n');
        }
        Tree::Seq(v) if v.is_empty() => out.push_str(" []\n"),
        Tree::Map(v) if v.is_empty() => out.push_str(" {}\n"),
        nested => {
            out.push('\n');
            render(nested, indent + 2, out);
        }
    }
}

/// A compose file: a few services, each a mapping of compose keys to random trees.
fn compose_document() -> impl Strategy<Value = String> {
    let service = prop::collection::vec((key(), tree()), 0..6);
    prop::collection::vec(
        (
            prop::sample::select(vec!["web", "db", "api", "cache"]),
            service,
        ),
        0..5,
    )
    .prop_map(|services| {
        let mut doc = String::from("services:\n");
        for (name, body) in services {
            let body = Tree::Map(body);
            doc.push_str("  ");
            doc.push_str(name);
            doc.push(':');
            render_child(&body, 2, &mut doc);
        }
        doc
    })
}

/// An edit to a file's text.
#[derive(Debug, Clone)]
enum Mutation {
    /// Delete bytes `[at, at+len)` (snapped to char boundaries).
    Delete(usize, usize),
    /// Insert text at a position.
    Insert(usize, String),
    /// Duplicate line `n` (a duplicate key, often).
    DuplicateLine(usize),
    /// Swap lines `a` and `b`.
    SwapLines(usize, usize),
    /// Change the indentation of line `n` by `d` spaces.
    Indent(usize, i8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(a, l)| Mutation::Delete(a, l)),
        (any::<usize>(), word()).prop_map(|(a, w)| Mutation::Insert(a, w)),
        (any::<usize>(), line()).prop_map(|(a, l)| Mutation::Insert(a, format!("\n{l}\n"))),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), -4i8..=4).prop_map(|(a, d)| Mutation::Indent(a, d)),
    ]
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::Delete(at, len) => {
            let a = floor_boundary(text, at % (text.len() + 1));
            let b = floor_boundary(text, a + len);
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert(at, what) => {
            let a = floor_boundary(text, at % (text.len() + 1));
            format!("{}{what}{}", &text[..a], &text[a..])
        }
        Mutation::DuplicateLine(i) => {
            let i = i % n;
            if let Some(l) = lines.get(i).cloned() {
                lines.insert(i, l);
            }
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
            lines.join("\n")
        }
        Mutation::Indent(i, d) => {
            if let Some(l) = lines.get_mut(i % n) {
                if *d >= 0 {
                    *l = format!("{}{l}", " ".repeat(*d as usize));
                } else {
                    let strip = l.len() - l.trim_start_matches(' ').len();
                    *l = l[strip.min(d.unsigned_abs() as usize)..].to_string();
                }
            }
            lines.join("\n")
        }
    }
}

/// A file mutations start from, with the `.env` that goes beside it.
struct Seed {
    compose: String,
    dotenv: Option<String>,
}

/// Real compose files (the shared corpus when present, our fixtures always) and a small generated
/// project: the seeds mutations start from. Read once.
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let generated = testgen::generate(12, 3);
        let mut seeds = vec![Seed {
            compose: generated.compose,
            dotenv: Some(generated.env),
        }];
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let corpus = crate::support::shared(
            "the corpus seeds of loader_never_panics_on_mutated_real_files and every_seed_loads_without_mutation",
        )
        .map(|shared| shared.join("compose-corpus/real-world"));
        let dirs = [
            manifest.join("tests/fixtures/graph/shop"),
            manifest.join("tests/fixtures/graph/cycle"),
        ]
        .into_iter()
        .chain(corpus);
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                if !f.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    continue;
                }
                if let Ok(compose) = std::fs::read_to_string(&f) {
                    let dotenv = std::fs::read_to_string(f.with_extension("env")).ok();
                    seeds.push(Seed { compose, dotenv });
                }
            }
        }
        seeds
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn loader_never_panics_on_yamlish_documents(doc in document()) {
        load_and_check(&doc)?;
    }

    #[test]
    fn loader_never_panics_on_random_compose_trees(doc in compose_document()) {
        load_and_check(&doc)?;
    }

    #[test]
    fn loader_never_panics_on_arbitrary_text(doc in "[ -~\n\t]{0,300}") {
        load_and_check(&doc)?;
    }

    #[test]
    fn loader_never_panics_on_mutated_real_files(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seed = pick.get(seeds());
        let mut text = seed.compose.clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        load_with_env(&text, seed.dotenv.as_deref())?;
    }
}

#[test]
fn every_seed_loads_without_mutation() {
    // Mutations start from files that load: otherwise they would only test the first error.
    for (i, seed) in seeds().iter().enumerate() {
        let mut fs = MemoryFs::new().with(FILE, seed.compose.clone());
        if let Some(dotenv) = &seed.dotenv {
            fs.insert("/prop/.env", dotenv.clone());
        }
        let loaded = compose::load(&LoadOptions::for_file(FILE), &Environment::new(), &fs);
        assert!(
            loaded.is_ok(),
            "seed {i} does not load: {:?}",
            loaded.err().map(|f| f.diagnostics)
        );
    }
    assert!(seeds().len() >= 3);
}
