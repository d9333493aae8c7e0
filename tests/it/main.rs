//! Integration tests: one binary, one module per feature area.

mod compose;
mod compose_errors;
mod graph;
mod hosts;
mod inventory;
mod lab;
mod load_props;
mod schedule;
mod support;
mod transport;
