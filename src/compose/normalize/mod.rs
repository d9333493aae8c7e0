//! From the merged, interpolated YAML tree to the typed [`model`](super::model): every short
//! syntax expanded, sizes in bytes, durations parsed, every key checked against the spec (unknown
//! keys get a "did you mean") and classified in the fidelity ledger.
//!
//! One file per part of the spec: [`service`] (the service keys, and the per-key helpers),
//! [`ports`], [`volumes`], [`deploy`], [`environment`] (`env_file`, `environment`), [`build`],
//! [`toplevel`] (networks, volumes, secrets, configs) and [`shell`] (command words). This file
//! holds [`Ctx`], the typed readers of scalars every part shares.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::ledger::{self, Ledger, Rule, Status};
use super::model::{self, *};
use super::source::FileSource;
use super::yaml::{FileId, Node, Span, Value};
use super::Environment;
use crate::diag::{Diagnostic, Diagnostics, SourceMap};

mod build;
mod deploy;
mod environment;
mod ports;
mod service;
mod shell;
mod toplevel;
mod volumes;

pub use ports::parse_port;
pub use service::service;
pub use shell::shell_split;
pub use toplevel::{file_object, network, volume};
pub(crate) use volumes::volume_fields;

/// What normalization needs besides the tree.
pub struct Ctx<'a> {
    pub diags: &'a mut Diagnostics,
    pub ledger: &'a mut Ledger,
    pub sources: &'a mut SourceMap,
    pub project_dir: &'a Path,
    /// Variables for `environment` entries without a value and for `env_file` interpolation.
    pub env: &'a Environment,
    pub fs: &'a dyn FileSource,
    /// Every secret/config reference (`secret`/`config`, source, where), checked against the
    /// top-level definitions once all services are read.
    pub refs: Vec<(&'static str, String, Location)>,
    /// The input bounds in force ([`super::bounds`] checks replicas against them).
    pub limits: &'a crate::limits::Limits,
    /// What compose accepts but the fleet cannot run (see [`Ctx::cannot_run`]).
    pub unrunnable: Vec<Diagnostic>,
    /// The last file name a span was turned into a location with ([`Ctx::loc`]).
    pub last_file: Option<(FileId, Arc<str>)>,
}

impl Ctx<'_> {
    /// The location of `span`, as `Location::from` gives it. A service's tree comes from one
    /// file: the file's name is remembered here rather than looked up in the process-wide table
    /// of names (a lock) for each of the ~20 locations a service keeps (the ledger's, the
    /// spans later stages report at).
    fn loc(&mut self, span: Span) -> Location {
        let file = match &self.last_file {
            Some((id, name)) if *id == span.file => name.clone(),
            _ => {
                let name = span.file.name();
                self.last_file = Some((span.file, name.clone()));
                name
            }
        };
        Location {
            file,
            line: span.line,
            column: span.column,
            offset: span.offset as usize,
            len: span.len as usize,
        }
    }

    fn error(&mut self, at: &Node, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(msg).at(at.loc));
    }

    fn error_hint(&mut self, at: &Node, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(msg).at(at.loc).hint(hint));
    }

    fn unknown_key(&mut self, key: &Node, name: &str, place: &str, known: &[&str]) {
        let mut d = Diagnostic::error(format!("unknown key `{name}` in {place}")).at(key.loc);
        if let Some(s) = ledger::suggest(name, known) {
            d = d.label(format!("did you mean `{s}`?"));
        } else {
            d = d.hint(
                "the Compose Specification has no such key here; extension fields start with `x-`",
            );
        }
        self.diags.push(d);
    }

    /// Iterates a mapping's string keys; reports non-string keys and non-mappings.
    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> Vec<(&'n Node, &'n str, &'n Node)> {
        match &node.value {
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    match k.as_str() {
                        Some(name) => out.push((k, name, v)),
                        None => self.error_hint(
                            k,
                            format!("a key in {what} must be a string, found {}", k.kind()),
                            "quote the key",
                        ),
                    }
                }
                out
            }
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    node,
                    format!("{what} must be a mapping, found {}", node.kind()),
                );
                Vec::new()
            }
        }
    }

    /// A string, and only a string: docker compose refuses `user: 1000` or `command: [5]` (its
    /// schema types these fields as strings).
    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.to_string()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                self.error_hint(
                    node,
                    format!("{what} must be a string, found {}", node.kind()),
                    format!("quote it: `\"{}\"`", node.scalar_text().unwrap_or_default()),
                );
                None
            }
            _ => {
                self.error(
                    node,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A string, or a number or boolean taken as its text: where compose's schema allows them
    /// (`environment` and `labels` values, `expose` entries).
    fn scalar(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.scalar_text() {
            Some(s) => Some(s),
            None => {
                self.error(
                    node,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn opt_string(&mut self, node: &Node, what: &str) -> Option<String> {
        if node.is_null() {
            None
        } else {
            self.string(node, what)
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> bool {
        match &node.value {
            Value::Bool(b) => *b,
            Value::Str(s) if s.eq_ignore_ascii_case("true") => true,
            Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
            Value::Null => false,
            _ => {
                self.error(
                    node,
                    format!("{what} must be `true` or `false`, found {}", node.kind()),
                );
                false
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.error(node, format!("{what} must be an integer, found `{s}`"));
                    None
                }
            },
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(*f as i64),
            _ => {
                self.error(
                    node,
                    format!("{what} must be an integer, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn unsigned(&mut self, node: &Node, what: &str) -> Option<u64> {
        let i = self.integer(node, what)?;
        match u64::try_from(i) {
            Ok(u) => Some(u),
            Err(_) => {
                self.error(node, format!("{what} must not be negative, found {i}"));
                None
            }
        }
    }

    fn u32(&mut self, node: &Node, what: &str) -> Option<u32> {
        let u = self.unsigned(node, what)?;
        match u32::try_from(u) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(node, format!("{what} is too large: {u}"));
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        let v = match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(f) if f.is_finite() && f >= 0.0 => Some(f),
            _ => {
                self.error(
                    node,
                    format!(
                        "{what} must be a non-negative number, found {}",
                        shown(node)
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<model::Duration> {
        // A bare number is refused, as compose refuses it (`30` is not `30s` there).
        let text = self.string(node, what)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node, format!("{what}: {e}"));
                None
            }
        }
    }

    fn bytes(&mut self, node: &Node, what: &str) -> Option<Bytes> {
        let text = match &node.value {
            Value::Int(i) if *i >= 0 => return Some(Bytes(*i as u64)),
            _ => self.string(node, what)?,
        };
        match parse_bytes(&text) {
            Ok(b) => Some(Bytes(b)),
            Err(e) => {
                self.error(node, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A string or a list of strings.
    fn string_list(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|i| self.string(i, what)).collect(),
            Value::Null => Vec::new(),
            _ => self.string(node, what).into_iter().collect(),
        }
    }

    /// `command`/`entrypoint`: a list, or a string split like a shell would.
    fn command(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Null => None,
            Value::Seq(_) => Some(self.string_list(node, what)),
            _ => {
                let s = self.string(node, what)?;
                match shell::shell_words(&s) {
                    Ok(split) => {
                        if let Some(at) = split.dropped_at {
                            self.dropped_words(node, what, &s, &split.words, at);
                        }
                        Some(split.words)
                    }
                    Err(e) => {
                        self.error(node, format!("{what}: {e}"));
                        None
                    }
                }
            }
        }
    }

    /// Warns that a string command's words end at a shell operator: compose (and so the fleet)
    /// runs only the words before it, which is rarely what the author meant.
    fn dropped_words(&mut self, node: &Node, what: &str, s: &str, words: &[String], at: usize) {
        let rest = s.get(at..).unwrap_or_default().trim();
        self.diags.push(
            Diagnostic::warning(format!(
                "{what} runs `{}` only: docker compose splits a string {what} into words without a shell, and drops `{rest}` at the shell operator",
                words.join(" ")
            ))
            .at(node.loc)
            .hint(format!(
                "to run the whole line through a shell, write it as a list: `[\"sh\", \"-c\", {}]`",
                serde_json::Value::String(s.to_string())
            )),
        );
    }

    /// A mapping or a list of `KEY=VALUE` (`KEY` alone → `None`).
    fn dict(&mut self, node: &Node, what: &str) -> Vec<(String, Option<String>)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| {
                    let s = self.string(i, what)?;
                    Some(match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (s, None),
                    })
                })
                .collect(),
            _ => self
                .entries(node, what)
                .into_iter()
                .map(|(_, name, v)| {
                    let value = if v.is_null() {
                        None
                    } else {
                        self.scalar(v, what)
                    };
                    (name.to_string(), value)
                })
                .collect(),
        }
    }
}

pub(super) fn shown(node: &Node) -> String {
    node.scalar_text()
        .map_or_else(|| node.kind().to_string(), |s| format!("`{s}`"))
}

fn record(ctx: &mut Ctx<'_>, key: &str, service: &str, rule: Rule, at: &Node) {
    let loc = ctx.loc(at.loc);
    ctx.ledger.record(key, Some(service), rule, loc);
    match rule.status {
        Status::Honoured => {}
        Status::Accepted => {
            if key != "build" {
                ctx.diags.push(
                    Diagnostic::warning(format!(
                        "`{key}` in service `{service}` is accepted but not honoured: {}",
                        rule.reason
                    ))
                    .at(at.loc),
                );
            }
        }
        Status::Rejected => ctx.cannot_run(
            format!(
                "`{key}` in service `{service}` cannot run on the fleet: {}",
                rule.reason
            ),
            &Location::from(at.loc),
            None,
        ),
    }
}

impl Ctx<'_> {
    /// Something compose accepts but the fleet cannot run: `config` succeeds with a warning
    /// (an error under `--strict`); placement refuses the project with the same text as an error.
    fn cannot_run(&mut self, msg: String, at: &Location, hint: Option<&str>) {
        let mut warning = Diagnostic::warning(msg.clone()).at(at.clone());
        let mut error = Diagnostic::error(msg).at(at.clone());
        if let Some(h) = hint {
            warning = warning.hint(h);
            error = error.hint(h);
        }
        self.diags.push(warning);
        self.unrunnable.push(error);
    }
}

/// Changes the ledger entry of `key` in `service` (when a key is honoured only for some values).
fn retag(ctx: &mut Ctx<'_>, key: &str, service: &str, status: Status, reason: &str) {
    if let Some(e) = ctx
        .ledger
        .entries
        .iter_mut()
        .rev()
        .find(|e| e.key == key && e.service.as_deref() == Some(service))
    {
        e.status = status;
        e.reason = reason.to_string();
    }
}

pub(super) fn labels(ctx: &mut Ctx<'_>, v: &Node, what: &str) -> BTreeMap<String, String> {
    ctx.dict(v, what)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}
