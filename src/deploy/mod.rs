//! The executor's pure core: what `up` wants ([`desired`]), what it must change ([`diff`]), and
//! the dependency-driven [`flow`] that orders the changes across hosts. No I/O here: the executor
//! (to come) observes the hosts, feeds these values and events in, and performs the actions.

pub mod desired;
pub mod diff;
pub mod flow;
pub mod sim;
