//! muster's wire contract and the small pure pieces every crate shares.
//!
//! `pb` is generated from `proto/muster/v1/*.proto` by `build.rs`; `resource` adds `meta()`/`name()` to
//! `pb::Resource`; `selector`, `names`, `version` (package version order) and `window` (maintenance windows) hold the rules that both the server and its clients must agree on. No I/O here,
//! except in `client`: the one connection code (URL, TLS, bearer token, plaintext refusal) the CLI,
//! the Ansible bridge and the agent share.

pub mod client;
pub mod clock;
pub mod codec;
pub mod facts;
pub mod names;
mod resource;
pub mod selector;
pub mod status;
pub mod version;
pub mod window;

/// Generated protobuf messages and gRPC stubs of `muster.v1`, with proto3 JSON (serde) impls.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("muster.v1");
    include!(concat!(env!("OUT_DIR"), "/muster.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of `muster.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/muster_descriptor.bin"));
