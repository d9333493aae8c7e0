//! The executor: applies a plan across hosts in dependency order, with progress output.
