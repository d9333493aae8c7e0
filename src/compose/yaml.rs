//! YAML → a generic tree whose every node keeps its position ([`Node`]).
//!
//! This is the one place that knows the YAML library (`serde-saphyr`): anchors, aliases, merge keys
//! (`<<`, also a sequence of mappings), duplicate-key errors and the alias-bomb budget all happen
//! here. Everything after works on [`Node`]s, so swapping the library means rewriting this file only
//! (and its fast path, `yaml/fast.rs`, which builds nodes from parser events directly for
//! speed and hands every case it is not sure of back to serde-saphyr; the events come from our
//! own scanner for block-style YAML, `yaml/scan.rs`, or from the library's parser where the
//! scanner gives up).

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter as _, Spanned, Tagged};

use super::model::Location;
use crate::diag::Diagnostic;
use crate::limits::{Limit, Limits};

mod fast;
mod scan;
mod text;

pub use text::Text;

/// A YAML node with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Where it was written: a [`Span`], which `.into()` makes a [`Location`] for diagnostics.
    pub loc: Span,
    /// The compose merge tag written on it (`!reset`, `!override`), if any.
    pub tag: Tag,
}

/// Where a node was written, small and `Copy`: a [`Location`] with the file's name replaced by
/// its number in the table of names ([`FileId`]). A tree has hundreds of thousands of nodes;
/// a `Location` in each (40 bytes, and a reference count on the file's name to raise and lower
/// for every node) was a fifth of the time spent building and dropping trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub line: u32,
    pub column: u32,
    /// Byte offset of the marked text in the file, and its length.
    pub offset: u32,
    pub len: u32,
}

/// A file's name as a number: its index in the process's table of the file names trees were
/// read from. The table only grows, by one entry per distinct name (a handful per project), and
/// is not observable: the same name always gets the same number, and a [`Span`] turns back
/// into the same [`Location`] whatever the numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileId(u32);

/// The names by number, and the numbers by name.
type FileNames = (Vec<Arc<str>>, std::collections::HashMap<Arc<str>, u32>);

fn file_names() -> &'static std::sync::Mutex<FileNames> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<FileNames>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        // Number 0 is the empty name (`Location::default()`'s).
        let empty: Arc<str> = Arc::from("");
        let mut by_name = std::collections::HashMap::new();
        by_name.insert(empty.clone(), 0);
        std::sync::Mutex::new((vec![empty], by_name))
    })
}

impl FileId {
    /// The number of `name`.
    pub fn of(name: &Arc<str>) -> FileId {
        // A poisoned lock still holds a consistent table: entries are only ever appended.
        let mut t = file_names()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&i) = t.1.get(name) {
            return FileId(i);
        }
        let i = u32::try_from(t.0.len()).unwrap_or(u32::MAX);
        t.0.push(name.clone());
        t.1.insert(name.clone(), i);
        FileId(i)
    }

    /// The name this number stands for.
    pub fn name(self) -> Arc<str> {
        let t = file_names()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.0.get(self.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

impl Span {
    /// The span of `loc` (offsets past 4 GiB are clamped: no file that large is read).
    pub fn of(loc: &Location) -> Span {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            file: FileId::of(&loc.file),
            line: loc.line,
            column: loc.column,
            offset: clamp(loc.offset),
            len: clamp(loc.len),
        }
    }

    /// The file's name, for messages.
    pub fn file(&self) -> Arc<str> {
        self.file.name()
    }
}

impl From<Span> for Location {
    fn from(s: Span) -> Location {
        Location {
            file: s.file.name(),
            line: s.line,
            column: s.column,
            offset: s.offset as usize,
            len: s.len as usize,
        }
    }
}

impl From<&Span> for Location {
    fn from(s: &Span) -> Location {
        Location::from(*s)
    }
}

impl From<Location> for Span {
    fn from(l: Location) -> Span {
        Span::of(&l)
    }
}

impl From<&Location> for Span {
    fn from(l: &Location) -> Span {
        Span::of(l)
    }
}

/// The YAML tags compose gives a meaning to when files are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tag {
    #[default]
    None,
    /// `!reset`: the key is removed (also what earlier files gave it).
    Reset,
    /// `!override`: the value replaces the earlier files' instead of merging with it.
    Override,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes because YAML allows any key (we reject non-string
    /// keys where they matter, with their position).
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(value: Value, loc: impl Into<Span>) -> Self {
        Node {
            value,
            loc: loc.into(),
            tag: Tag::None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The key of a mapping entry (`get_entry`), to point at the key rather than the value.
    pub fn get_entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The scalar as text (numbers and booleans printed as YAML would), for fields the spec
    /// types as strings; `None` for null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format_float(*f)),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// What kind of node this is, for messages ("expected a mapping, found a sequence").
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }

    /// Converts to JSON (for keys kept verbatim, e.g. `x-*` fields and keys we do not model).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.to_string()),
            Value::Seq(s) => J::Array(s.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

pub fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// The intermediate tree serde-saphyr fills; converted to [`Node`] with our own [`Location`]s.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Tagged<Raw>>>),
    Map(Vec<(Spanned<Raw>, Spanned<Tagged<Raw>>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Str(v.to_string()), Raw::Int))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Str(v.to_string()), Raw::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Tagged<Raw>>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Raw>>()? {
            let v = map.next_value::<Spanned<Tagged<Raw>>>()?;
            entries.push((k, v));
        }
        Ok(Raw::Map(entries))
    }
}

/// Parses one YAML document into a [`Node`] tree, with the default [`Limits`].
pub fn parse(file: &Arc<str>, text: &str) -> Result<Node, Box<Diagnostic>> {
    parse_with(file, text, &Limits::default())
}

/// Parses one YAML document into a [`Node`] tree. An empty document is a null node.
///
/// Two [`Limits`] apply: [`Limit::Depth`] (the tree is built recursively, and real compose files
/// nest about 8 deep) and [`Limit::AliasEvents`], which stops an alias bomb (a few anchors
/// expanding to billions of nodes) while `<<: *default` in thousands of services fits.
pub fn parse_with(file: &Arc<str>, text: &str, limits: &Limits) -> Result<Node, Box<Diagnostic>> {
    if is_empty_document(text) {
        return Ok(Node::new(Value::Null, start_of(file)));
    }
    // The fast path builds the same tree from the parser's events; where it is not sure to (and
    // for every error), the file is read again through serde-saphyr, which also words the errors.
    let depth = limits.get_usize(Limit::Depth);
    let replayed = limits.get_usize(Limit::AliasEvents);
    let budget = options(limits).budget.unwrap_or_default();
    if let Some(node) = fast::parse(file, text, depth, replayed, budget.simple_key_max_lookahead) {
        return Ok(node);
    }
    parse_serde(file, text, limits)
}

fn is_empty_document(text: &str) -> bool {
    text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

/// serde-saphyr's options for the [`Limits`] in force.
fn options(limits: &Limits) -> serde_saphyr::Options {
    let depth = limits.get_usize(Limit::Depth);
    let replayed = limits.get_usize(Limit::AliasEvents);
    serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: replayed,
            max_replay_stack_depth: depth.saturating_mul(2),
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        merge_keys: serde_saphyr::MergeKeyPolicy::Merge,
        // YAML 1.2 booleans, as docker compose (go-yaml v3) reads them: `y`, `no`, `on` are text.
        strict_booleans: true,
        // Comments are never needed (values only), and collecting them costs a tenth of the time.
        emit_comments: false,
        // Size limits fit projects of tens of thousands of services (and `<<: *default` in each
        // of them); alias bombs are stopped by the replay limit above, not by these.
        budget: serde_saphyr::budget! {
            max_depth: depth,
            flow_nesting_limit: depth,
            max_events: 20_000_000,
            max_nodes: 10_000_000,
            max_aliases: 1_000_000,
            max_anchors: 1_000_000,
            max_merge_keys: 1_000_000,
            max_recorded_anchor_events: replayed,
            enforce_alias_anchor_ratio: false,
        },
        // `mode: 0440` is octal to docker compose (go-yaml parses integers with base prefix 0).
        legacy_octal_numbers: true,
    }
}

/// The established path: serde-saphyr deserializes a `Spanned<Tagged<…>>` tree, converted to
/// [`Node`]s. Slow (two locations deserialized per node), but it is the reference the fast path
/// is held to, and its errors are the ones reported.
fn parse_serde(file: &Arc<str>, text: &str, limits: &Limits) -> Result<Node, Box<Diagnostic>> {
    if is_empty_document(text) {
        return Ok(Node::new(Value::Null, start_of(file)));
    }
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options(limits)) {
        Ok(raw) => Ok(convert(file, text, raw)),
        Err(e) => Err(Box::new(yaml_error(file, text, &e, limits))),
    }
}

/// How serde-saphyr types one plain scalar, read as a document of its own (for the fast path's
/// rare numbers: floats, radixes, legacy octal); `None` if it is not a scalar or does not parse.
fn parse_scalar_alone(text: &str) -> Option<Value> {
    let raw = serde_saphyr::from_str_with_options::<Raw>(text, options(&Limits::default())).ok()?;
    Some(match raw {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s.into()),
        Raw::Seq(_) | Raw::Map(_) => return None,
    })
}

/// [`decode`] for a [`super::FileSource`]: invalid UTF-8 is an `InvalidData` error whose text
/// starts with `LINE:COLUMN: `, which the loader turns back into a location.
pub fn text_from_bytes(bytes: &[u8]) -> std::io::Result<String> {
    decode(bytes).map_err(|(line, column, msg)| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{line}:{column}: {msg}"),
        )
    })
}

/// A file's bytes as text, as docker compose reads them: UTF-8 (a byte-order mark is skipped),
/// or UTF-16 when it starts with a byte-order mark. Invalid UTF-8 is an error at the first bad
/// byte, as `(line, column, message)`; the caller names the file.
///
/// UTF-16 without a byte-order mark is not guessed (compose refuses it too: as UTF-8 it holds
/// NUL characters, which the YAML parser reports).
pub fn decode(bytes: &[u8]) -> Result<String, (u32, u32, String)> {
    let utf16 = |be: bool| {
        let units = bytes[2..].chunks(2).map(|c| match (c, be) {
            ([a, b], true) => u16::from_be_bytes([*a, *b]),
            ([a, b], false) => u16::from_le_bytes([*a, *b]),
            _ => 0xFFFD,
        });
        char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect::<String>()
    };
    match bytes {
        [0xFF, 0xFE, ..] => Ok(utf16(false)),
        [0xFE, 0xFF, ..] => Ok(utf16(true)),
        _ => {
            let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
            match std::str::from_utf8(body) {
                Ok(t) => Ok(t.to_string()),
                Err(e) => {
                    let good = &body[..e.valid_up_to()];
                    // Valid up to here, so this is text.
                    let before = std::str::from_utf8(good).unwrap_or("");
                    let (line, column) = crate::diag::line_column(before, before.len());
                    Err((
                        line,
                        column,
                        format!(
                            "the file is not UTF-8 text: byte 0x{:02x} at offset {} cannot start or continue a character",
                            body[e.valid_up_to()],
                            e.valid_up_to() + (bytes.len() - body.len())
                        ),
                    ))
                }
            }
        }
    }
}

fn start_of(file: &Arc<str>) -> Location {
    Location {
        file: file.clone(),
        line: 1,
        column: 1,
        offset: 0,
        len: 0,
    }
}

fn location(file: &Arc<str>, text: &str, l: &serde_saphyr::Location) -> Location {
    let span = l.span();
    let offset = span
        .byte_offset()
        .map(|o| o as usize)
        .unwrap_or_else(|| char_to_byte(text, span.offset() as usize));
    let offset = offset.min(text.len());
    Location {
        file: file.clone(),
        line: u32::try_from(l.line()).unwrap_or(u32::MAX),
        column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        offset,
        // A span never runs past the end of the text (errors at the end of input have one).
        len: (span.len() as usize).min(text.len() - offset),
    }
}

fn char_to_byte(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

fn convert(file: &Arc<str>, text: &str, raw: Spanned<Raw>) -> Node {
    let loc = location(file, text, &raw.referenced);
    convert_value(file, text, raw.value, loc, Tag::None)
}

fn convert_tagged(file: &Arc<str>, text: &str, raw: Spanned<Tagged<Raw>>) -> Node {
    let loc = location(file, text, &raw.referenced);
    let Tagged(value, tag) = raw.value;
    let tag = match tag.as_deref() {
        Some("!reset") => Tag::Reset,
        Some("!override") => Tag::Override,
        _ => Tag::None,
    };
    convert_value(file, text, value, loc, tag)
}

fn convert_value(file: &Arc<str>, text: &str, raw: Raw, loc: Location, tag: Tag) -> Node {
    let value = match raw {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s.into()),
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|i| convert_tagged(file, text, i))
                .collect(),
        ),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(file, text, k), convert_tagged(file, text, v)))
                .collect(),
        ),
    };
    Node {
        value,
        loc: Span::of(&loc),
        tag,
    }
}

/// Removes what `!reset` marks (in a single file, or left after merging), recursively.
pub fn drop_reset(node: &mut Node) {
    match &mut node.value {
        Value::Map(entries) => {
            entries.retain(|(_, v)| v.tag != Tag::Reset);
            for (_, v) in entries {
                drop_reset(v);
            }
        }
        Value::Seq(items) => {
            items.retain(|v| v.tag != Tag::Reset);
            for v in items {
                drop_reset(v);
            }
        }
        _ => {}
    }
}

/// The parser's error in our words: what went wrong, where, what to do. serde-saphyr's own
/// texts are used only where they already say that in plain words; its internal names (budget
/// fields, option names) never reach the user.
fn yaml_error(file: &Arc<str>, text: &str, e: &serde_saphyr::Error, limits: &Limits) -> Diagnostic {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::Error as E;
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let plain = serde_saphyr::UserMessageFormatter
        .format_message(inner)
        .replace(['\n', '\r'], " ");
    let depth = limits.get(Limit::Depth);
    let aliases = limits.get(Limit::AliasEvents);
    let too_deep = (
        format!("the YAML is nested more than {depth} levels deep"),
        Some(Limit::Depth.hint(depth)),
    );
    let bomb = (
        format!(
            "the YAML's aliases expand to more than {aliases} events: anchors that reference each other multiply (an alias bomb?)"
        ),
        Some(Limit::AliasEvents.hint(aliases)),
    );
    let too_big = |what: &str| {
        (
            format!("the YAML is too large: it has more {what} than compose-fleet reads in one file"),
            Some("a compose file of this size is not a real project; split it, or check that it is not generated in a loop".to_string()),
        )
    };
    let (message, hint): (String, Option<String>) = match inner {
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => too_deep,
            B::RecordedAnchorEvents { .. }
            | B::RecordedAnchorBytes { .. }
            | B::Aliases { .. }
            | B::AliasAnchorRatio { .. } => bomb,
            B::Anchors { .. } => too_big("anchors"),
            B::MergeKeys { .. } => too_big("merge keys (`<<`)"),
            B::Documents { .. } => too_big("documents"),
            B::Events { .. } | B::Nodes { .. } => too_big("nodes"),
            B::ScalarBytes { .. } | B::InputBytes { .. } => too_big("text"),
            _ => too_big("structure"),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => bomb,
        E::AliasReplayStackDepthExceeded { .. } => too_deep,
        E::DuplicateMappingKey { .. } => (
            format!("invalid YAML: {plain}"),
            Some("a key may appear only once in a mapping: remove or rename one".to_string()),
        ),
        E::MultipleDocuments { .. } => (
            "a compose file holds one YAML document, this one has several (`---`)".to_string(),
            Some("remove the `---` line, or put each document in its own file and pass each with `-f`".to_string()),
        ),
        E::UnknownAnchor { .. } => (
            "invalid YAML: an alias (`*name`) refers to an anchor (`&name`) that is not defined".to_string(),
            Some("define the anchor before the alias that uses it, or fix the alias's spelling".to_string()),
        ),
        E::MergeValueNotMapOrSeqOfMaps { .. } => (
            "invalid YAML: a merge key (`<<`) takes a mapping or a list of mappings".to_string(),
            Some("write `<<: *anchor` or `<<: [*a, *b]` with anchors of mappings".to_string()),
        ),
        _ if plain.contains("recursion limit") => too_deep,
        _ if plain.contains("tabs disallowed") => (
            format!("invalid YAML: {plain}"),
            Some("YAML indents with spaces: replace the tab with spaces".to_string()),
        ),
        _ if plain.contains("unexpected character: `\\u{0}") => (
            "invalid YAML: the file contains a NUL character".to_string(),
            Some("a file saved as UTF-16 needs its byte-order mark; save it as UTF-8 instead".to_string()),
        ),
        _ if plain.contains("unclosed") => (
            format!("invalid YAML: {plain}"),
            Some("close it on the same value, or quote the whole value".to_string()),
        ),
        // Text that names serde-saphyr's types or options is not for users.
        _ if plain.contains(" { ") || plain.contains("Options") || plain.contains("budget") => (
            "invalid YAML: the parser gave up here".to_string(),
            Some("check the YAML syntax around this place (indentation, quotes, brackets)".to_string()),
        ),
        _ => (format!("invalid YAML: {plain}"), None),
    };
    let mut d = Diagnostic::error(message);
    if let Some(l) = e.location() {
        d = d.at(location(file, text, &l));
    } else {
        d = d.at(start_of(file));
    }
    if let Some(h) = hint {
        d = d.hint(h);
    }
    d
}

#[cfg(test)]
mod tests {

    /// The shared compose corpus, found as the integration tests find it
    /// (`tests/it/support::shared`): `$COMPOSE_FLEET_SHARED/compose-corpus`, else `../shared`
    /// beside the repository, else `../../shared` (a worktree one level deeper). `None` when
    /// absent: the caller says it skips, or fails when `COMPOSE_FLEET_REQUIRE_SHARED=1`.
    pub(super) fn shared_corpus() -> Option<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let found = std::env::var_os("COMPOSE_FLEET_SHARED")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([root.join("../shared"), root.join("../../shared")])
            .map(|d| d.join("compose-corpus"))
            .find(|d| d.is_dir());
        if found.is_none() {
            assert!(
                std::env::var("COMPOSE_FLEET_REQUIRE_SHARED").as_deref() != Ok("1"),
                "COMPOSE_FLEET_REQUIRE_SHARED=1 but no shared compose corpus: set COMPOSE_FLEET_SHARED or clone `shared/` beside the repository"
            );
            println!("skipping the shared compose corpus: not found beside the repository (set COMPOSE_FLEET_SHARED)");
        }
        found
    }
    use super::*;

    fn p(text: &str) -> Result<Node, Box<Diagnostic>> {
        parse(&Arc::from("c.yaml"), text)
    }

    #[test]
    fn keeps_positions_and_merges() {
        let n = p("base: &b\n  a: 1\nx:\n  <<: *b\n  c: \"two\"\n").unwrap();
        let x = n.get("x").unwrap();
        assert_eq!(x.get("a").unwrap().value, Value::Int(1));
        let c = x.get("c").unwrap();
        assert_eq!(c.as_str(), Some("two"));
        assert_eq!((c.loc.line, c.loc.column), (5, 6));
    }

    #[test]
    fn merges_a_sequence_of_maps() {
        let n = p("a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n").unwrap();
        let c = n.get("c").unwrap();
        assert!(c.get("x").is_some() && c.get("y").is_some() && c.get("z").is_some());
    }

    #[test]
    fn reset_and_override_tags_are_kept() {
        let n = p("a: !reset []\nb: !override {x: 1}\nc: !custom 1\nd: [!reset 1, 2]\n").unwrap();
        let tag = |k: &str| n.get(k).unwrap().tag;
        assert_eq!(
            (tag("a"), tag("b"), tag("c")),
            (Tag::Reset, Tag::Override, Tag::None)
        );
        assert_eq!(n.get("b").unwrap().get("x").unwrap().value, Value::Int(1));
        assert_eq!(n.get("d").unwrap().as_seq().unwrap()[0].tag, Tag::Reset);
        // Core tags keep their meaning.
        let n = p("a: !!str 5\nb: !!int \"7\"\n").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Str("5".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Int(7));
    }

    #[test]
    fn decodes_as_docker_compose_reads_files() {
        let text = "services:\n  web: {image: é}\n";
        let mut bom8 = vec![0xEF, 0xBB, 0xBF];
        bom8.extend_from_slice(text.as_bytes());
        assert_eq!(decode(&bom8).unwrap(), text);
        let mut le = vec![0xFF, 0xFE];
        let mut be = vec![0xFE, 0xFF];
        for u in text.encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(decode(&le).unwrap(), text);
        assert_eq!(decode(&be).unwrap(), text);
        let e = decode(b"services:\n  web: {image: x\xff}\n").unwrap_err();
        assert_eq!(
            e,
            (2, 17, "the file is not UTF-8 text: byte 0xff at offset 26 cannot start or continue a character".to_string())
        );
    }

    #[test]
    fn text_from_bytes_puts_the_position_first() {
        let e = text_from_bytes(b"a: 1\nb: \xc3\n").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            e.to_string().starts_with("2:4: the file is not UTF-8 text"),
            "{e}"
        );
    }

    /// The fast path's tree for `text` if it took it, and serde-saphyr's result; the same tree
    /// whenever the fast path answers (it gives up on every error).
    fn both(name: &str, text: &str) -> (Option<Node>, Result<Node, Box<Diagnostic>>) {
        let file: Arc<str> = Arc::from(name);
        let limits = Limits::default();
        let fast = fast::parse(
            &file,
            text,
            limits.get_usize(Limit::Depth),
            limits.get_usize(Limit::AliasEvents),
            options(&limits)
                .budget
                .unwrap_or_default()
                .simple_key_max_lookahead,
        );
        (fast, parse_serde(&file, text, &limits))
    }

    fn assert_same(name: &str, text: &str) -> bool {
        let (fast, serde) = both(name, text);
        match (fast, serde) {
            (Some(f), Ok(s)) => {
                assert_eq!(f, s, "{name}: the fast path's tree differs");
                true
            }
            (Some(_), Err(e)) => {
                panic!("{name}: the fast path accepted what serde-saphyr rejects: {e:?}")
            }
            (None, _) => false,
        }
    }

    #[test]
    fn fast_path_matches_serde_saphyr_on_yaml_forms() {
        let cases = [
            "a: 1\nb: -2\nc: 0\nd: -0\ne: 007\nf: 0x1F\ng: 0o17\nh: 1.5\n",
            "i: .inf\nj: -.inf\n",
            "l: 1e3\nm: +5\nn: 99999999999999999999\no: 1_000\np: 0755\nq: 12:30\nr: 256m\ns: 1.25.0\n",
            "k: .nan\n",
            "t: -\n",
            "a: ~\nb: null\nc: Null\nd: NULL\ne:\nf: true\ng: False\nh: yes\ni: off\nj: 'true'\nk: \"1\"\nl: ''\n",
            "x: |\n  line one $A\n  two\ny: >-\n  folded\n  text\nz: \"esc\\taped\\u00e9\"\nw: 'it''s'\n",
            "flow: {a: 1, b: [x, \"y\", 3], c: {d: e}}\nseq:\n  - one\n  - {k: v}\n  - [1, 2]\n  -\n  - - nested\n",
            "base: &b\n  a: 1\n  n: {x: 1}\nx:\n  <<: *b\n  c: \"two\"\ny:\n  a: 5\n  <<: *b\nz: *b\n",
            "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  z: 3\nd:\n  <<: [*b, *a]\n",
            "d: &d\n  <<: {q: 1}\n  r: 2\n",
            "m: &m {a: 1}\nn: &n\n  <<: *m\n  b: 2\no:\n  <<: *n\n  c: 3\n",
            "i: &i 5\nj: *i\nk: [*i, *i]\ns: &s [a, b]\nt: *s\n",
            "a: !reset []\nb: !override {x: 1}\nd: [!reset 1, 2]\ne: !reset\nf: !override &o {y: 2}\ng: *o\n",
            "c: !custom 1\n",
            "a: !!str 5\nb: !!int \"7\"\n",
            "a: 1\nb: 2\na: 3\n",
            "1: one\n2: two\n\"3\": three\n",
            "1: one\n\"1\": two\n",
            "? [a]\n: complex\n",
            "a: [unclosed\n",
            "a:\n\tb: tab\n",
            "---\na: 1\n---\nb: 2\n",
            "--- !reset\na: 1\n",
            "a: *undefined\n",
            "a: &a [*a]\n",
            "<<: {a: 1}\nb: 2\n",
            "m: &m {a: 1}\n\"<<\": *m\n",
            "m: &m {a: 1}\nx:\n  <<: *m\n  <<: {b: 2}\n",
            "k: v # comment\n# only a comment\nl: [a, # c\n  b]\n",
            "s: caf\u{e9}\nt: \"\u{1F600} $X\"\nu: {v: \u{e9}\u{e9}}\n",
            "services:\n  web:\n    image: nginx\n    ports: [\"80:80\", 443]\n    environment:\n      A: ${A:-x}\n",
        ];
        let mut taken = 0;
        for (i, text) in cases.iter().enumerate() {
            let took = assert_same(&format!("case{i}.yaml"), text);
            if took {
                taken += 1;
            }
        }
        // Most forms take the fast path: the point of it.
        assert!(
            taken >= 15,
            "only {taken} of {} cases took the fast path",
            cases.len()
        );
    }

    #[test]
    fn fast_path_matches_serde_saphyr_on_every_compose_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("tests"), root.join("examples")];
        dirs.extend(shared_corpus());
        let mut files = Vec::new();
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let (mut taken, mut total) = (0, 0);
        for f in &files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            total += 1;
            if assert_same(&f.display().to_string(), &text) {
                taken += 1;
            } else {
                println!("fast path not taken: {}", f.display());
            }
        }
        println!("fast path taken on {taken} of {total} YAML files");
        // The generated projects the benchmark loads must take it, or the speed is gone.
        for merge_keys in [true, false] {
            let g = crate::testgen::generate_with(300, 7, merge_keys);
            assert!(
                assert_same("generated.yaml", &g.compose),
                "the generated project (merge keys: {merge_keys}) did not take the fast path"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(e.message.contains("duplicate"), "{}", e.message);
        // At the second `a` itself, not somewhere on its line.
        let l = e.location.unwrap();
        assert_eq!((l.line, l.column), (3, 1));
    }
}
