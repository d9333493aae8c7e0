//! The compose loader on real-world files: every corpus file loads, its canonical form validates
//! against the Compose Specification's JSON schema, and a handful are pinned by snapshots.

use std::path::{Path, PathBuf};

use compose_fleet::cli::config::{render, Format};
use compose_fleet::compose::{self, Environment, LoadOptions, Loaded, RealFs};

/// `../shared` beside the repository (CI clones it there); `COMPOSE_FLEET_SHARED` overrides it, and
/// `../../shared` covers a git worktree kept one level deeper (`wt/NAME`).
fn shared() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = std::env::var_os("COMPOSE_FLEET_SHARED")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared"), root.join("../../shared")])
        .collect();
    match candidates.iter().find(|d| d.join("compose-corpus").is_dir()) {
        Some(d) => d.clone(),
        None => panic!(
            "the shared corpus is missing: looked for compose-corpus/ in {candidates:?}; clone `shared/` beside the repository or set COMPOSE_FLEET_SHARED"
        ),
    }
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = shared().join("compose-corpus/real-world");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Loads a corpus file with `<name>.env` beside it as its `.env` (read in place, not copied).
fn load_corpus(file: &Path) -> Loaded {
    let mut opts = LoadOptions::for_file(file);
    opts.env_files = vec![file.with_extension("env")];
    // A fixed home directory, so `~/…` paths print the same everywhere.
    let env: Environment = [("HOME".to_string(), "/home/user".to_string())].into();
    match compose::load(&opts, &env, &RealFs) {
        Ok(l) => l,
        Err(f) => {
            let text: Vec<String> = f
                .diagnostics
                .0
                .iter()
                .map(|d| f.sources.render(d))
                .collect();
            panic!("{} does not load:\n{}", file.display(), text.join(""))
        }
    }
}

#[test]
fn every_corpus_file_loads_and_validates_against_the_schema() {
    let schema_path = shared().join("compose-corpus/spec/compose-spec.json");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&schema_path).expect("read compose-spec.json"),
    )
    .expect("compose-spec.json is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    let files = corpus_files();
    assert!(files.len() >= 39, "corpus has {} files", files.len());
    let mut services = 0;
    for file in &files {
        let loaded = load_corpus(file);
        services += loaded.project.services.len() + loaded.project.disabled.len();
        let json = render(&loaded.project, Format::Json).expect("renders");
        let value: serde_json::Value = serde_json::from_str(&json).expect("our JSON parses");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
    assert_eq!(services, 81, "FEATURE-COUNTS.md counts 81 services");
}

fn snapshot(name: &str) -> String {
    let file = shared().join("compose-corpus/real-world").join(name);
    let loaded = load_corpus(&file);
    let text = render(&loaded.project, Format::Yaml).expect("renders");
    // Absolute paths differ between machines.
    let root = compose::source::normalize(&shared().join("compose-corpus/real-world"));
    text.replace(&root.display().to_string(), "$CORPUS")
}

#[test]
fn snapshot_pihole_interpolates_from_its_env_file() {
    insta::assert_snapshot!(snapshot("pihole-cloudflared-DoH.yaml"));
}

#[test]
fn snapshot_react_express_mysql_with_secrets_and_builds() {
    insta::assert_snapshot!(snapshot("react-express-mysql.yaml"));
}

#[test]
fn snapshot_minecraft_memory_limit_in_bytes() {
    insta::assert_snapshot!(snapshot("minecraft.yaml"));
}

#[test]
fn snapshot_postgresql_pgadmin_ignores_variables_in_comments() {
    insta::assert_snapshot!(snapshot("postgresql-pgadmin.yaml"));
}

#[test]
fn snapshot_nginx_golang_mysql_healthcheck_and_dollar_escapes() {
    insta::assert_snapshot!(snapshot("nginx-golang-mysql.yaml"));
}
