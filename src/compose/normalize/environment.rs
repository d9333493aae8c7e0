//! `env_file` entries (short and long syntax) and the files they name, read as `.env` files.

use std::collections::BTreeMap;
use std::path::Path;

use super::Ctx;
use crate::compose::dotenv;
use crate::compose::source::absolute;
use crate::compose::yaml::{Node, Value};
use crate::diag::Diagnostic;

pub(super) fn env_file_list(ctx: &mut Ctx<'_>, v: &Node) -> Vec<(String, bool, bool, Node)> {
    let items: Vec<&Node> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        match &item.value {
            Value::Map(_) => {
                let mut path = None;
                let mut required = true;
                let mut raw = false;
                for (k, name, fv) in ctx.entries(item, "an `env_file` entry") {
                    match name {
                        "path" => path = ctx.string(fv, "`env_file.path`"),
                        "required" => required = ctx.boolean(fv, "`env_file.required`"),
                        "format" => {
                            if let Some(f) = ctx.string(fv, "`env_file.format`") {
                                raw = f == "raw";
                                if f != "raw" && !f.is_empty() {
                                    ctx.error_hint(
                                        fv,
                                        format!("unknown env_file format `{f}`"),
                                        "leave `format` out for the .env syntax, or use `raw`",
                                    );
                                }
                            }
                        }
                        other => ctx.unknown_key(
                            k,
                            other,
                            "an `env_file` entry",
                            &["path", "required", "format"],
                        ),
                    }
                }
                match path {
                    Some(p) => out.push((p, required, raw, item.clone())),
                    None => ctx.error(item, "an `env_file` entry needs a `path`"),
                }
            }
            _ => {
                if let Some(p) = ctx.string(item, "an `env_file` entry") {
                    out.push((p, true, false, item.clone()));
                }
            }
        }
    }
    out
}

pub(super) fn read_env_file(
    ctx: &mut Ctx<'_>,
    env: &mut BTreeMap<String, Option<String>>,
    path: &str,
    required: bool,
    raw: bool,
    at: &Node,
) {
    let full = absolute(ctx.project_dir, Path::new(path));
    let text = match ctx.fs.read(&full) {
        Ok(t) => t,
        Err(e) => {
            // Only a missing optional file is skipped (as compose-go): a too-large one is not.
            if required || e.kind() != std::io::ErrorKind::NotFound {
                ctx.error_hint(
                    at,
                    format!("cannot read env_file {}: {e}", full.display()),
                    crate::compose::source::read_hint(
                        &e,
                        "create the file, or mark it optional with `required: false` (long syntax)",
                    ),
                );
            }
            return;
        }
    };
    let name: std::sync::Arc<str> = full.display().to_string().into();
    ctx.sources.add(name.clone(), text.as_str().into());
    if raw {
        for (k, v) in dotenv::parse_raw(&text) {
            env.insert(k, Some(v));
        }
        return;
    }
    let lookup = |k: &str| ctx.env.get(k).cloned();
    match dotenv::parse(&text, &lookup) {
        Ok(vars) => {
            // A name without a value takes the environment's; unset there, compose drops it.
            for (k, v) in vars {
                if let Some(v) = v.or_else(|| ctx.env.get(&k).cloned()) {
                    env.insert(k, Some(v));
                }
            }
        }
        Err(e) => ctx.diags.push(
            Diagnostic::error(e.message).at(dotenv::error_location(&name, &text, e.offset, e.len)),
        ),
    }
}

/// `label_file`: one path or a list of paths, each with where it is written.
pub(super) fn label_file_list(ctx: &mut Ctx<'_>, v: &Node) -> Vec<(String, Node)> {
    let items: Vec<&Node> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        _ => vec![v],
    };
    items
        .into_iter()
        .filter_map(|item| Some((ctx.string(item, "a `label_file` entry")?, item.clone())))
        .collect()
}

/// Reads a label file into `labels` as compose does: the `.env` syntax, but no variable is
/// known while it is read (`${X}` is empty) and a name without a value is dropped.
pub(super) fn read_label_file(
    ctx: &mut Ctx<'_>,
    labels: &mut BTreeMap<String, String>,
    path: &str,
    at: Node,
) {
    let full = absolute(ctx.project_dir, Path::new(path));
    let text = match ctx.fs.read(&full) {
        Ok(t) => t,
        Err(e) => {
            ctx.error_hint(
                &at,
                format!("cannot read label_file {}: {e}", full.display()),
                crate::compose::source::read_hint(&e, "create the file, or remove the entry"),
            );
            return;
        }
    };
    let name: std::sync::Arc<str> = full.display().to_string().into();
    ctx.sources.add(name.clone(), text.as_str().into());
    match dotenv::parse(&text, &|_| None) {
        Ok(vars) => {
            for (k, v) in vars {
                if let Some(v) = v {
                    labels.insert(k, v);
                }
            }
        }
        Err(e) => ctx.diags.push(
            Diagnostic::error(e.message).at(dotenv::error_location(&name, &text, e.offset, e.len)),
        ),
    }
}
