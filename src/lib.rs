//! compose-fleet: deploy a docker-compose project onto a fleet of SSH-reachable Linux hosts.
//!
//! Data flows one way: [`compose::load`] → [`graph::build`] (which also reads the pod model,
//! [`pods::of`]) → [`schedule::place`] → [`plan`] (nodes from the inventory and host facts, the
//! placement report). The executor (`deploy`) is still to come. Everything up to `plan` is pure
//! (no I/O, no clocks, no randomness) and is tested exhaustively; `cli` (which resolves the
//! project and inventory once per command and prints through [`output`]), `ssh` and `lab` are the
//! thin effectful shell. The agent that runs on every host lives in `crates/agent`; the protocol
//! both sides speak lives in `crates/proto`.

pub mod build;
pub mod cli;
pub mod compose;
pub mod deploy;
pub mod diag;
pub mod graph;
pub mod human;
pub mod inventory;
pub mod lab;
pub mod lifetime;
pub mod limits;
pub mod output;
pub mod plan;
pub mod pods;
pub mod schedule;
pub mod ssh;
#[doc(hidden)]
pub mod testgen;

pub use compose_fleet_proto as proto;
