//! Host facts reported in the `Hello` handshake.
