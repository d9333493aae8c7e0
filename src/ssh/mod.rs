//! SSH transport: one multiplexed OpenSSH master per host, bounded fan-out, host-key checking,
//! and the content-addressed agent upload.
