//! Values typed by field, as docker compose types them after interpolation: `tty: ${TTY}` is the
//! boolean `true`, `count: ${GPUS}` the integer `2`. A string at one of these places (whether it
//! came from a variable or was quoted) becomes the field's type, or is an error naming the field.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::yaml::{Node, Value};
use crate::diag::Diagnostic;

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int,
    /// An integer, or kept as text when it is not one (`count: all`).
    IntOrText,
    Float,
}

/// The typed fields, as paths from the file's root: `*` is any key of a mapping, `[]` any item
/// of a sequence. Taken from what docker compose v2.40 prints for each field given a variable.
const TYPED: &[(&[&str], Kind)] = &[
    (&["services", "*", "init"], Kind::Bool),
    (&["services", "*", "oom_kill_disable"], Kind::Bool),
    (&["services", "*", "privileged"], Kind::Bool),
    (&["services", "*", "read_only"], Kind::Bool),
    (&["services", "*", "stdin_open"], Kind::Bool),
    (&["services", "*", "tty"], Kind::Bool),
    (&["services", "*", "healthcheck", "disable"], Kind::Bool),
    (&["services", "*", "volumes", "[]", "read_only"], Kind::Bool),
    (
        &["services", "*", "volumes", "[]", "volume", "nocopy"],
        Kind::Bool,
    ),
    (&["services", "*", "build", "privileged"], Kind::Bool),
    (&["services", "*", "depends_on", "*", "restart"], Kind::Bool),
    (&["networks", "*", "external"], Kind::Bool),
    (&["networks", "*", "internal"], Kind::Bool),
    (&["networks", "*", "attachable"], Kind::Bool),
    (&["networks", "*", "enable_ipv4"], Kind::Bool),
    (&["networks", "*", "enable_ipv6"], Kind::Bool),
    (&["volumes", "*", "external"], Kind::Bool),
    (&["secrets", "*", "external"], Kind::Bool),
    (&["configs", "*", "external"], Kind::Bool),
    (&["services", "*", "cpu_count"], Kind::Int),
    (&["services", "*", "cpu_period"], Kind::Int),
    (&["services", "*", "cpu_quota"], Kind::Int),
    (&["services", "*", "cpu_rt_period"], Kind::Int),
    (&["services", "*", "cpu_rt_runtime"], Kind::Int),
    (&["services", "*", "cpu_shares"], Kind::Int),
    (&["services", "*", "oom_score_adj"], Kind::Int),
    (&["services", "*", "pids_limit"], Kind::Int),
    (&["services", "*", "scale"], Kind::Int),
    (&["services", "*", "deploy", "replicas"], Kind::Int),
    (
        &["services", "*", "deploy", "update_config", "parallelism"],
        Kind::Int,
    ),
    (
        &["services", "*", "deploy", "rollback_config", "parallelism"],
        Kind::Int,
    ),
    (
        &["services", "*", "deploy", "restart_policy", "max_attempts"],
        Kind::Int,
    ),
    (
        &[
            "services",
            "*",
            "deploy",
            "placement",
            "max_replicas_per_node",
        ],
        Kind::Int,
    ),
    (
        &["services", "*", "deploy", "resources", "limits", "pids"],
        Kind::Int,
    ),
    (&["services", "*", "healthcheck", "retries"], Kind::Int),
    (&["services", "*", "ports", "[]", "target"], Kind::Int),
    (&["services", "*", "ulimits", "*"], Kind::Int),
    (&["services", "*", "ulimits", "*", "soft"], Kind::Int),
    (&["services", "*", "ulimits", "*", "hard"], Kind::Int),
    (
        &[
            "services",
            "*",
            "deploy",
            "resources",
            "reservations",
            "devices",
            "[]",
            "count",
        ],
        Kind::IntOrText,
    ),
    (&["services", "*", "gpus", "[]", "count"], Kind::IntOrText),
    (&["services", "*", "cpus"], Kind::Float),
    (&["services", "*", "cpu_percent"], Kind::Float),
    (
        &[
            "services",
            "*",
            "deploy",
            "update_config",
            "max_failure_ratio",
        ],
        Kind::Float,
    ),
    (
        &[
            "services",
            "*",
            "deploy",
            "rollback_config",
            "max_failure_ratio",
        ],
        Kind::Float,
    ),
    (
        &["services", "*", "deploy", "resources", "limits", "cpus"],
        Kind::Float,
    ),
    (
        &[
            "services",
            "*",
            "deploy",
            "resources",
            "reservations",
            "cpus",
        ],
        Kind::Float,
    ),
];

/// [`TYPED`] as a tree of path segments, built once: one walk of the file follows all paths.
#[derive(Default)]
struct Trie {
    kind: Option<Kind>,
    children: HashMap<&'static str, Trie>,
}

fn trie() -> &'static Trie {
    static TRIE: OnceLock<Trie> = OnceLock::new();
    TRIE.get_or_init(|| {
        let mut root = Trie::default();
        for (path, kind) in TYPED {
            let mut t = &mut root;
            for seg in *path {
                t = t.children.entry(seg).or_default();
            }
            t.kind = Some(*kind);
        }
        root
    })
}

/// Types every string at a typed field of `root` (one file's tree, interpolated).
pub fn cast(root: &mut Node, diags: &mut Vec<Diagnostic>) {
    let mut at = Vec::new();
    walk(root, trie(), &mut at, diags);
}

/// Returns whether `node` is a typed field whose text is not of its type: the caller removes
/// it, so that the one error about it is not followed by others from normalization.
fn walk(node: &mut Node, t: &Trie, at: &mut Vec<String>, diags: &mut Vec<Diagnostic>) -> bool {
    if let (Some(kind), Value::Str(s)) = (t.kind, &node.value) {
        return match convert(s, kind) {
            Ok(Some(v)) => {
                node.value = v;
                false
            }
            Ok(None) => false,
            Err(want) => {
                diags.push(
                    Diagnostic::error(format!("`{}` must be {want}, found `{s}`", at.join(".")))
                        .at(node.loc.clone())
                        .hint(match kind {
                            Kind::Bool => "write `true` or `false` (compose also reads `yes`/`no`, `on`/`off`, `y`/`n`)",
                            _ => "write a number, or set the variable to one",
                        }),
                );
                true
            }
        };
    }
    if t.children.is_empty() {
        return false;
    }
    match &mut node.value {
        Value::Seq(items) => {
            let Some(item_trie) = t.children.get("[]") else {
                return false;
            };
            let mut i = 0;
            items.retain_mut(|item| {
                at.push(format!("[{i}]"));
                i += 1;
                let bad = walk(item, item_trie, at, diags);
                at.pop();
                !bad
            });
        }
        Value::Map(entries) => {
            let any = t.children.get("*");
            entries.retain_mut(|(k, v)| {
                let Some(name) = k.as_str() else { return true };
                // A path names either one key or any key at a level, never both.
                let Some(next) = t.children.get(name).or(any) else {
                    return true;
                };
                at.push(name.to_string());
                let bad = walk(v, next, at, diags);
                at.pop();
                !bad
            });
        }
        _ => {}
    }
    false
}

/// The typed value, `None` to keep the text, or what was expected.
fn convert(s: &str, kind: Kind) -> Result<Option<Value>, &'static str> {
    match kind {
        Kind::Bool => match s.to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" | "on" => Ok(Some(Value::Bool(true))),
            "n" | "no" | "false" | "off" => Ok(Some(Value::Bool(false))),
            _ => Err("a boolean"),
        },
        Kind::Int => s
            .parse::<i64>()
            .map(|i| Some(Value::Int(i)))
            .map_err(|_| "an integer"),
        Kind::IntOrText => Ok(s.parse::<i64>().ok().map(Value::Int)),
        Kind::Float => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Some(Value::Float(f))),
            _ => Err("a number"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_as_compose_reads_them() {
        for (s, want) in [
            ("TRUE", true),
            ("on", true),
            ("y", true),
            ("Off", false),
            ("no", false),
        ] {
            assert_eq!(convert(s, Kind::Bool), Ok(Some(Value::Bool(want))), "{s}");
        }
        assert_eq!(convert("1", Kind::Bool), Err("a boolean"));
        assert_eq!(convert("", Kind::Bool), Err("a boolean"));
        assert_eq!(convert("all", Kind::IntOrText), Ok(None));
        assert_eq!(convert("2", Kind::IntOrText), Ok(Some(Value::Int(2))));
    }
}
