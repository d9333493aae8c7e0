//! The one printer: data goes to stdout (so it pipes), everything for humans to stderr. Every
//! module that prints (the CLI's commands, `ssh`, `lab`) prints through it; the pure core prints
//! nothing.

use std::io::{IsTerminal, Write};

/// Prints data (tables, JSON, YAML) to stdout.
pub fn data(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
}

/// Prints an error for a human.
pub fn error(message: &str) {
    eprintln!("error: {message}");
}

/// Prints a warning for a human.
pub fn warning(message: &str) {
    eprintln!("warning: {message}");
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
