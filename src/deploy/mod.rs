//! The executor, still to come: it will apply a plan across hosts in dependency order and emit
//! events (never print). Nothing lives here yet.
