//! The one printer: data goes to stdout (so it pipes), everything for humans to stderr. Every
//! module that prints (the CLI's commands, `ssh`, `lab`) prints through it; the pure core prints
//! nothing.
//!
//! In CI it also speaks the CI's language: under GitHub Actions (`GITHUB_ACTIONS=true`) every
//! error and warning is repeated as a workflow command (`::error file=…,line=…,col=…::…`, an
//! annotation on the file and line) and [`section`]s are `::group::`s; under GitLab CI
//! (`GITLAB_CI=true`) sections are collapsible `section_start`/`section_end` markers.

use std::io::{IsTerminal, Write};

use crate::diag::{Diagnostic, Severity};

/// Prints data (tables, JSON, YAML) to stdout.
pub fn data(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
}

/// Errors printed so far (`file:line:column` or empty, message), for a CI summary of a run that
/// failed before it did anything.
static ERRORS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember(at: String, message: &str) {
    let mut errors = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: a summary of a thousand errors helps nobody.
    if errors.len() < 100 {
        errors.push((at, message.to_string()));
    }
}

/// The errors printed so far, as `(location or "", message)`.
pub fn errors_so_far() -> Vec<(String, String)> {
    ERRORS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Prints an error for a human.
pub fn error(message: &str) {
    eprintln!("error: {message}");
    remember(String::new(), message);
    if let Some(line) = Ci::detect().annotation("error", None, message) {
        eprintln!("{line}");
    }
}

/// Prints a warning for a human.
pub fn warning(message: &str) {
    eprintln!("warning: {message}");
    if let Some(line) = Ci::detect().annotation("warning", None, message) {
        eprintln!("{line}");
    }
}

/// Prints a progress or status line for a human.
pub fn status(message: &str) {
    eprintln!("{message}");
}

/// Whether stderr is an interactive terminal (progress bars) or not (plain lines, as in CI).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// Prints rendered diagnostics (already formatted, rustc style) for a human.
pub fn diagnostic(rendered: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(rendered.as_bytes());
}

/// Prints one diagnostic rendered rustc style, and as a CI annotation where the CI reads them.
pub fn located(d: &Diagnostic, rendered: &str) {
    diagnostic(rendered);
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut message = d.message.clone();
    if let Some(label) = &d.label {
        message.push_str(&format!(" ({label})"));
    }
    if let Some(hint) = &d.hint {
        message.push_str(&format!("\nhint: {hint}"));
    }
    let at = d
        .location
        .as_ref()
        .map(|l| (l.file.to_string(), l.line, l.column));
    if d.severity == Severity::Error {
        remember(
            at.as_ref()
                .map(|(f, l, c)| format!("{f}:{l}:{c}"))
                .unwrap_or_default(),
            &d.message,
        );
    }
    if let Some(line) = Ci::detect().annotation(level, at, &message) {
        eprintln!("{line}");
    }
}

/// The CI service this process runs under, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ci {
    /// GitHub Actions, with the workspace root (to make annotation paths relative to it).
    GitHub {
        workspace: Option<std::path::PathBuf>,
    },
    GitLab,
    None,
}

impl Ci {
    pub fn detect() -> Ci {
        Ci::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Ci {
        if get("GITHUB_ACTIONS").as_deref() == Some("true") {
            Ci::GitHub {
                workspace: get("GITHUB_WORKSPACE").map(Into::into),
            }
        } else if get("GITLAB_CI").as_deref() == Some("true") {
            Ci::GitLab
        } else {
            Ci::None
        }
    }

    /// The workflow command for an error or warning (GitHub only): `::error file=F,line=L,col=C::M`,
    /// with the escapes GitHub defines (`%`, CR, LF everywhere; `:` and `,` in properties).
    pub fn annotation(
        &self,
        level: &str,
        at: Option<(String, u32, u32)>,
        message: &str,
    ) -> Option<String> {
        let Ci::GitHub { workspace } = self else {
            return None;
        };
        let data = |s: &str| {
            s.replace('%', "%25")
                .replace('\r', "%0D")
                .replace('\n', "%0A")
        };
        let prop = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
        let mut props = Vec::new();
        if let Some((file, line, col)) = at {
            let path = std::path::Path::new(&file);
            let rel = workspace
                .as_deref()
                .and_then(|w| path.strip_prefix(w).ok())
                .unwrap_or(path);
            props.push(format!("file={}", prop(&rel.to_string_lossy())));
            props.push(format!("line={line}"));
            props.push(format!("col={col}"));
        }
        let props = if props.is_empty() {
            String::new()
        } else {
            format!(" {}", props.join(","))
        };
        Some(format!("::{level}{props}::{}", data(message)))
    }
}

/// A phase of a command (`connect`, `deploy`): collapsible in the CI's log. Ends when dropped.
pub struct Section {
    name: String,
    ci: Ci,
}

/// Opens a section named `name` (letters, digits, `_`) titled `title`.
pub fn section(name: &str, title: &str) -> Section {
    let ci = Ci::detect();
    match &ci {
        Ci::GitHub { .. } => eprintln!("::group::{title}"),
        Ci::GitLab => eprintln!(
            "\x1b[0Ksection_start:{}:{name}[collapsed=false]\r\x1b[0K{title}",
            unix_seconds()
        ),
        Ci::None => {}
    }
    Section {
        name: name.to_string(),
        ci,
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        match &self.ci {
            Ci::GitHub { .. } => eprintln!("::endgroup::"),
            Ci::GitLab => eprintln!(
                "\x1b[0Ksection_end:{}:{}\r\x1b[0K",
                unix_seconds(),
                self.name
            ),
            Ci::None => {}
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_annotations_carry_the_location_relative_to_the_workspace() {
        let ci = Ci::from_lookup(|k| match k {
            "GITHUB_ACTIONS" => Some("true".into()),
            "GITHUB_WORKSPACE" => Some("/w/repo".into()),
            _ => None,
        });
        assert_eq!(
            ci.annotation(
                "error",
                Some(("/w/repo/app/compose.yaml".into(), 12, 7)),
                "unknown key `imgae`\nhint: 100% sure"
            )
            .as_deref(),
            Some("::error file=app/compose.yaml,line=12,col=7::unknown key `imgae`%0Ahint: 100%25 sure")
        );
        assert_eq!(
            ci.annotation("warning", None, "a: b").as_deref(),
            Some("::warning::a: b")
        );
        let gitlab = Ci::from_lookup(|k| (k == "GITLAB_CI").then(|| "true".into()));
        assert_eq!(gitlab, Ci::GitLab);
        assert_eq!(gitlab.annotation("error", None, "x"), None);
        assert_eq!(Ci::from_lookup(|_| None), Ci::None);
    }
}
