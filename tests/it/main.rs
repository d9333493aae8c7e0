//! Integration tests: one binary, one module per feature area.
mod compose;
mod graph;
mod load_props;
