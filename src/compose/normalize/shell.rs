//! Command strings split into words as docker compose splits them (compose-go uses
//! go-shellwords 1.0.12): quotes and backslashes, no expansion, and the words end at the first
//! shell operator (`;`, `&`, `|`, `<`, `>`) outside quotes.

/// The words of a command string and, when a shell operator ended them early, the byte offset of
/// the text that was dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Words {
    pub words: Vec<String>,
    /// Where the dropped text starts (`&& b` of `a && b`), if any was dropped.
    pub dropped_at: Option<usize>,
}

/// Splits a command string into words as docker compose does: a string `command` is not run by
/// a shell, so compose keeps the words before the first operator and drops the rest
/// (`a && b` runs `a`). We do the same, so that the fleet runs what compose runs; the caller
/// warns about the dropped text.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    shell_words(s).map(|w| w.words)
}

/// [`shell_split`], saying where an operator ended the words.
pub fn shell_words(s: &str) -> Result<Words, String> {
    /// Whether the current word exists: nothing yet, some characters, or a quoted (possibly
    /// empty) string, which is a word even when empty (`''`).
    #[derive(PartialEq, Eq, Clone, Copy)]
    enum Got {
        No,
        Chars,
        Quoted,
    }
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut got = Got::No;
    let (mut escaped, mut single, mut double, mut back, mut dollar) =
        (false, false, false, false, false);
    let mut dropped_at = None;
    for (i, c) in s.char_indices() {
        if escaped {
            cur.push(c);
            escaped = false;
            got = Got::Chars;
            continue;
        }
        if c == '\\' {
            // A backslash escapes the next character everywhere but inside single quotes
            // (inside double quotes too, whatever the character).
            if single {
                cur.push(c);
            } else {
                escaped = true;
            }
            continue;
        }
        if matches!(c, ' ' | '\t' | '\r' | '\n') {
            if single || double || back || dollar {
                cur.push(c);
            } else if got != Got::No {
                words.push(std::mem::take(&mut cur));
                got = Got::No;
            }
            continue;
        }
        match c {
            '`' if !single && !double && !dollar => back = !back,
            ')' if !single && !double && !back => dollar = !dollar,
            '(' if !single && !double && !back => {
                if !dollar && cur.ends_with('$') {
                    dollar = true;
                    cur.push(c);
                    continue;
                }
                return Err(format!(
                    "`{s}` has a `(` that does not open `$(`: docker compose cannot split it into words"
                ));
            }
            '"' if !single && !dollar => {
                if double {
                    got = Got::Quoted;
                }
                double = !double;
                continue;
            }
            '\'' if !double && !dollar => {
                if single {
                    got = Got::Quoted;
                }
                single = !single;
                continue;
            }
            ';' | '&' | '|' | '<' | '>' if !(single || double || back || dollar) => {
                // `2>&1`: a word of digits before `>` is the redirection's, not the command's.
                if c == '>' && cur.starts_with(|d: char| d.is_ascii_digit()) {
                    got = Got::No;
                    dropped_at = Some(i.saturating_sub(cur.len()));
                } else {
                    dropped_at = Some(i);
                }
                break;
            }
            _ => {}
        }
        got = Got::Chars;
        cur.push(c);
    }
    if got != Got::No {
        words.push(cur);
    }
    if escaped || single || double || back || dollar {
        let what = if single {
            "an unclosed `'`"
        } else if double {
            "an unclosed `\"`"
        } else if back {
            "an unclosed `` ` ``"
        } else if dollar {
            "an unclosed `$(`"
        } else {
            "a `\\` at its end"
        };
        return Err(format!("`{s}` has {what}"));
    }
    Ok(Words { words, dropped_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_as_compose_splits_them() {
        assert_eq!(
            shell_split(r#"sh -c 'echo $A' "x y" a\ b"#).unwrap(),
            vec!["sh", "-c", "echo $A", "x y", "a b"]
        );
        // Inside double quotes a backslash escapes any character.
        assert_eq!(shell_split(r#""a\b""#).unwrap(), vec!["ab"]);
        // Empty quotes are a word.
        assert_eq!(shell_split("a '' \"\"").unwrap(), vec!["a", "", ""]);
        // `$(…)` and backquotes keep their spaces.
        assert_eq!(
            shell_split("echo $(hostname -f) `id -u`").unwrap(),
            vec!["echo", "$(hostname -f)", "`id -u`"]
        );
        assert!(shell_split("'open").is_err());
        assert!(shell_split("a (b)").is_err());
    }

    #[test]
    fn the_words_end_at_a_shell_operator_as_in_compose() {
        let w = shell_words("kong migrations up && kong migrations finish").unwrap();
        assert_eq!(w.words, vec!["kong", "migrations", "up"]);
        assert_eq!(w.dropped_at, Some(19));
        assert_eq!(shell_split("a;b").unwrap(), vec!["a"]);
        assert_eq!(shell_split("a 'x|y' | b").unwrap(), vec!["a", "x|y"]);
        // The digits of `2>` belong to the redirection.
        let w = shell_words("run 2>&1").unwrap();
        assert_eq!(w.words, vec!["run"]);
        assert_eq!(w.dropped_at, Some(4));
        assert_eq!(shell_words("a b").unwrap().dropped_at, None);
    }
}
