//! Values typed by field, as docker compose types them after interpolation: `tty: ${TTY}` is the
//! boolean `true`, `count: ${GPUS}` the integer `2`. A string at one of these places (whether it
//! came from a variable or was quoted) becomes the field's type, or is an error naming the field.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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
    children: HashMap<&'static str, Trie, BuildHasherDefault<Fnv>>,
}

/// FNV-1a: every key of every service is looked up here, and SipHash's protection against
/// chosen keys is not needed for a fixed table.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Where the walk is, for messages: built into text only when there is an error.
enum At<'p> {
    Root,
    Key(&'p At<'p>, &'p str),
    Item(&'p At<'p>, usize),
}

impl At<'_> {
    fn dotted(&self) -> String {
        match self {
            At::Root => String::new(),
            At::Key(parent, k) => match parent.dotted() {
                p if p.is_empty() => (*k).to_string(),
                p => format!("{p}.{k}"),
            },
            At::Item(parent, i) => format!("{}.[{i}]", parent.dotted()),
        }
    }
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
    walk(root, trie(), &At::Root, diags);
}

/// Returns whether `node` is a typed field whose text is not of its type: the caller removes
/// it, so that the one error about it is not followed by others from normalization.
fn walk(node: &mut Node, t: &Trie, at: &At<'_>, diags: &mut Vec<Diagnostic>) -> bool {
    if let (Some(kind), Value::Str(s)) = (t.kind, &node.value) {
        return match convert(s, kind) {
            Ok(Some(v)) => {
                node.value = v;
                false
            }
            Ok(None) => false,
            Err(want) => {
                diags.push(
                    Diagnostic::error(format!("`{}` must be {want}, found `{s}`", at.dotted()))
                        .at(node.loc)
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
                let bad = walk(item, item_trie, &At::Item(at, i), diags);
                i += 1;
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
                !walk(v, next, &At::Key(at, name), diags)
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
