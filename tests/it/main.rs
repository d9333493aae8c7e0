//! Integration tests: one binary, one module per feature area.
mod compose;
mod compose_errors;
mod graph;
mod inventory;
mod load_props;
