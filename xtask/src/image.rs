//! `cargo xtask image`: the reference agent as an OCI image, built without a container engine or a base image.
//!
//! # Expected flow
//!
//! 1. `cargo build --release -p python-sandbox-agent` (skipped with `--no-build`).
//! 2. Assemble a root filesystem as a sorted map of image paths ([`Rootfs`]):
//!    - the binary at [`BINARY`];
//!    - every shared library `ldd` reports for the binary and for the stdlib's extension modules
//!      (`lib-dynload/*.so`), at its host path, with the symlinks on the way (`/lib -> usr/lib`, the dynamic loader)
//!      recorded as symlinks;
//!    - the build Python's stdlib at the build Python's own prefix (minus `test/`, `idlelib/`, `tkinter/`,
//!      `turtledemo/`, `ensurepip/`, `config-3.X-*/`, `__pycache__`, `site-packages` contents, and the `lib-dynload`
//!      modules that serve only those: `_tkinter`, `_test*`, `xxlimited*`), so the binary's RPATH and Python's prefix
//!      computation both hold unchanged (`PYTHONHOME` says the same for good measure);
//!    - `/etc/passwd`, `/etc/group` and `/etc/nsswitch.conf` with `nonroot` (65532), an empty `/tmp` (1777).
//! 3. Write one uncompressed layer: entries sorted, mtimes fixed (`SOURCE_DATE_EPOCH`, else 0), owner root, modes
//!    normalised to 0755/0644. The same inputs give the same digests.
//! 4. Write an OCI image layout (`<target>/image/oci/`) and a tarball (`<target>/image/python-sandbox-agent.tar`)
//!    that is both an OCI layout and a docker-archive (`manifest.json`), the format `docker save` writes since
//!    Docker 25: `docker load`, `kind load image-archive` and `ctr images import` all read it.
//! 5. With `--check`: extract the layer into a temporary directory and, as root, `chroot` into it as 65532 with the
//!    image's environment only, run `--help`, then start the agent on 127.0.0.1:0 and wait for `listening on`
//!    (printed once the Python worker is up), then stop it.
//!
//! # Caveats
//!
//! - The image carries the build machine's glibc and libpython: it runs on nodes of the build machine's
//!   architecture, and is as current as the build machine's libraries.
//! - The stdlib is shipped without `__pycache__`; imports compile from source (and `PYTHONDONTWRITEBYTECODE=1`
//!   keeps Python from trying to write to the read-only root).
//! - No CA certificates, no locale data, no shell: sandboxes have no egress, and Python runs in UTF-8 mode.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead as _, BufWriter, Read as _, Write},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use axp_transport::conventions::{LISTENING_PREFIX, parse_listening_line};
use duct::cmd;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Where the agent binary lives in the image.
pub const BINARY: &str = "/usr/local/bin/python-sandbox-agent";
/// The unprivileged user (and group) the image runs as, as in distroless images and `deploy/base/sandbox-template.yaml`.
pub const NONROOT: u32 = 65532;
/// The AXP port the image's agent serves on.
pub const PORT: u16 = axp_transport::DEFAULT_PORT;
/// The tag written into the image when `--tag` is not given.
pub const DEFAULT_TAG: &str = "python-sandbox-agent:dev";
/// Top-level stdlib entries that an agent never imports (tests, GUIs, pip bootstrap).
const STDLIB_EXCLUDED: &[&str] = &["test", "idlelib", "tkinter", "turtledemo", "ensurepip"];

/// `lib-dynload` modules (by name prefix) that serve only excluded packages.
const DYNLOAD_EXCLUDED: &[&str] = &[
    "_tkinter.",
    "_test",
    "_ctypes_test.",
    "_xxtestfuzz.",
    "xxlimited",
];

/// Builds the reference agent's image (an OCI layout plus a docker-archive) without a daemon.
#[derive(clap::Args, Debug, Clone)]
pub struct Image {
    /// The image reference to tag the image with.
    #[arg(long, default_value = DEFAULT_TAG)]
    pub tag: String,
    /// Use the release binary already built instead of running `cargo build --release`.
    #[arg(long)]
    pub no_build: bool,
    /// After building, extract the layer and run the agent chrooted into it (needs root; skipped otherwise).
    #[arg(long)]
    pub check: bool,
    /// Where to write `oci/` and the tarball (default: `<cargo target dir>/image`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// The Python whose stdlib goes into the image: the one pyo3 built the agent against.
    #[arg(long, env = "PYO3_PYTHON", default_value = "python3")]
    pub python: String,
}

/// What [`Image::run`] wrote.
#[derive(Debug)]
pub struct Built {
    /// The docker-archive (also an OCI layout) for `docker load` and `kind load image-archive`.
    pub archive: PathBuf,
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the (uncompressed) layer, which is also its diff ID.
    pub layer_digest: String,
    /// Bytes of the layer.
    pub layer_size: u64,
    /// Entries in the layer, by kind.
    pub counts: Counts,
}

/// How many entries of each kind a layer holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
}

impl Image {
    /// The options `cargo xtask e2e` uses: build, tag, no check.
    pub fn for_tag(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            no_build: false,
            check: false,
            out_dir: None,
            python: std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        }
    }

    pub fn run(self) -> anyhow::Result<Built> {
        let started = Instant::now();
        let root = super::workspace_root();
        let reference = Reference::parse(&self.tag)?;
        if !self.no_build {
            step("cargo build --release -p python-sandbox-agent", || {
                cmd!(
                    "cargo",
                    "build",
                    "--release",
                    "--package",
                    "python-sandbox-agent",
                    "--bins"
                )
                .dir(&root)
                .run()
                .context("building the reference agent")
            })?;
            if self.check {
                // The check runs a snippet in the image through the AXP client (a separate build: building both
                // packages at once could unify features differently and rebuild the agent).
                step(
                    "cargo build --release -p axp-transport --features cli --bin axp",
                    || {
                        cmd!(
                            "cargo",
                            "build",
                            "--release",
                            "--package",
                            "axp-transport",
                            "--features",
                            "cli",
                            "--bin",
                            "axp"
                        )
                        .dir(&root)
                        .run()
                        .context("building the axp client")
                    },
                )?;
            }
        }
        let target_dir = super::target_dir()?;
        let binary = target_dir.join("release/python-sandbox-agent");
        ensure!(
            binary.is_file(),
            "{} does not exist: build it (drop --no-build)",
            binary.display()
        );
        let out_dir = self
            .out_dir
            .clone()
            .unwrap_or_else(|| target_dir.join("image"));

        let (rootfs, python) = step("assemble the root filesystem", || {
            assemble(&binary, &self.python)
        })?;
        let spec = ConfigSpec::new(&python.prefix);
        let built = step("write the OCI layout and the docker-archive", || {
            write_image(&rootfs, &spec, &reference, &out_dir, source_date_epoch()?)
        })?;

        println!(
            "image {} ({}): layer {} bytes ({:.1} MiB), {} files, {} directories, {} symlinks",
            reference.familiar(),
            built.manifest_digest,
            built.layer_size,
            built.layer_size as f64 / (1024.0 * 1024.0),
            built.counts.files,
            built.counts.dirs,
            built.counts.symlinks,
        );
        println!("  layer     {}", built.layer_digest);
        println!(
            "  archive   {} (docker load -i / kind load image-archive)",
            built.archive.display()
        );
        println!("  layout    {}", built.layout.display());
        println!(
            "  python    {} at {}",
            python.version,
            python.prefix.display()
        );

        if self.check {
            let axp = target_dir.join("release/axp");
            check(&built, &spec, axp.is_file().then_some(axp))?;
        }
        println!("image: done in {:.1?}", started.elapsed());
        Ok(built)
    }
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

// ---------------------------------------------------------------------------------------------------------------
// The root filesystem.

/// One entry of the image's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        owner: u32,
    },
    /// A file copied from the host at write time.
    HostFile {
        source: PathBuf,
        mode: u32,
    },
    /// A file written from memory.
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// The image's filesystem: image paths relative to `/`, sorted, so the layer's entry order is deterministic and
/// every directory precedes its contents.
#[derive(Debug, Default)]
struct Rootfs {
    entries: BTreeMap<PathBuf, Node>,
}

impl Rootfs {
    /// Adds a directory and its missing parents (0755, root), keeping an existing entry's mode and owner.
    fn dir(&mut self, path: &Path) {
        let rel = relative(path);
        let mut at = PathBuf::new();
        for component in rel.components() {
            at.push(component);
            self.entries.entry(at.clone()).or_insert(Node::Dir {
                mode: 0o755,
                owner: 0,
            });
        }
    }

    /// Adds an entry at `path` after its parent directories.
    fn put(&mut self, path: &Path, node: Node) {
        let rel = relative(path);
        if let Some(parent) = rel.parent() {
            self.dir(parent);
        }
        self.entries.insert(rel, node);
    }

    /// Adds a host file at the same path, with its mode normalised: 0755 if anyone may execute it, else 0644.
    fn host_file(&mut self, path: &Path, metadata: &fs::Metadata) {
        let mode = if metadata.mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        self.put(
            path,
            Node::HostFile {
                source: path.to_owned(),
                mode,
            },
        );
    }

    /// Adds the host file at `path` at the same image path, resolving it one component at a time as the kernel
    /// does: each symlink on the way (`/lib -> usr/lib`, `/lib64/ld-linux-x86-64.so.2 -> …`) becomes a symlink in
    /// the image too and its target is added in turn, so the path works in the image exactly as on the host.
    fn host_path(&mut self, path: &Path) -> anyhow::Result<()> {
        ensure!(path.is_absolute(), "{} is not absolute", path.display());
        let mut pending: Vec<std::ffi::OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut resolved = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                resolved.pop();
                continue;
            }
            let candidate = resolved.join(&name);
            let metadata = fs::symlink_metadata(&candidate)
                .with_context(|| format!("reading {}", candidate.display()))?;
            if metadata.file_type().is_symlink() {
                hops += 1;
                ensure!(hops <= 40, "too many symlinks resolving {}", path.display());
                let target = fs::read_link(&candidate)?;
                self.put(
                    &candidate,
                    Node::Symlink {
                        target: target.clone(),
                    },
                );
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            } else if metadata.is_dir() {
                self.dir(&candidate);
                resolved = candidate;
            } else if metadata.is_file() {
                ensure!(
                    pending.is_empty(),
                    "{} is a file inside a path",
                    candidate.display()
                );
                self.host_file(&candidate, &metadata);
                resolved = candidate;
            } else {
                bail!(
                    "{} is neither a file, a directory nor a symlink",
                    candidate.display()
                );
            }
        }
        Ok(())
    }

    /// Adds the host directory tree `dir` at the same path, minus what `keep(relative path, is_dir)` refuses.
    fn host_tree(&mut self, dir: &Path, keep: &dyn Fn(&Path, bool) -> bool) -> anyhow::Result<()> {
        self.host_path(dir)?;
        let dir = dir.canonicalize()?;
        let mut stack = vec![dir.clone()];
        while let Some(at) = stack.pop() {
            let mut children = fs::read_dir(&at)
                .with_context(|| format!("listing {}", at.display()))?
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<io::Result<Vec<_>>>()?;
            children.sort();
            for child in children {
                let metadata = fs::symlink_metadata(&child)?;
                let rel = child.strip_prefix(&dir).expect("a child of dir");
                if !keep(rel, metadata.is_dir()) {
                    continue;
                }
                if metadata.file_type().is_symlink() {
                    self.put(
                        &child,
                        Node::Symlink {
                            target: fs::read_link(&child)?,
                        },
                    );
                } else if metadata.is_dir() {
                    self.dir(&child);
                    stack.push(child);
                } else if metadata.is_file() {
                    self.host_file(&child, &metadata);
                }
            }
        }
        Ok(())
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for node in self.entries.values() {
            match node {
                Node::Dir { .. } => counts.dirs += 1,
                Node::HostFile { .. } | Node::Data { .. } => counts.files += 1,
                Node::Symlink { .. } => counts.symlinks += 1,
            }
        }
        counts
    }
}

/// Pushes `path`'s components onto a stack so that the first component is popped first.
fn push_components(stack: &mut Vec<std::ffi::OsString>, path: &Path) {
    let names: Vec<_> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    stack.extend(names.into_iter().rev());
}

/// An absolute image path as a layer path (`/usr/bin` → `usr/bin`).
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| matches!(component, Component::Normal(_)))
        .collect()
}

/// Whether a stdlib entry (relative to `lib/python3.X`) belongs in the image.
fn keep_stdlib_entry(rel: &Path, is_dir: bool) -> bool {
    let mut components = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let Some(first) = components.next() else {
        return true;
    };
    if rel.components().any(|c| c.as_os_str() == "__pycache__") {
        return false;
    }
    let nested = components.next().is_some();
    if !nested && is_dir {
        if STDLIB_EXCLUDED.contains(&first.as_ref()) {
            return false;
        }
        // `config-3.X-<triplet>/` holds libpython3.X.a and the Makefile, for building extensions only.
        if first.starts_with("config-") {
            return false;
        }
    }
    // Extension modules for what is excluded: tkinter (which pulls in X11, Tk and fonts) and the test suite.
    if nested && first == "lib-dynload" {
        let name = rel.file_name().unwrap_or_default().to_string_lossy();
        if DYNLOAD_EXCLUDED
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            return false;
        }
    }
    // Keep `site-packages/` itself (Python looks for it) but none of the build machine's packages.
    !(nested && first == "site-packages")
}

/// The Python the agent embeds, as it reports itself.
#[derive(Debug)]
struct PythonInstall {
    prefix: PathBuf,
    stdlib: PathBuf,
    version: String,
}

fn python_install(python: &str) -> anyhow::Result<PythonInstall> {
    const SCRIPT: &str = "import json, platform, sys, sysconfig; print(json.dumps({'prefix': sys.prefix, \
                          'stdlib': sysconfig.get_paths()['stdlib'], 'version': platform.python_version()}))";
    let out = cmd!(python, "-c", SCRIPT)
        .read()
        .with_context(|| format!("asking {python} for its prefix (set --python or PYO3_PYTHON)"))?;
    let info: Value = serde_json::from_str(&out).context("parsing the Python's answer")?;
    let field = |name: &str| {
        info[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the Python reported no {name}"))
    };
    Ok(PythonInstall {
        prefix: field("prefix")?.into(),
        stdlib: field("stdlib")?.into(),
        version: field("version")?,
    })
}

/// The libraries `ldd` resolved, and the names it could not.
#[derive(Debug, Default, PartialEq, Eq)]
struct LddOutput {
    libraries: Vec<PathBuf>,
    missing: Vec<String>,
}

/// Parses `ldd` output: `name => /path (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)` (the loader),
/// `linux-vdso.so.1 (0x…)` (in the kernel: skipped) and `name => not found`.
fn parse_ldd(output: &str) -> LddOutput {
    let mut parsed = LddOutput::default();
    for line in output.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                parsed.missing.push(name.trim().to_owned());
            } else if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                parsed.libraries.push(path.into());
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            parsed.libraries.push(path.into());
        }
    }
    parsed
}

fn ldd(path: &Path) -> anyhow::Result<LddOutput> {
    let out = cmd!("ldd", path)
        .stderr_to_stdout()
        .unchecked()
        .read()
        .with_context(|| format!("running ldd {}", path.display()))?;
    Ok(parse_ldd(&out))
}

/// Gathers everything the image holds.
fn assemble(binary: &Path, python_command: &str) -> anyhow::Result<(Rootfs, PythonInstall)> {
    let mut rootfs = Rootfs::default();
    let metadata = fs::metadata(binary)?;
    ensure!(
        metadata.mode() & 0o111 != 0,
        "{} is not executable",
        binary.display()
    );
    rootfs.put(
        Path::new(BINARY),
        Node::HostFile {
            source: binary.to_owned(),
            mode: 0o755,
        },
    );

    let linked = ldd(binary)?;
    ensure!(
        linked.missing.is_empty(),
        "{} needs libraries ldd cannot find: {}",
        binary.display(),
        linked.missing.join(", ")
    );
    let python = python_install(python_command)?;
    // The binary must load the libpython of the Python whose stdlib we ship (RUST-STACK.md §5.1).
    if let Some(libpython) = linked.libraries.iter().find(|lib| {
        lib.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("libpython"))
    }) {
        let expected = python.prefix.join("lib").canonicalize()?;
        let actual = libpython.parent().map(Path::canonicalize).transpose()?;
        ensure!(
            actual.as_deref() == Some(expected.as_path()),
            "the agent loads {} but {python_command} has prefix {}: build and package with the same Python \
             (PYO3_PYTHON / --python)",
            libpython.display(),
            python.prefix.display(),
        );
    } else {
        eprintln!(
            "note: {} does not link a shared libpython",
            binary.display()
        );
    }
    for library in &linked.libraries {
        rootfs.host_path(library)?;
    }

    rootfs.host_tree(&python.stdlib, &keep_stdlib_entry)?;
    // Extension modules bring their own libraries (libssl, libffi, libz, …).
    let dynload = python.stdlib.join("lib-dynload");
    let mut modules = fs::read_dir(&dynload)
        .with_context(|| format!("listing {}", dynload.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<Vec<_>>>()?;
    modules.sort();
    for module in modules.iter().filter(|m| {
        m.extension().is_some_and(|e| e == "so")
            && m.strip_prefix(&python.stdlib)
                .is_ok_and(|rel| keep_stdlib_entry(rel, false))
    }) {
        let linked = ldd(module)?;
        if !linked.missing.is_empty() {
            eprintln!(
                "note: {} cannot load here either (missing {}); shipped as is",
                module.display(),
                linked.missing.join(", ")
            );
        }
        for library in &linked.libraries {
            rootfs.host_path(library)?;
        }
    }

    rootfs.put(
        Path::new("/etc/passwd"),
        Node::Data {
            data: format!(
                "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
            )
            .into_bytes(),
            mode: 0o644,
        },
    );
    rootfs.put(
        Path::new("/etc/group"),
        Node::Data {
            data: format!("root:x:0:\nnonroot:x:{NONROOT}:\n").into_bytes(),
            mode: 0o644,
        },
    );
    rootfs.put(
        Path::new("/etc/nsswitch.conf"),
        Node::Data {
            data: b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
            mode: 0o644,
        },
    );
    rootfs.put(
        Path::new("/home/nonroot"),
        Node::Dir {
            mode: 0o700,
            owner: NONROOT,
        },
    );
    rootfs.put(
        Path::new("/tmp"),
        Node::Dir {
            mode: 0o1777,
            owner: 0,
        },
    );
    Ok((rootfs, python))
}

// ---------------------------------------------------------------------------------------------------------------
// Writing the layer and the image.

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A tar header with everything but the type, mode and size fixed: owner root (or `owner`), no user names,
/// mtime `mtime`.
fn header(kind: tar::EntryType, mode: u32, owner: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner.into());
    header.set_gid(owner.into());
    header.set_size(size);
    header.set_mtime(mtime);
    header
}

/// Writes the layer tarball for `rootfs` in entry order.
fn write_layer(rootfs: &Rootfs, out: impl Write, mtime: u64) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for (path, node) in &rootfs.entries {
        match node {
            Node::Dir { mode, owner } => {
                let mut h = header(tar::EntryType::Directory, *mode, *owner, 0, mtime);
                let mut name = path.as_os_str().to_owned();
                name.push("/");
                tar.append_data(&mut h, Path::new(&name), io::empty())?;
            }
            Node::HostFile { source, mode } => {
                let file = fs::File::open(source)
                    .with_context(|| format!("opening {}", source.display()))?;
                let size = file.metadata()?.len();
                let mut h = header(tar::EntryType::Regular, *mode, 0, size, mtime);
                tar.append_data(&mut h, path, file.take(size))
                    .with_context(|| format!("adding {}", source.display()))?;
            }
            Node::Data { data, mode } => {
                let mut h = header(tar::EntryType::Regular, *mode, 0, data.len() as u64, mtime);
                tar.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, mtime);
                tar.append_link(&mut h, path, target)?;
            }
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// An image reference split for the places that want it in different shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As given, without the tag (`python-sandbox-agent`).
    name: String,
    tag: String,
}

impl Reference {
    pub fn parse(reference: &str) -> anyhow::Result<Self> {
        ensure!(
            !reference.contains('@'),
            "{reference:?}: digests cannot be written, give a tag"
        );
        let (name, tag) = match reference.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (reference, "latest"),
        };
        ensure!(
            !name.is_empty()
                && !tag.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c)),
            "{reference:?} is not an image reference (lowercase name[:tag])"
        );
        Ok(Self {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// `python-sandbox-agent:dev`, as `docker images` shows it and `manifest.json` lists it.
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    /// `docker.io/library/python-sandbox-agent:dev`, as containerd (and so kind and the kubelet) names it.
    pub fn canonical(&self) -> String {
        let first = self.name.split('/').next().unwrap_or_default();
        let registry_given = self.name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let name = if registry_given {
            self.name.clone()
        } else if self.name.contains('/') {
            format!("docker.io/{}", self.name)
        } else {
            format!("docker.io/library/{}", self.name)
        };
        format!("{name}:{}", self.tag)
    }
}

/// The run-time configuration written into the image.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub labels: BTreeMap<String, String>,
}

impl ConfigSpec {
    fn new(python_prefix: &Path) -> Self {
        let labels = [
            (
                "org.opencontainers.image.source",
                env!("CARGO_PKG_REPOSITORY"),
            ),
            ("org.opencontainers.image.title", "python-sandbox-agent"),
            (
                "org.opencontainers.image.description",
                "Reference AXP agent that runs Python inside an agent-sandbox pod",
            ),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
        ];
        Self {
            entrypoint: vec![BINARY.to_owned()],
            cmd: vec!["--listen".to_owned(), format!("0.0.0.0:{PORT}")],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                format!("PYTHONHOME={}", python_prefix.display()),
                "PYTHONDONTWRITEBYTECODE=1".to_owned(),
                "PYTHONUTF8=1".to_owned(),
            ],
            user: format!("{NONROOT}:{NONROOT}"),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// The OCI image configuration (also what Docker reads): one layer whose diff ID is `diff_id`.
fn config_json(spec: &ConfigSpec, diff_id: &str, created: &str) -> Value {
    json!({
        "created": created,
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {
            "User": spec.user,
            "ExposedPorts": { format!("{PORT}/tcp"): {} },
            "Env": spec.env,
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "WorkingDir": "/",
            "Labels": spec.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "cargo xtask image" }],
    })
}

/// The OCI manifest for one config blob and one uncompressed layer.
fn manifest_json(spec: &ConfigSpec, config: &Blob, layer: &Blob) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.size,
        }],
        "annotations": spec.labels,
    })
}

/// The OCI layout's `index.json`, naming the image the way containerd's importer and Docker 25+ read it.
fn index_json(reference: &Reference, manifest: &Blob) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": {
                "io.containerd.image.name": reference.canonical(),
                "org.opencontainers.image.ref.name": reference.tag,
            },
        }],
    })
}

/// The docker-archive `manifest.json` (what `docker load` reads), pointing into the OCI layout's blobs.
fn docker_manifest_json(reference: &Reference, config: &Blob, layer: &Blob) -> Value {
    json!([{
        "Config": config.path(),
        "RepoTags": [reference.familiar()],
        "Layers": [layer.path()],
    }])
}

fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    digest: String,
    size: u64,
}

impl Blob {
    fn of(bytes: &[u8]) -> Self {
        Self {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            size: bytes.len() as u64,
        }
    }

    /// Its path inside an OCI layout (`blobs/sha256/<hex>`).
    fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialise")
}

/// Writes the OCI layout under `out_dir/oci` and the combined docker-archive/OCI tarball beside it.
fn write_image(
    rootfs: &Rootfs,
    spec: &ConfigSpec,
    reference: &Reference,
    out_dir: &Path,
    mtime: u64,
) -> anyhow::Result<Built> {
    let layout = out_dir.join("oci");
    if layout.exists() {
        fs::remove_dir_all(&layout)
            .with_context(|| format!("removing the old {}", layout.display()))?;
    }
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;

    let partial = blobs.join(".layer.partial");
    let mut writer = Hashing::new(BufWriter::new(fs::File::create(&partial)?));
    write_layer(rootfs, &mut writer, mtime)?;
    let (file, digest, size) = writer.finish();
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    let layer = Blob { digest, size };
    fs::rename(&partial, layout.join(layer.path()))?;

    let created = jiff::Timestamp::from_second(i64::try_from(mtime)?)?.to_string();
    let config_bytes = json_bytes(&config_json(spec, &layer.digest, &created));
    let config = Blob::of(&config_bytes);
    let manifest_bytes = json_bytes(&manifest_json(spec, &config, &layer));
    let manifest = Blob::of(&manifest_bytes);
    let index_bytes = json_bytes(&index_json(reference, &manifest));
    let docker_bytes = json_bytes(&docker_manifest_json(reference, &config, &layer));
    let oci_layout = json_bytes(&json!({ "imageLayoutVersion": "1.0.0" }));
    fs::write(layout.join(config.path()), &config_bytes)?;
    fs::write(layout.join(manifest.path()), &manifest_bytes)?;
    fs::write(layout.join("index.json"), &index_bytes)?;
    fs::write(layout.join("oci-layout"), &oci_layout)?;

    // The tarball: the same layout plus `manifest.json`, in sorted order.
    let archive = out_dir.join(format!(
        "{}.tar",
        reference.name.rsplit('/').next().unwrap_or("image")
    ));
    let partial = out_dir.join(".archive.partial");
    let mut tar = tar::Builder::new(BufWriter::new(fs::File::create(&partial)?));
    let mut files: BTreeMap<String, ArchiveFile<'_>> = BTreeMap::new();
    files.insert(config.path(), ArchiveFile::Bytes(&config_bytes));
    files.insert(manifest.path(), ArchiveFile::Bytes(&manifest_bytes));
    files.insert(layer.path(), ArchiveFile::Path(layout.join(layer.path())));
    files.insert("index.json".into(), ArchiveFile::Bytes(&index_bytes));
    files.insert("manifest.json".into(), ArchiveFile::Bytes(&docker_bytes));
    files.insert("oci-layout".into(), ArchiveFile::Bytes(&oci_layout));
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, 0, mtime);
        tar.append_data(&mut h, dir, io::empty())?;
    }
    for (name, file) in &files {
        match file {
            ArchiveFile::Bytes(bytes) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0, bytes.len() as u64, mtime);
                tar.append_data(&mut h, name, *bytes)?;
            }
            ArchiveFile::Path(path) => {
                let file = fs::File::open(path)?;
                let size = file.metadata()?.len();
                let mut h = header(tar::EntryType::Regular, 0o644, 0, size, mtime);
                tar.append_data(&mut h, name, file.take(size))?;
            }
        }
    }
    tar.into_inner()?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    fs::rename(&partial, &archive)?;

    Ok(Built {
        archive,
        layout,
        manifest_digest: manifest.digest,
        layer_digest: layer.digest,
        layer_size: layer.size,
        counts: rootfs.counts(),
    })
}

enum ArchiveFile<'a> {
    Bytes(&'a [u8]),
    Path(PathBuf),
}

// ---------------------------------------------------------------------------------------------------------------
// --check

/// Extracts the layer and runs the agent chrooted into it, with the image's user and environment only.
fn check(built: &Built, spec: &ConfigSpec, axp: Option<PathBuf>) -> anyhow::Result<()> {
    // Beside the image rather than in /tmp, which may be a nodev tmpfs (the check makes /dev/null).
    let scratch = tempfile::Builder::new()
        .prefix(".check-")
        .tempdir_in(built.layout.parent().unwrap_or(Path::new(".")))?;
    let rootfs = scratch.path().join("rootfs");
    let layer = built.layout.join(
        Blob {
            digest: built.layer_digest.clone(),
            size: 0,
        }
        .path(),
    );
    let counts = step("extract the layer", || {
        fs::create_dir(&rootfs)?;
        // After chroot this is `/`: 65532 must be able to traverse it.
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))?;
        let mut archive = tar::Archive::new(io::BufReader::new(fs::File::open(&layer)?));
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
        archive.set_overwrite(false);
        let mut counts = Counts::default();
        for entry in archive.entries()? {
            let mut entry = entry?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => counts.dirs += 1,
                tar::EntryType::Symlink => counts.symlinks += 1,
                _ => counts.files += 1,
            }
            ensure!(
                entry.unpack_in(&rootfs)?,
                "the layer has an entry outside its root"
            );
        }
        Ok(counts)
    })?;
    ensure!(
        counts == built.counts,
        "the layer holds {counts:?}, the root filesystem had {:?}",
        built.counts
    );
    println!(
        "check: layer {} ({} bytes), {} files, {} directories, {} symlinks, extracted to {}",
        built.layer_digest,
        built.layer_size,
        counts.files,
        counts.dirs,
        counts.symlinks,
        rootfs.display()
    );

    if !nix::unistd::geteuid().is_root() {
        println!(
            "check: SKIPPED the chroot run: it needs root (run `sudo -E cargo xtask image --check`)"
        );
        return Ok(());
    }
    let chroot = find_in_path("chroot").context("check: `chroot` (coreutils) is not on PATH")?;
    // What a container runtime provides and a bare chroot lacks: the agent points the worker's stdin at /dev/null.
    make_dev_nodes(&rootfs)?;
    let env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let in_image = |args: &[&str]| {
        let mut argv = vec![
            format!("--userspec={}", spec.user),
            rootfs.display().to_string(),
            BINARY.to_owned(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        duct::cmd(&chroot, argv)
            .full_env(env.clone())
            .dir(&rootfs)
            .stdin_null()
    };

    step(
        &format!("chroot (as {}) {BINARY} --help", spec.user),
        || {
            let handle = in_image(&["--help"])
                .stdout_capture()
                .stderr_capture()
                .unchecked()
                .start()?;
            let Some(output) = handle.wait_timeout(Duration::from_secs(30))? else {
                handle.kill()?;
                bail!("--help did not finish in 30 s");
            };
            let stdout = String::from_utf8_lossy(&output.stdout);
            ensure!(
                output.status.success() && stdout.contains("--listen"),
                "--help failed ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            println!("    {} lines of help, exit 0", stdout.lines().count());
            Ok(())
        },
    )?;

    step(
        &format!("chroot (as {}) {BINARY} --listen 127.0.0.1:0", spec.user),
        || {
            let log = scratch.path().join("agent.stderr");
            let reader = Arc::new(
                in_image(&["--listen", "127.0.0.1:0"])
                    .stderr_path(&log)
                    .unchecked()
                    .reader()?,
            );
            let (lines, listening) = mpsc::channel();
            let stdout = Arc::clone(&reader);
            std::thread::spawn(move || {
                for line in io::BufReader::new(&*stdout).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            let outcome = loop {
                match listening.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) => {
                        if let Some(addr) = parse_listening_line(&line) {
                            break Ok(addr.to_string());
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                        if let Some(output) = reader.try_wait()? {
                            break Err(anyhow::anyhow!(
                                "the agent exited ({}) before listening",
                                output.status
                            ));
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        break Err(anyhow::anyhow!(
                            "no `{LISTENING_PREFIX}<addr>` line in 60 s"
                        ));
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break Err(anyhow::anyhow!("the agent closed stdout before listening"));
                    }
                }
            };
            // The agent serves; now make its worker import what needs lib-dynload and its libraries.
            let snippet = outcome.and_then(|addr| {
                println!("    listening on {addr} (Python worker up)");
                run_snippet(axp.as_deref(), &addr).map(|said| (addr, said))
            });
            let stopped = stop(&reader, Duration::from_secs(30));
            let stderr = fs::read_to_string(&log).unwrap_or_default();
            match snippet {
                Ok((_, said)) => {
                    for line in stderr.lines().filter(|l| l.contains("running Python")) {
                        println!("    {line}");
                    }
                    println!("    {said}");
                    println!("    {stopped}");
                    Ok(())
                }
                Err(error) => Err(error.context(format!("agent stderr:\n{stderr}"))),
            }
        },
    )?;
    println!(
        "check: the agent, libpython, the stdlib and the worker run from the image's files alone"
    );
    Ok(())
}

/// What the check runs in the image's Python: the extension modules and the libraries they load, the user, /tmp.
const SNIPPET: &str = "\
import bz2, ctypes, decimal, hashlib, json, lzma, os, pwd, socket, sqlite3, ssl, tempfile, zlib
with tempfile.NamedTemporaryFile(dir='/tmp') as f:
    f.write(b'x')
print('image-stdlib-ok', 'user', pwd.getpwuid(os.getuid()).pw_name, '|', ssl.OPENSSL_VERSION, '| sqlite',
      sqlite3.sqlite_version, '| sha3', hashlib.sha3_256(b'').hexdigest()[:8])
";

/// Sends [`SNIPPET`] to the agent at `addr` with the `axp` client; returns the line it printed.
fn run_snippet(axp: Option<&Path>, addr: &str) -> anyhow::Result<String> {
    let Some(axp) = axp else {
        return Ok(
            "(no `axp` client built: skipped running a snippet; drop --no-build)".to_owned(),
        );
    };
    let handle = cmd!(axp, "call", addr, "--prompt", SNIPPET, "--timeout", "60")
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .start()?;
    let Some(output) = handle.wait_timeout(Duration::from_secs(90))? else {
        handle.kill()?;
        bail!("axp call did not finish in 90 s");
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout
        .lines()
        .find(|line| line.starts_with("image-stdlib-ok"))
    {
        Some(line) if output.status.success() => Ok(format!("ran Python in the image: {line}")),
        _ => bail!(
            "the snippet failed in the image ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// SIGTERM (the agent drains and exits), then SIGKILL after `grace`. Says how it went.
fn stop(reader: &duct::ReaderHandle, grace: Duration) -> String {
    use nix::{sys::signal, unistd::Pid};
    for pid in reader.pids() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match reader.try_wait() {
            Ok(Some(output)) => return format!("stopped by SIGTERM ({})", output.status),
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => return format!("could not wait: {error}"),
        }
    }
    let _ = reader.kill();
    format!("killed after {grace:?} (SIGTERM ignored)")
}

/// Creates `/dev/null`, `/dev/zero`, `/dev/random`, `/dev/urandom` and `/dev/full` in the extracted root, as a
/// container runtime would.
fn make_dev_nodes(rootfs: &Path) -> anyhow::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let dev = rootfs.join("dev");
    fs::create_dir_all(&dev)?;
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o755))?;
    for (name, minor) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, minor),
        )
        .with_context(|| format!("mknod {}", path.display()))?;
        // mknod honours the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    }
    Ok(())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConfigSpec {
        ConfigSpec::new(Path::new("/opt/python"))
    }

    #[test]
    fn the_config_has_the_entrypoint_user_port_env_and_one_diff_id() {
        let config = config_json(&spec(), "sha256:abc", "1970-01-01T00:00:00Z");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], json!([BINARY]));
        assert_eq!(config["config"]["Cmd"], json!(["--listen", "0.0.0.0:8494"]));
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["ExposedPorts"], json!({ "8494/tcp": {} }));
        let env = config["config"]["Env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e.as_str().unwrap().starts_with("PATH=/usr/local/bin:")
                    || e.as_str().unwrap().contains(":/usr/local/bin:"))
        );
        assert!(env.contains(&json!("PYTHONHOME=/opt/python")));
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.licenses"],
            "Apache-2.0"
        );
        assert_eq!(
            config["rootfs"],
            json!({ "type": "layers", "diff_ids": ["sha256:abc"] })
        );
    }

    #[test]
    fn the_docker_manifest_points_into_the_oci_blobs_with_the_familiar_tag() {
        let reference = Reference::parse("python-sandbox-agent:dev").unwrap();
        let config = Blob {
            digest: "sha256:c0".into(),
            size: 1,
        };
        let layer = Blob {
            digest: "sha256:1a".into(),
            size: 2,
        };
        assert_eq!(
            docker_manifest_json(&reference, &config, &layer),
            json!([{
                "Config": "blobs/sha256/c0",
                "RepoTags": ["python-sandbox-agent:dev"],
                "Layers": ["blobs/sha256/1a"],
            }])
        );
        let manifest = Blob::of(&json_bytes(&manifest_json(&spec(), &config, &layer)));
        let index = index_json(&reference, &manifest);
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/python-sandbox-agent:dev"
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "dev"
        );
    }

    #[test]
    fn references_normalise_like_docker() {
        let canonical = |r: &str| Reference::parse(r).unwrap().canonical();
        assert_eq!(canonical("agent"), "docker.io/library/agent:latest");
        assert_eq!(canonical("me/agent:1"), "docker.io/me/agent:1");
        assert_eq!(
            canonical("localhost:5000/agent"),
            "localhost:5000/agent:latest"
        );
        assert_eq!(canonical("ghcr.io/x/agent:v2"), "ghcr.io/x/agent:v2");
        assert!(Reference::parse("Agent:dev").is_err());
        assert!(Reference::parse("agent@sha256:00").is_err());
    }

    #[test]
    fn ldd_output_yields_paths_the_loader_and_missing_names() {
        let parsed = parse_ldd(
            "\tlinux-vdso.so.1 (0x00007ffd)\n\
             \tlibpython3.11.so.1.0 => /opt/py/lib/libpython3.11.so.1.0 (0x00007f00)\n\
             \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)\n\
             \tlibtk8.6.so => not found\n\
             \t/lib64/ld-linux-x86-64.so.2 (0x00007f02)\n",
        );
        assert_eq!(
            parsed.libraries,
            [
                "/opt/py/lib/libpython3.11.so.1.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(parsed.missing, ["libtk8.6.so"]);
    }

    #[test]
    fn the_stdlib_loses_tests_guis_caches_and_installed_packages_only() {
        let keep = |p: &str, dir: bool| keep_stdlib_entry(Path::new(p), dir);
        assert!(keep("json", true));
        assert!(keep("json/__init__.py", false));
        assert!(keep(
            "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            false
        ));
        assert!(keep("site-packages", true));
        assert!(keep("unittest/test", true));
        assert!(!keep("site-packages/numpy", true));
        assert!(!keep("test", true));
        assert!(!keep("tkinter", true));
        assert!(!keep("idlelib", true));
        assert!(!keep("ensurepip", true));
        assert!(!keep("config-3.11-x86_64-linux-gnu", true));
        assert!(!keep("__pycache__", true));
        assert!(!keep("json/__pycache__/decoder.cpython-311.pyc", false));
        assert!(!keep(
            "lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so",
            false
        ));
        assert!(!keep(
            "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
            false
        ));
        assert!(keep(
            "lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
            false
        ));
    }

    #[test]
    fn host_symlinks_on_the_way_are_kept_and_followed() {
        let host = tempfile::tempdir().unwrap();
        let real = host.path().join("usr/lib");
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("libx.so.1.0"), b"elf").unwrap();
        std::os::unix::fs::symlink("libx.so.1.0", real.join("libx.so.1")).unwrap();
        std::os::unix::fs::symlink("usr/lib", host.path().join("lib")).unwrap();

        let mut rootfs = Rootfs::default();
        rootfs
            .host_path(&host.path().join("lib/libx.so.1"))
            .unwrap();
        let base = relative(host.path());
        assert_eq!(
            rootfs.entries[&base.join("lib")],
            Node::Symlink {
                target: "usr/lib".into()
            }
        );
        assert_eq!(
            rootfs.entries[&base.join("usr/lib/libx.so.1")],
            Node::Symlink {
                target: "libx.so.1.0".into()
            }
        );
        assert!(matches!(
            rootfs.entries[&base.join("usr/lib/libx.so.1.0")],
            Node::HostFile { mode: 0o644, .. }
        ));
        assert!(!rootfs.entries.contains_key(&base.join("lib/libx.so.1")));
    }

    fn layer_bytes(rootfs: &Rootfs) -> Vec<u8> {
        let mut out = Vec::new();
        write_layer(rootfs, &mut out, 0).unwrap();
        out
    }

    #[test]
    fn layers_are_sorted_parents_first_and_byte_identical_whatever_the_insertion_order() {
        let files = [
            "/usr/local/bin/agent",
            "/etc/passwd",
            "/usr/lib/libc.so.6",
            "/usr/lib-x/y",
        ];
        let mut forward = Rootfs::default();
        let mut backward = Rootfs::default();
        for (i, path) in files.iter().enumerate() {
            let node = Node::Data {
                data: vec![b'a' + i as u8],
                mode: 0o644,
            };
            forward.put(Path::new(path), node.clone());
        }
        for (i, path) in files.iter().enumerate().rev() {
            let node = Node::Data {
                data: vec![b'a' + i as u8],
                mode: 0o644,
            };
            backward.put(Path::new(path), node);
        }
        let bytes = layer_bytes(&forward);
        assert_eq!(bytes, layer_bytes(&backward));

        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().display().to_string(),
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "usr/",
                "usr/lib/",
                "usr/lib/libc.so.6",
                "usr/lib-x/",
                "usr/lib-x/y",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/agent"
            ]
        );
        assert!(
            entries
                .iter()
                .all(|(_, mtime, uid)| *mtime == 0 && *uid == 0)
        );
    }

    #[test]
    fn long_paths_survive_the_round_trip() {
        let long = format!("/root/{}/module.py", "deep/".repeat(40));
        let mut rootfs = Rootfs::default();
        rootfs.put(
            Path::new(&long),
            Node::Data {
                data: b"x".to_vec(),
                mode: 0o644,
            },
        );
        let bytes = layer_bytes(&rootfs);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let last = archive.entries().unwrap().last().unwrap().unwrap();
        assert_eq!(
            Path::new("/").join(last.path().unwrap()),
            Path::new(&long.replace("//", "/"))
        );
    }
}
