//! Reproducible layer tarballs: a [`Tree`] written in path order with fixed owners, modes and mtimes.

use std::{
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::rootfs::{Node, Tree};

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` of everything written, and its length.
    pub fn finish(self) -> (W, String, u64) {
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

/// A tar header with everything but the type, mode and size fixed: owner root, no user names, mtime `mtime`.
pub fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(mtime);
    header
}

/// Writes the layer tarball for `tree` in path order (parents before children: the tree holds every parent).
pub fn write_layer(tree: &Tree, out: impl Write, mtime: u64) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for (path, node) in tree.entries() {
        match node {
            Node::Dir { mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
                let mut name = path.as_os_str().to_owned();
                name.push("/");
                tar.append_data(&mut h, Path::new(&name), io::empty())?;
            }
            Node::File { data, mode } => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, mtime);
                tar.append_data(&mut h, path, data.as_slice())
                    .with_context(|| format!("adding {}", path.display()))?;
            }
            Node::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                tar.append_link(&mut h, path, target)
                    .with_context(|| format!("adding the symlink {}", path.display()))?;
            }
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// A layer written to disk: its blob file, digest (also its diff ID: layers are uncompressed) and size.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// Writes `tree` as a layer to `path` (through a temporary file, so a failed run leaves no half layer).
pub fn write_layer_file(tree: &Tree, path: &Path, mtime: u64) -> anyhow::Result<LayerFile> {
    let partial = path.with_extension("partial");
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = Hashing::new(BufWriter::new(file));
    write_layer(tree, &mut writer, mtime)?;
    let (file, digest, size) = writer.finish();
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    fs::rename(&partial, path)?;
    Ok(LayerFile {
        path: path.to_owned(),
        digest,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(byte: u8) -> Node {
        Node::File {
            data: vec![byte],
            mode: 0o644,
        }
    }

    fn layer_bytes(tree: &Tree) -> Vec<u8> {
        let mut out = Vec::new();
        write_layer(tree, &mut out, 0).unwrap();
        out
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes_whatever_the_insertion_order() {
        let files = [
            "/usr/local/bin/agent",
            "/etc/passwd",
            "/usr/lib/libc.so.6",
            "/usr/lib-x/y",
        ];
        let mut forward = Tree::default();
        let mut backward = Tree::default();
        for (i, path) in files.iter().enumerate() {
            forward.put(Path::new(path), file(b'a' + i as u8));
        }
        for (i, path) in files.iter().enumerate().rev() {
            backward.put(Path::new(path), file(b'a' + i as u8));
        }
        backward.put(
            Path::new("/lib"),
            Node::Symlink {
                target: "usr/lib".into(),
            },
        );
        forward.put(
            Path::new("/lib"),
            Node::Symlink {
                target: "usr/lib".into(),
            },
        );
        let bytes = layer_bytes(&forward);
        assert_eq!(bytes, layer_bytes(&backward));

        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u64, u64, u32)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().display().to_string(),
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                    header.mode().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "lib",
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
                .all(|(_, mtime, uid, _)| *mtime == 0 && *uid == 0)
        );
    }

    #[test]
    fn mtimes_come_from_the_caller_and_long_paths_survive() {
        let long = format!("/root/{}/module.py", "deep/".repeat(40));
        let mut tree = Tree::default();
        tree.put(Path::new(&long), file(b'x'));
        let mut bytes = Vec::new();
        write_layer(&tree, &mut bytes, 1_700_000_000).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let last = archive.entries().unwrap().last().unwrap().unwrap();
        assert_eq!(last.header().mtime().unwrap(), 1_700_000_000);
        assert_eq!(
            Path::new("/").join(last.path().unwrap()),
            Path::new(&long.replace("//", "/"))
        );
    }
}
