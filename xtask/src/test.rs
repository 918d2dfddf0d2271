//! `cargo xtask test`: the one command CI and contributors run.
//!
//! # Flow
//!
//! 1. Build the reference agent binary (whole-pipeline tests spawn it).
//! 2. When a Docker Engine is reachable (always under `CI`, where a missing engine is an
//!    error): build the agent's image and the Dockerfile's image (`cargo xtask image
//!    --dockerfile`) and load both.
//! 3. `cargo test --workspace`: the container tests run against both images, the
//!    whole-pipeline suite on local agent processes.
//! 4. With an engine: the whole-pipeline suite again, on Docker containers of the image.
//!
//! Without an engine (outside CI) steps 2 and 4 are skipped with one line each, and the
//! container and Docker-runtime tests skip themselves with one line.

use anyhow::{Context as _, bail};
use duct::cmd;

use crate::{artifacts, image};

/// The variable that puts the whole-pipeline suite on Docker.
const PIPELINE_RUNTIME_ENV: &str = "PIPELINE_RUNTIME";

/// Builds what the tests spawn (binary, images), then runs the tests.
#[derive(clap::Args)]
pub struct Test {
    /// Extra arguments for `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

impl Test {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        let built = artifacts::build_bins(&[artifacts::AGENT_PACKAGE], false)
            .context("building the reference agent binary")?;
        let agent = built.get(artifacts::AGENT_PACKAGE)?;

        let images = match image::engine::reachable() {
            Ok(version) => {
                println!("== images for the container tests (Docker Engine {version})");
                image::Image {
                    dockerfile: true,
                    no_load: false,
                    ..image::Image::for_tag(image::DEFAULT_TAG)
                }
                .run()
                .context("building the agent's images")?;
                Some([image::DEFAULT_TAG, image::DOCKERFILE_TAG])
            }
            Err(why) if std::env::var_os("CI").is_some() => {
                bail!("CI runs the container tests, but no Docker Engine is reachable: {why}")
            }
            Err(why) => {
                println!(
                    "note: no Docker Engine reachable ({why}): container tests and the Docker pipeline are skipped"
                );
                None
            }
        };

        // `cargo test <selection> [-- <the user's arguments>]`, with the agent binary named.
        let cargo_test = |selection: &[&str]| {
            let mut args: Vec<String> = ["test", "--workspace", "--all-features"]
                .iter()
                .chain(selection)
                .map(|a| (*a).to_owned())
                .collect();
            if !self.args.is_empty() {
                args.push("--".into());
                args.extend(self.args.iter().cloned());
            }
            cmd("cargo", args)
                .dir(&root)
                .env(artifacts::AGENT_BIN_ENV, agent)
                .unchecked()
        };

        let mut tests = cargo_test(&["--no-fail-fast"]);
        if let Some(images) = images {
            tests = tests
                .env(artifacts::CONTAINER_IMAGES_ENV, images.join(","))
                .env(artifacts::AGENT_IMAGE_ENV, image::DEFAULT_TAG);
        }
        let workspace = tests.run().context("running cargo test")?;

        let on_docker = match images {
            Some(_) => {
                println!(
                    "== the whole-pipeline suite on Docker containers of {}",
                    image::DEFAULT_TAG
                );
                // The same workspace and features as above, so nothing is rebuilt.
                let run = cargo_test(&["--test", "pipeline"])
                    .env(PIPELINE_RUNTIME_ENV, "docker")
                    .env(artifacts::AGENT_IMAGE_ENV, image::DEFAULT_TAG)
                    .run()
                    .context("running the pipeline suite on Docker")?;
                run.status.success()
            }
            None => true,
        };
        match (workspace.status.success(), on_docker) {
            (true, true) => Ok(()),
            (false, _) => bail!("tests failed"),
            (true, false) => bail!("the whole-pipeline suite failed on Docker"),
        }
    }
}
