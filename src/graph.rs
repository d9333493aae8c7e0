//! The service dependency graph (petgraph): conditions, cycle reports, DOT/JSON output.
