//! Compiles `proto/muster/v1/*.proto` without `protoc`: protox parses the files into a
//! descriptor set, tonic-prost-build generates messages and services from it, pbjson-build
//! generates the canonical proto3 JSON mapping (used by the CLI for YAML/JSON manifests), and
//! the encoded descriptor set is written for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/muster/v1/resources.proto",
        "proto/muster/v1/inventory.proto",
        "proto/muster/v1/audit.proto",
        "proto/muster/v1/admin.proto",
        "proto/muster/v1/agent.proto",
        "proto/muster/v1/config.proto",
        "proto/muster/v1/export.proto",
        "proto/muster/v1/campaign.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("muster_descriptor.bin"), &bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        // Large messages are coded off the async workers (proto/src/codec.rs).
        .codec_path("crate::codec::BlockingCodec")
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .preserve_proto_field_names()
        .build(&[".muster"])?;
    Ok(())
}
