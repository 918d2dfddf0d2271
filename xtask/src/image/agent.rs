//! The image's binaries (the agent, and the demo for `cargo xtask e2e`), built against the base tree's libpython
//! rather than the build machine's Python. Both share one target directory and one pyo3 config, so the demo's
//! build reuses every dependency the agent's compiled the same way (pyo3 first of all). The demo depends on pyo3
//! through python-sandbox-agent, so pyo3's build script needs the config for it too; but it calls no Python, and
//! the linker's `--as-needed` (rustc's default) leaves libpython out of its NEEDED list.
//!
//! pyo3 reads a `PYO3_CONFIG_FILE` written here instead of asking an interpreter. The file names no `lib_dir`:
//! `crates/python-sandbox-agent/build.rs` calls `pyo3_build_config::add_libpython_rpath_link_args`, which turns
//! `lib_dir` into `-Wl,-rpath,<lib_dir>` (right for a pyenv build on the host, wrong in an image). The link search
//! path comes instead through an `extra_build_script_line` that pyo3-ffi's build script prints, and points at a
//! directory holding just a `libpython3.11.so` symlink (the rootfs, like any runtime-only system, has only
//! `libpython3.11.so.1.0`). The binary records the soname, so at run time the loader finds it in the image's
//! default library directory (or, on python:3.11-slim, in `/usr/local/lib` through ld.so.cache).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use duct::cmd;

use super::rootfs::Tree;

/// The Python the image carries (Debian 12's), as pyo3 names it.
const PYTHON_VERSION: &str = "3.11";
/// The soname the agent must record; the file `libpython3.11` ships.
pub const LIBPYTHON_SONAME: &str = "libpython3.11.so.1.0";
/// Where Debian puts shared libraries, inside the tree.
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// A binary of the workspace that goes into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    pub package: &'static str,
    pub bin: &'static str,
    /// Whether the binary must record [`LIBPYTHON_SONAME`]: the agent embeds Python, and a binary that does not
    /// need libpython then was linked wrong.
    pub embeds_python: bool,
}

/// The reference agent.
pub const AGENT: Binary = Binary {
    package: "python-sandbox-agent",
    bin: "python-sandbox-agent",
    embeds_python: true,
};
/// The whole-pipeline demo (`tests/src/bin/demo.rs`). The pipeline crate depends on python-sandbox-agent (for the
/// embedded cluster's local agent processes), hence pyo3, but the demo runs no Python itself (see the module docs).
pub const DEMO: Binary = Binary {
    package: "pipeline",
    bin: "demo",
    embeds_python: false,
};

/// The paths the build uses, all under `<target>/image/`.
#[derive(Debug, Clone)]
pub struct BuildPaths {
    /// The base tree written to disk.
    pub rootfs: PathBuf,
    /// The pyo3 config file and the `libpython3.11.so` link.
    pub pyo3: PathBuf,
    /// A target directory of its own: the workspace's `target/release` keeps its host-Python pyo3 build.
    pub cargo_target: PathBuf,
}

impl BuildPaths {
    pub fn under(out_dir: &Path) -> Self {
        Self {
            rootfs: out_dir.join("rootfs"),
            pyo3: out_dir.join("pyo3"),
            cargo_target: out_dir.join("cargo"),
        }
    }

    pub fn binary(&self, binary: Binary) -> PathBuf {
        self.cargo_target.join("release").join(binary.bin)
    }

    fn config_file(&self) -> PathBuf {
        self.pyo3.join("pyo3-config.txt")
    }
}

/// The pyo3 config for the rootfs's libpython (see the module docs for why there is no `lib_dir`).
pub fn pyo3_config(link_dir: &Path) -> String {
    format!(
        "implementation=CPython\nversion={PYTHON_VERSION}\nshared=true\nlib_name=python{PYTHON_VERSION}\n\
         pointer_width=64\nextra_build_script_line=cargo:rustc-link-search=native={}\n",
        link_dir.display()
    )
}

/// Writes `data` unless the file already holds it: pyo3 reruns its build script (and cargo rebuilds pyo3 and
/// the agent) whenever the config file's mtime changes.
fn write_if_changed(path: &Path, data: &str) -> anyhow::Result<()> {
    if fs::read_to_string(path).ok().as_deref() != Some(data) {
        fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--remap-path-prefix` flags for the checkout, cargo's home and the target dir, in cargo's
/// encoded form (separated by 0x1f).
fn remapped_paths(root: &Path, target: &Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    // rustc applies the last mapping that matches: the target dir (inside the checkout by
    // default) comes after the checkout.
    let mut maps = vec![(root.to_path_buf(), "/src")];
    if let Some(home) = cargo_home {
        maps.push((home, "/cargo"));
    }
    maps.push((target.to_path_buf(), "/target"));
    maps.iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Prepares the pyo3 config and link directory, then `cargo build --release --locked -p <package> --bin <bin>`.
pub fn build(root: &Path, paths: &BuildPaths, binary: Binary) -> anyhow::Result<()> {
    let libpython = paths.rootfs.join(LIB_DIR).join(LIBPYTHON_SONAME);
    ensure!(
        libpython.is_file(),
        "{} is missing: the base tree has no libpython",
        libpython.display()
    );
    fs::create_dir_all(&paths.pyo3)?;
    let link = paths.pyo3.join(format!("libpython{PYTHON_VERSION}.so"));
    if fs::read_link(&link).ok().as_deref() != Some(libpython.as_path()) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libpython, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    write_if_changed(&paths.config_file(), &pyo3_config(&paths.pyo3))?;
    let rustflags = remapped_paths(root, &paths.cargo_target);
    cmd!(
        "cargo",
        "build",
        "--release",
        "--locked",
        "--package",
        binary.package,
        "--bin",
        binary.bin
    )
    .dir(root)
    .env("CARGO_TARGET_DIR", &paths.cargo_target)
    .env("PYO3_CONFIG_FILE", paths.config_file())
    // The checkout, cargo's home and the target dir appear in the binary's debug info and
    // panic locations; mapped to fixed names, the same sources give the same layer from any
    // checkout. (Encoded flags replace RUSTFLAGS for this build only, and survive spaces.)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    .env_remove("RUSTFLAGS")
    // PYO3_CONFIG_FILE wins over these anyway; removed so nothing suggests the host's Python is involved.
    .env_remove("PYO3_PYTHON")
    .env_remove("PYO3_CROSS_LIB_DIR")
    .run()
    .with_context(|| {
        format!(
            "cargo build --release -p {} --bin {} (against the rootfs's libpython) failed",
            binary.package, binary.bin
        )
    })?;
    Ok(())
}

/// What `readelf` says about the dynamic section and program headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub needed: Vec<String>,
    pub search_paths: Vec<String>,
    pub interpreter: Option<String>,
}

/// Parses `readelf -d -l` output: `(NEEDED) Shared library: [x]`, `(RPATH)`/`(RUNPATH) Library r…path: [a:b]`,
/// `[Requesting program interpreter: /lib64/…]`.
pub fn parse_readelf(output: &str) -> Dynamic {
    let bracketed = |line: &str| {
        let start = line.find('[')? + 1;
        let end = line[start..].find(']')? + start;
        Some(line[start..end].to_owned())
    };
    let mut dynamic = Dynamic::default();
    for line in output.lines() {
        if line.contains("(NEEDED)") {
            dynamic.needed.extend(bracketed(line));
        } else if line.contains("(RPATH)") || line.contains("(RUNPATH)") {
            if let Some(paths) = bracketed(line) {
                dynamic
                    .search_paths
                    .extend(paths.split(':').map(str::to_owned));
            }
        } else if let Some(rest) = line.split_once("Requesting program interpreter:") {
            dynamic.interpreter = Some(rest.1.trim().trim_end_matches(']').to_owned());
        }
    }
    dynamic
}

/// The problems with `dynamic` for a binary that must run from `tree` alone: an interpreter or a needed library
/// the tree lacks, a search path outside it, or no libpython when it `embeds_python`.
pub fn problems(dynamic: &Dynamic, tree: &Tree, embeds_python: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if embeds_python && !dynamic.needed.iter().any(|n| n == LIBPYTHON_SONAME) {
        problems.push(format!("does not need {LIBPYTHON_SONAME}"));
    }
    for name in &dynamic.needed {
        if tree.resolve(&Path::new(LIB_DIR).join(name)).is_none() {
            problems.push(format!("needs {name}, which /{LIB_DIR} lacks"));
        }
    }
    for path in &dynamic.search_paths {
        if !path.starts_with("$ORIGIN") && tree.resolve(Path::new(path)).is_none() {
            problems.push(format!("has an RPATH/RUNPATH {path} outside the image"));
        }
    }
    match &dynamic.interpreter {
        Some(interpreter) if tree.resolve(Path::new(interpreter)).is_some() => {}
        Some(interpreter) => problems.push(format!("wants the loader {interpreter}, absent")),
        None => problems.push("has no program interpreter (not dynamically linked?)".to_owned()),
    }
    problems
}

/// Checks the built binary with `readelf` against the tree it will run from.
pub fn verify(binary: &Path, tree: &Tree, embeds_python: bool) -> anyhow::Result<Dynamic> {
    let out = cmd!("readelf", "-d", "-l", "-W", binary)
        .read()
        .with_context(|| format!("readelf -d -l {} failed (binutils)", binary.display()))?;
    let dynamic = parse_readelf(&out);
    let problems = problems(&dynamic, tree, embeds_python);
    if !problems.is_empty() {
        bail!("{}: {}", binary.display(), problems.join("; "));
    }
    Ok(dynamic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::rootfs::Node;

    const READELF: &str = "\
Program Headers:
  INTERP         0x000318 0x0000000000000318 0x0000000000000318 0x00001c 0x00001c R   0x1
      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]
Dynamic section at offset 0x2d4f0c8 contains 32 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libpython3.11.so.1.0]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000f (RPATH)              Library rpath: [/root/.pyenv/versions/3.11.7/lib]
";

    fn tree() -> Tree {
        let mut tree = Tree::default();
        for name in ["libc.so.6", "ld-linux-x86-64.so.2", LIBPYTHON_SONAME] {
            tree.put(
                &Path::new(LIB_DIR).join(name),
                Node::File {
                    data: vec![],
                    mode: 0o644,
                },
            );
        }
        tree.finish_base();
        tree.put(
            Path::new("usr/lib64/ld-linux-x86-64.so.2"),
            Node::Symlink {
                target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
            },
        );
        tree
    }

    #[test]
    fn readelf_output_gives_needed_search_paths_and_the_interpreter() {
        let dynamic = parse_readelf(READELF);
        assert_eq!(dynamic.needed, ["libpython3.11.so.1.0", "libc.so.6"]);
        assert_eq!(dynamic.search_paths, ["/root/.pyenv/versions/3.11.7/lib"]);
        assert_eq!(
            dynamic.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }

    #[test]
    fn a_host_rpath_or_a_missing_library_is_a_problem_and_a_clean_binary_is_not() {
        let tree = tree();
        let mut dynamic = parse_readelf(READELF);
        assert_eq!(
            problems(&dynamic, &tree, true),
            ["has an RPATH/RUNPATH /root/.pyenv/versions/3.11.7/lib outside the image"]
        );
        dynamic.search_paths.clear();
        assert!(problems(&dynamic, &tree, true).is_empty());
        dynamic.needed = vec!["libc.so.6".into(), "libssl.so.3".into()];
        // The demo (no Python of its own) may leave libpython out, but not a library the image lacks.
        assert_eq!(
            problems(&dynamic, &tree, false),
            [format!("needs libssl.so.3, which /{LIB_DIR} lacks")]
        );
        assert_eq!(
            problems(&dynamic, &tree, true),
            [
                "does not need libpython3.11.so.1.0".to_owned(),
                format!("needs libssl.so.3, which /{LIB_DIR} lacks")
            ]
        );
    }

    #[test]
    fn the_pyo3_config_names_no_lib_dir() {
        let config = pyo3_config(Path::new("/t/image/pyo3"));
        assert!(config.contains("lib_name=python3.11\n"));
        assert!(config.contains("shared=true\n"));
        assert!(!config.contains("lib_dir"));
        assert!(
            config.ends_with(
                "extra_build_script_line=cargo:rustc-link-search=native=/t/image/pyo3\n"
            )
        );
    }
}
