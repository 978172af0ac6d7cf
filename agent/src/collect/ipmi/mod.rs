//! IPMI collector: sensors, the System Event Log (incrementally), FRU inventory, BMC firmware
//! and chassis power, from the local BMC (`/dev/ipmi0`) or a remote one over RMCP+ (IPMI 2.0).
//!
//! The transport and session come from `ipmi-rs`; everything above it (SDR walk, sensor
//! conversion, SEL and FRU decoding) is done here with raw requests in small chunks, because
//! many BMCs (and `ipmi_sim`) cap response sizes below what the library asks for.
//!
//! The folder has two halves, and what may call what follows from them:
//! - **Talking to the BMC** (I/O, blocking): `conn` (a kernel device or an RMCP+ session; one
//!   request, one matched response, errors mapped to [`IpmiError`]) and `collector` (the walks:
//!   SDR repository, sensor readings, SEL from a cursor, FRU areas, chassis status). Only
//!   `collector` uses `conn`.
//! - **Decoding** (pure: bytes in, values out, no I/O, no session): `sdr` (sensor records,
//!   type/length strings, units), `sensor` (readings and thresholds to `pb::Sensor`), `events`
//!   (sensor types and event offsets, with severities), `sel` (16-byte SEL records), `fru`
//!   (FRU header and areas), `device` (Get Device ID, Get Chassis Status). They call each other
//!   and nothing above them; `collector` calls them with the bytes it got. Their unit tests run
//!   on byte fixtures (`fixtures`, each saying where its bytes came from).
//! - `endpoint` parses where the BMC is; `error` is the one error enum of the folder.
//!
//! Every request waits at most `timeout` for its answer, and a collection makes at most one
//! reconnect, so a BMC that stops answering costs a couple of timeouts, never a hang. The API
//! is blocking: call [`IpmiCollector::collect`] from `spawn_blocking`.

mod collector;
mod conn;
mod device;
mod endpoint;
mod error;
mod events;
mod fru;
mod sdr;
mod sel;
mod sensor;

#[cfg(test)]
mod fixtures;

pub use collector::{IpmiCollector, IpmiSnapshot};
pub use endpoint::{BmcEndpoint, DEFAULT_RMCP_PORT};
pub use error::IpmiError;
