//! muster-agent: collects a host's hardware and OS state and reports it to musterd.
//!
//! `collect/` holds one module per source (OS, packages, IPMI, SMART, libvirt, external facts);
//! each is usable on its own so tests and the load generator drive the real code.

pub mod collect;
