//! Integration tests: one binary, one module per feature area.

mod support;

mod inventory;
mod lab;
