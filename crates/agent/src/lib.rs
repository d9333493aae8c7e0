//! The compose-fleet agent: the small static program pushed to every host.
//!
//! One binary, several modes (see `bin/compose-fleet-agent.rs`):
//! - `rpc`: what the CLI runs over SSH; bridges stdin/stdout to the daemon's unix socket,
//!   starting the daemon when it is not running.
//! - `daemon`: owns `/var/lib/compose-fleet`, reconciles pods, answers protocol requests.
//! - `shim`: holds one container's process, stdio and exit status, so the daemon can restart.
//! - `init`: the container's first process, single-threaded, before any async runtime.
//!
//! The agent links only this crate and `compose-fleet-proto`: no CLI-only crates.

pub mod daemon;
pub mod facts;
pub mod image;
pub mod network;
pub mod rpc;
pub mod runtime;
pub mod store;
pub mod supervisor;

pub use compose_fleet_proto as proto;

/// The agent's version: the package version, reported in `Hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
