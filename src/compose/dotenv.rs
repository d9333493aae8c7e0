//! `.env` files (the project's, `--env-file`, and services' `env_file`), in the syntax docker
//! compose reads: `KEY=VALUE` lines, `export ` prefixes, `#` comments, single quotes (literal),
//! double quotes (escapes, interpolation) and interpolation of unquoted values.

use std::sync::Arc;

use super::interpolate;
use super::model::Location;

/// One problem in an env file: the 1-based line, the offending text, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub line: u32,
    /// The byte offset in the file (as given to [`parse`]) of what is wrong: the bad character
    /// of a name, the quote that is not closed, the `$` of a bad interpolation.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    pub message: String,
}

/// Where an [`Error`] (its `offset` and `len`) of `text` (the file `file`) is.
pub fn error_location(file: &Arc<str>, text: &str, offset: usize, len: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    // A byte-order mark is not a column.
    let column = before[line_start..]
        .trim_start_matches('\u{feff}')
        .chars()
        .count()
        + 1;
    Location {
        file: file.clone(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
        offset,
        len: len.min(text.len() - offset),
    }
}

/// Parses `text`; `lookup` resolves `${VAR}` in values (before the earlier lines of the file).
/// A line `KEY` without `=` yields `(KEY, None)`: the value comes from the environment.
///
/// The rules, as compose-go's dotenv reader applies them (checked against docker compose v2.40):
/// - a UTF-8 BOM at the start is skipped; `\r\n` ends a line like `\n`;
/// - `export ` before a key is ignored, and so is a line `export` alone;
/// - a key may hold letters, digits, `_`, `.` and `-`; a space in it is an error;
/// - unquoted values are trimmed, end at ` #` (a comment), keep backslashes, and are interpolated;
/// - `'…'` is literal and may span lines;
/// - `"…"` may span lines, turns `\n \r \t \a \b \f \v` into control characters, `\\` into
///   `\`, `\"` into `"`, `\$` into a `$` that is not interpolated (and `\0` into `\`), keeps
///   any other backslash, then is interpolated;
/// - after a closing quote, the rest of the line is read as if it started a new line (so
///   `A="x" # note` is a comment, and `A="x"junk` also names a variable `junk`).
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, Error> {
    let mut r = Reader {
        s: text.strip_prefix('\u{feff}').unwrap_or(text),
        pos: 0,
        line: 1,
    };
    // Offsets in errors are in `text`, the mark included.
    let bom = text.len() - r.s.len();
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    loop {
        r.skip(|c| c.is_whitespace());
        if r.rest().is_empty() {
            break;
        }
        if r.rest().starts_with('#') {
            r.skip(|c| c != '\n');
            continue;
        }
        let line_no = r.line;
        let line = r.rest().split('\n').next().unwrap_or("");
        if let Some(after) = line.strip_prefix("export") {
            if after.trim().is_empty() {
                r.skip(|c| c != '\n');
                continue;
            }
            if after.starts_with([' ', '\t']) {
                r.advance("export".len());
                r.skip(|c| c == ' ' || c == '\t');
            }
        }
        let line = r.rest().split('\n').next().unwrap_or("");
        // Where the name starts (at the `=` when there is none).
        let key_at = |part: &str| bom + r.pos + (part.len() - part.trim_start().len());
        let Some(eq) = line.find('=') else {
            let key = line.trim_end_matches('\r').trim();
            check_key(key, line_no, key_at(line))?;
            r.advance(line.len());
            out.push((key.to_string(), None));
            continue;
        };
        let key = line[..eq].trim();
        check_key(key, line_no, key_at(&line[..eq]))?;
        r.advance(eq + 1);
        r.skip(|c| c == ' ' || c == '\t');
        let value = match r.rest().chars().next() {
            Some(q @ ('\'' | '"')) => {
                let quote_at = bom + r.pos;
                r.advance(1);
                let body_start = r.pos;
                let end = if q == '\'' {
                    r.rest().find('\'')
                } else {
                    closing_double_quote(r.rest())
                };
                let Some(end) = end else {
                    return Err(Error {
                        line: line_no,
                        offset: quote_at,
                        len: 1,
                        message: format!("the value of `{key}` has no closing `{q}`"),
                    });
                };
                r.advance(end + 1);
                let body = &r.s[body_start..body_start + end];
                // Escapes move the text: an interpolation error is then put at the quote.
                let at = if body.contains(['\\', '\r']) {
                    At::Quote(quote_at)
                } else {
                    At::Value(bom + body_start)
                };
                let body = body.replace("\r\n", "\n");
                if q == '\'' {
                    body
                } else {
                    expand(&unescape(&body), &out, lookup, line_no, at)?
                }
            }
            _ => {
                let line = r.rest().split('\n').next().unwrap_or("");
                let value_at = bom + r.pos;
                r.advance(line.len());
                let v = line.find(" #").map_or(line, |i| &line[..i]);
                let lead = v.len() - v.trim_start().len();
                expand(v.trim(), &out, lookup, line_no, At::Value(value_at + lead))?
            }
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), Some(value)));
    }
    Ok(out)
}

/// A cursor over an env file that counts lines.
struct Reader<'a> {
    s: &'a str,
    pos: usize,
    line: u32,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn advance(&mut self, bytes: usize) {
        let end = (self.pos + bytes).min(self.s.len());
        let newlines = self.s[self.pos..end].matches('\n').count();
        self.line = self
            .line
            .saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
        self.pos = end;
    }

    fn skip(&mut self, keep_going: impl Fn(char) -> bool) {
        let n = self
            .rest()
            .char_indices()
            .find(|&(_, c)| !keep_going(c))
            .map_or(self.rest().len(), |(i, _)| i);
        self.advance(n);
    }
}

/// `format: raw`: `KEY=VALUE` lines taken literally (no quotes, no interpolation); blank lines
/// and `#` comment lines are skipped.
pub fn parse_raw(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Checks a variable's name, written at byte `at` of the file; an error points at the first
/// character that is not allowed (at the `=` when the name is empty).
fn check_key(key: &str, line: u32, at: usize) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error {
            line,
            offset: at,
            len: 1,
            message: "a line starts with `=`: the variable has no name".to_string(),
        });
    }
    if let Some((i, c)) = key.char_indices().find(|(_, c)| c.is_whitespace()) {
        return Err(Error {
            line,
            offset: at + i,
            len: c.len_utf8(),
            message: format!("`{key}` is not a variable name: a name cannot contain a space"),
        });
    }
    if let Some((i, c)) = key
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Error {
            line,
            offset: at + i,
            len: c.len_utf8(),
            message: format!("`{key}` is not a variable name: it contains `{c}`"),
        });
    }
    Ok(())
}

/// Where a value is in the file, for its interpolation errors.
#[derive(Clone, Copy)]
enum At {
    /// The value's text starts at this byte, as interpolated.
    Value(usize),
    /// Escapes changed the text: the error goes to the opening quote at this byte.
    Quote(usize),
}

fn closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// The escapes of a double-quoted value; `\$` becomes `$$`, which interpolation keeps as `$`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some('0') => out.push('\\'),
            Some('$') => out.push_str("$$"),
            Some(c @ ('\\' | '"')) => out.push(c),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn expand(
    value: &str,
    earlier: &[(String, Option<String>)],
    lookup: &dyn Fn(&str) -> Option<String>,
    line: u32,
    at: At,
) -> Result<String, Error> {
    if !interpolate::needs_interpolation(value) {
        return Ok(value.to_string());
    }
    // The environment first, then the file's earlier lines: compose-go resolves `B=${A}` to the
    // process's `A` even when the file set `A` just before.
    let local = |name: &str| {
        lookup(name).or_else(|| {
            earlier
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        })
    };
    interpolate::interpolate(value, &local)
        .map(|i| i.text)
        .map_err(|e| {
            let (offset, len) = match at {
                At::Value(start) => (start + e.offset, e.len.max(1)),
                At::Quote(quote) => (quote, 1),
            };
            Error {
                line,
                offset,
                len,
                message: e.message,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: the env file, and what docker compose v2.40.3 reads from it (`None`: the
    /// variable is not set), with `A=1` in the environment.
    #[test]
    fn reads_env_files_exactly_as_docker_compose() {
        type Read<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: &[(&str, Read)] = &[
            ("A=1\n", &[("A", Some("1"))]),
            (" B = spaced  \n", &[("B", Some("spaced"))]),
            (
                "export C=exported\nexport  X = y\n",
                &[("C", Some("exported")), ("X", Some("y"))],
            ),
            (
                "D='single $A # not comment'\n",
                &[("D", Some("single $A # not comment"))],
            ),
            (
                r#"E="double $A \n newline \t tab \" quote \\ bs \$A dollar""#,
                &[(
                    "E",
                    Some("double 1 \n newline \t tab \" quote \\ bs $A dollar"),
                )],
            ),
            (
                "F=unquoted # comment\nG=unquoted#nocomment\n",
                &[("F", Some("unquoted")), ("G", Some("unquoted#nocomment"))],
            ),
            ("H=\"quoted\" # comment after\n", &[("H", Some("quoted"))]),
            (
                "I='quoted' trailing\n",
                &[("I", Some("quoted")), ("trailing", None)],
            ),
            ("J=\nK\n", &[("J", Some("")), ("K", None)]),
            (
                "L=\"multi\nline\"\nM='multi\r\nsingle'\n",
                &[("L", Some("multi\nline")), ("M", Some("multi\nsingle"))],
            ),
            (
                "N=${A}-${UNSET:-def}\nO=a=b=c\n",
                &[("N", Some("1-def")), ("O", Some("a=b=c"))],
            ),
            (r#"P="un \' x""#, &[("P", Some(r"un \' x"))]),
            (r#"Q=\"lit\""#, &[("Q", Some(r#"\"lit\""#))]),
            ("R=  \"lead\"  \n", &[("R", Some("lead"))]),
            (r"S=x\ny", &[("S", Some(r"x\ny"))]),
            (
                "T=\"${A:+alt}\"\nU='$A'\nV=$A$A\n",
                &[("T", Some("alt")), ("U", Some("$A")), ("V", Some("11"))],
            ),
            (
                "Z=#hash\nAA= #just comment\n",
                &[("Z", Some("#hash")), ("AA", Some("#just comment"))],
            ),
            (
                "AB=\"a#b\" #c\nAC=tab\t#tabcomment\n",
                &[("AB", Some("a#b")), ("AC", Some("tab\t#tabcomment"))],
            ),
            (
                r#"B="x\ry\az\x41\u00e9\\n\b\f\v\0""#,
                &[("B", Some("x\ry\u{7}z\\x41\\u00e9\\n\u{8}\u{c}\u{b}\\"))],
            ),
            (r"E=\$A", &[("E", Some(r"\1"))]),
            (
                "\u{feff}A=1\r\nB=2\r\n",
                &[("A", Some("1")), ("B", Some("2"))],
            ),
            (
                "1G=digit\nC.D=dot\nE-F=dash\n",
                &[
                    ("1G", Some("digit")),
                    ("C.D", Some("dot")),
                    ("E-F", Some("dash")),
                ],
            ),
            (
                "H=\"v\"junk\nexport\n# c\n",
                &[("H", Some("v")), ("junk", None)],
            ),
            ("I=last\nI=again\n", &[("I", Some("again"))]),
        ];
        let lookup = |k: &str| (k == "A").then(|| "1".to_string());
        for (text, want) in cases {
            let got = parse(text, &lookup).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            let want: Vec<(String, Option<String>)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(String::from)))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn the_environment_wins_over_earlier_lines_in_interpolation() {
        let lookup = |k: &str| (k == "A").then(|| "env".to_string());
        let got = parse("A=file\nB=${A}\nC=x\nD=${C}\n", &lookup).unwrap();
        assert_eq!(got[1], ("B".to_string(), Some("env".to_string())));
        assert_eq!(got[3], ("D".to_string(), Some("x".to_string())));
    }

    #[test]
    fn refuses_what_docker_compose_refuses() {
        let e = parse("A=1\nA B=1\n", &|_| None).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (
                2,
                "`A B` is not a variable name: a name cannot contain a space"
            )
        );
        let e = parse("K='it''s'\n", &|_| None).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (1, "`'s'` is not a variable name: it contains `'`")
        );
        let e = parse("\nA='open\n", &|_| None).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "the value of `A` has no closing `'`")
        );
    }

    /// An error points at what is wrong in the line (the line alone was given before, with a
    /// caret under the line's first character).
    #[test]
    fn errors_point_at_the_offending_character() {
        let at = |text: &str| {
            let e = parse(text, &|_| None).unwrap_err();
            let l = error_location(&Arc::from(".env"), text, e.offset, e.len);
            (l.line, l.column, l.len)
        };
        // The space in the name, also after `export`.
        assert_eq!(at("A=1\nMY VAR=1\n"), (2, 3, 1));
        assert_eq!(at("export  X Y=1\n"), (1, 10, 1));
        // The character a name cannot hold; the `=` of a line without a name.
        assert_eq!(at("A=1\n  K'x=1\n"), (2, 4, 1));
        assert_eq!(at("\u{feff}=1\n"), (1, 1, 1));
        // The quote that is never closed.
        assert_eq!(at("A=1\nB=  'open\n"), (2, 5, 1));
        assert_eq!(at("A=1\r\nB=\"open\r\n"), (2, 3, 1));
        // The `$` of a bad interpolation, unquoted or in double quotes; with escapes before
        // it, the quote.
        assert_eq!(at("A=x ${B\n"), (1, 5, 3));
        assert_eq!(at("A=\"a ${B\"\n"), (1, 6, 3));
        assert_eq!(at("A=\"\\t ${B\"\n"), (1, 3, 1));
    }

    #[test]
    fn reads_docker_compose_env_syntax() {
        let text =
            "# c\nA=1\nexport B = two words # note\nC='lit $A'\nD=\"x\\ny $A\"\nE=${A}0\nF\nG=\n";
        let got = parse(text, &|_| None).unwrap();
        let want: Vec<(String, Option<String>)> = vec![
            ("A".into(), Some("1".into())),
            ("B".into(), Some("two words".into())),
            ("C".into(), Some("lit $A".into())),
            ("D".into(), Some("x\ny 1".into())),
            ("E".into(), Some("10".into())),
            ("F".into(), None),
            ("G".into(), Some(String::new())),
        ];
        assert_eq!(got, want);
        assert_eq!(parse("A='open\n", &|_| None).unwrap_err().line, 1);
    }
}
