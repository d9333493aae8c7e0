//! The command line: global options (compatible with `docker compose`), one module per command,
//! and exit codes. Output goes through [`crate::output`], the one printer.
//!
//! Exit codes: 0 success, 1 a user error (bad input, unschedulable, unreachable host), 2 a bug or a
//! broken environment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::compose::options::Flags;
use crate::limits::Limits;
use crate::output;

pub mod build;
pub mod config;
pub mod control;
pub mod down;
pub mod exec;
pub mod graph;
pub mod hosts;
pub mod inventory;
pub mod lab;
pub mod logs;
pub mod plan;
pub mod project;
pub mod ps;
pub mod push;
pub mod releases;
pub mod table;
pub mod up;

/// Deploy a docker-compose project onto a fleet of SSH hosts — no Docker on the hosts.
#[derive(Debug, Parser)]
#[command(name = "compose-fleet", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands, spelled as `docker compose` spells them.
#[derive(Debug, Clone, Args, Default)]
pub struct GlobalArgs {
    /// Compose configuration file(s); later files override earlier ones [env: COMPOSE_FILE]
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name [env: COMPOSE_PROJECT_NAME]
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
    /// Working directory for relative paths (default: the first compose file's directory)
    #[arg(long = "project-directory", global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Environment file(s) for interpolation, instead of the project's `.env`
    #[arg(long = "env-file", global = true, value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Profile(s) to enable [env: COMPOSE_PROFILES]
    #[arg(long = "profile", global = true, value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Inventory of hosts (default: inventory.yaml beside the compose file)
    #[arg(
        short = 'i',
        long = "inventory",
        global = true,
        env = "COMPOSE_FLEET_INVENTORY",
        value_name = "FILE"
    )]
    pub inventory: Option<PathBuf>,
    /// Raise (or lower) one input bound, e.g. `--limit replicas-per-service=50000`; repeatable.
    /// The limits and their COMPOSE_FLEET_MAX_* variables are listed in the README
    #[arg(long = "limit", global = true, value_name = "NAME=VALUE", value_parser = limit_arg)]
    pub limits: Vec<String>,
    /// Bound the whole command (`90`, `90s`, `5m`, `1h30m`): when it expires, exit 1 naming what
    /// was still running. `up` also gives its deploy this long (default 300s)
    #[arg(
        long = "timeout",
        global = true,
        env = "COMPOSE_FLEET_TIMEOUT",
        value_name = "DURATION",
        value_parser = crate::human::parse_duration
    )]
    pub timeout: Option<std::time::Duration>,
}

impl GlobalArgs {
    /// The limits in force: defaults, then the `COMPOSE_FLEET_MAX_*` variables, then `--limit`.
    pub fn limits(&self) -> Result<Limits, Failure> {
        Limits::resolve(&self.limits, |k| std::env::var(k).ok()).map_err(Failure::User)
    }
}

/// Checks one `--limit NAME=VALUE` when the command line is parsed (so that every command refuses
/// a misspelt limit, not only those that read files).
fn limit_arg(arg: &str) -> Result<String, String> {
    Limits::default().apply_arg(arg)?;
    Ok(arg.to_string())
}

impl GlobalArgs {
    /// The compose loader's own view of the flags it understands.
    pub fn compose_flags(&self) -> Flags {
        Flags {
            files: self.files.clone(),
            project_name: self.project_name.clone(),
            project_directory: self.project_directory.clone(),
            env_files: self.env_files.clone(),
            profiles: self.profiles.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the project onto the fleet (create, update, remove pods)
    Up(up::Args),
    /// Build the services that have `build:` into the local image store
    Build(build::Args),
    /// Push the services' built images to a registry (`--registry`, or their `image:`)
    Push(push::Args),
    /// Show where every replica goes and what would change, without changing anything
    Plan(plan::Args),
    /// Validate the project and print it in canonical form
    Config(config::Args),
    /// Print the service dependency graph
    Graph(graph::Args),
    /// List the project's pods and containers on every host
    Ps(ps::Args),
    /// Show container logs
    Logs(logs::Args),
    /// Run a command in a running container
    Exec(exec::Args),
    /// Stop and remove the project's pods
    Down(down::Args),
    /// List the project's numbered releases, as the hosts recorded them
    Releases(releases::ListArgs),
    /// Put every host back on a recorded release (default: the one before the current)
    Rollback(releases::RollbackArgs),
    /// Stop the project's containers in place (`start` starts them again)
    Stop(control::Args),
    /// Start the project's stopped containers
    Start(control::Args),
    /// Restart the project's containers in place
    Restart(control::Args),
    /// Pull the images of the project's services on the hosts `up` places them on
    Pull(control::Args),
    /// Check every host in the inventory: reachability and facts
    Hosts(hosts::Args),
    /// Print the inventory as compose-fleet reads it (hosts, addresses, users, labels)
    Inventory(inventory::Args),
    /// Manage the lab fleet: hosts in network namespaces on this machine
    Lab(lab::Args),
}

/// The command's name, for the `--timeout` message.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Up(_) => "up",
        Command::Plan(_) => "plan",
        Command::Config(_) => "config",
        Command::Graph(_) => "graph",
        Command::Ps(_) => "ps",
        Command::Logs(_) => "logs",
        Command::Exec(_) => "exec",
        Command::Down(_) => "down",
        Command::Releases(_) => "releases",
        Command::Rollback(_) => "rollback",
        Command::Stop(_) => "stop",
        Command::Start(_) => "start",
        Command::Restart(_) => "restart",
        Command::Pull(_) => "pull",
        Command::Build(_) => "build",
        Command::Push(_) => "push",
        Command::Hosts(_) => "hosts",
        Command::Inventory(_) => "inventory",
        Command::Lab(_) => "lab",
    }
}

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The user's input is wrong; the message says what to do. Exit 1.
    User(String),
    /// A bug or a broken environment. Exit 2.
    Internal(String),
    /// Already reported to the user (e.g. rendered diagnostics); just exit with this code.
    Reported(u8),
}

pub type CmdResult = Result<ExitCode, Failure>;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(logs::rewrite_follow(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // An SSH key given in the environment is checked before anything runs (its content never
    // reaches a message).
    if matches!(
        cli.command,
        Command::Up(_)
            | Command::Plan(_)
            | Command::Ps(_)
            | Command::Down(_)
            | Command::Hosts(_)
            | Command::Releases(_)
            | Command::Rollback(_)
    ) {
        if let Err(e) = crate::ssh::key_from_env() {
            output::error(&e);
            return ExitCode::from(1);
        }
    }
    crate::lifetime::install(command_name(&cli.command), cli.global.timeout);
    let result = match cli.command {
        Command::Up(a) => up::run(&cli.global, a),
        Command::Build(a) => build::run(&cli.global, a),
        Command::Push(a) => push::run(&cli.global, a),
        Command::Plan(a) => plan::run(&cli.global, a),
        Command::Config(a) => config::run(&cli.global, a),
        Command::Graph(a) => graph::run(&cli.global, a),
        Command::Ps(a) => ps::run(&cli.global, a),
        Command::Logs(a) => logs::run(&cli.global, a),
        Command::Exec(a) => exec::run(&cli.global, a),
        Command::Down(a) => down::run(&cli.global, a),
        Command::Releases(a) => releases::list(&cli.global, a),
        Command::Rollback(a) => releases::rollback(&cli.global, a),
        Command::Stop(a) => control::run(control::Verb::Stop, &cli.global, a),
        Command::Start(a) => control::run(control::Verb::Start, &cli.global, a),
        Command::Restart(a) => control::run(control::Verb::Restart, &cli.global, a),
        Command::Pull(a) => control::run(control::Verb::Pull, &cli.global, a),
        Command::Hosts(a) => hosts::run(&cli.global, a),
        Command::Inventory(a) => inventory::run(&cli.global, a),
        Command::Lab(a) => lab::run(&cli.global, a),
    };
    // Private temporary files (an SSH key, pinned host keys) go now, whatever happened.
    let code = match result {
        Ok(code) => code,
        Err(Failure::User(msg)) => {
            output::error(&msg);
            ExitCode::from(1)
        }
        Err(Failure::Internal(msg)) => {
            output::error(&msg);
            ExitCode::from(2)
        }
        Err(Failure::Reported(code)) => ExitCode::from(code),
    };
    crate::lifetime::exit_code(code)
}
