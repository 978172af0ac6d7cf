//! Domain rules of the inventory: what a valid resource is, which of its fields are indexed,
//! what it refers to, what the server owns in it, and who may do what.
//!
//! The resource bodies are the `muster.v1` protobuf messages used as plain data (see
//! ARCHITECTURE.md, "One schema"); nothing here knows about tonic, gRPC status codes or sled.

pub mod auth;
pub mod error;
pub mod limits;
pub mod resource;
pub mod secrets;

pub use auth::{Permission, Principal, Role};
pub use error::ApiError;

use muster::pb::ResourceKind;

/// A timestamp message for a Unix time in nanoseconds.
pub fn timestamp(nanos: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// Unix nanoseconds of a timestamp message.
pub fn timestamp_nanos(ts: &pbjson_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nanos))
}

/// The store's number for a kind.
pub fn kind_id(kind: ResourceKind) -> u8 {
    u8::try_from(kind as i32).unwrap_or(0)
}

/// The kind for a store number.
pub fn kind_from_id(id: u8) -> ResourceKind {
    ResourceKind::try_from(i32::from(id)).unwrap_or(ResourceKind::Unspecified)
}

/// Lowercase kind name for messages and CLI output ("device").
pub fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Unspecified => "resource",
        ResourceKind::Site => "site",
        ResourceKind::Rack => "rack",
        ResourceKind::Device => "device",
        ResourceKind::Profile => "profile",
        ResourceKind::Window => "window",
        ResourceKind::Credential => "credential",
        ResourceKind::Campaign => "campaign",
    }
}
