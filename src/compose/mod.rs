//! The Compose Specification front end: YAML, interpolation, merging, extends, include, profiles,
//! validation, and the normalized [`model::Project`] with source locations kept for errors.
//!
//! `compose` knows nothing about hosts, SSH or placement, and does no I/O of its own: files are
//! read through a [`FileSource`] and the environment is a map the caller passes in.
//!
//! The stages of [`load`], in order:
//! 1. the interpolation variables: the env files (`.env` or `--env-file`), then the process
//!    environment over them;
//! 2. the main files are read and parsed ([`yaml`]); the project's name is found (`-p`, the
//!    last `name:`, the directory) and is `COMPOSE_PROJECT_NAME` from here on;
//! 3. each file: interpolate values ([`interpolate`]), type them by field (`cast.rs`), make its
//!    relative paths absolute, splice its `include`s in;
//! 4. merge the files in order ([`merge`]; `!reset` and `!override` honoured);
//! 5. resolve `extends` (same file, other files, chains; cycles are errors);
//! 6. profiles: services whose profiles are all inactive go to [`model::Project::disabled`];
//! 7. normalize into the [`model`] ([`normalize`]), classify every key ([`ledger`]);
//! 8. cross-checks (undefined secrets, configs, networks; no image and no build).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod bounds;
pub mod canonical;
mod cast;
pub mod dotenv;
pub mod interpolate;
pub mod ledger;
pub mod merge;
pub mod model;
pub mod normalize;
pub mod options;
pub mod source;
pub mod yaml;

pub use ledger::Ledger;
pub use options::LoadOptions;
pub use source::{FileSource, MemoryFs, RealFs};

use crate::diag::{Diagnostic, Diagnostics, SourceMap};
use crate::limits::Limits;
use model::{Location, Project};
use yaml::{Node, Value};

/// Variables for interpolation and for `environment` entries without a value.
pub type Environment = BTreeMap<String, String>;

/// A loaded project and everything said about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub project: Project,
    /// Warnings (accepted-but-not-honoured keys, unset variables, …); never errors.
    pub warnings: Diagnostics,
    /// The text of every file read, to render diagnostics.
    pub sources: SourceMap,
    /// Every key used, classified.
    pub ledger: Ledger,
}

/// Loading failed: every problem found, with the sources to render them.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    /// Errors and warnings, in the order found.
    pub diagnostics: Diagnostics,
    pub sources: SourceMap,
}

/// `include` and `extends` across files nest at most this deep.
const MAX_FILE_DEPTH: usize = 32;

/// Loads a compose project. Pure apart from reading through `fs`.
pub fn load(
    opts: &LoadOptions,
    env: &Environment,
    fs: &dyn FileSource,
) -> Result<Loaded, LoadFailure> {
    // Every read of this load (compose files, env files, `env_file`s) is bounded by the limit.
    let bounded = source::Bounded::new(fs, opts.limits.get(crate::limits::Limit::FileBytes));
    let fs: &dyn FileSource = &bounded;
    let mut l = Loader {
        limits: opts.limits.clone(),
        fs,
        project_dir: opts.project_dir.clone(),
        diags: Diagnostics::default(),
        sources: SourceMap::default(),
        vars: Environment::new(),
        process_env: env.clone(),
        warned_unset: BTreeSet::new(),
        other_files: BTreeMap::new(),
        main_services: HashMap::new(),
        saw_reset: false,
    };
    l.read_env_files(opts);
    // The main files are parsed first: the project's name (from `-p`, `name:` or the
    // directory) is the variable `COMPOSE_PROJECT_NAME` while they are interpolated.
    let mut parsed = Vec::new();
    for f in &opts.files {
        if let Some(p) = l.parse_compose(f) {
            parsed.push((f, p));
        }
    }
    // A file that does not parse stops here: the others alone would give follow-on errors
    // (an override's services without their `image`).
    if l.diags.has_errors() {
        return Err(LoadFailure {
            diagnostics: l.diags,
            sources: l.sources,
        });
    }
    let name = l.project_name(opts, &parsed);
    l.vars
        .insert("COMPOSE_PROJECT_NAME".to_string(), name.clone());
    let mut merged: Option<Node> = None;
    let mut stack = Vec::new();
    for (f, (root, text)) in parsed {
        let node = l.finish_compose(root, &text, f, &opts.project_dir, &mut stack);
        merged = Some(match merged {
            None => node,
            Some(base) => merge::merge_files(base, node),
        });
    }
    // What `!reset` marks goes once every file is merged (in one file, it just removes the key);
    // in services, only once `extends` is resolved too (a `!reset` also drops what is extended).
    // (Most projects have no `!reset`: the walks over the whole tree are skipped then.)
    if let Some(Value::Map(top)) = merged
        .as_mut()
        .filter(|_| l.saw_reset)
        .map(|m| &mut m.value)
    {
        top.retain(|(_, v)| v.tag != yaml::Tag::Reset);
        for (k, v) in top.iter_mut() {
            if k.as_str() == Some("services") {
                if let Value::Map(services) = &mut v.value {
                    services.retain(|(_, s)| s.tag != yaml::Tag::Reset);
                }
            } else {
                yaml::drop_reset(v);
            }
        }
    }
    if let Some(root) = &merged {
        bounds::names(root, &opts.limits, &mut l.diags);
    }
    let mut ledger = Ledger::default();
    let project = match merged {
        Some(root) => l.build(opts, root, name, &mut ledger),
        None => {
            if !l.diags.has_errors() {
                l.diags.push(
                    Diagnostic::error("no compose file given").hint("pass one with `-f FILE`"),
                );
            }
            Project::default()
        }
    };
    if l.diags.has_errors() {
        return Err(LoadFailure {
            diagnostics: l.diags,
            sources: l.sources,
        });
    }
    Ok(Loaded {
        project,
        warnings: l.diags,
        sources: l.sources,
        ledger,
    })
}

struct Loader<'a> {
    fs: &'a dyn FileSource,
    limits: Limits,
    project_dir: PathBuf,
    diags: Diagnostics,
    sources: SourceMap,
    /// Interpolation variables.
    vars: Environment,
    /// The caller's environment (wins over every env file).
    process_env: Environment,
    warned_unset: BTreeSet<String>,
    /// Files read for `extends: {file: …}`: their `services` after interpolation.
    other_files: BTreeMap<PathBuf, Option<Node>>,
    /// The merged main files' services, for same-file `extends`.
    main_services: HashMap<String, Node>,
    /// A value of some file read is tagged `!reset` (seen while interpolating, which visits
    /// every value): only then are the trees walked to drop what it marks.
    saw_reset: bool,
}

impl Loader<'_> {
    fn file_name(&self, path: &Path) -> Arc<str> {
        match path.strip_prefix(&self.project_dir) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string().into(),
            _ => path.display().to_string().into(),
        }
    }

    fn read_env_files(&mut self, opts: &LoadOptions) {
        self.vars =
            self.env_from_files(&opts.env_files, opts.env_files_required, Environment::new());
    }

    /// `base` with the variables of `files` over it, and the process environment over all.
    fn env_from_files(
        &mut self,
        files: &[PathBuf],
        required: bool,
        base: Environment,
    ) -> Environment {
        let mut vars = base;
        for f in files {
            let text = match self.fs.read(f) {
                Ok(t) => t,
                Err(e) => {
                    // As compose-go: only a missing optional file is skipped; one that exists
                    // but cannot be read (too large, a directory, not UTF-8) is an error.
                    if required || e.kind() != std::io::ErrorKind::NotFound {
                        let mut d =
                            Diagnostic::error(format!("cannot read env file {}: {e}", f.display()))
                                .hint(source::read_hint(
                                    &e,
                                    "check the path given with `--env-file` or `env_file`",
                                ));
                        if let Some(at) = source::too_large_at(&e, f.display().to_string().into()) {
                            d = d.at(at);
                        }
                        self.diags.push(d);
                    }
                    continue;
                }
            };
            let name = self.file_name(f);
            self.sources.add(name.clone(), text.as_str().into());
            let env = &self.process_env;
            let lookup = |k: &str| env.get(k).cloned().or_else(|| vars.get(k).cloned());
            match dotenv::parse(&text, &lookup) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        if let Some(v) = v.or_else(|| env.get(&k).cloned()) {
                            vars.insert(k, v);
                        }
                    }
                }
                Err(e) => self.diags.push(
                    Diagnostic::error(e.message)
                        .at(dotenv::error_location(&name, &text, e.offset, e.len)),
                ),
            }
        }
        for (k, v) in &self.process_env {
            vars.insert(k.clone(), v.clone());
        }
        vars
    }

    /// Reads, parses and interpolates one compose file, makes its paths absolute against `base`
    /// and splices its `include`s in.
    fn read_compose(&mut self, path: &Path, base: &Path, stack: &mut Vec<PathBuf>) -> Option<Node> {
        if stack.len() >= MAX_FILE_DEPTH {
            self.diags.push(Diagnostic::error(format!(
                "files include each other more than {MAX_FILE_DEPTH} levels deep at {}",
                path.display()
            )));
            return None;
        }
        let (root, text) = self.parse_compose(path)?;
        Some(self.finish_compose(root, &text, path, base, stack))
    }

    /// Reads and parses one compose file: a mapping (an empty file is an empty one), and its text.
    fn parse_compose(&mut self, path: &Path) -> Option<(Node, Arc<str>)> {
        let text = match self.fs.read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let hint = "save it as UTF-8 (docker compose also reads UTF-16 that starts with a byte-order mark)";
                // `yaml::text_from_bytes` puts the position first: `LINE:COLUMN: message`.
                let text = e.to_string();
                let at = text.split_once(": ").and_then(|(pos, msg)| {
                    let (l, c) = pos.split_once(':')?;
                    Some((
                        l.parse::<u32>().ok()?,
                        c.parse::<u32>().ok()?,
                        msg.to_string(),
                    ))
                });
                let d = match at {
                    Some((line, column, msg)) => Diagnostic::error(msg).at(Location {
                        file: self.file_name(path),
                        line,
                        column,
                        offset: 0,
                        len: 0,
                    }),
                    None => Diagnostic::error(format!(
                        "cannot read compose file {}: it is not UTF-8 text",
                        path.display()
                    )),
                };
                self.diags.push(d.hint(hint));
                return None;
            }
            Err(e) => {
                let mut d =
                    Diagnostic::error(format!("cannot read compose file {}: {e}", path.display()))
                        .hint(source::read_hint(
                            &e,
                            "check the path given with `-f`, `COMPOSE_FILE` or `include`",
                        ));
                if let Some(at) = source::too_large_at(&e, path.display().to_string().into()) {
                    d = d.at(at);
                }
                self.diags.push(d);
                return None;
            }
        };
        let name = self.file_name(path);
        let text: Arc<str> = text.as_str().into();
        self.sources.add(name.clone(), text.clone());
        // docker compose refuses a file with nothing in it ("empty compose file").
        if text
            .trim_start_matches('\u{feff}')
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            self.diags.push(
                Diagnostic::error(format!("the compose file {} is empty", path.display()))
                    .at(Location {
                        file: name,
                        line: 1,
                        column: 1,
                        offset: 0,
                        len: 0,
                    })
                    .hint("give it a `services:` section, or leave it out of `-f`/`COMPOSE_FILE`/`include`"),
            );
            return None;
        }
        let root = match yaml::parse_with(&name, &text, &self.limits) {
            Ok(n) => n,
            Err(d) => {
                self.diags.push(*d);
                return None;
            }
        };
        match &root.value {
            Value::Map(_) => {}
            _ => {
                self.diags.push(
                    Diagnostic::error(format!(
                        "a compose file must be a mapping, found {}",
                        root.kind()
                    ))
                    .at(root.loc),
                );
                return None;
            }
        }
        Some((root, text))
    }

    /// Interpolates a parsed file, makes its paths absolute against `base` and splices its
    /// `include`s in.
    fn finish_compose(
        &mut self,
        mut root: Node,
        text: &str,
        path: &Path,
        base: &Path,
        stack: &mut Vec<PathBuf>,
    ) -> Node {
        // One walk interpolates and types; the typing errors follow the interpolation ones, as
        // when these were two walks.
        let mut typed = Vec::new();
        self.interpolate_typed(
            &mut root,
            text,
            Some(cast::Typed::root()),
            &cast::At::Root,
            &mut typed,
        );
        for d in typed {
            self.diags.push(d);
        }
        absolutize(&mut root, base, self.vars.get("HOME").map(String::as_str));
        stack.push(path.to_path_buf());
        let root = self.splice_includes(root, path, stack);
        stack.pop();
        root
    }

    fn interpolate(&mut self, node: &mut Node, text: &str) {
        self.interpolate_typed(node, text, None, &cast::At::Root, &mut Vec::new());
    }

    /// Interpolates `node` and, at the typed fields below `typed` ([`cast`]), types the
    /// result. Returns whether `node` is a typed field whose text is not of its type (the
    /// caller removes it, with its error in `cast_errors`).
    fn interpolate_typed(
        &mut self,
        node: &mut Node,
        text: &str,
        typed: Option<cast::Typed>,
        at: &cast::At<'_>,
        cast_errors: &mut Vec<Diagnostic>,
    ) -> bool {
        if node.tag == yaml::Tag::Reset {
            self.saw_reset = true;
        }
        match &mut node.value {
            Value::Str(s) if interpolate::needs_interpolation(s) => {
                let vars = &self.vars;
                let lookup = |k: &str| vars.get(k).cloned();
                match interpolate::interpolate(s, &lookup) {
                    Ok(out) => {
                        for name in out.unset {
                            if self.warned_unset.insert(name.clone()) {
                                // At the first `${NAME` or `$NAME` of the value (a `$NAMEX` or
                                // `$$NAME` would be found too: the scalar is close enough then).
                                let at = s
                                    .find(&format!("${{{name}"))
                                    .or_else(|| s.find(&format!("${name}")))
                                    .map_or_else(
                                        || Location::from(node.loc),
                                        |i| {
                                            refine(
                                                &Location::from(node.loc),
                                                s,
                                                i,
                                                name.len() + 1,
                                                text,
                                            )
                                        },
                                    );
                                self.diags.push(
                                    Diagnostic::warning(format!(
                                        "variable `{name}` is not set; using an empty string"
                                    ))
                                    .at(at)
                                    .hint(format!("set `{name}` in the environment or in `.env`, or write `${{{name}:-default}}`")),
                                );
                            }
                        }
                        *s = out.text.into();
                    }
                    Err(e) => {
                        let loc = refine(&Location::from(node.loc), s, e.offset, e.len, text);
                        let mut d = Diagnostic::error(e.message).at(loc);
                        if let Some(h) = e.hint {
                            d = d.hint(h);
                        }
                        self.diags.push(d);
                    }
                }
            }
            Value::Seq(items) => {
                match typed.and_then(cast::Typed::item) {
                    None => {
                        for i in items {
                            self.interpolate_typed(i, text, None, at, cast_errors);
                        }
                    }
                    Some(item) => {
                        let mut i = 0;
                        items.retain_mut(|n| {
                            let bad = self.interpolate_typed(
                                n,
                                text,
                                Some(item),
                                &cast::At::Item(at, i),
                                cast_errors,
                            );
                            i += 1;
                            !bad
                        });
                    }
                }
                return false;
            }
            Value::Map(entries) => {
                let Some(typed) = typed else {
                    for (_, v) in entries {
                        self.interpolate_typed(v, text, None, at, cast_errors);
                    }
                    return false;
                };
                entries.retain_mut(|(k, v)| {
                    match k.as_str().and_then(|n| Some((n, typed.key(n)?))) {
                        Some((name, next)) => !self.interpolate_typed(
                            v,
                            text,
                            Some(next),
                            &cast::At::Key(at, name),
                            cast_errors,
                        ),
                        None => {
                            self.interpolate_typed(v, text, None, at, cast_errors);
                            true
                        }
                    }
                });
                return false;
            }
            _ => {}
        }
        // A scalar, interpolated: typed if its field has a type.
        typed.is_some_and(|t| t.cast(node, at, cast_errors))
    }

    fn splice_includes(&mut self, mut root: Node, path: &Path, stack: &mut Vec<PathBuf>) -> Node {
        let Value::Map(entries) = &mut root.value else {
            return root;
        };
        let Some(i) = entries
            .iter()
            .position(|(k, _)| k.as_str() == Some("include"))
        else {
            return root;
        };
        let (_, inc) = entries.remove(i);
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let items: Vec<Node> = match inc.value {
            Value::Seq(items) => items,
            Value::Null => Vec::new(),
            _ => vec![inc],
        };
        let mut included: Vec<Node> = Vec::new();
        for item in items {
            let mut env_files: Vec<String> = Vec::new();
            let (paths, project_dir) = match &item.value {
                Value::Map(_) => {
                    let paths = match item.get("path") {
                        Some(p) => match &p.value {
                            Value::Seq(ps) => ps.iter().filter_map(Node::scalar_text).collect(),
                            _ => p.scalar_text().into_iter().collect(),
                        },
                        None => Vec::new(),
                    };
                    env_files = match item.get("env_file") {
                        Some(e) => match &e.value {
                            Value::Seq(es) => es.iter().filter_map(Node::scalar_text).collect(),
                            _ => e.scalar_text().into_iter().collect(),
                        },
                        None => Vec::new(),
                    };
                    let pd = item
                        .get("project_directory")
                        .and_then(Node::scalar_text)
                        .map(|d| source::absolute(&dir, Path::new(&d)));
                    for (k, _) in item.as_map().unwrap_or_default() {
                        let name = k.as_str().unwrap_or("");
                        if !matches!(name, "path" | "project_directory" | "env_file") {
                            self.diags.push(
                                Diagnostic::error(format!("unknown key `{name}` in an `include` entry"))
                                    .at(k.loc)
                                    .hint("an include entry has `path`, `project_directory` and `env_file`"),
                            );
                        }
                    }
                    (paths, pd)
                }
                _ => (item.scalar_text().into_iter().collect::<Vec<_>>(), None),
            };
            if paths.is_empty() {
                self.diags
                    .push(Diagnostic::error("an `include` entry names no file").at(item.loc));
                continue;
            }
            // The included files see their own env files (default: `.env` in their directory)
            // over the including project's variables.
            let first_path = source::absolute(&dir, Path::new(&paths[0]));
            let include_dir = project_dir
                .clone()
                .unwrap_or_else(|| first_path.parent().unwrap_or(Path::new("/")).to_path_buf());
            let (files, required) = if env_files.is_empty() {
                (vec![include_dir.join(".env")], false)
            } else {
                (
                    env_files
                        .iter()
                        .map(|f| source::absolute(&dir, Path::new(f)))
                        .collect(),
                    true,
                )
            };
            let include_vars = self.env_from_files(&files, required, self.vars.clone());
            let outer_vars = std::mem::replace(&mut self.vars, include_vars);
            let mut merged: Option<Node> = None;
            let mut first_dir = None;
            for p in paths {
                let full = source::absolute(&dir, Path::new(&p));
                if stack.contains(&full) {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "`include` cycle: {} includes itself",
                            full.display()
                        ))
                        .at(item.loc),
                    );
                    continue;
                }
                if !self.fs.is_file(&full) {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "included file {} does not exist",
                            full.display()
                        ))
                        .at(item.loc),
                    );
                    continue;
                }
                let base = project_dir.clone().unwrap_or_else(|| {
                    first_dir
                        .get_or_insert_with(|| {
                            full.parent().unwrap_or(Path::new("/")).to_path_buf()
                        })
                        .clone()
                });
                if let Some(n) = self.read_compose(&full, &base, stack) {
                    merged = Some(match merged {
                        None => n,
                        Some(b) => merge::merge_files(b, n),
                    });
                }
            }
            self.vars = outer_vars;
            if let Some(m) = merged {
                included.push(m);
            }
        }
        // Included resources join the including file; defining the same one twice is an error.
        for inc in included {
            for (k, v) in inc.as_map().unwrap_or_default() {
                let Some(section) = k.as_str() else { continue };
                if section == "name" || section == "version" {
                    continue;
                }
                let Value::Map(root_entries) = &mut root.value else {
                    break;
                };
                let Some(pos) = root_entries
                    .iter()
                    .position(|(rk, _)| rk.as_str() == Some(section))
                else {
                    root_entries.push((k.clone(), v.clone()));
                    continue;
                };
                let target = &mut root_entries[pos].1;
                if target.is_null() {
                    *target = v.clone();
                    continue;
                }
                let (Value::Map(existing), Some(new)) = (&mut target.value, v.as_map()) else {
                    continue;
                };
                for (nk, nv) in new {
                    if let Some((ek, _)) = existing.iter().find(|(ek, _)| ek.value == nk.value) {
                        self.diags.push(
                            Diagnostic::error(format!(
                                "`{}` is defined both here and in an included file",
                                nk.scalar_text().unwrap_or_default()
                            ))
                            .at(ek.loc)
                            .note(nk.loc, "also defined here")
                            .hint("rename one of them; included files cannot be overridden"),
                        );
                    } else {
                        existing.push((nk.clone(), nv.clone()));
                    }
                }
            }
        }
        root
    }

    /// Builds the project from the merged tree.
    fn build(
        &mut self,
        opts: &LoadOptions,
        mut root: Node,
        name: String,
        ledger: &mut Ledger,
    ) -> Project {
        let mut project = Project::default();
        // The services are moved out of the tree (they are big); the rest is read in place.
        let mut services_owned = None;
        if let Value::Map(entries) = &mut root.value {
            if let Some(i) = entries
                .iter()
                .position(|(k, _)| k.as_str() == Some("services"))
            {
                let placeholder = Node::new(Value::Null, entries[i].1.loc);
                services_owned = Some(std::mem::replace(&mut entries[i].1, placeholder));
            }
        }
        let mut services_node = None;
        let mut sections: Vec<(&str, &Node)> = Vec::new();
        for (k, v) in root.as_map().unwrap_or_default() {
            let Some(key) = k.as_str() else {
                self.diags.push(
                    Diagnostic::error(format!(
                        "a top-level key must be a string, found {}",
                        k.kind()
                    ))
                    .at(k.loc),
                );
                continue;
            };
            if key.starts_with("x-") {
                project.extensions.insert(key.to_string(), v.to_json());
                continue;
            }
            let Some(rule) = ledger::top_key(key) else {
                let mut d = Diagnostic::error(format!("unknown top-level key `{key}`")).at(k.loc);
                if let Some(s) = ledger::suggest(key, ledger::TOP_KEYS) {
                    d = d.label(format!("did you mean `{s}`?"));
                } else {
                    d = d.hint("extension fields start with `x-`");
                }
                self.diags.push(d);
                continue;
            };
            ledger.record(key, None, rule, Location::from(k.loc));
            if rule.status == ledger::Status::Accepted && key != "version" {
                self.diags.push(
                    Diagnostic::warning(format!(
                        "top-level `{key}` is accepted but not honoured: {}",
                        rule.reason
                    ))
                    .at(k.loc),
                );
            }
            match key {
                "services" => services_node = services_owned.take(),
                "networks" | "volumes" | "secrets" | "configs" => sections.push((key, v)),
                _ => {}
            }
        }
        project.name = name;

        // Services by name, with the key's node and the service's tree; non-string names are
        // errors.
        let mut services: Vec<(String, Node)> = Vec::new();
        let mut service_trees: Vec<Option<Node>> = Vec::new();
        if let Some(sn) = services_node {
            match sn.value {
                Value::Map(entries) => {
                    services.reserve(entries.len());
                    service_trees.reserve(entries.len());
                    for (k, v) in entries {
                        match k.as_str() {
                            Some(name) => {
                                service_trees.push(Some(v));
                                services.push((name.to_string(), k));
                            }
                            None => self.diags.push(
                                Diagnostic::error(format!(
                                    "a service name must be a string, found {}",
                                    k.kind()
                                ))
                                .at(k.loc)
                                .hint(match &k.value {
                                    Value::Int(i) => format!("quote it: `\"{i}\":`"),
                                    _ => "service names are plain words like `web` or `db`"
                                        .to_string(),
                                }),
                            ),
                        }
                    }
                }
                Value::Null => {}
                _ => self.diags.push(
                    Diagnostic::error(format!("`services` must be a mapping, found {}", sn.kind()))
                        .at(sn.loc),
                ),
            }
        }
        // Only `extends` looks services up by name: the map is built when a service uses it
        // (hashing 10,000 trees in and out of a map cost a tenth of normalization).
        let any_extends = service_trees
            .iter()
            .flatten()
            .any(|n| n.get("extends").is_some());
        if any_extends {
            self.main_services = services
                .iter()
                .zip(service_trees.iter_mut())
                .filter_map(|((name, _), tree)| Some((name.clone(), tree.take()?)))
                .collect();
        }

        let active: BTreeSet<&str> = opts.profiles.iter().map(String::as_str).collect();
        let mut ctx_refs = Vec::new();
        // `extends` first: only services that use it get a new tree.
        let mut extended: BTreeMap<String, Option<Node>> = BTreeMap::new();
        for (name, _) in &services {
            let Some(node) = self.main_services.get(name) else {
                continue;
            };
            if node.get("extends").is_none() {
                continue;
            }
            let node = node.clone();
            let mut chain = Vec::new();
            let resolved = self.resolve_extends(None, name, &node, &mut chain);
            extended.insert(name.clone(), resolved);
        }
        if self.saw_reset {
            for node in self
                .main_services
                .values_mut()
                .chain(service_trees.iter_mut().flatten())
                .chain(extended.values_mut().flatten())
            {
                yaml::drop_reset(node);
            }
        }
        // `extends` is resolved: from here each service's tree is dropped as soon as it is
        // normalized, while it is still in the cache (dropping the trees of 10,000 services
        // at the end, cold, cost a fifth of the load).
        let mut trees = std::mem::take(&mut self.main_services);
        // The top-level `models` a service may use (compose keeps them out of its output), each
        // checked as compose's schema checks it.
        let model_entries = root
            .get("models")
            .and_then(Node::as_map)
            .unwrap_or_default();
        for (k, v) in model_entries {
            model_definition(&mut self.diags, k, v);
            if let Some(name) = k.scalar_text() {
                project.models.insert(name, v.to_json());
            }
        }
        let models: BTreeSet<String> = model_entries
            .iter()
            .filter_map(|(k, _)| k.scalar_text())
            .collect();
        let vars = self.vars.clone();
        let project_dir = self.project_dir.clone();
        let mut ctx = normalize::Ctx {
            diags: &mut self.diags,
            ledger,
            sources: &mut self.sources,
            project_dir: &project_dir,
            env: &vars,
            fs: self.fs,
            refs: Vec::new(),
            limits: &opts.limits,
            unrunnable: Vec::new(),
            last_file: None,
        };
        // Each service is normalized into its own place in the map, made for it beforehand in
        // name order: a `Service` is large (~1.8 KB), and so it is moved once, where building
        // the map from a vector of them moved each several times more (a fifth of the load
        // after the YAML parse, at 10,000 services).
        let mut placed = placeholders(&services);
        let mut normalized = vec![false; services.len()];
        let mut disabled_services = Vec::new();
        for (i, ((name, key), tree)) in services.iter().zip(service_trees).enumerate() {
            let own = match tree {
                Some(t) => Some(t),
                None => trees.remove(name),
            };
            let node = match extended.remove(name) {
                Some(Some(resolved)) => resolved,
                Some(None) => continue,
                None => match own {
                    Some(n) => n,
                    None => continue,
                },
            };
            let node = &node;
            if !valid_service_name(name) {
                ctx.diags.push(
                    Diagnostic::error(format!("`{name}` is not a valid service name"))
                        .at(key.loc)
                        .hint("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
                );
            }
            let mut svc = normalize::service(&mut ctx, name, key, node);
            svc.folded = canonical::folded(node, &svc);
            let enabled = svc.profiles.is_empty()
                || active.contains("*")
                || svc.profiles.iter().any(|p| active.contains(p.as_str()));
            if enabled {
                // As compose: only the services that run must find their models.
                undefined_models(ctx.diags, name, node, &models);
                if let Some(place) = placed.get_mut(name) {
                    *place = svc;
                    normalized[i] = true;
                }
            } else {
                disabled_services.push((name.clone(), Box::new(svc)));
            }
        }
        // Services disabled by profiles, or whose `extends` failed, leave their places (a
        // place still empty: no other service of that name filled it).
        for ((name, _), done) in services.iter().zip(normalized) {
            if !done && placed.get(name).is_some_and(|s| s.name.is_empty()) {
                placed.remove(name);
            }
        }
        project.services = placed;
        project.disabled = by_name(disabled_services);
        bounds::total_replicas(&project, &opts.limits, ctx.diags);
        for (section, v) in sections {
            let entries = ctx_entries(&mut ctx, v, section);
            for (name, node) in entries {
                match section {
                    "networks" => {
                        let n = normalize::network(&mut ctx, &name, &node);
                        project.networks.insert(name, n);
                    }
                    "volumes" => {
                        let n = normalize::volume(&mut ctx, &name, &node);
                        project.volumes.insert(name, n);
                    }
                    "secrets" => {
                        let n = normalize::file_object(&mut ctx, "secret", &name, &node);
                        project.secrets.insert(name, n);
                    }
                    _ => {
                        let n = normalize::file_object(&mut ctx, "config", &name, &node);
                        project.configs.insert(name, n);
                    }
                }
            }
        }
        ctx_refs.append(&mut ctx.refs);
        project.unrunnable = std::mem::take(&mut ctx.unrunnable);
        drop(ctx);
        self.cross_check(&project, &ctx_refs, ledger);
        project
    }

    /// The project's name, as docker compose finds it: `-p` or `COMPOSE_PROJECT_NAME` (which must
    /// already be a valid name), else the last main file's `name:` (interpolated), else the
    /// project directory's name; the last two are normalized as compose-go does.
    fn project_name(
        &mut self,
        opts: &LoadOptions,
        parsed: &[(&PathBuf, (Node, Arc<str>))],
    ) -> String {
        if let Some(n) = opts.project_name.as_deref().filter(|n| !n.is_empty()) {
            if !is_valid_project_name(n) {
                self.diags.push(
                    Diagnostic::error(format!(
                        "invalid project name `{n}`: it must consist only of lowercase letters, digits, `-` and `_`, and start with a letter or digit"
                    ))
                    .hint("give `-p` (or `COMPOSE_PROJECT_NAME`) a name such as `my-app`; a top-level `name:` or the directory name is made lower case, but these are taken as written"),
                );
            }
            return n.to_string();
        }
        let from_file = parsed.iter().rev().find_map(|(_, (root, text))| {
            let (k, v) = root.get_entry("name")?;
            Some((k.loc, v.clone(), text.clone()))
        });
        let (raw, at) = match from_file {
            Some((key_at, mut v, text)) => {
                self.interpolate(&mut v, &text);
                match v.scalar_text() {
                    Some(n) => (n, Some(v.loc)),
                    None => {
                        self.diags.push(
                            Diagnostic::error(format!(
                                "`name` must be a string, found {}",
                                v.kind()
                            ))
                            .at(key_at),
                        );
                        return String::new();
                    }
                }
            }
            None => (
                self.project_dir
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                None,
            ),
        };
        let name = options::normalize_project_name(&raw);
        if name.is_empty() {
            let what = if at.is_some() {
                "the top-level `name:`"
            } else {
                "the project directory's name"
            };
            let mut d = Diagnostic::error(format!(
                "the project name is empty: {what} `{raw}` has no letter, digit, `-` or `_` to keep"
            ))
            .hint("set one with `-p NAME` or a top-level `name:` of lowercase letters, digits, `-` and `_`");
            if let Some(l) = at {
                d = d.at(l);
            }
            self.diags.push(d);
        }
        name
    }

    /// The service with its `extends` chain merged in. `file` is `None` for the main files.
    fn resolve_extends(
        &mut self,
        file: Option<&Path>,
        name: &str,
        node: &Node,
        chain: &mut Vec<(Option<PathBuf>, String, Location)>,
    ) -> Option<Node> {
        let Some((ext_key, ext)) = node.get_entry("extends") else {
            return Some(node.clone());
        };
        let here = (file.map(Path::to_path_buf), name.to_string());
        if chain.iter().any(|(f, n, _)| (f, n) == (&here.0, &here.1)) {
            let mut names: Vec<&str> = chain.iter().map(|(_, n, _)| n.as_str()).collect();
            names.push(name);
            let start = names.iter().position(|n| *n == name).unwrap_or(0);
            let shown = names[start..].join(" → ");
            let mut d = Diagnostic::error(format!("`extends` cycle: {shown}"))
                .at(ext_key.loc)
                .hint("a service cannot extend itself, directly or through others");
            for (_, n, loc) in chain.iter().skip(start) {
                d = d.note(loc.clone(), format!("`{n}` extends here"));
            }
            self.diags.push(d);
            return None;
        }
        let (target, target_file) = match &ext.value {
            Value::Str(s) => (s.to_string(), None),
            Value::Map(_) => {
                for (k, _) in ext.as_map().unwrap_or_default() {
                    let kn = k.as_str().unwrap_or("");
                    if kn != "service" && kn != "file" {
                        self.diags.push(
                            Diagnostic::error(format!("unknown key `{kn}` in `extends`"))
                                .at(k.loc)
                                .hint("`extends` has `service` and `file`"),
                        );
                    }
                }
                let Some(s) = ext.get("service").and_then(Node::scalar_text) else {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "`extends` in service `{name}` names no service"
                        ))
                        .at(ext.loc),
                    );
                    return None;
                };
                (
                    s,
                    ext.get("file")
                        .and_then(Node::scalar_text)
                        .map(PathBuf::from),
                )
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(format!(
                        "`extends` must be a service name or a mapping, found {}",
                        ext.kind()
                    ))
                    .at(ext.loc),
                );
                return None;
            }
        };
        let target_file: Option<PathBuf> = match target_file {
            Some(p) => Some(p),
            None => file.map(Path::to_path_buf),
        };
        let base_node = match &target_file {
            None => self.main_services.get(&target).cloned(),
            Some(p) => {
                let services = self.other_file(p, &Location::from(ext.loc))?;
                services.get(&target).cloned()
            }
        };
        let Some(base_node) = base_node else {
            let where_ = target_file
                .as_ref()
                .map_or_else(|| "the project".to_string(), |p| p.display().to_string());
            self.diags.push(
                Diagnostic::error(format!(
                    "service `{name}` extends `{target}`, which is not defined in {where_}"
                ))
                .at(ext.loc),
            );
            return None;
        };
        if chain.len() >= MAX_FILE_DEPTH {
            self.diags
                .push(Diagnostic::error("`extends` chain too long").at(ext.loc));
            return None;
        }
        chain.push((here.0, here.1, Location::from(ext_key.loc)));
        let base = self.resolve_extends(target_file.as_deref(), &target, &base_node, chain);
        chain.pop();
        let base = base?;
        Some(merge::merge_service(
            without(base, "extends"),
            without(node.clone(), "extends"),
        ))
    }

    /// The services of a file named by `extends: {file: …}`, read once.
    fn other_file(&mut self, path: &Path, at: &Location) -> Option<Node> {
        if let Some(cached) = self.other_files.get(path) {
            return cached.clone();
        }
        if !self.fs.is_file(path) {
            self.diags.push(
                Diagnostic::error(format!(
                    "`extends` names {}, which does not exist",
                    path.display()
                ))
                .at(at.clone()),
            );
            self.other_files.insert(path.to_path_buf(), None);
            return None;
        }
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut stack = Vec::new();
        let services = self
            .read_compose(path, &dir, &mut stack)
            .and_then(|mut root| {
                yaml::drop_reset(&mut root);
                root.get("services").cloned()
            });
        let map = services.map(|s| {
            let mut out = BTreeMap::new();
            for (k, v) in s.as_map().unwrap_or_default() {
                if let Some(n) = k.as_str() {
                    out.insert(n.to_string(), v.clone());
                }
            }
            Node::new(
                Value::Map(
                    out.into_iter()
                        .map(|(k, v)| (Node::new(Value::Str(k.into()), s.loc), v))
                        .collect(),
                ),
                s.loc,
            )
        });
        self.other_files.insert(path.to_path_buf(), map.clone());
        map
    }

    fn cross_check(
        &mut self,
        project: &Project,
        refs: &[(&'static str, String, Location)],
        ledger: &mut Ledger,
    ) {
        for (kind, source, loc) in refs {
            let defined = match *kind {
                "secret" => project.secrets.contains_key(source),
                _ => project.configs.contains_key(source),
            };
            if !defined {
                self.diags.push(
                    Diagnostic::error(format!("undefined {kind} `{source}`"))
                        .at(loc.clone())
                        .hint(format!(
                            "define it under the top-level `{kind}s:` key, e.g. `{source}: {{file: ./{source}.txt}}`"
                        )),
                );
            }
        }
        for svc in project.services.values().chain(project.disabled.values()) {
            // docker compose drops `ports` of a host-network container (it listens on the
            // host's ports itself); say so rather than let a user wait for a published port.
            if svc.network_mode.as_deref() == Some("host") && !svc.ports.is_empty() {
                self.diags.push(
                    Diagnostic::warning(format!(
                        "service `{}` has `network_mode: host`: its `ports` are ignored, as docker \
                         compose ignores them",
                        svc.name
                    ))
                    .at(svc
                        .spans
                        .ports
                        .first()
                        .cloned()
                        .unwrap_or_else(|| svc.spans.name.clone()))
                    .hint("its processes listen on the host's own ports; remove `ports`, or drop `network_mode: host` to publish them"),
                );
            }
            for net in svc.networks.keys() {
                if net != "default" && !project.networks.contains_key(net) {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "service `{}` uses network `{net}`, which is not defined",
                            svc.name
                        ))
                        .at(svc
                            .spans
                            .networks
                            .get(net)
                            .cloned()
                            .unwrap_or_else(|| svc.spans.name.clone()))
                        .hint(format!("add `{net}:` under the top-level `networks:` key")),
                    );
                }
            }
            for (i, vol) in svc.volumes.iter().enumerate() {
                let Some(source) = vol.source.as_deref() else {
                    continue;
                };
                if vol.kind == "volume" && !project.volumes.contains_key(source) {
                    let at = svc
                        .spans
                        .volumes
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| svc.spans.name.clone());
                    self.diags.push(
                        Diagnostic::error(format!(
                            "service `{}` uses volume `{source}`, which is not defined",
                            svc.name
                        ))
                        .at(at)
                        .hint(format!(
                            "add `{source}:` under the top-level `volumes:` key, or write `./{source}` for a directory"
                        )),
                    );
                }
            }
            // `service:NAME` as a build context is the image another service builds.
            let contexts = svc
                .build
                .as_ref()
                .and_then(|b| b.extra.get("additional_contexts"))
                .and_then(serde_json::Value::as_object);
            for (name, c) in contexts.into_iter().flatten() {
                let Some(target) = c.as_str().and_then(|c| c.strip_prefix("service:")) else {
                    continue;
                };
                let buildable = project
                    .services
                    .get(target)
                    .or_else(|| project.disabled.get(target))
                    .is_some_and(|t| t.build.is_some());
                if !buildable {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "the build context `{name}` of service `{}` is `service:{target}`, which builds no image",
                            svc.name
                        ))
                        .at(svc.spans.build.clone().unwrap_or_else(|| svc.spans.name.clone()))
                        .hint(format!("give service `{target}` a `build:`, or name an image with `docker-image://IMAGE`")),
                    );
                }
            }
            // An `image` or `build` that was written but not valid has its own error already.
            let written = svc.spans.image.is_some() || svc.spans.build.is_some();
            match (&svc.image, &svc.build) {
                (None, None) if written => {}
                (None, None) => self.diags.push(
                    Diagnostic::error(format!(
                        "service `{}` has neither `image` nor `build`",
                        svc.name
                    ))
                    .at(svc.spans.name.clone())
                    .hint("add `image: NAME:TAG` so compose-fleet knows what to run"),
                ),
                (None, Some(_)) => {
                    let rule = ledger::Rule {
                        status: ledger::Status::Honoured,
                        reason: "built on this machine (`compose-fleet build`, `up`) and delivered to the hosts that run it, no registry",
                    };
                    retag_build(ledger, &svc.name, rule);
                }
                (Some(_), Some(_)) => {
                    let rule = ledger::Rule {
                        status: ledger::Status::Honoured,
                        reason: "built on this machine and delivered to the hosts; `image` names it as a tag, as docker compose does",
                    };
                    retag_build(ledger, &svc.name, rule);
                }
                _ => {}
            }
        }
    }
}

fn retag_build(ledger: &mut Ledger, service: &str, rule: ledger::Rule) {
    for e in &mut ledger.entries {
        if e.key == "build" && e.service.as_deref() == Some(service) {
            e.status = rule.status;
            e.reason = rule.reason.to_string();
        }
    }
}

fn ctx_entries(ctx: &mut normalize::Ctx<'_>, v: &Node, section: &str) -> Vec<(String, Node)> {
    let mut out = Vec::new();
    match &v.value {
        Value::Map(entries) => {
            for (k, nv) in entries {
                match k.as_str() {
                    Some(n) if n.starts_with("x-") => {}
                    Some(n) => out.push((n.to_string(), nv.clone())),
                    None => ctx.diags.push(
                        Diagnostic::error(format!(
                            "a name under `{section}` must be a string, found {}",
                            k.kind()
                        ))
                        .at(k.loc),
                    ),
                }
            }
        }
        Value::Null => {}
        _ => ctx.diags.push(
            Diagnostic::error(format!("`{section}` must be a mapping, found {}", v.kind()))
                .at(v.loc),
        ),
    }
    out
}

/// Whether `name` is a project name as docker compose takes it from `-p` or
/// `COMPOSE_PROJECT_NAME` without rewriting it: `[a-z0-9][a-z0-9_-]*`.
fn is_valid_project_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An empty service for each name, the map built in name order: each insert appends to the
/// map's last leaf.
fn placeholders(services: &[(String, Node)]) -> BTreeMap<String, model::Service> {
    let mut names: Vec<&String> = services.iter().map(|(name, _)| name).collect();
    names.sort();
    let mut map = BTreeMap::new();
    for name in names {
        map.insert(name.clone(), model::Service::default());
    }
    map
}

/// The map of `entries` (the few services disabled by profiles), moved in in name order.
fn by_name<T>(mut entries: Vec<(String, Box<T>)>) -> BTreeMap<String, T> {
    // Sorting moves a name and a pointer, not the value.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = BTreeMap::new();
    for (name, value) in entries {
        map.insert(name, *value);
    }
    map
}

/// One top-level model as compose's schema has it: a mapping with a string `model`, and
/// optionally `name`, an integer `context_size`, `runtime_flags` (strings) and `x-*` fields.
fn model_definition(diags: &mut Diagnostics, key: &Node, v: &Node) {
    let name = key.scalar_text().unwrap_or_default();
    let Some(entries) = v.as_map() else {
        let at = if v.is_null() { key } else { v };
        diags.push(
            Diagnostic::error(format!(
                "model `{name}` must be a mapping, found {}",
                v.kind()
            ))
            .at(at.loc)
            .hint("write `model: NAME` under it, e.g. `model: ai/smollm2`"),
        );
        return;
    };
    let string_list = |n: &Node| {
        n.as_seq()
            .is_some_and(|s| s.iter().all(|i| i.as_str().is_some()))
    };
    for (k, fv) in entries {
        let field = k.as_str().unwrap_or("");
        let problem = match field {
            "model" | "name" if fv.as_str().is_none() => Some(format!(
                "`{field}` of model `{name}` must be a string, found {}",
                fv.kind()
            )),
            "context_size" if !matches!(fv.value, Value::Int(_)) => Some(format!(
                "`context_size` of model `{name}` must be an integer, found {}",
                fv.kind()
            )),
            "runtime_flags" if !string_list(fv) => Some(format!(
                "`runtime_flags` of model `{name}` must be a list of strings"
            )),
            "model" | "name" | "context_size" | "runtime_flags" => None,
            _ if field.starts_with("x-") => None,
            _ => {
                diags.push(
                    Diagnostic::error(format!("unknown key `{field}` in model `{name}`"))
                        .at(k.loc)
                        .hint("a model has `model`, `name`, `context_size` and `runtime_flags`"),
                );
                None
            }
        };
        if let Some(p) = problem {
            diags.push(Diagnostic::error(p).at(fv.loc));
        }
    }
    if v.get("model").is_none() {
        diags.push(
            Diagnostic::error(format!("model `{name}` does not say which model to run"))
                .at(key.loc)
                .hint("add `model: NAME`, e.g. `model: ai/smollm2`"),
        );
    }
}

/// A service's `models` (a list of names, or a mapping by name) that the top-level `models`
/// does not define: docker compose rejects the project ("refers to undefined model").
fn undefined_models(
    diags: &mut Diagnostics,
    service: &str,
    node: &Node,
    defined: &BTreeSet<String>,
) {
    let Some(uses) = node.get("models") else {
        return;
    };
    let names: Vec<&Node> = match &uses.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Map(entries) => entries.iter().map(|(k, _)| k).collect(),
        _ => return,
    };
    for at in names {
        let Some(model) = at.scalar_text() else {
            continue;
        };
        if defined.contains(&model) {
            continue;
        }
        diags.push(
            Diagnostic::error(format!(
                "service `{service}` uses model `{model}`, which is not defined"
            ))
            .at(at.loc)
            .hint(format!(
                "add `{model}:` under the top-level `models:` key, e.g. `{model}: {{model: ai/smollm2}}`"
            )),
        );
    }
}

fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn without(mut node: Node, key: &str) -> Node {
    if let Value::Map(entries) = &mut node.value {
        entries.retain(|(k, _)| k.as_str() != Some(key));
    }
    node
}

/// Points at the offending `$` itself, wherever the scalar is written: plain, quoted, a block
/// scalar (`|`, `>`) or inside a flow collection. The value and its source text differ (quotes,
/// indentation, folding), but each `$` of the value is a `$` of the source, in order, so the
/// error's `$` is the n-th `$` from the scalar's start.
fn refine(loc: &Location, raw: &str, offset: usize, len: usize, text: &str) -> Location {
    let Some(before) = raw.get(..offset) else {
        return loc.clone();
    };
    let nth = before.matches('$').count();
    let Some(pos) = text
        .get(loc.offset..)
        .and_then(|src| src.match_indices('$').nth(nth))
        .map(|(i, _)| loc.offset + i)
    else {
        return loc.clone();
    };
    let (line, column) = crate::diag::line_column(text, pos);
    let shown_len = raw.get(offset..offset + len).map_or(1, |s| {
        s.lines().next().map_or(1, |l| l.chars().count().max(1))
    });
    Location {
        file: loc.file.clone(),
        line,
        column,
        offset: pos,
        // The value may hold more than its source (escapes): never mark past the end.
        len: shown_len.min(text.len() - pos),
    }
}

/// Makes the relative paths of one file absolute against `base` (its directory, or the project
/// directory for the main files), so that files from elsewhere (`include`, `extends: {file}`)
/// keep pointing where their author meant.
fn absolutize(root: &mut Node, base: &Path, home: Option<&str>) {
    // As compose-go's `absPath`: `~…` is the home directory joined with the rest (and cleaned),
    // an absolute path is kept as written (`/etc/app/` keeps its slash), a relative one is
    // joined to `base` and cleaned.
    let abs = |s: &str| -> String {
        if let Some(rest) = s.strip_prefix('~') {
            // Without a home directory in the environment, `~` stays for the runtime to see.
            return home.map_or_else(
                || s.to_string(),
                |h| {
                    source::normalize(Path::new(&format!("{h}/{rest}")))
                        .display()
                        .to_string()
                },
            );
        }
        if s.starts_with('/') || s.contains("://") || s.starts_with("git@") {
            return s.to_string();
        }
        source::absolute(base, Path::new(s)).display().to_string()
    };
    // A build context may also be another service's image or a remote reference.
    let context = |s: &str| -> String {
        const KEPT: &[&str] = &[
            "service:",
            "github.com/",
            "https://",
            "http://",
            "git://",
            "ssh://",
        ];
        if KEPT.iter().any(|p| s.starts_with(p)) {
            s.to_string()
        } else {
            abs(s)
        }
    };
    let Value::Map(top) = &mut root.value else {
        return;
    };
    for (k, section) in top.iter_mut() {
        match k.as_str() {
            Some("services") => {
                let Value::Map(services) = &mut section.value else {
                    continue;
                };
                for (_, svc) in services.iter_mut() {
                    let Value::Map(keys) = &mut svc.value else {
                        continue;
                    };
                    for (sk, v) in keys.iter_mut() {
                        match sk.as_str() {
                            Some("build") => match &mut v.value {
                                Value::Str(s) => *s = context(s).into(),
                                Value::Map(b) => {
                                    for (bk, bv) in b.iter_mut() {
                                        match (bk.as_str(), &mut bv.value) {
                                            (Some("context"), Value::Str(s)) => {
                                                *s = context(s).into()
                                            }
                                            (Some("additional_contexts"), Value::Map(m)) => {
                                                for (_, cv) in m.iter_mut() {
                                                    if let Value::Str(s) = &mut cv.value {
                                                        *s = context(s).into();
                                                    }
                                                }
                                            }
                                            _ => {}
                                        }
                                    }
                                }
                                _ => {}
                            },
                            Some("env_file") => {
                                let items: Vec<&mut Node> = match &mut v.value {
                                    Value::Seq(items) => items.iter_mut().collect(),
                                    _ => vec![v],
                                };
                                for item in items {
                                    match &mut item.value {
                                        Value::Str(s) => *s = abs(s).into(),
                                        Value::Map(m) => {
                                            for (mk, mv) in m.iter_mut() {
                                                if mk.as_str() == Some("path") {
                                                    if let Value::Str(s) = &mut mv.value {
                                                        *s = abs(s).into();
                                                    }
                                                }
                                            }
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            Some("volumes") => {
                                let Value::Seq(items) = &mut v.value else {
                                    continue;
                                };
                                for item in items {
                                    match &mut item.value {
                                        Value::Str(s) => {
                                            if let Some((src, rest)) = s.split_once(':') {
                                                if src.starts_with('.') || src.starts_with('~') {
                                                    *s = format!("{}:{rest}", abs(src)).into();
                                                }
                                            }
                                        }
                                        Value::Map(m) => {
                                            let is_bind = m.iter().any(|(mk, mv)| {
                                                mk.as_str() == Some("type")
                                                    && mv.as_str() == Some("bind")
                                            });
                                            if is_bind {
                                                for (mk, mv) in m.iter_mut() {
                                                    if mk.as_str() == Some("source") {
                                                        if let Value::Str(s) = &mut mv.value {
                                                            *s = abs(s).into();
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            Some("label_file") => match &mut v.value {
                                Value::Str(s) => *s = abs(s).into(),
                                Value::Seq(items) => {
                                    for item in items.iter_mut() {
                                        if let Value::Str(s) = &mut item.value {
                                            *s = abs(s).into();
                                        }
                                    }
                                }
                                _ => {}
                            },
                            Some("develop") => {
                                let Value::Map(d) = &mut v.value else {
                                    continue;
                                };
                                for (dk, dv) in d.iter_mut() {
                                    let (Some("watch"), Value::Seq(items)) =
                                        (dk.as_str(), &mut dv.value)
                                    else {
                                        continue;
                                    };
                                    for w in items.iter_mut() {
                                        let Value::Map(wm) = &mut w.value else {
                                            continue;
                                        };
                                        for (wk, wv) in wm.iter_mut() {
                                            if let (Some("path"), Value::Str(s)) =
                                                (wk.as_str(), &mut wv.value)
                                            {
                                                *s = abs(s).into();
                                            }
                                        }
                                    }
                                }
                            }
                            Some("extends") => {
                                if let Value::Map(m) = &mut v.value {
                                    for (mk, mv) in m.iter_mut() {
                                        if mk.as_str() == Some("file") {
                                            if let Value::Str(s) = &mut mv.value {
                                                *s = abs(s).into();
                                            }
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            Some("secrets") | Some("configs") => {
                let Value::Map(items) = &mut section.value else {
                    continue;
                };
                for (_, item) in items.iter_mut() {
                    let Value::Map(m) = &mut item.value else {
                        continue;
                    };
                    for (mk, mv) in m.iter_mut() {
                        if mk.as_str() == Some("file") {
                            if let Value::Str(s) = &mut mv.value {
                                *s = abs(s).into();
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docker compose v2.40.3 rejects a service using a model the top level does not define
    /// ("refers to undefined model"), in both forms of `models`; each use is located.
    #[test]
    fn undefined_models_are_located_in_both_forms() {
        let text = "list:\n  models: [llm, chat]\nmap:\n  models:\n    embed: {endpoint_var: URL}\n    llm:\n";
        let root = yaml::parse(&Arc::from("c.yaml"), text).expect("parses");
        let defined: BTreeSet<String> = ["llm".to_string()].into();
        let mut diags = Diagnostics::default();
        for name in ["list", "map"] {
            let node = root.get(name).expect("present");
            undefined_models(&mut diags, name, node, &defined);
        }
        let found: Vec<String> = diags.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "c.yaml:2:17: error: service `list` uses model `chat`, which is not defined",
                "c.yaml:5:5: error: service `map` uses model `embed`, which is not defined",
            ]
        );
    }
}
