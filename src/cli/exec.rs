//! `compose-fleet exec SERVICE[.REPLICA] CMD…`: runs a command in a running container, wherever
//! it runs, with this process's stdin (unless `-T`), its output on ours, and exits
//! with the command's exit code.
//!
//! Stdin is forwarded as it is read; its end closes the command's stdin. When stdin and stdout
//! are both a terminal, the command runs on a pseudo-terminal of this terminal's size (allocated
//! by the agent) and this terminal is raw while it runs, so keys, colors and line editing pass
//! through (the size is not followed after the start; Ctrl-C reaches the command as a byte, and
//! since the terminal is not its controlling one, a shell does no job control). `-T` disables
//! the pseudo-terminal and leaves stdin unread: a command that reads it sees its end at once.
//!
//! Exit codes: the command's; 1 the service has no running replica, a host could not be
//! reached, or the input is wrong; 2 a bug or a broken environment.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use tokio::sync::mpsc;

use super::project;
use super::up::{failure, ConnArgs};
use super::{CmdResult, Failure, GlobalArgs};
use crate::deploy::exec::{self, ExecOutput, Progress};
use crate::output;
use crate::proto::ExecRequest;

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// No pseudo-terminal, and stdin left unread
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,
    /// Set an environment variable for the command; repeatable
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// The replica to run in (default: the lowest running one); `SERVICE.N` says the same
    #[arg(long, value_name = "N")]
    pub index: Option<u32>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The service, optionally with a replica: `web` or `web.2`
    #[arg(value_name = "SERVICE[.REPLICA]")]
    pub target: String,
    /// The command and its arguments
    #[arg(value_name = "COMMAND", required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `web.2` → (`web`, Some(2)); `web` → (`web`, None). A service name may itself contain dots:
/// only a numeric last part is a replica.
fn split_target(target: &str) -> (&str, Option<u32>) {
    match target.rsplit_once('.') {
        Some((service, n)) if !service.is_empty() => match n.parse() {
            Ok(n) => (service, Some(n)),
            Err(_) => (target, None),
        },
        _ => (target, None),
    }
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let fleet = workspace.fleet()?;
    let project = &checked.loaded.project;
    let (service, replica) = split_target(&args.target);
    if !project.services.contains_key(service) {
        let known: Vec<&str> = project.services.keys().map(String::as_str).collect();
        return Err(Failure::User(format!(
            "no service `{service}` in project `{}` (services: {})",
            project.name,
            known.join(", ")
        )));
    }
    let replica = match (replica, args.index) {
        (Some(a), Some(b)) if a != b => {
            return Err(Failure::User(format!(
                "`{}` and `--index {b}` name different replicas; give one",
                args.target
            )))
        }
        (r, i) => r.or(i),
    };
    let mut env = BTreeMap::new();
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), v.to_string());
            }
            // `-e NAME` passes this environment's value, as docker does.
            _ => {
                if let Ok(v) = std::env::var(kv) {
                    env.insert(kv.clone(), v);
                }
            }
        }
    }
    let rt = exec::runtime().map_err(|e| failure(e, &checked.loaded.sources))?;
    let result = rt.block_on(async {
        let connected = exec::connect(&fleet, &project.name, &args.conn.ssh_options(), &mut |p| {
            if let Progress::Unreachable { host, reason } = p {
                output::warning(&format!("{host}: {reason}"));
            }
        })
        .await
        .map_err(|e| failure(e, &checked.loaded.sources))?;
        // Running replicas of the service: (replica, host, pod).
        let mut running: Vec<(u32, String, String)> = Vec::new();
        for (host, pods) in &connected.observed {
            for p in pods {
                for c in &p.containers {
                    if c.service == service && c.state == "running" {
                        running.push((c.replica, host.clone(), p.name.clone()));
                    }
                }
            }
        }
        running.sort();
        let chosen = match replica {
            Some(n) => running.iter().find(|(r, _, _)| *r == n),
            None => running.first(),
        };
        let Some((_, host, pod)) = chosen.cloned() else {
            let which = replica.map(|n| format!(" {n}")).unwrap_or_default();
            let unreachable = if connected.unreachable.is_empty() {
                String::new()
            } else {
                format!(
                    " (unreachable: {}; it may run there)",
                    connected.unreachable.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(Failure::User(format!(
                "service `{service}` has no running replica{which}{unreachable}; `compose-fleet ps` shows its state"
            )));
        };
        let Some(conn) = connected.hosts.get(&host).cloned() else {
            return Err(Failure::Internal(format!("bug: {host} answered but has no connection")));
        };
        // A terminal on both ends: the command gets a pseudo-terminal of this one's size, and
        // this one goes raw (keys pass through as typed) until the command ends.
        let tty = !args.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let stdin = (!args.no_tty).then(read_stdin);
        let _raw = if tty { RawMode::enter() } else { None };
        let request = ExecRequest {
            project: project.name.clone(),
            pod,
            service: service.to_string(),
            command: args.command.clone(),
            env,
            stdin: false,
            tty: tty.then(terminal_size),
        };
        let (tx, mut rx) = mpsc::channel(64);
        let ran = conn.exec(request, stdin, &tx);
        tokio::pin!(ran);
        let code = loop {
            tokio::select! {
                done = &mut ran => break done,
                Some(out) = rx.recv() => write_output(out),
            }
        };
        while let Ok(out) = rx.try_recv() {
            write_output(out);
        }
        code.map_err(|e| Failure::User(e.to_string()))
    });
    let code = result?;
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

fn write_output(out: ExecOutput) {
    match out {
        ExecOutput::Stdout(d) => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(d.as_bytes());
            let _ = o.flush();
        }
        ExecOutput::Stderr(d) => {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(d.as_bytes());
            let _ = e.flush();
        }
    }
}

/// This terminal's `[rows, cols]` (24×80 when it cannot be read).
fn terminal_size() -> [u16; 2] {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; fd 1 is our stdout.
    let r =
        unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws as *mut nix::libc::winsize) };
    if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
        [ws.ws_row, ws.ws_col]
    } else {
        [24, 80]
    }
}

/// The terminal in raw mode while this lives; restored as it was on drop (also on an error).
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// This process's stdin as chunks, read on a thread (a blocking read of a terminal must not hold
/// the runtime); the channel closes at its end.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_a_service_and_maybe_a_replica() {
        assert_eq!(split_target("web"), ("web", None));
        assert_eq!(split_target("web.2"), ("web", Some(2)));
        assert_eq!(split_target("my.app"), ("my.app", None));
        assert_eq!(split_target(".3"), (".3", None));
    }
}
