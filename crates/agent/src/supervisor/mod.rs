//! Supervision: shims, restart policies, health checks, logs.
