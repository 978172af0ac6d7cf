//! End-to-end tests: one test binary (link time matters on a 2-core machine), one module per
//! area. Every test starts the real `musterd` binary on an ephemeral loopback port.

mod api;
mod backup;
mod errors;
mod durability;
mod peers;
mod watch;
