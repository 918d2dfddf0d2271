//! The local Docker Engine, through the `docker` CLI: load the archives, build the Dockerfile's `prebuilt` stage.

use std::{fs, path::Path};

use anyhow::{Context as _, ensure};
use duct::cmd;

/// The engine's version when `docker version` reaches one; the reason otherwise.
pub fn reachable() -> Result<String, String> {
    match cmd!("docker", "version", "--format", "{{.Server.Version}}")
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
    {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(error) => Err(format!("cannot run docker: {error}")),
    }
}

/// `docker load -i archive`; returns what docker said (`Loaded image: …`).
pub fn load(archive: &Path) -> anyhow::Result<String> {
    let out = cmd!("docker", "load", "--input", archive)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .context("running docker load")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success(),
        "docker load --input {} failed ({}): {said}",
        archive.display(),
        out.status
    );
    Ok(said)
}

/// The image ID and size (bytes) the engine reports for `reference`.
pub fn inspect(reference: &str) -> anyhow::Result<(String, u64)> {
    let out = cmd!(
        "docker",
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{.Size}}",
        reference
    )
    .stderr_capture()
    .read()
    .with_context(|| format!("docker image inspect {reference} failed"))?;
    let (id, size) = out
        .trim()
        .split_once(' ')
        .with_context(|| format!("docker image inspect {reference} said {out:?}"))?;
    Ok((
        id.to_owned(),
        size.parse().context("parsing the image size")?,
    ))
}

/// Prepares `context` (replaced) with just `prebuilt/python-sandbox-agent`, the one file the `prebuilt` stage
/// copies, so the legacy builder sends a few MiB rather than the workspace.
pub fn prepare_context(context: &Path, binary: &Path) -> anyhow::Result<()> {
    if context.exists() {
        fs::remove_dir_all(context)
            .with_context(|| format!("removing the old {}", context.display()))?;
    }
    let prebuilt = context.join("prebuilt");
    fs::create_dir_all(&prebuilt)?;
    let to = prebuilt.join("python-sandbox-agent");
    fs::hard_link(binary, &to)
        .or_else(|_| fs::copy(binary, &to).map(drop))
        .with_context(|| format!("copying {} into {}", binary.display(), context.display()))?;
    Ok(())
}

/// `DOCKER_BUILDKIT=0 docker build -f <dockerfile> --target prebuilt --build-arg RUNTIME_BASE=<base> -t <tag>
/// <context>`: the legacy builder (the only one without buildx) builds the stages up to the target in file order,
/// which is why the Dockerfile puts `runtime-base` and `prebuilt` before the source build.
pub fn build_prebuilt(
    dockerfile: &Path,
    context: &Path,
    base: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let base_arg = format!("RUNTIME_BASE={base}");
    cmd!(
        "docker",
        "build",
        "--file",
        dockerfile,
        "--target",
        "prebuilt",
        "--build-arg",
        &base_arg,
        "--tag",
        tag,
        context
    )
    .env("DOCKER_BUILDKIT", "0")
    .run()
    .with_context(|| {
        format!(
            "DOCKER_BUILDKIT=0 docker build --target prebuilt --build-arg {base_arg} -t {tag} {} failed",
            context.display()
        )
    })?;
    Ok(())
}
