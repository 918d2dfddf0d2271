//! `cargo xtask image`: the reference agent's image, built from Debian packages without a base image or a
//! registry, and loaded into the local Docker Engine. `--demo` also builds the demo's image ([`DEMO_TAG`]) on the
//! same base layer, which `cargo xtask e2e` runs in the cluster.
//!
//! # Flow
//!
//! 1. [`debs`]: the dependency closure of `libpython3.11`, `libc6` and `libgcc-s1` (`apt-cache depends
//!    --recurse`, cut at a commented exclusion list), at apt's candidate versions, fetched with `apt-get download`
//!    into `<target>/image/debs/` (a rebuild with every `.deb` cached needs no network). Versions are printed.
//! 2. [`rootfs`]: each package's data (`dpkg-deb --fsys-tarfile`) into one sorted in-memory tree, merged-`/usr`
//!    like Debian 12, without docs, man pages, locales, `__pycache__`, glibc's iconv modules or the test suite;
//!    plus `/etc/passwd`, `/etc/group` (nonroot 65532) and `/tmp` (1777). Written to `<target>/image/rootfs/`.
//! 3. [`agent`]: `cargo build --release --locked -p python-sandbox-agent` in `<target>/image/cargo/` with
//!    `PYO3_CONFIG_FILE` naming the rootfs's libpython; `readelf` then checks that it needs
//!    `libpython3.11.so.1.0`, finds every library and its loader in the tree, and has no RPATH/RUNPATH.
//!    `--demo` builds `-p pipeline --bin demo` the same way, in the same target directory (so it reuses the
//!    agent's dependencies), and checks it the same way, except that it need not record libpython (it runs no
//!    Python; see [`agent`]).
//! 4. [`layer`]: two uncompressed layers, the Debian base and the agent (and a demo layer): entries sorted, mtimes
//!    `SOURCE_DATE_EPOCH` (else 0), owner root, modes 0755/0644 (`/tmp` 1777). Same inputs, same digests.
//! 5. [`oci`]: an OCI layout (`<target>/image/oci/`) and `<target>/image/python-sandbox-agent.tar`, both an OCI
//!    layout and a docker-archive; with `--demo`, `<target>/image/demo-oci/` and `agent-sandbox-demo.tar` too.
//! 6. [`engine`]: when `docker version` reaches an engine, `docker load` and print the image ID and size.
//!    `--dockerfile` also loads the base alone as [`BASE_TAG`] and builds the repository's `Dockerfile`
//!    (`--target prebuilt`, the legacy builder) on it from the binary of step 3, as [`DOCKERFILE_TAG`].
//!
//! The image runs with a read-only root (only `/tmp` written), as 65532, with no shell. Python needs no
//! `PYTHONHOME`: with no `python3` on `PATH`, the embedded interpreter falls back to the prefix libpython was
//! built with (Debian's `/usr`) and finds `/usr/lib/python3.11/os.py` there, provided the working directory has
//! no `lib/python3.11/os.py` below it (hence [`WORKDIR`]); on python:3.11-slim it finds `/usr/local/bin/python3`
//! and so `/usr/local`. See docs/container-image.md.

mod agent;
mod debs;
pub mod engine;
mod layer;
mod oci;
mod rootfs;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

use self::{
    agent::{Binary, BuildPaths},
    layer::write_layer_file,
    oci::{ConfigSpec, ImageLayer, Reference, Written, write_image},
    rootfs::{Node, Tree},
};

/// Where the agent binary lives in the image.
pub const BINARY: &str = "/usr/local/bin/python-sandbox-agent";
/// Where the demo binary lives in the demo image.
pub const DEMO_BINARY: &str = "/usr/local/bin/demo";
/// The demo image (`--demo`), which `cargo xtask e2e` runs in the cluster as a Job.
pub const DEMO_TAG: &str = "agent-sandbox-demo:dev";
/// The unprivileged user (and group) the image runs as, as in distroless images and `deploy/base/sandbox-template.yaml`.
pub const NONROOT: u32 = 65532;
/// The AXP port the image's agent serves on.
pub const PORT: u16 = axp_transport::DEFAULT_PORT;
/// The tag written into the image when `--tag` is not given (what `deploy/base/sandbox-template.yaml` runs).
pub const DEFAULT_TAG: &str = "python-sandbox-agent:dev";
/// The Debian base alone, loaded for `docker build --build-arg RUNTIME_BASE=…` (`--dockerfile`).
pub const BASE_TAG: &str = "python-sandbox-base:bookworm";
/// What `--dockerfile` tags the Dockerfile's `prebuilt` stage as.
pub const DOCKERFILE_TAG: &str = "python-sandbox-agent:dockerfile";
/// The working directory: the one writable place, and a directory without `lib/python3.11/os.py` under it, which
/// the embedded interpreter would otherwise take for its prefix (from `/` it finds `/lib/python3.11` through the
/// `/lib -> usr/lib` link and reports prefix `/`; from `/tmp` it falls back to libpython's own `/usr`).
pub const WORKDIR: &str = "/tmp";
/// The image's environment (the Dockerfile's `runtime-base` stage sets the same). No `PYTHONHOME`: see the
/// module docs. `LANG=C.UTF-8` is glibc's built-in locale (no locale files needed); `HOME` is the one writable
/// directory; the root is read-only, so Python must not try to write bytecode caches.
pub const ENV: &[&str] = &[
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "HOME=/tmp",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
];

/// Builds the reference agent's image from Debian packages and loads it into the local Docker Engine.
#[derive(clap::Args, Debug, Clone)]
pub struct Image {
    /// The image reference to tag the image with.
    #[arg(long, default_value = DEFAULT_TAG)]
    pub tag: String,
    /// Use the agent binary already built in `<out-dir>/cargo` instead of running cargo.
    #[arg(long)]
    pub no_build: bool,
    /// Write the image files only: do not `docker load` them.
    #[arg(long)]
    pub no_load: bool,
    /// Also build the repository's Dockerfile (`--target prebuilt`) on the Debian base from the same binary, as
    /// `python-sandbox-agent:dockerfile` (needs a Docker Engine).
    #[arg(long)]
    pub dockerfile: bool,
    /// Also build the demo image, agent-sandbox-demo:dev: the same base plus the `demo` binary (package
    /// `pipeline`), built the same way (what `cargo xtask e2e` runs in the cluster).
    #[arg(long)]
    pub demo: bool,
    /// Where to write everything (default: `<cargo target dir>/image`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// What [`Image::run`] wrote.
#[derive(Debug)]
pub struct Built {
    /// The docker-archive (also an OCI layout) for `docker load` and `kind load image-archive`.
    pub archive: PathBuf,
    /// The demo image's, with `--demo`.
    pub demo_archive: Option<PathBuf>,
}

impl Image {
    /// Build and tag the agent image, no `docker load` (`cargo xtask e2e` adds the demo image and loads both
    /// archives into kind).
    pub fn for_tag(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            no_build: false,
            no_load: true,
            dockerfile: false,
            demo: false,
            out_dir: None,
        }
    }

    pub fn run(self) -> anyhow::Result<Built> {
        let started = Instant::now();
        let root = super::workspace_root();
        let reference = Reference::parse(&self.tag)?;
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => super::target_dir()?.join("image"),
        };
        fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
        let mtime = source_date_epoch()?;
        // Fail before the long steps when the Dockerfile proof cannot run.
        let engine = if self.no_load && !self.dockerfile {
            None
        } else {
            match engine::reachable() {
                Ok(version) => Some(version),
                Err(why) if self.dockerfile => bail!("no Docker Engine reachable: {why}"),
                Err(why) => {
                    println!(
                        "note: no Docker Engine reachable ({why}): the image is written, not loaded"
                    );
                    None
                }
            }
        };

        let debs = step("resolve and fetch the Debian packages", || {
            debs::fetch(&out_dir.join("debs"))
        })?;
        for deb in &debs {
            println!("    {:<24} {}", deb.name, deb.version);
        }
        let paths = BuildPaths::under(&out_dir);
        let base = step("extract the packages into the base tree", || {
            let tree = rootfs::base_tree(&debs)?;
            tree.write_to(&paths.rootfs)?;
            Ok(tree)
        })?;
        print_counts("base", &base);

        let binaries: &[Binary] = if self.demo {
            &[agent::AGENT, agent::DEMO]
        } else {
            &[agent::AGENT]
        };
        if !self.no_build {
            for &binary in binaries {
                step(
                    &format!(
                        "cargo build --release -p {} --bin {} (rootfs libpython)",
                        binary.package, binary.bin
                    ),
                    || agent::build(&root, &paths, binary),
                )?;
            }
        }

        let layers_dir = out_dir.join("layers");
        fs::create_dir_all(&layers_dir)?;
        let base_layer = step("write the base layer", || {
            write_layer_file(&base, &layers_dir.join("base.tar"), mtime)
        })?;
        println!(
            "  base layer  {} ({})",
            base_layer.digest,
            mib(base_layer.size)
        );
        let base_history = format!(
            "cargo xtask image: Debian 12 packages ({} of them)",
            debs.len()
        );
        let base_image_layer = ImageLayer {
            file: &base_layer,
            created_by: &base_history,
        };
        let on_base = OnBase {
            paths: &paths,
            tree: &base,
            layer: &base_image_layer,
            out_dir: &out_dir,
            mtime,
        };
        let written = on_base.image(&App {
            binary: agent::AGENT,
            path: BINARY,
            spec: ConfigSpec::agent(),
            reference: &reference,
            layout_dir: "oci",
        })?;
        let demo = if self.demo {
            Some(on_base.image(&App {
                binary: agent::DEMO,
                path: DEMO_BINARY,
                spec: ConfigSpec::demo(),
                reference: &Reference::parse(DEMO_TAG)?,
                layout_dir: "demo-oci",
            })?)
        } else {
            None
        };

        if let Some(version) = &engine {
            if !self.no_load {
                load(&written.archive, &reference.familiar(), version)?;
                if let Some(demo) = &demo {
                    load(&demo.archive, DEMO_TAG, version)?;
                }
            }
            if self.dockerfile {
                let base_ref = Reference::parse(BASE_TAG)?;
                let base_written = step(&format!("write the base image {BASE_TAG}"), || {
                    write_image(
                        &[base_image_layer],
                        &ConfigSpec::base(),
                        &base_ref,
                        &out_dir.join("base-oci"),
                        &out_dir.join(format!("{}.tar", base_ref.file_stem())),
                        mtime,
                    )
                })?;
                load(&base_written.archive, BASE_TAG, version)?;
                let context = out_dir.join("dockerfile-context");
                step(
                    &format!("docker build --target prebuilt -t {DOCKERFILE_TAG}"),
                    || {
                        engine::prepare_context(&context, &paths.binary(agent::AGENT))?;
                        engine::build_prebuilt(
                            &root.join("Dockerfile"),
                            &context,
                            BASE_TAG,
                            DOCKERFILE_TAG,
                        )
                    },
                )?;
                let (id, size) = engine::inspect(DOCKERFILE_TAG)?;
                println!("  engine      {DOCKERFILE_TAG}: id {id}, {}", mib(size));
            }
        }
        println!("image: done in {:.1?}", started.elapsed());
        Ok(Built {
            archive: written.archive,
            demo_archive: demo.map(|demo| demo.archive),
        })
    }
}

/// One of the workspace's binaries as an image on the Debian base.
struct App<'a> {
    binary: Binary,
    /// Where the binary lives in the image.
    path: &'static str,
    spec: ConfigSpec,
    reference: &'a Reference,
    /// The OCI layout's directory under the out dir (the archive is `<name>.tar` beside it).
    layout_dir: &'static str,
}

/// The base that each [`App`] is layered on, and where the images go.
struct OnBase<'a> {
    paths: &'a BuildPaths,
    tree: &'a Tree,
    layer: &'a ImageLayer<'a>,
    out_dir: &'a Path,
    mtime: u64,
}

impl OnBase<'_> {
    /// Checks the app's binary against the base tree, puts it in a layer of its own on top of the base layer, and
    /// writes the OCI layout and the docker-archive.
    fn image(&self, app: &App<'_>) -> anyhow::Result<Written> {
        let bin = app.binary.bin;
        let binary = self.paths.binary(app.binary);
        let dynamic = step(
            &format!("readelf: {bin}'s libraries are the image's"),
            || agent::verify(&binary, self.tree, app.binary.embeds_python),
        )?;
        println!("    NEEDED {}; no RPATH/RUNPATH", dynamic.needed.join(", "));
        let mut tree = Tree::default();
        tree.put(
            Path::new(app.path),
            Node::File {
                data: fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?,
                mode: 0o755,
            },
        );
        let layer = step(&format!("write the {bin} layer"), || {
            write_layer_file(
                &tree,
                &self.out_dir.join("layers").join(format!("{bin}.tar")),
                self.mtime,
            )
        })?;
        let reference = app.reference;
        let created_by = format!("cargo xtask image: {bin}");
        let written = step(
            &format!(
                "write the OCI layout and the docker-archive of {}",
                reference.familiar()
            ),
            || {
                write_image(
                    &[
                        self.layer.clone(),
                        ImageLayer {
                            file: &layer,
                            created_by: &created_by,
                        },
                    ],
                    &app.spec,
                    reference,
                    &self.out_dir.join(app.layout_dir),
                    &self.out_dir.join(format!("{}.tar", reference.file_stem())),
                    self.mtime,
                )
            },
        )?;
        println!(
            "image {}: manifest {}, id {}",
            reference.familiar(),
            written.manifest_digest,
            written.config_digest
        );
        println!("  {bin} layer {} ({})", layer.digest, mib(layer.size));
        println!(
            "  archive     {} (docker load -i / kind load image-archive)",
            written.archive.display()
        );
        println!("  layout      {}", written.layout.display());
        Ok(written)
    }
}

/// `docker load`s `archive` and prints what the engine holds under `reference`.
fn load(archive: &Path, reference: &str, version: &str) -> anyhow::Result<()> {
    let said = step(
        &format!("docker load {reference} (engine {version})"),
        || engine::load(archive),
    )?;
    println!("    {said}");
    let (id, size) = engine::inspect(reference)?;
    println!("  engine      {reference}: id {id}, {}", mib(size));
    Ok(())
}

fn print_counts(what: &str, tree: &Tree) {
    let counts = tree.counts();
    println!(
        "    {what}: {} files ({}), {} directories, {} symlinks",
        counts.files,
        mib(counts.bytes),
        counts.dirs,
        counts.symlinks
    );
}

fn mib(bytes: u64) -> String {
    format!("{bytes} bytes, {:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs one named step, printing what it does and how long it took.
fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {what}");
    let started = Instant::now();
    let result = f().with_context(|| format!("step failed: {what}"));
    println!(
        "<== {what}: {} in {:.1?}",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed()
    );
    result
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or 0: the mtime of every entry and the image's `created`.
fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}
