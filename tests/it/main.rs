//! Integration tests: one binary, one module per feature area.
mod hosts;
mod inventory;
mod transport;
