//! Integration tests: one binary, one module per feature area.

mod agent_e2e;
mod compose;
mod compose_errors;
mod graph;
mod hosts;
mod inventory;
mod lab;
mod load_props;
mod network_lab;
mod plan_facts;
mod schedule;
mod support;
mod transport;
