//! `compose-fleet config`: load and validate the project, print it in canonical form (the form
//! `docker compose config` prints), its services, its profiles, or its fidelity ledger.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::ValueEnum;

use super::project::{self, print_diagnostics};
use super::{CmdResult, Failure, GlobalArgs};
use crate::compose::canonical::{canonical, in_compose_order, Form};
use crate::compose::ledger::{Ledger, Status};
use crate::compose::model::Project;
use crate::diag::{Diagnostics, Severity};
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Print the names of the enabled services, one per line
    #[arg(long)]
    pub services: bool,
    /// Print the profiles the project defines, one per line
    // Its own id: the global `--profile NAME` is stored as `profiles`.
    #[arg(long = "profiles", id = "list_profiles")]
    pub profiles: bool,
    /// Print the fidelity ledger: every key used, whether it is honoured, and where
    #[arg(long)]
    pub check: bool,
    /// Treat warnings (keys accepted but not honoured, unset variables) as errors
    #[arg(long)]
    pub strict: bool,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let checked = project::resolve(global)?.project_quiet()?;
    let loaded = &checked.loaded;
    let warnings = &loaded.warnings;
    if args.strict && !warnings.is_empty() {
        let as_errors = Diagnostics(
            warnings
                .0
                .iter()
                .cloned()
                .map(|mut d| {
                    d.severity = Severity::Error;
                    d
                })
                .collect(),
        );
        print_diagnostics(&as_errors, &loaded.sources);
        let n = as_errors.0.len();
        output::error(&format!(
            "--strict: {n} warning{} treated as error{}",
            plural(n),
            plural(n)
        ));
        return Err(Failure::Reported(1));
    }
    print_diagnostics(warnings, &loaded.sources);
    let project = &loaded.project;
    if args.services {
        let names: Vec<&str> = project.services.keys().map(String::as_str).collect();
        print_lines(&names);
    } else if args.profiles {
        let profiles: BTreeSet<&str> = project
            .services
            .values()
            .chain(project.disabled.values())
            .flat_map(|s| s.profiles.iter().map(String::as_str))
            .collect();
        let list: Vec<&str> = profiles.into_iter().collect();
        print_lines(&list);
    } else if args.check {
        match args.format {
            Format::Json => output::data(&to_json(&loaded.ledger)?),
            Format::Yaml => output::data(&ledger_text(&loaded.ledger)),
        }
    } else {
        output::data(&render(project, args.format)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One item per line; nothing at all for an empty list.
fn print_lines(items: &[&str]) {
    if !items.is_empty() {
        output::data(&items.join("\n"));
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The project in canonical form: what `docker compose config` prints.
pub fn render(project: &Project, format: Format) -> Result<String, Failure> {
    let form = match format {
        Format::Json => Form::Json,
        Format::Yaml => Form::Yaml,
    };
    let value = in_compose_order(canonical(project, form));
    match format {
        Format::Json => to_json(&value),
        Format::Yaml => {
            // As compose prints it: sequences indented under their key, long lines never folded
            // (multi-line strings stay literal blocks).
            let options = serde_saphyr::ser_options! {
                compact_list_indent: false,
                folded_wrap_chars: 1 << 20,
            };
            serde_saphyr::to_string_with_options(&value, options)
                .map_err(|e| Failure::Internal(format!("cannot print the project as YAML: {e}")))
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Internal(format!("cannot serialize as JSON: {e}")))
}

/// The ledger as a table a human reads: one line per key used, then a summary.
pub fn ledger_text(ledger: &Ledger) -> String {
    let rows: Vec<[String; 5]> = ledger
        .entries
        .iter()
        .map(|e| {
            [
                e.status.as_str().to_string(),
                e.service.clone().unwrap_or_else(|| "(top level)".into()),
                e.key.clone(),
                e.location.to_string(),
                e.reason.clone(),
            ]
        })
        .collect();
    let header = ["STATUS", "SERVICE", "KEY", "WHERE", "WHY"].map(String::from);
    let mut widths = [0usize; 4];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i < 4 {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let count = |s| ledger.with_status(s).count();
    out.push_str(&format!(
        "{} honoured, {} accepted but not honoured, {} rejected\n",
        count(Status::Honoured),
        count(Status::Accepted),
        count(Status::Rejected)
    ));
    out
}
