//! The loader's share of the input bounds ([`crate::limits`]): replicas per service and in total,
//! the length of names and image references. Each check reports at the user's text with the
//! flag that raises the limit, and runs while loading — before `plan` expands replicas into
//! objects (10⁹ replicas of one service once grew `plan` past 15 GB).

use super::model::Project;
use super::normalize::Ctx;
use super::yaml::{Node, Value};
use crate::diag::{Diagnostic, Diagnostics};
use crate::limits::{Limit, Limits};

/// `n` replicas of one service (`deploy.replicas`, `scale`, written at `at`), or `None` with an
/// error when over the `replicas-per-service` limit.
pub fn replicas(ctx: &mut Ctx<'_>, at: &Node, n: u32, what: &str) -> Option<u32> {
    let max = ctx.limits.get(Limit::ReplicasPerService);
    if u64::from(n) <= max {
        return Some(n);
    }
    ctx.diags.push(over(
        Limit::ReplicasPerService,
        max,
        format!("{what} is {n}, over the limit of {max} replicas of one service"),
        at,
    ));
    None
}

/// The enabled services' replicas together, against the `replicas-total` limit. A service counts
/// its `deploy.replicas` (or `scale`), else 1; the error points at the service with the most.
pub fn total_replicas(project: &Project, limits: &Limits, diags: &mut Diagnostics) {
    let max = limits.get(Limit::ReplicasTotal);
    let count = |s: &super::model::Service| {
        u64::from(
            s.deploy
                .as_ref()
                .and_then(|d| d.replicas)
                .or(s.scale)
                .unwrap_or(1),
        )
    };
    let total: u64 = project.services.values().map(count).sum();
    if total <= max {
        return;
    }
    let Some(biggest) = project.services.values().max_by_key(|s| count(s)) else {
        return;
    };
    diags.push(
        Diagnostic::error(format!(
            "the project has {total} replicas in all, over the limit of {max} replicas in one \
             project"
        ))
        .at(biggest.spans.name.clone())
        .label(format!("`{}` has {} of them", biggest.name, count(biggest)))
        .hint(Limit::ReplicasTotal.hint(max)),
    );
}

/// The names a project defines (services, networks, volumes, secrets, configs; `name:` of the
/// top-level ones), label keys and image references of the merged file, against the
/// `name-length` and `image-ref-length` limits.
pub fn names(root: &Node, limits: &Limits, diags: &mut Diagnostics) {
    let name_max = limits.get(Limit::NameLength);
    let image_max = limits.get(Limit::ImageRefLength);
    let name = |what: &str, text: &str, at: &Node, diags: &mut Diagnostics| {
        let len = text.chars().count() as u64;
        if len > name_max {
            diags.push(over(
                Limit::NameLength,
                name_max,
                format!("this {what} is {len} characters long, over the limit of {name_max}"),
                at,
            ));
        }
    };
    for section in ["services", "networks", "volumes", "secrets", "configs"] {
        let what = match section {
            "services" => "service name",
            "networks" => "network name",
            "volumes" => "volume name",
            "secrets" => "secret name",
            _ => "config name",
        };
        for (k, v) in root.get(section).and_then(Node::as_map).unwrap_or_default() {
            let Some(key) = k.as_str() else { continue };
            if key.starts_with("x-") {
                continue;
            }
            name(what, key, k, diags);
            if let Some(n) = v.get("name").and_then(Node::as_str) {
                name(what, n, v.get("name").unwrap_or(v), diags);
            }
            for labels in [
                v.get("labels"),
                v.get("deploy").and_then(|d| d.get("labels")),
            ] {
                for (key, at) in label_keys(labels) {
                    name("label key", key, at, diags);
                }
            }
            if section != "services" {
                continue;
            }
            for field in ["container_name", "hostname"] {
                if let Some(n) = v.get(field) {
                    if let Some(text) = n.as_str() {
                        name(field, text, n, diags);
                    }
                }
            }
            if let Some(image) = v.get("image") {
                if let Some(text) = image.as_str() {
                    let len = text.chars().count() as u64;
                    if len > image_max {
                        diags.push(over(
                            Limit::ImageRefLength,
                            image_max,
                            format!(
                                "this image reference is {len} characters long, over the limit \
                                 of {image_max}"
                            ),
                            image,
                        ));
                    }
                }
            }
        }
    }
}

/// Label keys with their nodes, from the mapping form or the `KEY=VALUE` list form.
fn label_keys(labels: Option<&Node>) -> Vec<(&str, &Node)> {
    match labels.map(|l| &l.value) {
        Some(Value::Map(entries)) => entries
            .iter()
            .filter_map(|(k, _)| Some((k.as_str()?, k)))
            .collect(),
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|i| {
                let s = i.as_str()?;
                Some((s.split_once('=').map_or(s, |(k, _)| k), i))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn over(limit: Limit, max: u64, message: String, at: &Node) -> Diagnostic {
    Diagnostic::error(message).at(at.loc).hint(limit.hint(max))
}
