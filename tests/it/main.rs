//! Integration tests: one binary, one module per feature area.
mod compose;
mod compose_errors;
mod inventory;
