//! The Ansible bridge: `muster-inventory` answers Ansible's dynamic inventory protocol from one
//! streaming export of musterd, and records `ansible -m setup` output as agentless facts.
//!
//! `config` resolves settings (flags, `MUSTER_*` variables, a YAML/INI file), `client` makes the
//! two calls, `cache` keeps the last export per (server, selector), `render` turns an export
//! into inventory JSON (pure), and `facts` maps Ansible facts onto `muster.v1.Facts` (pure).

pub mod cache;
pub mod client;
pub mod config;
pub mod facts;
pub mod render;
