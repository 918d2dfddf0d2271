//! The image's filesystem as a sorted in-memory tree: the Debian packages' files (minus what a runtime never
//! reads), merged-`/usr` like a Debian 12 system, plus the few files a container needs (`/etc/passwd`, `/tmp`).

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use duct::cmd;

use super::{NONROOT, debs::Deb};

/// One entry of the image's filesystem. Owners are always root; modes are already normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: PathBuf },
}

/// Image paths relative to `/`, sorted, so a layer's entry order is deterministic and every directory precedes
/// its contents.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Node>,
}

/// How many entries of each kind a tree holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    /// Bytes of file contents.
    pub bytes: u64,
}

/// Top-level directories that Debian 12 merges into `/usr` (the symlinks debootstrap creates on amd64). Packages
/// still ship files under them (`libc6`: `/lib/x86_64-linux-gnu/libc.so.6`, `/lib64/ld-linux-x86-64.so.2`).
const MERGED_USR: &[&str] = &["bin", "sbin", "lib", "lib64"];

/// Package files a runtime never reads, by path prefix (after the `/usr` merge). Dropped to keep the image small.
const DROPPED_PREFIXES: &[&str] = &[
    // Documentation, manual and info pages, translations, Debian packaging metadata.
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    // glibc's iconv modules (~8 MiB): Python's codecs are its own and never go through iconv.
    "usr/lib/x86_64-linux-gnu/gconv",
    // What Debian keeps of CPython's test suite in libpython3.11-stdlib (regrtest and `test.support`).
    "usr/lib/python3.11/test",
];

/// Path components dropped wherever they occur: compiled bytecode (the image is read-only, so Python imports
/// from source and `PYTHONDONTWRITEBYTECODE` keeps it from trying to write caches).
const DROPPED_COMPONENTS: &[&str] = &["__pycache__"];

impl Tree {
    pub fn entries(&self) -> impl Iterator<Item = (&PathBuf, &Node)> {
        self.entries.iter()
    }

    #[cfg(test)]
    pub fn get(&self, path: &Path) -> Option<&Node> {
        self.entries.get(&relative(path))
    }

    /// Follows `path` through the tree's symlinks as the kernel would; `Some` with the tree path of the file or
    /// directory it names, `None` if it names nothing (or loops).
    pub fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let names = |path: &Path| -> Vec<PathBuf> {
            path.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(PathBuf::from(n)),
                    Component::ParentDir => Some(PathBuf::from("..")),
                    _ => None,
                })
                .rev()
                .collect()
        };
        let mut pending = names(path);
        let mut at = PathBuf::new();
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == Path::new("..") {
                at.pop();
                continue;
            }
            let candidate = at.join(&name);
            match self.entries.get(&candidate)? {
                Node::Symlink { target } => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    if target.is_absolute() {
                        at = PathBuf::new();
                    }
                    pending.extend(names(target));
                }
                Node::File { .. } if !pending.is_empty() => return None,
                Node::File { .. } | Node::Dir { .. } => at = candidate,
            }
        }
        Some(at)
    }

    /// Adds a directory and its missing parents (0755), keeping an existing entry's mode.
    pub fn dir(&mut self, path: &Path) {
        let mut at = PathBuf::new();
        for component in relative(path).components() {
            at.push(component);
            self.entries
                .entry(at.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    /// Adds (or replaces) an entry at `path` after its parent directories.
    pub fn put(&mut self, path: &Path, node: Node) {
        let rel = relative(path);
        if let Some(parent) = rel.parent() {
            self.dir(parent);
        }
        self.entries.insert(rel, node);
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for node in self.entries.values() {
            match node {
                Node::Dir { .. } => counts.dirs += 1,
                Node::File { data, .. } => {
                    counts.files += 1;
                    counts.bytes += data.len() as u64;
                }
                Node::Symlink { .. } => counts.symlinks += 1,
            }
        }
        counts
    }

    /// Adds the file-system entries of one package's data tarball (`dpkg-deb --fsys-tarfile`), skipping what
    /// [`keep`] refuses.
    pub fn add_package_tar(&mut self, package: &str, tar_bytes: &[u8]) -> anyhow::Result<()> {
        let mut archive = tar::Archive::new(tar_bytes);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let Some(path) = image_path(&raw) else {
                continue;
            };
            if !keep(&path) {
                continue;
            }
            let kind = entry.header().entry_type();
            let mode = entry.header().mode()?;
            match kind {
                tar::EntryType::Directory => self.dir(&path),
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut data)?;
                    self.put(
                        &path,
                        Node::File {
                            data,
                            mode: normalised_mode(mode),
                        },
                    );
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()?
                        .with_context(|| {
                            format!("{package}: symlink {} has no target", raw.display())
                        })?
                        .into_owned();
                    self.put(&path, Node::Symlink { target });
                }
                // A hard link becomes a copy: layers stay plain and the few bytes do not matter.
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()?
                        .and_then(|t| image_path(&t))
                        .with_context(|| {
                            format!("{package}: hard link {} has no target", raw.display())
                        })?;
                    let node = self.entries.get(&target).cloned().with_context(|| {
                        format!(
                            "{package}: hard link {} to {} before it",
                            raw.display(),
                            target.display()
                        )
                    })?;
                    self.put(&path, node);
                }
                other => bail!(
                    "{package}: {} is a {other:?}, which an image does not need",
                    raw.display()
                ),
            }
        }
        Ok(())
    }

    /// Adds the merged-`/usr` symlinks (`/lib -> usr/lib`, …) and the container's own files.
    pub fn finish_base(&mut self) {
        for dir in MERGED_USR {
            let target = Path::new("usr").join(dir);
            self.dir(&target);
            self.put(Path::new(dir), Node::Symlink { target });
        }
        let text = |data: String| Node::File {
            data: data.into_bytes(),
            mode: 0o644,
        };
        // No shell in the image: nologin names the intent; HOME is /tmp, the only writable place.
        self.put(
            Path::new("etc/passwd"),
            text(format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/tmp:/usr/sbin/nologin\n"
            )),
        );
        self.put(
            Path::new("etc/group"),
            text(format!("root:x:0:\nnonroot:x:{NONROOT}:\n")),
        );
        self.put(
            Path::new("etc/nsswitch.conf"),
            text("passwd: files\ngroup: files\nhosts: files dns\n".to_owned()),
        );
        self.put(Path::new("tmp"), Node::Dir { mode: 0o1777 });
        self.dir(Path::new("root"));
    }

    /// Writes the tree under `dir` (removed first): the build links the agent against these files.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .with_context(|| format!("removing the old {}", dir.display()))?;
        }
        fs::create_dir_all(dir)?;
        for (path, node) in &self.entries {
            let at = dir.join(path);
            match node {
                // Written 0755 whatever the image says: this copy is only read, and /tmp's sticky bit is moot.
                Node::Dir { .. } => fs::create_dir(&at),
                Node::File { data, mode } => fs::write(&at, data)
                    .and_then(|()| fs::set_permissions(&at, fs::Permissions::from_mode(*mode))),
                Node::Symlink { target } => std::os::unix::fs::symlink(target, &at),
            }
            .with_context(|| format!("writing {}", at.display()))?;
        }
        Ok(())
    }
}

/// Extracts every package into one tree, in package-name order (so a file two packages ship resolves the same
/// way every time), then adds the merged-`/usr` links and the container files.
pub fn base_tree(debs: &[Deb]) -> anyhow::Result<Tree> {
    let mut sorted: Vec<&Deb> = debs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tree = Tree::default();
    for deb in sorted {
        let tar = cmd!("dpkg-deb", "--fsys-tarfile", &deb.path)
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("running dpkg-deb --fsys-tarfile {}", deb.path.display()))?;
        ensure!(
            tar.status.success(),
            "dpkg-deb --fsys-tarfile {} failed ({}): {}",
            deb.path.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr).trim()
        );
        tree.add_package_tar(&deb.name, &tar.stdout)
            .with_context(|| format!("extracting {}", deb.path.display()))?;
    }
    tree.finish_base();
    Ok(tree)
}

/// A package path (`./lib/x86_64-linux-gnu/libc.so.6`) as an image path (`usr/lib/x86_64-linux-gnu/libc.so.6`);
/// `None` for the archive root.
fn image_path(raw: &Path) -> Option<PathBuf> {
    let rel = relative(raw);
    let mut components = rel.components();
    let first = components.next()?.as_os_str().to_str()?.to_owned();
    if MERGED_USR.contains(&first.as_str()) {
        Some(Path::new("usr").join(&first).join(components.as_path()))
    } else {
        Some(rel)
    }
}

/// Whether a package path (an image path) belongs in the image.
pub fn keep(path: &Path) -> bool {
    !DROPPED_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
        && !path
            .components()
            .any(|c| DROPPED_COMPONENTS.iter().any(|d| c.as_os_str() == *d))
}

/// 0755 if anyone may execute it, else 0644: no setuid, no group-writable files, whatever the package says.
fn normalised_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// An absolute or `./`-prefixed path as a layer path (`/usr/bin` → `usr/bin`).
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| matches!(component, Component::Normal(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package_tar(entries: &[(&str, tar::EntryType, &str, u32)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, content, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    tar.append_link(&mut h, path, content).unwrap();
                }
                _ => {
                    h.set_size(content.len() as u64);
                    tar.append_data(&mut h, path, content.as_bytes()).unwrap();
                }
            }
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn packages_are_merged_into_usr_filtered_and_normalised() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let bytes = package_tar(&[
            ("./", Directory, "", 0o755),
            ("./lib/x86_64-linux-gnu/libc.so.6", Regular, "elf", 0o755),
            (
                "./lib64/ld-linux-x86-64.so.2",
                Symlink,
                "/lib/x86_64-linux-gnu/ld.so",
                0o777,
            ),
            ("./usr/bin/tool", Regular, "x", 0o4755),
            ("./usr/bin/tool2", Link, "./usr/bin/tool", 0o4755),
            ("./usr/share/doc/libc6/copyright", Regular, "text", 0o644),
            (
                "./usr/lib/python3.11/json/__pycache__/x.pyc",
                Regular,
                "pyc",
                0o644,
            ),
            ("./usr/lib/python3.11/json/decoder.py", Regular, "py", 0o664),
            (
                "./usr/lib/python3.11/test/support/__init__.py",
                Regular,
                "t",
                0o644,
            ),
        ]);
        let mut tree = Tree::default();
        tree.add_package_tar("libc6", &bytes).unwrap();
        tree.finish_base();
        let get = |p: &str| tree.get(Path::new(p)).cloned();
        assert_eq!(
            get("usr/lib/x86_64-linux-gnu/libc.so.6"),
            Some(Node::File {
                data: b"elf".to_vec(),
                mode: 0o755
            })
        );
        assert_eq!(
            get("usr/lib64/ld-linux-x86-64.so.2"),
            Some(Node::Symlink {
                target: "/lib/x86_64-linux-gnu/ld.so".into()
            })
        );
        assert_eq!(
            get("lib64"),
            Some(Node::Symlink {
                target: "usr/lib64".into()
            })
        );
        assert_eq!(
            get("lib"),
            Some(Node::Symlink {
                target: "usr/lib".into()
            })
        );
        assert_eq!(
            get("usr/bin/tool"),
            Some(Node::File {
                data: b"x".to_vec(),
                mode: 0o755
            })
        );
        assert_eq!(get("usr/bin/tool2"), get("usr/bin/tool"));
        assert_eq!(
            get("usr/lib/python3.11/json/decoder.py"),
            Some(Node::File {
                data: b"py".to_vec(),
                mode: 0o644
            })
        );
        assert_eq!(get("usr/share/doc"), None);
        assert_eq!(get("usr/lib/python3.11/json/__pycache__"), None);
        assert_eq!(get("usr/lib/python3.11/test"), None);
        assert_eq!(get("tmp"), Some(Node::Dir { mode: 0o1777 }));
        let Some(Node::File { data, .. }) = get("etc/passwd") else {
            panic!("no /etc/passwd");
        };
        assert!(
            String::from_utf8(data)
                .unwrap()
                .contains("nonroot:x:65532:65532:")
        );
        // Nothing is left under a merged top-level path but the symlink itself.
        assert!(
            tree.entries()
                .all(|(p, _)| !p.starts_with("lib/") || p == Path::new("lib"))
        );
        // The loader's absolute symlink resolves through `/lib -> usr/lib`; dangling links resolve to nothing.
        assert_eq!(
            tree.resolve(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            Some(PathBuf::from("usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(tree.resolve(Path::new("/lib64/ld-linux-x86-64.so.2")), None);
        assert_eq!(
            tree.resolve(Path::new("/usr/bin/../bin/tool")),
            Some(PathBuf::from("usr/bin/tool"))
        );
    }

    #[test]
    fn the_keep_rules_drop_docs_caches_and_tests_only() {
        assert!(keep(Path::new("usr/lib/python3.11/json/decoder.py")));
        assert!(keep(Path::new("usr/lib/python3.11/unittest/case.py")));
        assert!(keep(Path::new("usr/share/doc-base-ish")));
        assert!(keep(Path::new("usr/lib/python3.11/testing.py")));
        assert!(!keep(Path::new("usr/share/doc/libc6")));
        assert!(!keep(Path::new("usr/share/man/man1/x.1.gz")));
        assert!(!keep(Path::new("usr/share/locale/de/LC_MESSAGES/libc.mo")));
        assert!(!keep(Path::new("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so")));
        assert!(!keep(Path::new(
            "usr/lib/python3.11/__pycache__/os.cpython-311.pyc"
        )));
    }
}
