//! AXP transport.

/// Generated protobuf types and gRPC stubs for package `ax`.
pub mod pb {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("ax");

    /// Encoded `FileDescriptorSet` of the AXP protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ax_descriptor");
}
