//! Diagnostics: user-facing problems with a location, rendered the way rustc does.
//!
//! ```text
//! error: unknown key `imgae` in service `web`
//!   --> compose.yaml:3:5
//!    |
//!  3 |     imgae: nginx
//!    |     ^^^^^ did you mean `image`?
//!    = hint: ...
//! ```
//!
//! Every loader (compose, inventory) collects all its problems into a [`Diagnostics`] list rather
//! than stopping at the first one. Rendering needs the source text, held in a [`SourceMap`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::compose::model::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: what is wrong, where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub location: Option<Location>,
    /// Short text printed after the caret.
    pub label: Option<String>,
    pub hint: Option<String>,
    /// Further locations with their own labels (e.g. each edge of a dependency cycle).
    pub notes: Vec<(Location, String)>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            location: None,
            label: None,
            hint: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, location: impl Into<Location>) -> Self {
        self.location = Some(location.into());
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn note(mut self, location: impl Into<Location>, text: impl Into<String>) -> Self {
        self.notes.push((location.into(), text.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// The one-line form: `compose.yaml:3:5: error: unknown key ...`, for logs and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.message)
    }
}

/// A list of problems found in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The text of every file read, so diagnostics can quote it.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: BTreeMap<Arc<str>, Arc<str>>,
}

impl SourceMap {
    pub fn add(&mut self, name: Arc<str>, text: Arc<str>) {
        self.files.insert(name, text);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.files.get(name).map(|t| &**t)
    }

    /// Renders a diagnostic with the quoted line and a caret, rustc style.
    pub fn render(&self, d: &Diagnostic) -> String {
        let mut out = String::new();
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{sev}: {}", d.message);
        if let Some(loc) = &d.location {
            self.render_snippet(&mut out, loc, d.label.as_deref());
        } else if let Some(label) = &d.label {
            let _ = writeln!(out, "   = {label}");
        }
        for (loc, text) in &d.notes {
            self.render_snippet(&mut out, loc, Some(text));
        }
        if let Some(hint) = &d.hint {
            // Aligned with the `|` gutter of the quoted lines.
            let width = std::iter::once(&d.location)
                .flatten()
                .chain(d.notes.iter().map(|(l, _)| l))
                .map(|l| l.line.to_string().len())
                .max()
                .unwrap_or(1);
            let _ = writeln!(out, " {} = hint: {hint}", " ".repeat(width));
        }
        out
    }

    fn render_snippet(&self, out: &mut String, loc: &Location, label: Option<&str>) {
        let _ = writeln!(out, "  --> {loc}");
        let Some(line_text) = self
            .get(&loc.file)
            .and_then(|t| source_lines(t).nth(loc.line.saturating_sub(1) as usize))
        else {
            if let Some(label) = label {
                let _ = writeln!(out, "   = {label}");
            }
            return;
        };
        let num = loc.line.to_string();
        let pad = " ".repeat(num.len());
        let col = loc.column.saturating_sub(1) as usize;
        // The caret runs under the marked text, but never past the end of the quoted line.
        let chars_on_line = line_text.chars().count();
        let width = loc.len.clamp(1, chars_on_line.saturating_sub(col).max(1));
        let _ = writeln!(out, " {pad} |");
        let _ = writeln!(out, " {num} | {line_text}");
        let _ = write!(out, " {pad} | {}{}", " ".repeat(col), "^".repeat(width));
        if let Some(label) = label {
            let _ = write!(out, " {label}");
        }
        out.push('\n');
    }
}

/// How alike (Jaro-Winkler, 0 to 1) a misspelt name must be to a known one to be suggested.
pub const SUGGEST_THRESHOLD: f64 = 0.8;

/// The one "did you mean" helper: the known name closest to a misspelt one, when it is close
/// enough ([`SUGGEST_THRESHOLD`]) to be a likely typo. Ties go to the alphabetically first.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(wrong, k), k))
        .filter(|(score, _)| *score >= SUGGEST_THRESHOLD)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, k)| k)
}

/// The lines of a source text as YAML counts them: `\r\n`, a lone `\r` and `\n` each end a
/// line (a file saved with old Mac line endings is one "line" to `str::lines`, but not to the
/// YAML parser whose positions we print).
pub fn source_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&t[i + skip..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// The 1-based line, as [`source_lines`] counts them, on which byte `offset` of `text` stands.
pub fn line_of_offset(text: &str, offset: usize) -> u32 {
    let before = text
        .get(..offset.min(text.len()))
        .unwrap_or(text)
        .as_bytes();
    let mut line = 1u32;
    for (i, b) in before.iter().enumerate() {
        match b {
            b'\n' => line += 1,
            b'\r' if before.get(i + 1) != Some(&b'\n') => line += 1,
            _ => {}
        }
    }
    line
}

/// The 1-based line and column (in characters) of byte `offset` of `text`, lines counted as
/// [`source_lines`] counts them.
pub fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind(['\n', '\r']).map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        line_of_offset(text, end),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_marked_text() {
        let mut sources = SourceMap::default();
        sources.add(
            "compose.yaml".into(),
            "services:\n  web:\n    imgae: nginx\n".into(),
        );
        let d = Diagnostic::error("unknown key `imgae` in service `web`")
            .at(Location {
                file: "compose.yaml".into(),
                line: 3,
                column: 5,
                offset: 21,
                len: 5,
            })
            .label("did you mean `image`?");
        let text = sources.render(&d);
        assert_eq!(
            text,
            "error: unknown key `imgae` in service `web`\n  --> compose.yaml:3:5\n   |\n 3 |     imgae: nginx\n   |     ^^^^^ did you mean `image`?\n"
        );
    }

    #[test]
    fn lines_end_at_crlf_lone_cr_and_lf_as_in_yaml() {
        let text = "a\r\nb\rc\nd";
        assert_eq!(source_lines(text).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(line_of_offset(text, 0), 1);
        assert_eq!(line_of_offset(text, 3), 2);
        assert_eq!(line_of_offset(text, 5), 3);
        assert_eq!(line_of_offset(text, 7), 4);
        assert_eq!(source_lines("x\n").count(), 2);
    }
}
