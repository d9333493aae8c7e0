//! The executor's pure core: what `up` wants ([`desired`]), what it must change ([`diff`]), and
//! the dependency-driven [`flow`] that orders the changes across hosts. No I/O in those: the
//! executor ([`exec`]) observes the hosts, feeds these values and events in, and performs the
//! actions over SSH. [`auth`] reads the user's registry credentials for it; [`lock`] takes the
//! deploy lock (leases and fencing numbers) on the hosts. [`release`] is the pure bookkeeping of
//! numbered releases and rollbacks; [`rollout`] records them on the hosts and carries rollbacks
//! out batch by batch.

pub mod auth;
pub mod desired;
pub mod diff;
pub mod exec;
pub mod flow;
pub mod lock;
pub mod release;
pub mod rollout;
pub mod services;
pub mod sim;
