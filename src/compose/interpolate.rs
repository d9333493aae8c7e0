//! Variable interpolation in compose values, as `docker compose` does it: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`,
//! `${VAR+alt}`, nesting in the default/alternative/message, `$$` for a literal `$`, and a `$` that
//! starts neither a name nor `{` (`$(hostname)`, `$5`, `$#`) kept as text, as compose keeps it.
//!
//! Pure string work: the caller supplies the variables and turns an [`Error`] into a diagnostic
//! pointing at the scalar.

use std::collections::BTreeSet;

/// A problem in one string; `offset`/`len` are byte positions inside the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub hint: Option<String>,
    pub offset: usize,
    pub len: usize,
}

/// The result of interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interpolated {
    pub text: String,
    /// Variables referenced without a default that were not set (docker compose warns about
    /// these and substitutes an empty string).
    pub unset: BTreeSet<String>,
}

/// Interpolates `text`, looking variables up with `lookup`.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Error> {
    let mut out = Interpolated::default();
    let mut p = Parser {
        text,
        lookup,
        unset: &mut out.unset,
        depth: 0,
    };
    out.text = p.run(0, text.len())?;
    Ok(out)
}

/// Whether a string contains anything interpolation would change (a fast path for big files).
pub fn needs_interpolation(text: &str) -> bool {
    text.contains('$')
}

struct Parser<'a> {
    text: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    unset: &'a mut BTreeSet<String>,
    depth: usize,
}

fn is_name_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Nesting deeper than this is not a real compose file; stop before the stack does.
const MAX_DEPTH: usize = 32;

impl Parser<'_> {
    /// Expands `text[start..end]`.
    fn run(&mut self, start: usize, end: usize) -> Result<String, Error> {
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        let mut i = start;
        let mut literal_from = start;
        while i < end {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            out.push_str(&self.text[literal_from..i]);
            let dollar = i;
            let next = bytes.get(i + 1).copied().filter(|_| i + 1 < end);
            match next {
                Some(b'$') => {
                    out.push('$');
                    i += 2;
                }
                Some(b'{') => {
                    let close = self.matching_brace(i + 2, end).ok_or_else(|| Error {
                        message: format!(
                            "invalid interpolation format: `{}` has no closing `}}`",
                            self.text[dollar..end]
                                .lines()
                                .next()
                                .unwrap_or("")
                                .trim_end()
                        ),
                        hint: Some("write `${NAME}`, or `$$` for a literal `$`".into()),
                        offset: dollar,
                        len: end - dollar,
                    })?;
                    out.push_str(&self.braced(dollar, i + 2, close)?);
                    i = close + 1;
                }
                Some(c) if is_name_start(c) => {
                    let mut j = i + 1;
                    while j < end && is_name_char(bytes[j]) {
                        j += 1;
                    }
                    let name = &self.text[i + 1..j];
                    out.push_str(&self.value_or_empty(name));
                    i = j;
                }
                // `$(hostname)`, `$5`, `$#`, `$ `, a `$` at the end: docker compose keeps the
                // `$` as text (shell snippets in `command:` rely on it).
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            literal_from = i;
        }
        out.push_str(&self.text[literal_from..end.max(literal_from)]);
        Ok(out)
    }

    /// The index of the `}` closing a `${` whose content starts at `from`.
    fn matching_brace(&self, from: usize, end: usize) -> Option<usize> {
        let bytes = self.text.as_bytes();
        let mut depth = 0usize;
        let mut i = from;
        while i < end {
            match bytes[i] {
                b'$' if bytes.get(i + 1) == Some(&b'$') && i + 1 < end => i += 1,
                b'$' if bytes.get(i + 1) == Some(&b'{') && i + 1 < end => {
                    depth += 1;
                    i += 1;
                }
                b'}' if depth == 0 => return Some(i),
                b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        None
    }

    fn value_or_empty(&mut self, name: &str) -> String {
        match (self.lookup)(name) {
            Some(v) => v,
            None => {
                self.unset.insert(name.to_string());
                String::new()
            }
        }
    }

    /// `${...}` whose content is `text[start..close]`.
    fn braced(&mut self, dollar: usize, start: usize, close: usize) -> Result<String, Error> {
        let bytes = self.text.as_bytes();
        let whole = &self.text[dollar..=close];
        let bad = |msg: String| Error {
            message: msg,
            hint: Some(
                "use `${NAME}`, `${NAME:-default}`, `${NAME:?error}` or `${NAME:+alternative}`"
                    .into(),
            ),
            offset: dollar,
            len: close + 1 - dollar,
        };
        let mut j = start;
        while j < close && is_name_char(bytes[j]) {
            j += 1;
        }
        let name = &self.text[start..j];
        if name.is_empty() || !is_name_start(bytes[start]) {
            return Err(bad(format!(
                "invalid interpolation format: `{whole}` has no valid variable name"
            )));
        }
        if j == close {
            return Ok(self.value_or_empty(name));
        }
        let (op, arg_start) = match (bytes[j], bytes.get(j + 1).copied()) {
            (b':', Some(c @ (b'-' | b'?' | b'+'))) => ((true, c), j + 2),
            (c @ (b'-' | b'?' | b'+'), _) => ((false, c), j + 1),
            _ => {
                return Err(bad(format!(
                    "invalid interpolation format: unexpected `{}` in `{whole}`",
                    self.text[j..].chars().next().unwrap_or(' ')
                )))
            }
        };
        if self.depth >= MAX_DEPTH {
            return Err(bad(format!("interpolation nested too deeply in `{whole}`")));
        }
        let value = (self.lookup)(name);
        let (colon, kind) = op;
        // `:` variants treat an empty value like an unset one.
        let present = match &value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        self.depth += 1;
        let result = match kind {
            b'-' => {
                if present {
                    Ok(value.unwrap_or_default())
                } else {
                    self.run(arg_start, close)
                }
            }
            b'+' => {
                if present {
                    self.run(arg_start, close)
                } else {
                    Ok(String::new())
                }
            }
            _ => {
                if present {
                    Ok(value.unwrap_or_default())
                } else {
                    let msg = self.run(arg_start, close)?;
                    let state = if value.is_some() { "empty" } else { "not set" };
                    let mut message = format!("required variable `{name}` is {state}");
                    if !msg.is_empty() {
                        message.push_str(": ");
                        message.push_str(&msg);
                    }
                    Err(Error {
                        message,
                        hint: Some(format!(
                            "set `{name}` in the environment, in the project's `.env` file or in a file given with `--env-file`"
                        )),
                        offset: dollar,
                        len: close + 1 - dollar,
                    })
                }
            }
        };
        self.depth -= 1;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, Error> {
        let lookup = |n: &str| match n {
            "A" => Some("a".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        interpolate(text, &lookup).map(|i| i.text)
    }

    #[test]
    fn expands_every_form() {
        for (input, want) in [
            ("$A", "a"),
            ("x${A}y", "xay"),
            ("${B:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${B-d}", "d"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${B+alt}", ""),
            ("${B:-${C:-x}}", "x"),
            ("${B:-${A}}", "a"),
            ("$$A", "$A"),
            ("cost: $$5", "cost: $5"),
            ("$B-", "-"),
            ("ünï$A", "ünïa"),
        ] {
            assert_eq!(run(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn required_and_bad_syntax_are_errors() {
        let e = run("x ${B:?need B}").unwrap_err();
        assert_eq!(e.message, "required variable `B` is not set: need B");
        assert_eq!(e.offset, 2);
        let e = run("${EMPTY:?}").unwrap_err();
        assert_eq!(e.message, "required variable `EMPTY` is empty");
        assert!(run("${EMPTY?}").is_ok());
        let e = run("ab${A").unwrap_err();
        assert!(e.message.contains("no closing"), "{}", e.message);
        assert_eq!(e.offset, 2);
        assert!(run("${A B}").is_err());
        assert!(run("${}").is_err());
    }

    #[test]
    fn a_dollar_that_starts_no_name_stays_text() {
        for (input, want) in [
            ("$(hostname)", "$(hostname)"),
            ("$5 $# $@ $- $! $? $*", "$5 $# $@ $- $! $? $*"),
            ("end $", "end $"),
            ("$ x", "$ x"),
            ("é$é", "é$é"),
            ("$1$A", "$1a"),
            ("${B-}}", "}"),
        ] {
            assert_eq!(run(input).as_deref(), Ok(want), "{input}");
        }
    }
}
