//! A YAML document as a tree of nodes that each remember where they were written.
//!
//! Inventories are small and loosely typed (Ansible variables may be anything), so rather than
//! deserializing straight into typed structs we read a spanned tree with `serde-saphyr` and walk
//! it by hand: that lets every problem (unknown key, wrong type, bad size) point at its own
//! `file:line:column`, and lets one run report all of them.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::compose::model::Location;
use crate::limits::{Limit, Limits};

/// A scalar, sequence or mapping, with its position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub at: Pos,
}

/// A position as `serde-saphyr` reports it (line and column 1-based, byte offset when known).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order (duplicates are kept: the walker reports them).
    Map(Vec<(Key, Node)>),
}

/// A mapping key: its text and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub at: Pos,
}

impl Pos {
    /// The start of a file.
    pub fn start() -> Pos {
        Pos {
            line: 1,
            column: 1,
            offset: 0,
            len: 0,
        }
    }

    /// The position in a named file, as diagnostics want it.
    pub fn in_file(&self, file: &Arc<str>) -> Location {
        Location {
            file: file.clone(),
            line: self.line,
            column: self.column,
            offset: self.offset,
            len: self.len,
        }
    }

    fn from_saphyr(loc: serde_saphyr::Location) -> Pos {
        let span = loc.span();
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
            offset: span
                .byte_offset()
                .and_then(|o| usize::try_from(o).ok())
                .unwrap_or(0),
            len: span
                .byte_len()
                .and_then(|l| usize::try_from(l).ok())
                .unwrap_or(1),
        }
    }
}

impl Value {
    /// What the value is, in words, for "expected a mapping, found a list" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar as text (numbers and booleans as YAML writes them); `None` for collections.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// Which reader a document is for: ours refuses duplicate keys; Ansible's keeps the last one
/// (as PyYAML does, with a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Own,
    Ansible,
}

/// Why a document is not valid YAML, in our words.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub pos: Option<Pos>,
    pub hint: Option<String>,
}

/// Parses YAML text into a tree (our own format's rules, default limits).
pub fn parse(text: &str) -> Result<Node, (String, Option<Pos>)> {
    parse_mode(text, Mode::Own, &Limits::default()).map_err(|e| (e.message, e.pos))
}

/// Parses YAML text into a tree, within `limits` (nesting depth, alias expansion).
pub fn parse_mode(text: &str, mode: Mode, limits: &Limits) -> Result<Node, YamlError> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Node {
            value: Value::Null,
            at: Pos::start(),
        });
    }
    let depth = limits.get_usize(Limit::Depth);
    let replay = limits.get_usize(Limit::AliasEvents);
    let options = serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: replay,
            max_replay_stack_depth: 64,
        },
        duplicate_keys: match mode {
            Mode::Own => serde_saphyr::DuplicateKeyPolicy::Error,
            Mode::Ansible => serde_saphyr::DuplicateKeyPolicy::LastWins,
        },
        merge_keys: serde_saphyr::MergeKeyPolicy::Merge,
        emit_comments: false,
        // Inventories of 100k hosts have a few million nodes; the host limit bounds them.
        budget: serde_saphyr::budget! {
            max_depth: depth,
            flow_nesting_limit: depth,
            max_events: 100_000_000,
            max_nodes: 100_000_000,
            max_aliases: 1_000_000,
            max_anchors: 1_000_000,
            max_merge_keys: 1_000_000,
            enforce_alias_anchor_ratio: false,
        },
        legacy_octal_numbers: true,
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        use serde_saphyr::Error as E;
        use serde_saphyr::MessageFormatter as _;
        let pos = e.location().map(Pos::from_saphyr);
        let mut inner = &e;
        while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
            inner = error;
        }
        let mut message = serde_saphyr::UserMessageFormatter
            .format_message(inner)
            .replace(['\n', '\r'], " ");
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        let mut hint = None;
        match inner {
            E::Budget {
                breach: serde_saphyr::budget::BudgetBreach::Depth { .. },
                ..
            } => {
                message = format!("the YAML is nested more than {depth} levels deep");
                hint = Some(Limit::Depth.hint(limits.get(Limit::Depth)));
            }
            E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
            | E::AliasReplayCounterOverflow { .. }
            | E::Budget { .. } => {
                message = "too many YAML alias expansions (anchors that reference each other \
                           multiply)"
                    .to_string();
                hint = Some(Limit::AliasEvents.hint(limits.get(Limit::AliasEvents)));
            }
            E::DuplicateMappingKey { .. } => {
                hint = Some("a key may appear only once in a mapping: remove or rename one".into());
            }
            _ => {}
        }
        YamlError { message, pos, hint }
    })
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            at: Pos::from_saphyr(spanned.referenced),
        })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        // A string key (nearly all of them) is moved, not copied.
        let text = match spanned.value {
            Value::Str(s) => s,
            other => other.scalar_text().ok_or_else(|| {
                de::Error::custom(format!(
                    "a mapping key must be a scalar, found {}",
                    other.kind()
                ))
            })?,
        };
        Ok(Key {
            text,
            at: Pos::from_saphyr(spanned.referenced),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .or(Ok(Value::Float(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_positions() {
        let text = "hosts:\n  web-1: { address: 10.0.0.1, port: 2222 }\n";
        let root = parse(text).unwrap();
        let Value::Map(top) = &root.value else {
            panic!("not a map: {root:?}")
        };
        assert_eq!(top[0].0.text, "hosts");
        assert_eq!((top[0].0.at.line, top[0].0.at.column), (1, 1));
        let Value::Map(hosts) = &top[0].1.value else {
            panic!()
        };
        assert_eq!(hosts[0].0.text, "web-1");
        assert_eq!((hosts[0].0.at.line, hosts[0].0.at.column), (2, 3));
        let Value::Map(fields) = &hosts[0].1.value else {
            panic!()
        };
        assert_eq!(fields[1].0.text, "port");
        assert_eq!(fields[1].1.value, Value::Int(2222));
        assert_eq!(fields[1].1.at.line, 2);
        assert_eq!(&text[fields[1].0.at.offset..][..4], "port");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (msg, pos) = parse("hosts:\n  a: [1, 2\n").unwrap_err();
        assert!(!msg.is_empty());
        assert!(pos.is_some_and(|p| p.line >= 2), "{msg} {pos:?}");
    }
}
