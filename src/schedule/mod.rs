//! Placement: a pipeline of filters and scorers that puts every replica on a host, and explains
//! every replica it cannot place. Pure: no I/O. `schedule` knows nothing about SSH.
