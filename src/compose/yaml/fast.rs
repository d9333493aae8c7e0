//! The fast path of [`super::parse_with`]: YAML events turned straight into [`Node`]s, one
//! pass, no serde in between.
//!
//! serde-saphyr's `Spanned<Tagged<T>>` costs two locations, each deserialized as a struct, and a
//! tag wrapper for every node: most of the loader's time on large files. This builder reads
//! parser events ([`Events`]) and gives the same tree with the same locations, for the
//! documents compose files are made of: plain and quoted scalars, block and flow collections,
//! anchors, aliases, `<<` merges of aliases, and the `!reset`/`!override` tags.
//!
//! The events come from our own scanner (`yaml/scan.rs`, for the block-style subset compose files
//! are written in) or, for any file it gives up on, from the parser serde-saphyr uses
//! (`granit-parser`, which serde-saphyr re-exports) with the same options ([`Granit`]). Both give
//! the same events: `yaml::scan::tests` holds them to it.
//!
//! Whatever it is not sure to read exactly as serde-saphyr does (any parse error, a duplicate
//! key, other tags, an inline `<<` mapping, complex keys, limits being approached) it gives up on
//! by returning `None`, and [`super::parse_with`] parses the file again the established way, which
//! then also produces the error messages. `yaml::tests::fast_path_matches_serde_saphyr` holds
//! the two paths to the same trees.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use serde_saphyr::granit_parser::{self, Event, Parser, ScalarStyle, StrInput, Tag as YamlTag};

use super::{FileId, Node, Span, Tag, Text, Value};

/// Why the fast path stopped: the caller parses the file the established way.
#[derive(Debug)]
pub(super) struct GiveUp;

type R<T> = Result<T, GiveUp>;

/// Builds the tree of `text`, or gives up. `depth` and `replayed` are the limits in force
/// ([`crate::limits::Limit::Depth`], [`crate::limits::Limit::AliasEvents`]).
///
/// The events come from our own scanner ([`super::scan`]) first; where it is not sure (it gives
/// up on anything outside the block-style subset compose files are written in), the same builder
/// reads `granit-parser`'s events for the whole file again.
pub(super) fn parse(
    file: &Arc<str>,
    text: &str,
    depth: usize,
    replayed: usize,
    lookahead: usize,
) -> Option<Node> {
    let id = FileId::of(file);
    let mut b = Builder::new(
        super::scan::Scanner::new(text, id, depth, lookahead),
        depth,
        replayed,
    );
    match b.document() {
        Ok(node) => return Some(node),
        // The builder itself gave up: granit-parser's events would not change its mind.
        Err(GiveUp) if !b.source.gave_up() => return None,
        Err(GiveUp) => {}
    }
    let mut b = Builder::new(Granit::new(text, id, depth, lookahead), depth, replayed);
    b.document().ok()
}

/// Where the builder's events come from: our scanner, or granit-parser (the reference).
pub(super) trait Events<'a> {
    /// The next event and where its node starts (boundaries and ends carry a span the builder
    /// does not read).
    fn next(&mut self) -> R<(Ev<'a>, Span)>;
    /// Whether an `Err` came from this source (rather than from the builder's own checks).
    fn gave_up(&self) -> bool;
}

/// granit-parser's events, configured as serde-saphyr configures it.
pub(super) struct Granit<'a> {
    parser: Parser<'a, StrInput<'a>>,
    file: FileId,
    text: &'a str,
    gave_up: bool,
}

impl<'a> Granit<'a> {
    pub(super) fn new(text: &'a str, file: FileId, depth: usize, lookahead: usize) -> Granit<'a> {
        let mut options = serde_saphyr::granit_parser::Options::default();
        // As serde-saphyr configures the parser for the budget `parse_with` gives it.
        options.block_nesting_limit = options.block_nesting_limit.max(depth.saturating_add(1));
        options.flow_nesting_limit = depth;
        options.simple_key_max_lookahead = lookahead;
        options.emit_comments = false;
        Granit {
            parser: Parser::new_from_str_with_options(text, options),
            file,
            text,
            gave_up: false,
        }
    }

    fn pos(&self, span: &granit_parser::Span) -> Span {
        let text = self.text;
        let offset = span
            .start
            .byte_offset()
            .unwrap_or_else(|| super::char_to_byte(text, span.start.index()))
            .min(text.len());
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            file: self.file,
            line: clamp(span.start.line()),
            column: clamp(span.start.col() + 1),
            offset: clamp(offset),
            len: clamp(span.len().min(text.len() - offset)),
        }
    }
}

impl<'a> Events<'a> for Granit<'a> {
    fn next(&mut self) -> R<(Ev<'a>, Span)> {
        let Some(Ok((ev, span))) = self.parser.next_event() else {
            self.gave_up = true;
            return Err(GiveUp);
        };
        let ev = match ev {
            Event::Scalar(v, style, anchor, tag) => match tag_of(tag.as_deref()) {
                Ok(tag) => Ev::Scalar(v, style, anchor, tag),
                Err(g) => {
                    self.gave_up = true;
                    return Err(g);
                }
            },
            Event::SequenceStart(_, anchor, tag) => match tag_of(tag.as_deref()) {
                Ok(t) => Ev::Seq(anchor, t),
                Err(g) => {
                    self.gave_up = true;
                    return Err(g);
                }
            },
            Event::MappingStart(_, anchor, tag) => match tag_of(tag.as_deref()) {
                Ok(t) => Ev::Map(anchor, t),
                Err(g) => {
                    self.gave_up = true;
                    return Err(g);
                }
            },
            Event::SequenceEnd => Ev::SeqEnd,
            Event::MappingEnd => Ev::MapEnd,
            Event::Alias(id) => Ev::Alias(id),
            Event::StreamStart | Event::DocumentStart(..) | Event::DocumentEnd => Ev::Boundary,
            Event::StreamEnd => Ev::StreamEnd,
            _ => {
                self.gave_up = true;
                return Err(GiveUp);
            }
        };
        Ok((ev, self.pos(&span)))
    }

    fn gave_up(&self) -> bool {
        self.gave_up
    }
}

struct Builder<S> {
    source: S,
    /// Each anchor's node and how many events serde-saphyr records (and replays) for it.
    anchors: Vec<Option<(Node, usize)>>,
    /// Events read or replayed so far (an anchor's count is the difference across it).
    events: usize,
    replayed: usize,
    max_replayed: usize,
    max_depth: usize,
    /// Events recorded for all anchors.
    recorded: usize,
    /// The items of the sequences being read, innermost last: each sequence takes its own off
    /// the end into a vector of exactly its length (one allocation, no regrowth copies; the
    /// tree holds hundreds of thousands of small collections).
    items: Vec<Node>,
    /// The same for the entries of the mappings being read.
    entries: Vec<(Node, Node)>,
}

/// An event as the builder needs it: small (the parser's events and spans are large, and
/// moving them around cost a tenth of the parse), tags already read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ev<'a> {
    /// Text, style, anchor id (0: none), tag.
    Scalar(Cow<'a, str>, ScalarStyle, usize, Tag),
    Seq(usize, Tag),
    Map(usize, Tag),
    SeqEnd,
    MapEnd,
    Alias(usize),
    /// Stream and document boundaries.
    Boundary,
    StreamEnd,
}

impl<'a, S: Events<'a>> Builder<S> {
    fn new(source: S, depth: usize, replayed: usize) -> Builder<S> {
        Builder {
            source,
            anchors: Vec::new(),
            events: 0,
            replayed: 0,
            // Stay well inside the limits: near them, the established path decides (and words
            // the error).
            max_replayed: replayed / 2,
            max_depth: depth.saturating_sub(2),
            recorded: 0,
            items: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn next(&mut self) -> R<(Ev<'a>, Span)> {
        self.source.next()
    }

    fn document(&mut self) -> R<Node> {
        let mut root = None;
        loop {
            let (ev, pos) = self.next()?;
            match ev {
                Ev::Boundary => {}
                Ev::StreamEnd => break,
                // A second document: serde-saphyr's answer is its own.
                _ if root.is_some() => return Err(GiveUp),
                ev => {
                    let (node, tag) = self.node(ev, pos, 0)?;
                    // The root is read without its tag.
                    if tag != Tag::None {
                        return Err(GiveUp);
                    }
                    root = Some(node);
                }
            }
        }
        if self.events > 10_000_000 || self.recorded > self.max_replayed {
            return Err(GiveUp);
        }
        root.ok_or(GiveUp)
    }

    /// One node, from its first event; also its tag (which only values and items keep).
    fn node(&mut self, ev: Ev<'a>, pos: Span, depth: usize) -> R<(Node, Tag)> {
        let before = self.events;
        let (node, tag, anchor) = match ev {
            Ev::Alias(id) => {
                let Some(Some((node, count))) = self.anchors.get(id) else {
                    return Err(GiveUp);
                };
                let count = *count;
                self.replayed += count;
                self.events += count;
                if self.replayed > self.max_replayed {
                    return Err(GiveUp);
                }
                let mut node = node.clone();
                let tag = std::mem::take(&mut node.tag);
                relocate(&mut node, pos);
                (node, tag, 0)
            }
            Ev::Scalar(v, style, anchor, tag) => {
                self.events += 1;
                let value = scalar(v, style)?;
                (Node::new(value, pos), tag, anchor)
            }
            Ev::Seq(anchor, tag) => {
                self.events += 1;
                if depth >= self.max_depth {
                    return Err(GiveUp);
                }
                let loc = pos;
                let start = self.items.len();
                loop {
                    let (ev, pos) = self.next()?;
                    if let Ev::SeqEnd = ev {
                        self.events += 1;
                        break;
                    }
                    let (mut item, item_tag) = self.node(ev, pos, depth + 1)?;
                    item.tag = item_tag;
                    self.items.push(item);
                }
                // One exact-size block, copied in one go.
                let items: Vec<Node> = self.items.split_off(start);
                (Node::new(Value::Seq(items), loc), tag, anchor)
            }
            Ev::Map(anchor, tag) => {
                self.events += 1;
                if depth >= self.max_depth {
                    return Err(GiveUp);
                }
                let loc = pos;
                let entries = self.mapping(depth)?;
                (Node::new(Value::Map(entries), loc), tag, anchor)
            }
            Ev::SeqEnd | Ev::MapEnd | Ev::Boundary | Ev::StreamEnd => return Err(GiveUp),
        };
        if anchor != 0 {
            let count = self.events - before;
            self.recorded += count;
            if self.anchors.len() <= anchor {
                self.anchors.resize(anchor + 1, None);
            }
            // What an alias replays is the node as written (an alias's own tag is the anchor's).
            let mut stored = node.clone();
            stored.tag = tag;
            self.anchors[anchor] = Some((stored, count));
        }
        // Keys and the root carry no tag; the caller puts it back where serde-saphyr keeps it.
        Ok((node, tag))
    }

    /// The entries of a mapping after its start: written entries in order, then what `<<`
    /// merges bring that is not written, earlier merges first.
    fn mapping(&mut self, depth: usize) -> R<Vec<(Node, Node)>> {
        let start = self.entries.len();
        let mut merged: Vec<(Node, Node)> = Vec::new();
        loop {
            let (ev, pos) = self.next()?;
            if let Ev::MapEnd = ev {
                self.events += 1;
                break;
            }
            let is_merge =
                matches!(&ev, Ev::Scalar(v, ScalarStyle::Plain, _, Tag::None) if v == "<<");
            let (key, key_tag) = self.node(ev, pos, depth + 1)?;
            if key_tag != Tag::None || !matches!(key.value, Value::Str(_) | Value::Int(_)) {
                return Err(GiveUp);
            }
            let (ev, pos) = self.next()?;
            if is_merge {
                self.merge(ev, pos, &mut merged)?;
                continue;
            }
            let (mut value, tag) = self.node(ev, pos, depth + 1)?;
            value.tag = tag;
            self.entries.push((key, value));
        }
        // A key written twice is serde-saphyr's error to report.
        if has_duplicates(&self.entries[start..]) {
            return Err(GiveUp);
        }
        if merged.is_empty() {
            // One exact-size block, copied in one go.
            return Ok(self.entries.split_off(start));
        }
        // Room for what the merges bring too: the vector is not grown again.
        let mut entries = Vec::with_capacity(self.entries.len() - start + merged.len());
        entries.extend(self.entries.drain(start..));
        // Keys whose bits are not among the written keys' are not written: most merged
        // keys are placed without comparing texts.
        let mut bits = 0u64;
        let mut all_text = true;
        for (k, _) in &entries {
            match key_bit(k) {
                Some(b) => bits |= b,
                None => all_text = false,
            }
        }
        for (k, v) in merged {
            let bit = key_bit(&k);
            if let (true, Some(b)) = (all_text, bit) {
                if bits & b == 0 {
                    bits |= b;
                    entries.push((k, v));
                    continue;
                }
            }
            let mut seen = false;
            for (ek, _) in &entries {
                if same_text(ek, &k) {
                    if ek.value != k.value {
                        return Err(GiveUp);
                    }
                    seen = true;
                    break;
                }
            }
            if !seen {
                match bit {
                    Some(b) => bits |= b,
                    None => all_text = false,
                }
                entries.push((k, v));
            }
        }
        Ok(entries)
    }

    /// The entries of the mapping anchor `id` names, as an alias at `pos` brings them: copied
    /// straight into `merged` (the anchor's own node is not copied as a whole first).
    fn merge_alias(&mut self, id: usize, pos: Span, merged: &mut Vec<(Node, Node)>) -> R<()> {
        let Some(Some((node, count))) = self.anchors.get(id) else {
            return Err(GiveUp);
        };
        // Only an untagged mapping merges (as `take` did for a whole alias).
        if node.tag != Tag::None || !matches!(node.value, Value::Map(_)) {
            return Err(GiveUp);
        }
        let count = *count;
        self.replayed += count;
        self.events += count;
        if self.replayed > self.max_replayed {
            return Err(GiveUp);
        }
        let Some(Some((
            Node {
                value: Value::Map(m),
                ..
            },
            _,
        ))) = self.anchors.get(id)
        else {
            return Err(GiveUp);
        };
        merged.reserve(m.len());
        for (k, v) in m {
            let (mut k, mut v) = (k.clone(), v.clone());
            relocate(&mut k, pos);
            relocate(&mut v, pos);
            merged.push((k, v));
        }
        Ok(())
    }

    /// The value of a `<<` key: an alias of a mapping, a sequence of them, or null.
    fn merge(&mut self, ev: Ev<'a>, pos: Span, merged: &mut Vec<(Node, Node)>) -> R<()> {
        match ev {
            Ev::Alias(id) => self.merge_alias(id, pos, merged),
            Ev::Scalar(ref v, ScalarStyle::Plain, 0, Tag::None)
                if matches!(v.as_ref(), "" | "~" | "null" | "Null" | "NULL") =>
            {
                self.events += 1;
                Ok(())
            }
            Ev::Seq(0, Tag::None) => {
                self.events += 1;
                loop {
                    let (ev, pos) = self.next()?;
                    match ev {
                        Ev::SeqEnd => {
                            self.events += 1;
                            return Ok(());
                        }
                        Ev::Alias(id) => self.merge_alias(id, pos, &mut *merged)?,
                        _ => return Err(GiveUp),
                    }
                }
            }
            // An inline mapping after `<<` locates its values differently: not worth copying.
            _ => Err(GiveUp),
        }
    }
}

/// The compose tags; any other tag is left to serde-saphyr.
fn tag_of(tag: Option<&YamlTag>) -> R<Tag> {
    match tag {
        None => Ok(Tag::None),
        Some(t) if t.handle() == "!" && t.suffix() == "reset" => Ok(Tag::Reset),
        Some(t) if t.handle() == "!" && t.suffix() == "override" => Ok(Tag::Override),
        Some(_) => Err(GiveUp),
    }
}

/// A scalar's value as serde-saphyr types it (YAML 1.2 core schema, strict booleans, legacy
/// octal): quoted and block scalars are text; plain ones may be null, booleans or numbers.
fn scalar(v: Cow<'_, str>, style: ScalarStyle) -> R<Value> {
    if style != ScalarStyle::Plain {
        return Ok(Value::Str(Text::new(&v)));
    }
    match v.as_ref() {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    let bytes = v.as_bytes();
    let Some(&first) = bytes.first() else {
        return Ok(Value::Null);
    };
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Ok(Value::Str(Text::new(&v)));
    }
    // A plain decimal integer: the common number.
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
        && (digits.len() == bytes.len() || digits != b"0")
    {
        if let Ok(i) = v.parse::<i64>() {
            return Ok(Value::Int(i));
        }
    }
    // Text that cannot be a number in any notation YAML knows.
    let numeric = |b: &u8| {
        b.is_ascii_hexdigit()
            || matches!(
                b,
                b'x' | b'X'
                    | b'o'
                    | b'O'
                    | b'_'
                    | b'.'
                    | b'+'
                    | b'-'
                    | b':'
                    | b'i'
                    | b'I'
                    | b'n'
                    | b'N'
            )
    };
    if !bytes.iter().all(numeric) {
        return Ok(Value::Str(Text::new(&v)));
    }
    // Floats, radixes, legacy octal, overflow: serde-saphyr types the scalar alone, as it
    // would in place (the text of a plain scalar is itself a plain scalar).
    let typed = super::parse_scalar_alone(&v).ok_or(GiveUp)?;
    match &typed {
        Value::Str(s) if s.as_str() != v.as_ref() => Err(GiveUp),
        Value::Seq(_) | Value::Map(_) => Err(GiveUp),
        _ => Ok(typed),
    }
}

/// Every node of an aliased subtree is located at the alias, as serde-saphyr's use-site
/// location (`Spanned::referenced`) has it.
fn relocate(node: &mut Node, at: Span) {
    node.loc = at;
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|i| relocate(i, at)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            relocate(k, at);
            relocate(v, at);
        }),
        _ => {}
    }
}

/// The text a key was written with (numbers as digits).
fn key_text(n: &Node) -> Option<Cow<'_, str>> {
    match &n.value {
        Value::Str(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        _ => None,
    }
}

fn same_text(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => key_text(a) == key_text(b),
    }
}

/// One bit of 64 for a text key, from its length and first and last bytes: equal texts have
/// equal bits, so keys with different bits differ. `None` for numbers (whose text is the same
/// as a string key's, `1` and `"1"`): those are compared the slow way.
fn key_bit(k: &Node) -> Option<u64> {
    let Value::Str(s) = &k.value else {
        return None;
    };
    let b = s.as_bytes();
    let first = u64::from(b.first().copied().unwrap_or(0));
    let last = u64::from(b.last().copied().unwrap_or(0));
    let h = (b.len() as u64)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(first.wrapping_mul(0x85EB_CA6B))
        .wrapping_add(last.wrapping_mul(0xC2B2_AE35));
    Some(1 << ((h >> 7) % 64))
}

fn has_duplicates(entries: &[(Node, Node)]) -> bool {
    if entries.len() <= 16 {
        // Distinct bits: no two keys are the same (the common case, no text compared).
        let mut bits = 0u64;
        let distinct = entries.iter().all(|(k, _)| match key_bit(k) {
            Some(b) if bits & b == 0 => {
                bits |= b;
                true
            }
            _ => false,
        });
        if distinct {
            return false;
        }
        return entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(e, _)| same_text(e, k)));
    }
    let mut seen = HashSet::with_capacity(entries.len());
    entries
        .iter()
        .any(|(k, _)| !seen.insert(key_text(k).unwrap_or_default()))
}
