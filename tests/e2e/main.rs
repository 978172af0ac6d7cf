//! End-to-end tests: one test binary (link time matters on a 2-core machine), one module per
//! area. Every test starts the real `musterd` binary on an ephemeral loopback port.

// Test code: a failed unwrap is a failed test with its location, which is what we want.
#![allow(clippy::unwrap_used)]
// Tests wait on real processes (and measure latency), so they read real time.
#![allow(clippy::disallowed_methods)]

mod agent;
mod agent_facts;
mod ansible;
mod ansible_ingest_health;
mod api;
mod backup;
mod campaign_cli;
mod campaign_crash;
mod campaign_flow;
mod campaign_hosts;
mod campaign_run;
mod campaign_ssh_executor;
mod cli;
mod desired;
mod device_delete;
mod durability;
mod edge_refusals;
mod errors;
mod ipmi;
mod peers;
mod sec_agent;
mod sec_ansible;
mod sec_audit;
mod sec_backup;
mod sec_edge;
mod sec_plan;
mod sec_renew;
mod sec_review;
mod sec_tokens;
mod smart;
mod ssh_exec;
mod watch;
