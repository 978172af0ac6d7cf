//! Collectors: one module per source of facts. Each returns `muster.v1` messages or an error
//! saying what failed; the caller bounds each with its own deadline.

pub mod external;
pub mod ipmi;
pub mod libvirt;
pub mod os;
pub mod packages;
pub mod smart;
