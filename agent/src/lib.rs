//! muster-agent: collects a host's hardware and OS state and reports it to musterd.
//!
//! `collect/` holds one module per source (OS, packages, IPMI, SMART, libvirt, external facts),
//! each usable on its own; `run` ties them to enrollment (`identity`), delta reports
//! (`report`) and the offline spool (`spool`). The load generator and the tests drive this
//! same code.

pub mod collect;
pub mod config;
pub mod fit;
pub mod identity;
pub mod report;
pub mod run;
pub mod spool;
