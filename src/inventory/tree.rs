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

/// Parses YAML text into a tree. The error is `serde-saphyr`'s message and position.
pub fn parse(text: &str) -> Result<Node, (String, Option<Pos>)> {
    if text.trim().is_empty() {
        return Ok(Node {
            value: Value::Null,
            at: Pos {
                line: 1,
                column: 1,
                offset: 0,
                len: 1,
            },
        });
    }
    serde_saphyr::from_str::<Node>(text).map_err(|e| {
        let pos = e.location().map(Pos::from_saphyr);
        let opts = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
        let mut msg = e.render_with_options(opts);
        // The plain rendering appends " at line L column C"; we print the position ourselves.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        (msg, pos)
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
        let text = spanned.value.scalar_text().ok_or_else(|| {
            de::Error::custom(format!(
                "a mapping key must be a scalar, found {}",
                spanned.value.kind()
            ))
        })?;
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
