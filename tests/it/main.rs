//! Integration tests: one binary, one module per feature area.

mod agent_e2e;
mod builds;
mod compose;
mod compose_errors;
mod deploy;
mod deploy_props;
mod differential;
mod graph;
mod hosts;
mod inventory;
mod inventory_differential;
mod lab;
mod limits;
mod load_props;
mod local;
mod memory;
mod network_lab;
mod plan_facts;
mod pods;
mod schedule;
mod sudo;
mod support;
mod tidy;
mod transport;
mod up;
mod workspace;
