//! Values typed by field, as docker compose types them after interpolation: `tty: ${TTY}` is the
//! boolean `true`, `count: ${GPUS}` the integer `2`. A string at one of these places (whether it
//! came from a variable or was quoted) becomes the field's type, or is an error naming the field.

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

/// Types every string at a typed field of `root` (one file's tree, interpolated).
pub fn cast(root: &mut Node, diags: &mut Vec<Diagnostic>) {
    // Most files have none of these keys outside `services`; the walk only follows the paths.
    for (path, kind) in TYPED {
        let mut at = Vec::with_capacity(path.len());
        walk(root, path, *kind, &mut at, diags);
    }
}

/// Returns whether `node` is a typed field whose text is not of its type: the caller removes
/// it, so that the one error about it is not followed by others from normalization.
fn walk(
    node: &mut Node,
    path: &[&str],
    kind: Kind,
    at: &mut Vec<String>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let Some((first, rest)) = path.split_first() else {
        let Value::Str(s) = &node.value else {
            return false;
        };
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
    };
    match (&mut node.value, *first) {
        (Value::Seq(items), "[]") => {
            let mut i = 0;
            items.retain_mut(|item| {
                at.push(format!("[{i}]"));
                i += 1;
                let bad = walk(item, rest, kind, at, diags);
                at.pop();
                !bad
            });
        }
        (Value::Map(entries), key) => entries.retain_mut(|(k, v)| {
            let Some(name) = k.as_str() else { return true };
            if key != "*" && key != name {
                return true;
            }
            at.push(name.to_string());
            let bad = walk(v, rest, kind, at, diags);
            at.pop();
            !bad
        }),
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
