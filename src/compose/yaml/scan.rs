//! Our own scanner for the block-style YAML compose files are written in: it produces the same
//! events, with the same positions, as `granit-parser`'s `Parser`, for the builder in
//! `yaml/fast.rs`, and gives up on everything else.
//!
//! Why it exists: at 10,000 services the YAML parse took most of the load, and granit-parser
//! (a complete YAML 1.2 scanner and parser: token queues, simple-key tracking, a `Marker` per
//! token) was three quarters of it. Compose files use a small part of YAML: block mappings and
//! sequences, one-line plain and quoted scalars, comments, literal and folded block scalars,
//! small flow collections, anchors, aliases and the `!reset`/`!override` tags. This reads that
//! part in one pass over the bytes.
//!
//! It does not replace the YAML library: merging (`<<`), anchors and limits stay in the builder,
//! and the scanner gives up ([`GiveUp`]) on anything it is not sure of — a tab outside quoted
//! and block scalars and comments, directives, several documents, `?` keys, multi-line plain or
//! quoted scalars, a carriage return outside a CRLF line break, a byte-order mark, properties
//! on keys, tags other than those two, unusual indentation, every error. Giving up is always
//! safe: the builder then reads granit-parser's events for the whole file, exactly as before. The lead's decision for the speed target (issue 8) was a fast scanner with that
//! complete fallback and an event-for-event differential test against granit-parser
//! (`yaml::scan::tests`, and the file corpus test in `yaml::tests`); DESIGN.md's "never
//! hand-write YAML merging" still holds: nothing here merges.
//!
//! Where granit-parser puts a node (all learnt from its output, and held by the tests): a block
//! mapping at its first key, a block sequence at its first `-` (an "indentless" sequence, at
//! its parent key's indentation, after the first `-`, its spaces and a comment), a flow
//! collection at its bracket (length 1), a quoted scalar at its opening quote, a block scalar
//! at the indentation of its first content line (up to where the scanner stopped after it), an
//! empty value at its `:`, an empty item after its `-` (spaces and comment included), and an
//! empty node with properties just after them.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use serde_saphyr::granit_parser::ScalarStyle;

use super::fast::{Ev, Events, GiveUp};
use super::{FileId, Span, Tag};

type R<T> = Result<T, GiveUp>;

/// An open block collection and the column of its entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    Map(usize),
    Seq(usize),
    /// A sequence whose `-` are at its parent key's column (`key:\n- a`).
    Indentless(usize),
}

impl Frame {
    fn indent(self) -> usize {
        match self {
            Frame::Map(i) | Frame::Seq(i) | Frame::Indentless(i) => i,
        }
    }
}

/// What a line that ended without its value (`key:`, `-`, `key: &a`) leaves to the next line.
struct Pending {
    /// The column of the collection the value belongs to (`None`: the document's root).
    owner: Option<usize>,
    /// A mapping's value (which may be an indentless sequence) rather than an item.
    map_value: bool,
    /// Where the value is, if it turns out to be empty.
    at: Span,
    anchor: usize,
    tag: Tag,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Body,
    Done,
}

/// The scanner: a pull source of the builder's events.
pub(super) struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    file: FileId,
    pos: usize,
    line: u32,
    line_start: usize,
    stack: Vec<Frame>,
    queue: VecDeque<(Ev<'a>, Span)>,
    pending: Option<Pending>,
    anchors: HashMap<&'a str, usize>,
    next_anchor: usize,
    phase: Phase,
    gave_up: bool,
    max_depth: usize,
    /// The longest implicit key granit-parser reads (its `simple_key_max_lookahead`).
    lookahead: usize,
}

impl<'a> Events<'a> for Scanner<'a> {
    fn next(&mut self) -> R<(Ev<'a>, Span)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(e);
            }
            if self.gave_up {
                return Err(GiveUp);
            }
            if let Err(g) = self.step() {
                self.gave_up = true;
                self.queue.clear();
                return Err(g);
            }
        }
    }

    fn gave_up(&self) -> bool {
        self.gave_up
    }
}

fn is_space_or_end(c: Option<u8>) -> bool {
    matches!(c, None | Some(b' ' | b'\n' | b'\r'))
}

fn is_flow_indicator(c: u8) -> bool {
    matches!(c, b',' | b'[' | b']' | b'{' | b'}')
}

impl<'a> Scanner<'a> {
    pub(super) fn new(text: &'a str, file: FileId, depth: usize, lookahead: usize) -> Self {
        Scanner {
            text,
            b: text.as_bytes(),
            file,
            pos: 0,
            line: 1,
            line_start: 0,
            stack: Vec::new(),
            queue: VecDeque::new(),
            pending: None,
            anchors: HashMap::new(),
            next_anchor: 1,
            phase: Phase::Start,
            gave_up: false,
            max_depth: depth,
            lookahead,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    /// Characters (not bytes) in `from..to`.
    fn chars(&self, from: usize, to: usize) -> usize {
        let s = self.b.get(from..to).unwrap_or_default();
        // UTF-8 continuation bytes are 0b10xx_xxxx.
        s.len() - s.iter().filter(|&&c| (c as i8) < -64).count()
    }

    /// The span of `len` characters at byte `at`, which is on the current line.
    fn span(&self, at: usize, len: usize) -> Span {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            file: self.file,
            line: self.line,
            column: clamp(self.chars(self.line_start, at) + 1),
            offset: clamp(at),
            len: clamp(len),
        }
    }

    fn push(&mut self, ev: Ev<'a>, at: Span) {
        self.queue.push_back((ev, at));
    }

    fn push_boundary(&mut self, ev: Ev<'a>) {
        let at = self.span(self.pos.min(self.b.len()), 0);
        self.push(ev, at);
    }

    fn open(&mut self, frame: Frame) -> R<()> {
        if self.stack.len() >= self.max_depth {
            return Err(GiveUp);
        }
        self.stack.push(frame);
        Ok(())
    }

    fn step(&mut self) -> R<()> {
        match self.phase {
            Phase::Start => self.start(),
            Phase::Body => self.line(),
            Phase::Done => Err(GiveUp),
        }
    }

    /// The stream's start, an optional `---` line, the document's start.
    fn start(&mut self) -> R<()> {
        // A carriage return that is not part of a CRLF line break, and a byte-order mark:
        // granit-parser decides. (A `\r` is then always followed by `\n`, which ends the line.)
        let lone_cr = |(i, &c): (usize, &u8)| c == b'\r' && self.b.get(i + 1) != Some(&b'\n');
        if (self.b.contains(&b'\r') && self.b.iter().enumerate().any(lone_cr))
            || self.text.starts_with('\u{feff}')
        {
            return Err(GiveUp);
        }
        self.push_boundary(Ev::Boundary);
        let Some((c, p)) = self.next_line()? else {
            return Err(GiveUp);
        };
        if c == 0 && self.b[p..].starts_with(b"---") && is_space_or_end(self.at(p + 3)) {
            self.pos = p + 3;
            self.end_of_line()?;
        } else if c == 0 && self.b[p] == b'%' {
            return Err(GiveUp);
        }
        self.push_boundary(Ev::Boundary);
        self.pending = Some(Pending {
            owner: None,
            map_value: false,
            at: self.span(p, 0),
            anchor: 0,
            tag: Tag::None,
        });
        self.phase = Phase::Body;
        Ok(())
    }

    /// From the current position, the next line with content: its column and where the content
    /// starts (`None` at the end). Blank lines and comment lines are skipped.
    fn next_line(&mut self) -> R<Option<(usize, usize)>> {
        let mut i = self.pos;
        loop {
            match self.at(i) {
                None => {
                    self.pos = i;
                    return Ok(None);
                }
                Some(b' ' | b'\r') => i += 1,
                Some(b'\n') => {
                    i += 1;
                    self.line += 1;
                    self.line_start = i;
                }
                Some(b'#') => {
                    i = self.b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.b.len(), |n| i + n);
                }
                Some(b'\t') => return Err(GiveUp),
                Some(_) => {
                    self.pos = i;
                    return Ok(Some((i - self.line_start, i)));
                }
            }
        }
    }

    /// After a node: spaces, maybe a comment, then the line break (consumed) or the end.
    fn end_of_line(&mut self) -> R<()> {
        let mut i = self.pos;
        while self.at(i) == Some(b' ') {
            i += 1;
        }
        match self.at(i) {
            None => {
                self.pos = i;
                Ok(())
            }
            Some(b'\n') => {
                self.newline(i);
                Ok(())
            }
            Some(b'\r') => {
                self.newline(i + 1);
                Ok(())
            }
            Some(b'#') if i == self.line_start || self.b[i - 1] == b' ' => {
                let end = self.b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(self.b.len(), |n| i + n);
                if end < self.b.len() {
                    self.newline(end);
                } else {
                    self.pos = end;
                }
                Ok(())
            }
            _ => Err(GiveUp),
        }
    }

    /// Past the line break at `i`.
    fn newline(&mut self, i: usize) {
        self.pos = i + 1;
        self.line += 1;
        self.line_start = i + 1;
    }

    /// Where granit-parser puts what follows a `-` at `dash` on this line: past its spaces and
    /// a comment.
    fn after_dash(&self, dash: usize) -> usize {
        let mut i = dash + 1;
        while self.at(i) == Some(b' ') {
            i += 1;
        }
        if self.at(i) == Some(b'#') {
            i = self.b[i..]
                .iter()
                .position(|&c| c == b'\n' || c == b'\r')
                .map_or(self.b.len(), |n| i + n);
        }
        i
    }

    fn is_dash(&self, p: usize) -> bool {
        self.at(p) == Some(b'-') && is_space_or_end(self.at(p + 1))
    }

    fn end(&mut self, frame: Frame) {
        let at = self.span(self.pos, 0);
        match frame {
            Frame::Map(_) => self.push(Ev::MapEnd, at),
            Frame::Seq(_) | Frame::Indentless(_) => self.push(Ev::SeqEnd, at),
        }
    }

    fn empty(&mut self, p: Pending) {
        // granit-parser writes an empty node as `~`, or as nothing when it is tagged.
        let text = if p.tag == Tag::None { "~" } else { "" };
        self.push(
            Ev::Scalar(Cow::Borrowed(text), ScalarStyle::Plain, p.anchor, p.tag),
            p.at,
        );
    }

    /// One line of block structure (or the end of the document).
    fn line(&mut self) -> R<()> {
        let Some((c, p)) = self.next_line()? else {
            return self.finish();
        };
        if c == 0
            && (self.b[p..].starts_with(b"---") || self.b[p..].starts_with(b"..."))
            && is_space_or_end(self.at(p + 3))
        {
            return Err(GiveUp);
        }
        let dash = self.is_dash(p);
        if let Some(pend) = self.pending.take() {
            let deeper = pend.owner.is_none_or(|o| c > o);
            if let (true, false, Some(owner)) = (deeper, dash, pend.owner) {
                // The value starts on its own line: a mapping, a scalar, a flow collection,
                // or properties alone (`&anchor` above the mapping they name).
                return self.inline_value(p, owner, pend.map_value, true, (pend.anchor, pend.tag));
            }
            if deeper && dash {
                let at = self.span(p, 0);
                self.push(Ev::Seq(pend.anchor, pend.tag), at);
                self.open(Frame::Seq(c))?;
            } else if deeper {
                let at = self.span(p, 0);
                self.push(Ev::Map(pend.anchor, pend.tag), at);
                self.open(Frame::Map(c))?;
            } else if pend.map_value && dash && pend.owner == Some(c) {
                let at = self.span(self.after_dash(p), 0);
                self.push(Ev::Seq(pend.anchor, pend.tag), at);
                self.open(Frame::Indentless(c))?;
            } else {
                self.empty(pend);
            }
        }
        loop {
            let Some(&top) = self.stack.last() else {
                // Content after the root node ended.
                return Err(GiveUp);
            };
            if top.indent() > c || (matches!(top, Frame::Indentless(i) if i == c) && !dash) {
                self.stack.pop();
                self.end(top);
            } else {
                break;
            }
        }
        match self.stack.last() {
            Some(&Frame::Map(i)) if i == c && !dash => self.entry(p, c),
            Some(&(Frame::Seq(i) | Frame::Indentless(i))) if i == c && dash => self.item(p, c),
            _ => Err(GiveUp),
        }
    }

    /// The end of the document: what is pending is empty, every collection closes.
    fn finish(&mut self) -> R<()> {
        if let Some(pend) = self.pending.take() {
            if pend.owner.is_none() {
                return Err(GiveUp);
            }
            self.empty(pend);
        }
        while let Some(top) = self.stack.pop() {
            self.end(top);
        }
        self.push_boundary(Ev::Boundary);
        self.push_boundary(Ev::StreamEnd);
        self.phase = Phase::Done;
        Ok(())
    }

    /// A mapping entry at `p` (the mapping's column `indent`): key, `:`, value.
    fn entry(&mut self, p: usize, indent: usize) -> R<()> {
        let (key, colon) = self.key(p)?;
        let at = self.span(p, self.chars(p, key.1));
        self.push(key.0, at);
        self.value_after_colon(colon, indent)
    }

    /// An implicit key at `p`: its event, where it ends, and where its `:` is.
    #[allow(clippy::type_complexity)]
    fn key(&mut self, p: usize) -> R<((Ev<'a>, usize), usize)> {
        let (text, style, end) = match self.b[p] {
            b'"' | b'\'' => self.quoted(p)?,
            _ => {
                let (text, end, stop) = self.plain(p, false)?;
                if stop != Stop::Colon {
                    return Err(GiveUp);
                }
                (Cow::Borrowed(text), ScalarStyle::Plain, end)
            }
        };
        let mut colon = end;
        while self.at(colon) == Some(b' ') {
            colon += 1;
        }
        if self.at(colon) != Some(b':')
            || !is_space_or_end(self.at(colon + 1))
            || colon - p >= self.lookahead / 2
        {
            return Err(GiveUp);
        }
        Ok(((Ev::Scalar(text, style, 0, Tag::None), end), colon))
    }

    /// What follows a key's `:` at `colon`.
    fn value_after_colon(&mut self, colon: usize, indent: usize) -> R<()> {
        let mut q = colon + 1;
        while self.at(q) == Some(b' ') {
            q += 1;
        }
        if matches!(self.at(q), None | Some(b'\n' | b'\r' | b'#')) {
            self.pending = Some(Pending {
                owner: Some(indent),
                map_value: true,
                at: self.span(colon, 0),
                anchor: 0,
                tag: Tag::None,
            });
            self.pos = q;
            return self.end_of_line();
        }
        self.inline_value(q, indent, true, false, (0, Tag::None))
    }

    /// A sequence item at `p` (its `-`, at the sequence's column `indent`).
    fn item(&mut self, p: usize, indent: usize) -> R<()> {
        let mut q = p + 1;
        while self.at(q) == Some(b' ') {
            q += 1;
        }
        if matches!(self.at(q), None | Some(b'\n' | b'\r' | b'#')) {
            self.pending = Some(Pending {
                owner: Some(indent),
                map_value: false,
                at: self.span(self.after_dash(p), 0),
                anchor: 0,
                tag: Tag::None,
            });
            self.pos = q;
            return self.end_of_line();
        }
        if self.at(q) == Some(b'\t') {
            return Err(GiveUp);
        }
        let col = q - self.line_start;
        if self.is_dash(q) {
            let at = self.span(q, 0);
            self.push(Ev::Seq(0, Tag::None), at);
            self.open(Frame::Seq(col))?;
            return self.item(q, col);
        }
        self.inline_value(q, indent, false, true, (0, Tag::None))
    }

    /// A node that starts on the line at `q` (after `key: `, `- `, or on a line of its own),
    /// `owner` being the column of the collection it belongs to. Where `key_ok` (an item, a line
    /// of its own), a scalar followed by `:` starts a mapping. `outer`: the anchor and tag
    /// written on the line before (`key: &a`), which name whatever starts here.
    fn inline_value(
        &mut self,
        mut q: usize,
        owner: usize,
        map_value: bool,
        key_ok: bool,
        outer: (usize, Tag),
    ) -> R<()> {
        let (mut anchor, mut tag) = outer;
        let mut props_end = None;
        loop {
            if outer != (0, Tag::None) && matches!(self.at(q), Some(b'&' | b'!')) {
                return Err(GiveUp);
            }
            match self.at(q) {
                Some(b'&') if anchor == 0 => {
                    let end = self.name_end(q + 1, false);
                    if end == q + 1 || !is_space_or_end(self.at(end)) {
                        return Err(GiveUp);
                    }
                    anchor = self.next_anchor;
                    self.next_anchor += 1;
                    self.anchors.insert(&self.text[q + 1..end], anchor);
                    q = end;
                }
                Some(b'!') if tag == Tag::None => {
                    let end = self.name_end(q, false);
                    tag = match &self.b[q..end] {
                        b"!reset" => Tag::Reset,
                        b"!override" => Tag::Override,
                        _ => return Err(GiveUp),
                    };
                    if !is_space_or_end(self.at(end)) {
                        return Err(GiveUp);
                    }
                    q = end;
                }
                _ => break,
            }
            props_end = Some(q);
            while self.at(q) == Some(b' ') {
                q += 1;
            }
        }
        if let Some(end) = props_end {
            if matches!(self.at(q), None | Some(b'\n' | b'\r' | b'#')) {
                self.pending = Some(Pending {
                    owner: Some(owner),
                    map_value,
                    at: self.span(end, 0),
                    anchor,
                    tag,
                });
                self.pos = q;
                return self.end_of_line();
            }
        }
        let props = props_end.is_some() || outer != (0, Tag::None);
        let Some(c) = self.at(q) else {
            return Err(GiveUp);
        };
        match c {
            b'*' if !props => {
                let end = self.alias(q)?;
                self.pos = end;
                self.end_of_line()
            }
            b'[' | b'{' => {
                self.flow(q, anchor, tag, 0)?;
                self.end_of_line()
            }
            b'|' | b'>' => self.block_scalar(q, anchor, tag, owner),
            b'"' | b'\'' => {
                let (text, style, end) = self.quoted(q)?;
                let key_ok = key_ok && props_end.is_none();
                self.scalar_or_key(q, text, style, end, anchor, tag, key_ok)
            }
            b'-' if is_space_or_end(self.at(q + 1)) => Err(GiveUp),
            b'?' | b':' | b',' | b']' | b'}' | b'#' | b'%' | b'@' | b'`' | b'&' | b'!' | b'*'
            | b'\t' => Err(GiveUp),
            _ => {
                let (text, end, _) = self.plain(q, false)?;
                let key_ok = key_ok && props_end.is_none();
                self.scalar_or_key(
                    q,
                    Cow::Borrowed(text),
                    ScalarStyle::Plain,
                    end,
                    anchor,
                    tag,
                    key_ok,
                )
            }
        }
    }

    /// A one-line scalar at `q..end` in a block: the value, or (where `key_ok`) the first key
    /// of a mapping there, which the anchor and tag (from the line before) name.
    #[allow(clippy::too_many_arguments)]
    fn scalar_or_key(
        &mut self,
        q: usize,
        text: Cow<'a, str>,
        style: ScalarStyle,
        end: usize,
        anchor: usize,
        tag: Tag,
        key_ok: bool,
    ) -> R<()> {
        let mut colon = end;
        while self.at(colon) == Some(b' ') {
            colon += 1;
        }
        let at = self.span(q, self.chars(q, end));
        if self.at(colon) == Some(b':') {
            // `- key: value`: a mapping at the key's column. Properties on the key, or a
            // second key on a value's line, are for granit-parser.
            if !key_ok || !is_space_or_end(self.at(colon + 1)) || colon - q >= self.lookahead / 2 {
                return Err(GiveUp);
            }
            let col = q - self.line_start;
            self.push(Ev::Map(anchor, tag), self.span(q, 0));
            self.open(Frame::Map(col))?;
            self.push(Ev::Scalar(text, style, 0, Tag::None), at);
            return self.value_after_colon(colon, col);
        }
        self.push(Ev::Scalar(text, style, anchor, tag), at);
        self.pos = end;
        self.end_of_line()
    }

    /// The end of an anchor's or alias's name (or a tag's) starting at `i`.
    fn name_end(&self, mut i: usize, flow: bool) -> usize {
        while let Some(c) = self.at(i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') || (flow && is_flow_indicator(c)) {
                break;
            }
            i += 1;
        }
        i
    }

    /// An alias at `q` (`*name`): its event; where it ends.
    fn alias(&mut self, q: usize) -> R<usize> {
        let end = self.name_end(q + 1, true);
        let name = &self.text[q + 1..end];
        // Names of the usual characters only: a `:` or a bracket in one is granit-parser's.
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        {
            return Err(GiveUp);
        }
        let Some(&id) = self.anchors.get(name) else {
            return Err(GiveUp);
        };
        let at = self.span(q, end - q);
        self.push(Ev::Alias(id), at);
        Ok(end)
    }

    /// A plain scalar starting at `p` on one line: its text, where it ends, and what stopped
    /// it. In flow context, flow indicators stop it too.
    fn plain(&self, p: usize, flow: bool) -> R<(&'a str, usize, Stop)> {
        // The first character: an indicator starts no plain scalar, except `-` before text.
        let Some(first) = self.at(p) else {
            return Err(GiveUp);
        };
        match first {
            b'-' => {
                let next = self.at(p + 1);
                if is_space_or_end(next) || (flow && next.is_some_and(is_flow_indicator)) {
                    return Err(GiveUp);
                }
            }
            b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|'
            | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`' | b' ' | b'\t' | b'\n' | b'\r' => {
                return Err(GiveUp)
            }
            _ => {}
        }
        let b = self.b;
        let table = if flow { &FLOW_STOPS } else { &BLOCK_STOPS };
        let mut i = p;
        let mut end = p;
        let stop = loop {
            // Ordinary bytes, most of a scalar, in a tight loop.
            let from = i;
            while i < b.len() && !table[usize::from(b[i])] {
                i += 1;
            }
            if i > from {
                end = i;
            }
            let Some(c) = self.at(i) else {
                break Stop::Eol;
            };
            match c {
                b'\n' | b'\r' => break Stop::Eol,
                b'\t' => return Err(GiveUp),
                b' ' => {
                    if self.at(i + 1) == Some(b'#') {
                        break Stop::Comment;
                    }
                }
                b':' => {
                    let next = self.at(i + 1);
                    if is_space_or_end(next) || (flow && next.is_some_and(is_flow_indicator)) {
                        break Stop::Colon;
                    }
                    end = i + 1;
                }
                c if flow && is_flow_indicator(c) => break Stop::Flow,
                _ => end = i + 1,
            }
            i += 1;
        };
        Ok((&self.text[p..end], end, stop))
    }

    /// A quoted scalar at `p`, on one line: its text, style, and where it ends (past the quote).
    fn quoted(&self, p: usize) -> R<(Cow<'a, str>, ScalarStyle, usize)> {
        let b = self.b;
        let single = b[p] == b'\'';
        let mut i = p + 1;
        let mut owned: Option<String> = None;
        let mut from = i;
        loop {
            let Some(c) = self.at(i) else {
                return Err(GiveUp);
            };
            match c {
                b'\n' | b'\r' => return Err(GiveUp),
                b'\'' if single => {
                    if self.at(i + 1) == Some(b'\'') {
                        let s = owned.get_or_insert_with(String::new);
                        s.push_str(&self.text[from..=i]);
                        i += 2;
                        from = i;
                        continue;
                    }
                    break;
                }
                b'"' if !single => break,
                b'\\' if !single => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.text[from..i]);
                    i = escape(self.text, i + 1, s)?;
                    from = i;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        let text = match owned {
            Some(mut s) => {
                s.push_str(&self.text[from..i]);
                Cow::Owned(s)
            }
            None => Cow::Borrowed(&self.text[p + 1..i]),
        };
        let style = if single {
            ScalarStyle::SingleQuoted
        } else {
            ScalarStyle::DoubleQuoted
        };
        Ok((text, style, i + 1))
    }

    /// A flow collection at `q` (`[` or `{`), to its closing bracket, perhaps over several
    /// lines. Leaves the position past the bracket.
    fn flow(&mut self, q: usize, anchor: usize, tag: Tag, depth: usize) -> R<()> {
        if depth + self.stack.len() >= self.max_depth {
            return Err(GiveUp);
        }
        let map = self.b[q] == b'{';
        let at = self.span(q, 1);
        self.push(
            if map {
                Ev::Map(anchor, tag)
            } else {
                Ev::Seq(anchor, tag)
            },
            at,
        );
        self.pos = q + 1;
        let close = if map { b'}' } else { b']' };
        loop {
            self.flow_space()?;
            if self.at(self.pos) == Some(close) {
                let at = self.span(self.pos, 1);
                self.push(if map { Ev::MapEnd } else { Ev::SeqEnd }, at);
                self.pos += 1;
                return Ok(());
            }
            if map {
                let k = self.pos;
                let (text, style, end) = match self.at(k) {
                    Some(b'"' | b'\'') => self.quoted(k)?,
                    _ => {
                        let (text, end, stop) = self.plain(k, true)?;
                        if stop != Stop::Colon {
                            return Err(GiveUp);
                        }
                        (Cow::Borrowed(text), ScalarStyle::Plain, end)
                    }
                };
                let at = self.span(k, self.chars(k, end));
                self.push(Ev::Scalar(text, style, 0, Tag::None), at);
                self.pos = end;
                while self.at(self.pos) == Some(b' ') {
                    self.pos += 1;
                }
                if self.at(self.pos) != Some(b':') || !is_space_or_end(self.at(self.pos + 1)) {
                    return Err(GiveUp);
                }
                self.pos += 1;
                self.flow_space()?;
                self.flow_node(depth)?;
            } else {
                self.flow_node(depth)?;
                self.flow_space()?;
                // `[a: b]` is a mapping in a sequence: granit-parser's.
                if self.at(self.pos) == Some(b':') {
                    return Err(GiveUp);
                }
            }
            self.flow_space()?;
            match self.at(self.pos) {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(GiveUp),
            }
        }
    }

    /// One node inside a flow collection, at the position.
    fn flow_node(&mut self, depth: usize) -> R<()> {
        let q = self.pos;
        match self.at(q) {
            Some(b'[' | b'{') => self.flow(q, 0, Tag::None, depth + 1),
            Some(b'*') => {
                self.pos = self.alias(q)?;
                Ok(())
            }
            Some(b'"' | b'\'') => {
                let (text, style, end) = self.quoted(q)?;
                let at = self.span(q, self.chars(q, end));
                self.push(Ev::Scalar(text, style, 0, Tag::None), at);
                self.pos = end;
                Ok(())
            }
            Some(_) => {
                let (text, end, stop) = self.plain(q, true)?;
                if stop == Stop::Colon {
                    return Err(GiveUp);
                }
                if stop == Stop::Eol && !self.flow_scalar_ends_at_eol(end) {
                    return Err(GiveUp);
                }
                let at = self.span(q, self.chars(q, end));
                self.push(
                    Ev::Scalar(Cow::Borrowed(text), ScalarStyle::Plain, 0, Tag::None),
                    at,
                );
                self.pos = end;
                Ok(())
            }
            None => Err(GiveUp),
        }
    }

    /// Whether a plain scalar in a flow collection that reaches the end of its line ends there
    /// (the next content is `,`, a closing bracket or a comment) rather than going on.
    fn flow_scalar_ends_at_eol(&self, mut i: usize) -> bool {
        loop {
            match self.at(i) {
                Some(b' ' | b'\n' | b'\r') => i += 1,
                Some(b',' | b']' | b'}' | b'#') => return true,
                _ => return false,
            }
        }
    }

    /// Spaces, line breaks and comments inside a flow collection. granit-parser does not hold
    /// its lines to the block's indentation; a line at column 0 (where `---` would end the
    /// document) is left to it.
    fn flow_space(&mut self) -> R<()> {
        loop {
            match self.at(self.pos) {
                Some(b' ' | b'\r') => self.pos += 1,
                Some(b'\n') => {
                    self.newline(self.pos);
                    let mut i = self.pos;
                    while self.at(i) == Some(b' ') {
                        i += 1;
                    }
                    if i == self.line_start {
                        return Err(GiveUp);
                    }
                }
                Some(b'#') if self.pos > 0 && matches!(self.b[self.pos - 1], b' ' | b'\n') => {
                    self.pos = self.b[self.pos..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.b.len(), |n| self.pos + n);
                }
                Some(b'\t') => return Err(GiveUp),
                _ => return Ok(()),
            }
        }
    }

    /// A literal (`|`) or folded (`>`) scalar whose header is at `q`, `owner` being the column
    /// of the collection it belongs to. As libyaml reads one (granit-parser follows it).
    fn block_scalar(&mut self, q: usize, anchor: usize, tag: Tag, owner: usize) -> R<()> {
        let literal = self.b[q] == b'|';
        let mut i = q + 1;
        let (mut chomp, mut explicit) = (0i8, 0usize);
        for _ in 0..2 {
            match self.at(i) {
                Some(b'+') if chomp == 0 => chomp = 1,
                Some(b'-') if chomp == 0 => chomp = -1,
                Some(c @ b'1'..=b'9') if explicit == 0 => explicit = usize::from(c - b'0'),
                _ => break,
            }
            i += 1;
        }
        if !is_space_or_end(self.at(i)) {
            return Err(GiveUp);
        }
        self.pos = i;
        self.end_of_line()?;
        if self.pos >= self.b.len() {
            return Err(GiveUp);
        }
        let mut indent = if explicit > 0 { owner + explicit } else { 0 };
        let mut out = String::new();
        let mut trailing = String::new();
        let mut leading_break = false;
        let mut leading_blank = false;
        self.block_breaks(&mut indent, &mut trailing, owner)?;
        let start = self.pos;
        let start_span = self.span(start, 0);
        let mut lines = 0;
        while self.pos - self.line_start == indent && self.pos < self.b.len() {
            lines += 1;
            let trailing_blank = matches!(self.at(self.pos), Some(b' ' | b'\t'));
            if !literal && leading_break && !leading_blank && !trailing_blank {
                if trailing.is_empty() {
                    out.push(' ');
                }
            } else if leading_break {
                out.push('\n');
            }
            out.push_str(&trailing);
            trailing.clear();
            leading_blank = trailing_blank;
            let eol = self.b[self.pos..]
                .iter()
                .position(|&c| c == b'\n')
                // A last line without a line break: granit-parser's.
                .ok_or(GiveUp)?
                + self.pos;
            // A CRLF line break is not part of the line.
            let end = if eol > self.pos && self.b[eol - 1] == b'\r' {
                eol - 1
            } else {
                eol
            };
            out.push_str(&self.text[self.pos..end]);
            self.newline(eol);
            leading_break = true;
            self.block_breaks(&mut indent, &mut trailing, owner)?;
        }
        if lines == 0 {
            return Err(GiveUp);
        }
        if chomp != -1 && leading_break {
            out.push('\n');
        }
        if chomp == 1 {
            out.push_str(&trailing);
        }
        let len = self.chars(start, self.pos);
        let style = if literal {
            ScalarStyle::Literal
        } else {
            ScalarStyle::Folded
        };
        self.queue.push_back((
            Ev::Scalar(Cow::Owned(out), style, anchor, tag),
            Span {
                len: u32::try_from(len).unwrap_or(u32::MAX),
                ..start_span
            },
        ));
        Ok(())
    }

    /// The indentation and empty lines before a block scalar's next line (libyaml's
    /// `scan_block_scalar_breaks`); fixes the indentation when it is not known yet.
    fn block_breaks(&mut self, indent: &mut usize, trailing: &mut String, owner: usize) -> R<()> {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.pos - self.line_start < *indent)
                && self.at(self.pos) == Some(b' ')
            {
                self.pos += 1;
            }
            let col = self.pos - self.line_start;
            if *indent == 0 && col > max_indent {
                max_indent = col;
            }
            if (*indent == 0 || col < *indent) && self.at(self.pos) == Some(b'\t') {
                return Err(GiveUp);
            }
            if self.at(self.pos) == Some(b'\r') && self.at(self.pos + 1) == Some(b'\n') {
                self.pos += 1;
            }
            if self.at(self.pos) != Some(b'\n') {
                break;
            }
            trailing.push('\n');
            self.newline(self.pos);
        }
        if *indent == 0 {
            let col = self.pos - self.line_start;
            // Leading empty lines indented deeper than the first line: granit-parser's.
            if max_indent > col && self.pos < self.b.len() {
                return Err(GiveUp);
            }
            *indent = max_indent.max(owner + 1).max(1);
        }
        Ok(())
    }
}

/// The bytes a plain scalar's scan stops at to look closer, in a block and in a flow collection.
const BLOCK_STOPS: [bool; 256] = stops(b" \n\r\t:");
const FLOW_STOPS: [bool; 256] = stops(b" \n\r\t:,[]{}");

const fn stops(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// What stopped a plain scalar.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Eol,
    Comment,
    Colon,
    Flow,
}

/// One escape of a double-quoted scalar, whose letter is at `i`: appended to `out`; where the
/// text goes on.
fn escape(text: &str, i: usize, out: &mut String) -> R<usize> {
    let b = text.as_bytes();
    let Some(&c) = b.get(i) else {
        return Err(GiveUp);
    };
    let simple = match c {
        b'0' => Some('\0'),
        b'a' => Some('\x07'),
        b'b' => Some('\x08'),
        b't' | b'\t' => Some('\t'),
        b'n' => Some('\n'),
        b'v' => Some('\x0b'),
        b'f' => Some('\x0c'),
        b'r' => Some('\r'),
        b'e' => Some('\x1b'),
        b' ' => Some(' '),
        b'"' => Some('"'),
        b'/' => Some('/'),
        b'\\' => Some('\\'),
        b'N' => Some('\u{85}'),
        b'_' => Some('\u{a0}'),
        b'L' => Some('\u{2028}'),
        b'P' => Some('\u{2029}'),
        _ => None,
    };
    if let Some(ch) = simple {
        out.push(ch);
        return Ok(i + 1);
    }
    let digits = match c {
        b'x' => 2,
        b'u' => 4,
        b'U' => 8,
        _ => return Err(GiveUp),
    };
    let hex = text.get(i + 1..i + 1 + digits).ok_or(GiveUp)?;
    if !hex.bytes().all(|d| d.is_ascii_hexdigit()) {
        return Err(GiveUp);
    }
    let n = u32::from_str_radix(hex, 16).map_err(|_| GiveUp)?;
    out.push(char::from_u32(n).ok_or(GiveUp)?);
    Ok(i + 1 + digits)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::fast::Granit;
    use super::*;
    use crate::limits::{Limit, Limits};

    type Stream<'a> = Vec<(Ev<'a>, Span)>;

    /// Every event up to the end of the stream, or `None` where the source gave up. Spans the
    /// builder does not read (boundaries, ends) are left out of the comparison.
    fn events<'a>(mut source: impl Events<'a>) -> Option<Stream<'a>> {
        let mut out = Vec::new();
        loop {
            let (ev, at) = source.next().ok()?;
            let end = ev == Ev::StreamEnd;
            let at = match ev {
                Ev::Boundary | Ev::StreamEnd | Ev::SeqEnd | Ev::MapEnd => Span::default(),
                _ => at,
            };
            out.push((ev, at));
            if end {
                return Some(out);
            }
        }
    }

    /// Our scanner's events for `text` equal granit-parser's, or our scanner gave up: whether it
    /// took the text.
    fn check(name: &str, text: &str) -> Result<bool, String> {
        let limits = Limits::default();
        let depth = limits.get_usize(Limit::Depth);
        let lookahead = super::super::options(&limits)
            .budget
            .unwrap_or_default()
            .simple_key_max_lookahead;
        let file = FileId::of(&Arc::from(name));
        let Some(ours) = events(Scanner::new(text, file, depth, lookahead)) else {
            return Ok(false);
        };
        let Some(theirs) = events(Granit::new(text, file, depth, lookahead)) else {
            return Err(format!(
                "{name}: our scanner read what granit-parser rejects:\n{text}\nours: {ours:?}"
            ));
        };
        if ours != theirs {
            let at = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            return Err(format!(
                "{name}: the event streams differ at event {at}:\n{text}\nours:   {:?}\ntheirs: {:?}",
                ours.get(at),
                theirs.get(at)
            ));
        }
        Ok(true)
    }

    fn takes(text: &str) -> bool {
        check("case.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn tricky_cases_match_granit_parser() {
        let taken = [
            "key: value # comment\nnext: 1\n",
            "a: 'it''s'\nb: ''\n",
            "a: \"\\u00e9\\t\\x41\\\\\\\"\"\n",
            "a: |+\n  text\n\n\nb: 1\n",
            "a: |-\n  text\n\n\nb: 1\n",
            "a: |\n  one\n   two\n\n  three\nb: >\n  folded\n  lines\n\n  para\n   more\n  end\n",
            "a:\n  k: |2\n     indented\n  l: >-\n    x\n",
            "- - a\n  - b\n- - - c\n",
            "key:\nother:   \nlast: # comment\n",
            "url: http://x:80/a\ntime: 12:30\n",
            "a: b#c\nd: e #f\n",
            "- &x a\n- *x\n- &y\n  k: v\n- *y\n",
            "base: &b {a: 1}\nx:\n  <<: *b\n  c: 2\n",
            "ports: [\"80:80\", 443, '8080']\ncommand: [a, b]\nempty: []\nnone: {}\n",
            "env: {A: 1, \"B\": two, C: [x, y]}\n",
            "list:\n- a\n-\n- # c\n  - nested\nz: 1\n",
            "m: &a\n- x\nn: !reset\no: !override &o\n  p: 1\nq: !reset [1]\n",
            "---\na: 1\n",
            "# leading\n\n---   # c\na:   \n  b: 1\n",
            "- a: 1\n  b: 2\n- c: 3\n",
            "s: caf\u{e9} \u{1F600}\n\u{e9}: \"\u{e9}\"\n",
            "a: [x,\n  y, # c\n  z]\nb: 1\n",
            "a: -1\nb: --flag\nc: ~\nd: null\ne: true\n",
            "\"quoted key\": 1\n'single': 2\n",
            "a: 1\r\nb:\r\n  - x  \r\n  -\r\n  - |\r\n    t\r\n\r\n    u \r\n  - [p,\r\n    q] # c\r\nc: # c\r\n",
        ];
        for text in taken {
            assert!(takes(text), "our scanner gave up on:\n{text}");
        }
        // Not ours to read: granit-parser takes them (or rejects them).
        let given_up = [
            "a:\n\tb: 1\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n---\nb: 2\n",
            "? a\n: b\n",
            "a: plain\n  continued\n",
            "a: \"two\n  lines\"\n",
            "\u{feff}a: 1\n",
            "&x a: 1\n",
            "a: !custom 1\n",
            "a: b: c\n",
            "a: \"x\"#c\n",
            "a: [unclosed\n",
            "a: *nothing\n",
            "a: |\n  no final break",
            "a: 1\rb: 2\r",
            "a: 1\r\nb: x\ry\r\n",
            // Cut short anywhere.
            "a: {b: 1, ",
            "a: [x, ",
            "a: {",
            "- [",
            "a: \"x",
            "a: 'x",
            "a: \"\\",
            "a: \"\\u12",
            "a: &",
            "a: *",
            "a: !",
            "a: |",
            "a: >-\n",
        ];
        for text in given_up {
            assert!(!takes(text), "our scanner took:\n{text}");
        }
    }

    /// Every YAML file in the repository (fixtures, examples, fuzz corpus) and the shared
    /// compose corpus.
    fn yaml_files() -> Vec<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("tests"), root.join("examples"), root.join("fuzz")];
        dirs.extend(crate::compose::yaml::tests::shared_corpus());
        let mut files = Vec::new();
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if !p.ends_with("target") {
                        dirs.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    }

    #[test]
    fn scanner_matches_granit_parser_on_every_yaml_file() {
        let (mut taken, mut total, mut corpus, mut corpus_taken) = (0, 0, 0, 0);
        let mut errors = Vec::new();
        let shared_root = crate::compose::yaml::tests::shared_corpus();
        for f in yaml_files() {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            total += 1;
            let in_corpus = shared_root.as_ref().is_some_and(|d| f.starts_with(d));
            corpus += usize::from(in_corpus);
            match check(&f.display().to_string(), &text) {
                Ok(true) => {
                    taken += 1;
                    corpus_taken += usize::from(in_corpus);
                }
                Ok(false) => println!("scanner gave up: {}", f.display()),
                Err(e) => errors.push(e),
            }
        }
        println!(
            "our scanner took {taken} of {total} YAML files ({corpus_taken} of {corpus} in the shared corpus); the rest went to granit-parser"
        );
        assert!(errors.is_empty(), "{}", errors.join("\n\n"));
        // The generated projects the benchmark loads must be ours, or the speed is gone.
        for merge_keys in [true, false] {
            let g = crate::testgen::generate_with(300, 7, merge_keys);
            assert!(
                takes(&g.compose),
                "the generated project (merge keys: {merge_keys}) went to granit-parser"
            );
        }
    }

    /// A generated block-style node: what the proptest below writes out as YAML.
    #[derive(Debug, Clone)]
    enum Y {
        /// A node on one line: a scalar in any style, a flow collection, an alias.
        Inline(String),
        /// A literal or folded scalar: header, and lines relative to its indentation.
        Block(String, Vec<String>),
        /// No value at all.
        Empty,
        /// Entries (key, properties, value, decoration), the indentation step.
        Map(Vec<(String, String, Y, u8)>, usize),
        /// Items (properties, value, decoration), the step, and whether a mapping's value is
        /// written indentless or items start on the dash's line.
        Seq(Vec<(String, Y, u8)>, usize, bool),
    }

    fn leaf() -> impl Strategy<Value = Y> {
        let plain = prop::sample::select(vec![
            "a",
            "x y",
            "a:b",
            "b#c",
            "-1",
            "--flag",
            "http://h:80/p",
            "true",
            "~",
            "null",
            "0755",
            "1.5",
            "\u{e9} \u{fc}",
            "<<",
            "12:30",
            "a  b",
            "$VAR ${X:-y}",
            "v-1.2",
            "'it''s'",
            "''",
            "'a # b'",
            "\"\"",
            "\"\\u00e9\\t\"",
            "\"a\\\"b\"",
            "\"x: y\"",
            "\"\\x41\\\\\"",
            "'\"'",
            "[]",
            "{}",
            "[a, b]",
            "[\"80:80\", 443]",
            "{a: 1, b: [x, y]}",
            "[a,b ,c]",
            "[*a]",
            "{\"k\": v}",
            "[a, [b, {c: d}]]",
            "[a, b,]",
            "*a",
            "*b",
            "a # comment",
            "'q' # c",
            // Over several lines; `\t` stands for an indentation of any width.
            "[\n\ta,\n\t\"b\" # c\n\t]",
            "{\ta: 1,\n\tb: [x,\n\ty]}",
            "[\n\t[1, 2],\n\t{k: v}\n\t]",
            "[x] # c",
        ])
        .prop_map(|s| Y::Inline(s.to_string()));
        let block = (
            // `N`: an indentation indicator, the step the lines are written with.
            prop::sample::select(vec![
                "|", ">", "|-", ">-", "|+", ">+", "| # c", "|N", ">N-", "|+N",
            ]),
            prop::collection::vec(
                prop::sample::select(vec![
                    "line",
                    "more words",
                    "",
                    "  indented",
                    "# not a comment",
                    "trailing  ",
                    "   ",
                ]),
                1..5,
            ),
        )
            .prop_map(|(h, lines)| {
                let mut lines: Vec<String> = lines.into_iter().map(str::to_string).collect();
                // The first line holds text: leading empty lines are granit-parser's.
                lines.insert(0, "first".to_string());
                Y::Block(h.to_string(), lines)
            });
        prop_oneof![6 => plain, 2 => block, 1 => Just(Y::Empty)]
    }

    fn node() -> impl Strategy<Value = Y> {
        let key = prop::sample::select(vec![
            "k", "key", "a b", "<<", "x-y", "\u{e9}", "\"q k\"", "'s k'", "image", "1",
        ]);
        let props = prop::sample::select(vec![
            "",
            "",
            "",
            "&a ",
            "&b ",
            "!reset ",
            "!override ",
            "&a !reset ",
            "!override &b ",
        ]);
        leaf().prop_recursive(5, 48, 5, move |inner| {
            prop_oneof![
                (
                    prop::collection::vec(
                        (key.clone(), props.clone(), inner.clone(), 0u8..8),
                        1..5
                    ),
                    1usize..4,
                )
                    .prop_map(|(e, step)| Y::Map(
                        e.into_iter()
                            .map(|(k, p, v, d)| (k.to_string(), p.to_string(), v, d))
                            .collect(),
                        step
                    )),
                (
                    prop::collection::vec((props.clone(), inner, 0u8..8), 1..5),
                    1usize..4,
                    any::<bool>(),
                )
                    .prop_map(|(i, step, flag)| Y::Seq(
                        i.into_iter()
                            .map(|(p, v, d)| (p.to_string(), v, d))
                            .collect(),
                        step,
                        flag
                    )),
            ]
        })
    }

    /// Decoration before an entry: a blank line, or a comment line at any indentation.
    fn before(out: &mut String, d: u8, ind: usize) {
        match d {
            1 => out.push('\n'),
            2 => out.push_str(&format!("{}# comment\n", " ".repeat(ind / 2))),
            _ => {}
        }
    }

    /// Decoration at the end of an entry's line.
    fn after(d: u8) -> &'static str {
        match d {
            3 => "  # trailing",
            4 => "   ",
            _ => "",
        }
    }

    /// Writes `v` as the value after `lead` (`key:` or `-`, already indented) of a collection
    /// at column `ind`.
    fn value(out: &mut String, lead: &str, props: &str, v: &Y, ind: usize, d: u8, step: usize) {
        out.push_str(lead);
        let own_line = format!("\n{}", " ".repeat(ind + step));
        let width = 1 + (ind + usize::from(d)) % 5;
        match v {
            // A value on the line after its key.
            Y::Inline(s) if d == 5 && lead.ends_with(':') => {
                let s = s.replace('\t', &" ".repeat(width));
                out.push_str(&format!("{own_line}{props}{s}\n"))
            }
            Y::Inline(s) => {
                let s = s.replace('\t', &" ".repeat(width));
                out.push_str(&format!(" {props}{s}{}\n", after(d)))
            }
            Y::Empty => out.push_str(&format!(" {}{}\n", props.trim_end(), after(d))),
            Y::Block(h, lines) => {
                let h = h.replace('N', &step.to_string());
                out.push_str(&format!(" {props}{h}\n"));
                for l in lines {
                    if l.is_empty() {
                        out.push('\n');
                    } else {
                        out.push_str(&format!("{}{l}\n", " ".repeat(ind + step)));
                    }
                }
            }
            Y::Map(..) | Y::Seq(..) => {
                // Compact forms (`- k: v`, `- - a`) without properties, else on the next line.
                let compact = lead.ends_with('-') && props.is_empty() && d % 2 == 0;
                if compact {
                    out.push(' ');
                    block(out, v, ind + 2, true);
                } else if d == 6 && !props.is_empty() {
                    // Properties on a line of their own, above what they name.
                    out.push_str(&format!("{own_line}{}\n", props.trim_end()));
                    let child = if lead.ends_with(':') {
                        ind + step
                    } else {
                        ind + step + 1
                    };
                    block(out, v, child, false);
                } else {
                    out.push_str(&format!(" {}{}\n", props.trim_end(), after(d)));
                    let indentless = matches!(v, Y::Seq(_, _, true)) && lead.ends_with(':');
                    let child = if indentless { ind } else { ind + step };
                    block(out, v, child, false);
                }
            }
        }
    }

    /// Writes a block collection at column `ind`; `inline`: its first line is already started.
    fn block(out: &mut String, y: &Y, ind: usize, inline: bool) {
        let pad = " ".repeat(ind);
        match y {
            Y::Map(entries, step) => {
                for (n, (k, p, v, d)) in entries.iter().enumerate() {
                    let first = n == 0 && inline;
                    if !first {
                        before(out, *d, ind);
                        out.push_str(&pad);
                    }
                    value(out, &format!("{k}:"), p, v, ind, *d, *step);
                }
            }
            Y::Seq(items, step, _) => {
                for (n, (p, v, d)) in items.iter().enumerate() {
                    let first = n == 0 && inline;
                    if !first {
                        before(out, *d, ind);
                        out.push_str(&pad);
                    }
                    value(out, "-", p, v, ind, *d, *step);
                }
            }
            other => value(out, "-", "", other, ind, 0, 2),
        }
    }

    fn document() -> impl Strategy<Value = String> {
        (node(), 0u8..4, 0u8..5).prop_map(|(y, head, crlf)| {
            let mut out = String::new();
            match head {
                1 => out.push_str("---\n"),
                2 => out.push_str("# a compose file\n\n--- # start\n"),
                3 => out.push_str("\n# c\n"),
                _ => {}
            }
            let root = match y {
                Y::Map(..) | Y::Seq(..) => y,
                leaf => Y::Map(vec![("root".into(), String::new(), leaf, 0)], 2),
            };
            block(&mut out, &root, 0, false);
            // Some documents with CRLF line breaks, as written on Windows.
            if crlf == 0 {
                out = out.replace('\n', "\r\n");
            }
            out
        })
    }

    #[test]
    fn scanner_matches_granit_parser_on_generated_documents() {
        use proptest::test_runner::{Config, TestRunner};
        const CASES: u32 = 2000;
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        let taken = std::cell::Cell::new(0usize);
        let result = runner.run(&document(), |text| {
            match check("generated.yaml", &text) {
                Ok(t) => taken.set(taken.get() + usize::from(t)),
                Err(e) => prop_assert!(false, "{}", e),
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        println!(
            "our scanner took {} of {CASES} generated documents",
            taken.get()
        );
        // Most generated documents are in the scanner's subset: otherwise this tests little.
        assert!(taken.get() > 600, "only {} taken", taken.get());
    }

    /// Any text made of YAML's punctuation: the scanner never panics, and what it takes it
    /// reads as granit-parser does.
    #[test]
    fn scanner_matches_granit_parser_on_yaml_like_noise() {
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config {
            cases: 1000,
            failure_persistence: None,
            ..Config::default()
        });
        let noise = "(a|b|k: |- |: |:|-|#| #|'|\"|\\\\|\\[|\\]|\\{|\\}|, |&a |\\*a|!reset |\\||>|\n|\r\n|\r|  |\t|é|1){0,40}";
        let result = runner.run(&noise, |text| {
            if let Err(e) = check("noise.yaml", &text) {
                prop_assert!(false, "{}", e);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// The whole fast path (our scanner's events through the builder: anchors, `<<` merges,
    /// tags) gives serde-saphyr's tree for every generated document it takes.
    #[test]
    fn fast_path_matches_serde_saphyr_on_generated_documents() {
        use proptest::test_runner::{Config, TestRunner};
        const CASES: u32 = 1000;
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        let limits = Limits::default();
        let lookahead = super::super::options(&limits)
            .budget
            .unwrap_or_default()
            .simple_key_max_lookahead;
        let file: Arc<str> = Arc::from("generated.yaml");
        let taken = std::cell::Cell::new(0usize);
        let result = runner.run(&document(), |text| {
            let fast = super::super::fast::parse(
                &file,
                &text,
                limits.get_usize(Limit::Depth),
                limits.get_usize(Limit::AliasEvents),
                lookahead,
            );
            if let Some(tree) = fast {
                taken.set(taken.get() + 1);
                match super::super::parse_serde(&file, &text, &limits) {
                    Ok(reference) => prop_assert_eq!(tree, reference, "{}", text),
                    Err(e) => prop_assert!(false, "serde-saphyr rejects {text}: {e:?}"),
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        println!(
            "the fast path took {} of {CASES} generated documents",
            taken.get()
        );
        assert!(taken.get() > 200, "only {} taken", taken.get());
    }
}
