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
pub(super) enum At<'p> {
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

/// A place in the table of typed fields: the loader follows it down a file's tree while it
/// interpolates, so that one walk both interpolates and types (a second walk over a tree of
/// 10,000 services, no longer in the caches, cost as much as the typing itself).
#[derive(Clone, Copy)]
pub(super) struct Typed(&'static Trie);

impl Typed {
    /// The file's root.
    pub(super) fn root() -> Typed {
        Typed(trie())
    }

    /// Below the mapping key `name`.
    pub(super) fn key(self, name: &str) -> Option<Typed> {
        // A path names either one key or any key at a level, never both.
        self.0
            .children
            .get(name)
            .or_else(|| self.0.children.get("*"))
            .map(Typed)
    }

    /// Below a sequence's items.
    pub(super) fn item(self) -> Option<Typed> {
        self.0.children.get("[]").map(Typed)
    }

    /// Types the interpolated string `node` when this place is a typed field. Returns whether
    /// its text is not of the field's type: the caller removes it, so that the one error about
    /// it is not followed by others from normalization.
    pub(super) fn cast(self, node: &mut Node, at: &At<'_>, diags: &mut Vec<Diagnostic>) -> bool {
        let (Some(kind), Value::Str(s)) = (self.0.kind, &node.value) else {
            return false;
        };
        match convert(s, kind) {
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
        }
    }
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
