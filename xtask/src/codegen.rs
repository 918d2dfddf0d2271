//! `cargo xtask codegen`: regenerates the protobuf code committed in `axp-transport`.
//!
//! `proto/` is the source of truth. The generated Rust (package `ax`, client and
//! server stubs) and the encoded `FileDescriptorSet` (for gRPC reflection) are
//! committed under `crates/axp-transport/src/generated/`, so the published crate
//! needs neither the protos nor `protoc`, as `tonic-health` does it. protox
//! compiles the protos in pure Rust.
//!
//! # Errors
//!
//! `--check` fails when the committed files differ from what the protos
//! generate; so does the test in this module, so CI notices a forgotten run.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

/// The protos, in the order they are compiled.
const PROTO_FILES: [&str; 2] = ["ax.proto", "content.proto"];
/// The Rust module prost writes for package `ax`.
pub const RUST_FILE: &str = "ax.rs";
/// The encoded `FileDescriptorSet` of the protos.
pub const DESCRIPTOR_FILE: &str = "ax_descriptor.bin";

/// Write (or, with `--check`, verify) the generated protobuf code.
#[derive(clap::Args)]
pub struct Codegen {
    /// Compare the committed files with freshly generated ones instead of writing them.
    #[arg(long)]
    check: bool,
}

impl Codegen {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        if self.check {
            check(&root)?;
            println!("generated protobuf code is up to date");
        } else {
            let out = generated_dir(&root);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            generate(&root.join("proto"), &out)?;
            println!("wrote {} and {}", RUST_FILE, DESCRIPTOR_FILE);
            println!("  in {}", out.display());
        }
        Ok(())
    }
}

/// Where `axp-transport` includes the generated files from.
pub fn generated_dir(root: &Path) -> PathBuf {
    root.join("crates/axp-transport/src/generated")
}

/// Compiles the protos in `proto_dir` and writes [`RUST_FILE`] and
/// [`DESCRIPTOR_FILE`] into `out_dir`.
pub fn generate(proto_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| proto_dir.join(f)).collect();
    let descriptors = protox::compile(&files, [proto_dir])
        .with_context(|| format!("compiling the protos in {}", proto_dir.display()))?;
    std::fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        prost::Message::encode_to_vec(&descriptors),
    )
    .with_context(|| format!("writing {DESCRIPTOR_FILE}"))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The RPC is called `Connect`; the generated `connect(dst)` constructor
        // would collide with it. Channels are built by `AxpClient` instead.
        .build_transport(false)
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .context("generating Rust from the protos")?;
    Ok(())
}

/// Checks the committed files of the workspace at `root` against its `proto/`.
pub fn check(root: &Path) -> anyhow::Result<()> {
    compare(&root.join("proto"), &generated_dir(root))
}

/// Generates from `proto_dir` into a temporary directory and compares with the
/// files in `committed`, byte for byte.
fn compare(proto_dir: &Path, committed: &Path) -> anyhow::Result<()> {
    let fresh = tempfile::tempdir().context("creating a temporary directory")?;
    generate(proto_dir, fresh.path())?;
    let mut stale = Vec::new();
    for file in [RUST_FILE, DESCRIPTOR_FILE] {
        let expected = std::fs::read(fresh.path().join(file))
            .with_context(|| format!("reading the freshly generated {file}"))?;
        let found = std::fs::read(committed.join(file)).unwrap_or_default();
        if found != expected {
            stale.push(file);
        }
    }
    ensure!(
        stale.is_empty(),
        "the generated protobuf code in {} is stale ({}): run `cargo xtask codegen` and commit the result",
        committed.display(),
        stale.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_protobuf_code_matches_the_protos() {
        if let Err(error) = check(&crate::workspace_root()) {
            panic!("{error:#}");
        }
    }

    #[test]
    fn a_changed_proto_makes_the_check_fail_and_say_how_to_fix_it() {
        let root = crate::workspace_root();
        let protos = tempfile::tempdir().unwrap();
        for file in PROTO_FILES {
            std::fs::copy(root.join("proto").join(file), protos.path().join(file)).unwrap();
        }
        let ax = protos.path().join("ax.proto");
        let mut text = std::fs::read_to_string(&ax).unwrap();
        text.push_str("\nmessage AddedSinceTheLastRun { string field = 1; }\n");
        std::fs::write(&ax, text).unwrap();

        let error = compare(protos.path(), &generated_dir(&root)).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("cargo xtask codegen"), "{message}");
        assert!(message.contains(RUST_FILE), "{message}");
    }
}
