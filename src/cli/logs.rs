//! `compose-fleet logs [-f] [--tail N] [--since T] [-t] [SERVICE…]`: the containers' logs from
//! every host, merged, each line prefixed `service.replica@host` (colored on a terminal). Without
//! `-f` the lines of all hosts are sorted by time; with `-f` each host's stream is printed as it
//! comes, until Ctrl-C (or the reader of stdout goes away). One `Logs` request per host that runs
//! a selected service, in parallel.
//!
//! `-f` after `logs` means `--follow`, as in docker compose (see [`rewrite_follow`]): the
//! compose file is then given before the command (`-f FILE logs -f`) or as `--file`.
//!
//! Exit codes: 0; 1 a host could not be reached or refused, or a service is unknown.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::project;
use super::up::{failure, ConnArgs};
use super::{CmdResult, Failure, GlobalArgs};
use crate::deploy::exec::{self, Progress};
use crate::output;
use crate::proto::{LogLine, LogsRequest, Request, Response};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Follow the logs on every host until interrupted
    #[arg(long)]
    pub follow: bool,
    /// Lines to show from the end of each container's log (`all` for every line)
    #[arg(short = 'n', long, value_name = "N", default_value = "all")]
    pub tail: String,
    /// Only lines since T: RFC 3339 (`2026-05-01T12:00:00Z`), Unix seconds, or a duration ago
    /// (`10m`, `1h30m`)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Show each line's time (RFC 3339, UTC)
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// No colors in the prefixes
    #[arg(long)]
    pub no_color: bool,
    /// No `service.replica@host` prefix
    #[arg(long)]
    pub no_log_prefix: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Show only these services
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// `logs -f` means `logs --follow` (docker compose's spelling), though `-f` is the global
/// `--file`: after the `logs` command word, `-f` (alone or in a cluster of flags such as `-ft`)
/// becomes `--follow`. Global options before the command keep their meaning.
pub fn rewrite_follow(args: Vec<OsString>) -> Vec<OsString> {
    // The global options that take a value: their value is not the command word.
    const VALUED: &[&str] = &[
        "-f",
        "--file",
        "-p",
        "--project-name",
        "--project-directory",
        "--env-file",
        "--profile",
        "-i",
        "--inventory",
        "--limit",
    ];
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut in_logs = false;
    let mut skip_value = false;
    let mut after_dashes = false;
    for arg in iter {
        let text = arg.to_str().unwrap_or("");
        if in_logs && !after_dashes {
            if text == "--" {
                after_dashes = true;
            } else if let Some(flags) = text.strip_prefix('-').filter(|f| {
                !f.starts_with('-') && f.contains('f') && f.chars().all(|c| "ft".contains(c))
            }) {
                out.push("--follow".into());
                if flags.contains('t') {
                    out.push("--timestamps".into());
                }
                continue;
            }
        } else if !in_logs && !after_dashes {
            if skip_value {
                skip_value = false;
            } else if VALUED.contains(&text) {
                skip_value = true;
            } else if !text.starts_with('-') {
                in_logs = text == "logs";
                // Any other command: nothing to rewrite.
                after_dashes = !in_logs;
            }
        }
        out.push(arg);
    }
    out
}

/// `--tail`: a count, or `all` (also docker's `-1`).
fn parse_tail(text: &str) -> Result<Option<u64>, Failure> {
    match text.trim() {
        "all" | "-1" => Ok(None),
        t => t.parse::<u64>().map(Some).map_err(|_| {
            Failure::User(format!(
                "`--tail {text}` is not a number of lines; give a count such as `--tail 50`, or `all`"
            ))
        }),
    }
}

/// `--since`: Unix seconds, from RFC 3339, Unix seconds or a duration before `now`.
pub fn parse_since(text: &str, now: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    if let Some(secs) = parse_rfc3339(t) {
        return Ok(secs);
    }
    if let Ok(ago) = crate::compose::model::parse_duration(t) {
        return Ok(now.saturating_sub(ago.0.as_secs()));
    }
    Err(format!(
        "`--since {text}` is not a time; give RFC 3339 (`2026-05-01T12:00:00Z`), Unix seconds, \
         or a duration ago (`10m`, `1h30m`)"
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` as Unix seconds; `None` when it is not that.
fn parse_rfc3339(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().ok()?;
            let om: i64 = o[4..6].parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Unix milliseconds as RFC 3339 in UTC: `2026-05-01T12:00:00.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// The replica of a log line: the agent says; an older agent's pod name `service-N` does.
fn replica_of(line: &LogLine) -> u32 {
    if line.replica != 0 {
        return line.replica;
    }
    line.pod
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// Prints lines with their prefixes; stops (returns false) when stdout is gone.
struct Printer {
    color: bool,
    prefix: bool,
    timestamps: bool,
    width: usize,
    colors: BTreeMap<String, usize>,
    out: std::io::Stdout,
}

/// Distinct, readable on dark and light terminals: cyan, yellow, green, magenta, blue, and their
/// bright forms.
const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

impl Printer {
    fn print(&mut self, host: &str, line: &LogLine) -> bool {
        let mut text = String::new();
        if self.prefix {
            let key = format!("{}.{}@{host}", line.service, replica_of(line));
            let next = self.colors.len();
            let color = *self.colors.entry(key.clone()).or_insert(next);
            let pad = self.width.saturating_sub(key.chars().count());
            if self.color {
                text.push_str(&format!(
                    "\x1b[{}m{key}{} |\x1b[0m ",
                    PALETTE[color % PALETTE.len()],
                    " ".repeat(pad)
                ));
            } else {
                text.push_str(&format!("{key}{} | ", " ".repeat(pad)));
            }
        }
        if self.timestamps {
            text.push_str(&rfc3339(line.time_ms));
            text.push(' ');
        }
        text.push_str(line.line.trim_end_matches('\n'));
        text.push('\n');
        let mut out = self.out.lock();
        out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
    }
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let project = &checked.loaded.project;
    for s in &args.services {
        if !project.services.contains_key(s) {
            let known: Vec<&str> = project.services.keys().map(String::as_str).collect();
            return Err(Failure::User(format!(
                "no service `{s}` in project `{}` (services: {})",
                project.name,
                known.join(", ")
            )));
        }
    }
    let tail = parse_tail(&args.tail)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()
        .map_err(Failure::User)?;
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let mut failed = 0usize;
    let result = rt.block_on(async {
        // Ctrl-C ends following, as in docker compose: with `-f` this command handles SIGINT
        // itself (exit 0). The listener comes first, then the process's handler is told to leave
        // the first SIGINT to it, so an interrupt at any moment (while connecting, while the
        // history prints) is heard, and one listener serves the whole loop.
        let mut interrupt = if args.follow {
            Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(
                    |e| exec::ExecError::Internal(format!("cannot watch for Ctrl-C: {e}")),
                )?,
            )
        } else {
            None
        };
        let _graceful = args.follow.then(crate::lifetime::graceful_interrupt);
        let connected = exec::connect(&fleet, &project.name, &args.conn.ssh_options(), &mut |p| {
            if let Progress::Unreachable { host, reason } = p {
                output::error(&format!("{host}: {reason}"));
            }
        })
        .await?;
        failed += connected.unreachable.len();
        let wanted =
            |service: &str| args.services.is_empty() || args.services.iter().any(|s| s == service);
        // Only hosts that run a selected service are asked (with `--follow` every host: one may
        // get a replica while we follow); prefixes are padded to the longest.
        let mut width = 0;
        let mut hosts = Vec::new();
        for (host, pods) in &connected.observed {
            let mut any = false;
            for c in pods.iter().flat_map(|p| &p.containers) {
                if wanted(&c.service) {
                    any = true;
                    width = width.max(format!("{}.{}@{host}", c.service, c.replica).len());
                }
            }
            if any || args.follow {
                if let Some(conn) = connected.hosts.get(host) {
                    hosts.push((host.clone(), conn.clone()));
                }
            }
        }
        let mut printer = Printer {
            color: !args.no_color
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none(),
            prefix: !args.no_log_prefix,
            timestamps: args.timestamps,
            width,
            colors: BTreeMap::new(),
            out: std::io::stdout(),
        };
        let (tx, mut rx) = mpsc::channel::<(String, Result<LogLine, String>)>(1024);
        let mut tasks = JoinSet::new();
        for (host, conn) in hosts {
            let tx = tx.clone();
            let request = Request::Logs(LogsRequest {
                project: project.name.clone(),
                services: args.services.clone(),
                tail,
                follow: args.follow,
                since,
            });
            tasks.spawn(async move {
                let (items, mut lines) = mpsc::channel(256);
                let streamed = conn.stream(request, &items);
                tokio::pin!(streamed);
                let end = loop {
                    tokio::select! {
                        end = &mut streamed => break end,
                        Some(r) = lines.recv() => {
                            if let Response::LogLine(l) = r {
                                if tx.send((host.clone(), Ok(l))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                };
                while let Ok(Response::LogLine(l)) = lines.try_recv() {
                    let _ = tx.send((host.clone(), Ok(l))).await;
                }
                if let Err(e) = end {
                    let _ = tx.send((host.clone(), Err(e.to_string()))).await;
                }
            });
        }
        drop(tx);
        if args.follow {
            let Some(interrupt) = interrupt.as_mut() else {
                return Err(exec::ExecError::Internal("no Ctrl-C listener".into()));
            };
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some((host, Ok(line))) => {
                            if !printer.print(&host, &line) {
                                break;
                            }
                        }
                        Some((_, Err(e))) => {
                            failed += 1;
                            output::error(&e);
                        }
                        None => break,
                    },
                    _ = interrupt.recv() => {
                        crate::lifetime::interrupt_handled();
                        break;
                    }
                }
            }
            tasks.abort_all();
        } else {
            let mut all = Vec::new();
            while let Some((host, got)) = rx.recv().await {
                match got {
                    Ok(line) => all.push((host, line)),
                    Err(e) => {
                        failed += 1;
                        output::error(&e);
                    }
                }
            }
            // Merged by time across hosts; a stable sort keeps each container's own order.
            all.sort_by_key(|(_, l)| l.time_ms);
            for (host, line) in &all {
                if !printer.print(host, line) {
                    break;
                }
            }
        }
        Ok(())
    });
    result.map_err(|e| failure(e, &checked.loaded.sources))?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn dash_f_after_logs_is_follow_and_before_it_is_the_file() {
        let got = rewrite_follow(argv("cf -f a.yaml logs -f --tail 5 web"));
        assert_eq!(got, argv("cf -f a.yaml logs --follow --tail 5 web"));
        let got = rewrite_follow(argv("cf -p logs logs -tf"));
        assert_eq!(got, argv("cf -p logs logs --follow --timestamps"));
        // Another command, or after `--`: untouched.
        assert_eq!(rewrite_follow(argv("cf up -f x")), argv("cf up -f x"));
        assert_eq!(rewrite_follow(argv("cf logs -- -f")), argv("cf logs -- -f"));
        assert_eq!(rewrite_follow(argv("cf logs -t")), argv("cf logs -t"));
    }

    #[test]
    fn since_reads_rfc3339_unix_seconds_and_durations_ago() {
        assert_eq!(parse_since("2026-05-01T12:00:00Z", 0), Ok(1_777_636_800));
        assert_eq!(
            parse_since("2026-05-01T14:00:00.5+02:00", 0),
            Ok(1_777_636_800)
        );
        assert_eq!(parse_since("1700000000", 0), Ok(1_700_000_000));
        assert_eq!(parse_since("10m", 1000), Ok(400));
        assert_eq!(parse_since("1h", 10), Ok(0));
        let e = parse_since("yesterday", 0).expect_err("not a time");
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(parse_since("2026-13-01T00:00:00Z", 0).is_err());
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_777_636_800_123), "2026-05-01T12:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn tail_is_a_count_or_all() {
        assert!(matches!(parse_tail("all"), Ok(None)));
        assert!(matches!(parse_tail("20"), Ok(Some(20))));
        assert!(matches!(parse_tail("x"), Err(Failure::User(m)) if m.contains("--tail")));
    }
}
