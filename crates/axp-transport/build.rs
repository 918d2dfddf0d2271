//! Generates the AXP Rust types and gRPC stubs from `proto/` with protox
//! (pure Rust), so building needs no `protoc` on the machine.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // The protos live at the workspace root; a packaged crate carries its own copy.
    let proto_dir = [manifest_dir.join("proto"), manifest_dir.join("../../proto")]
        .into_iter()
        .find(|dir| dir.join("ax.proto").exists())
        .ok_or("proto/ax.proto not found beside the crate or at the workspace root")?;
    let files = [proto_dir.join("ax.proto"), proto_dir.join("content.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("ax_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The RPC is called `Connect`; the generated `connect(dst)` constructor
        // would collide with it. Channels are built by `AxpClient` instead.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
