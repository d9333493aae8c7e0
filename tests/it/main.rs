//! Integration tests: one binary, one module per feature area.
mod inventory;
mod compose;
mod compose_errors;
mod graph;
mod load_props;
