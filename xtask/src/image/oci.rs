//! An OCI image layout plus a tarball of it that is also a docker-archive (`manifest.json`), the format
//! `docker save` writes since Docker 25: `docker load` (20.10 too), `kind load image-archive` and
//! `ctr images import` all read it.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufWriter, Read as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{
    PORT,
    layer::{LayerFile, header},
};

/// An image reference split for the places that want it in different shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As given, without the tag (`python-sandbox-agent`).
    pub name: String,
    pub tag: String,
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

    /// The last path segment of the name, for file names (`python-sandbox-agent`).
    pub fn file_stem(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or("image")
    }
}

/// The run-time configuration written into an image.
#[derive(Debug, Clone, Default)]
pub struct ConfigSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub exposed_port: Option<u16>,
    pub labels: BTreeMap<String, String>,
}

impl ConfigSpec {
    /// The agent image: [`super::ENV`], the nonroot user, the agent as entrypoint serving on all addresses.
    pub fn agent() -> Self {
        Self {
            entrypoint: vec![super::BINARY.to_owned()],
            cmd: vec!["--listen".to_owned(), format!("0.0.0.0:{PORT}")],
            exposed_port: Some(PORT),
            labels: labels(
                "python-sandbox-agent",
                "Reference AXP agent that runs Python inside an agent-sandbox pod",
            ),
            ..Self::base()
        }
    }

    /// The demo image (`cargo xtask e2e` runs it as a Job, dialling pod IPs like an AX controller): the same
    /// environment and user, the demo as entrypoint and no default arguments (alone it runs the embedded cluster).
    pub fn demo() -> Self {
        Self {
            entrypoint: vec![super::DEMO_BINARY.to_owned()],
            labels: labels(
                "agent-sandbox-demo",
                "The whole-pipeline demo: a scripted AX conversation through the agent-sandbox backend",
            ),
            ..Self::base()
        }
    }

    /// The base image alone (for the Dockerfile's `RUNTIME_BASE`): the same environment and user, no entrypoint.
    pub fn base() -> Self {
        Self {
            env: super::ENV.iter().map(|e| (*e).to_owned()).collect(),
            user: format!("{}:{}", super::NONROOT, super::NONROOT),
            labels: labels(
                "python-sandbox-base",
                "Debian 12 libpython3.11 runtime for python-sandbox-agent",
            ),
            ..Self::default()
        }
    }
}

fn labels(title: &str, description: &str) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", title),
        ("org.opencontainers.image.description", description),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
        (
            "org.opencontainers.image.base.name",
            "debian:bookworm (packages, no base image)",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The OCI image configuration (also what Docker reads): one diff ID per layer, bottom first.
pub fn config_json(spec: &ConfigSpec, diff_ids: &[&str], history: &[&str], created: &str) -> Value {
    let mut config = json!({
        "User": spec.user,
        "Env": spec.env,
        "WorkingDir": super::WORKDIR,
        "Labels": spec.labels,
    });
    if let Some(port) = spec.exposed_port {
        config["ExposedPorts"] = json!({ format!("{port}/tcp"): {} });
    }
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
        config["Cmd"] = json!(spec.cmd);
    }
    json!({
        "created": created,
        "architecture": oci_architecture(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history
            .iter()
            .map(|by| json!({ "created": created, "created_by": by }))
            .collect::<Vec<_>>(),
    })
}

/// The OCI manifest for one config blob and uncompressed layers.
pub fn manifest_json(spec: &ConfigSpec, config: &Blob, layers: &[Blob]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.size,
        },
        "layers": layers.iter().map(|layer| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.size,
        })).collect::<Vec<_>>(),
        "annotations": spec.labels,
    })
}

/// The OCI layout's `index.json`, naming the image the way containerd's importer and Docker 25+ read it.
pub fn index_json(reference: &Reference, manifest: &Blob) -> Value {
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
pub fn docker_manifest_json(reference: &Reference, config: &Blob, layers: &[Blob]) -> Value {
    json!([{
        "Config": config.path(),
        "RepoTags": [reference.familiar()],
        "Layers": layers.iter().map(Blob::path).collect::<Vec<_>>(),
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
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

impl Blob {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
            size: bytes.len() as u64,
        }
    }

    /// Its path inside an OCI layout (`blobs/sha256/<hex>`).
    pub fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialise")
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The docker-archive (also an OCI layout) for `docker load` and `kind load image-archive`.
    pub archive: PathBuf,
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// `sha256:…` of the manifest: the image's digest in a registry or containerd.
    pub manifest_digest: String,
    /// `sha256:…` of the config: the image ID Docker shows.
    pub config_digest: String,
}

/// One layer of an image and the history line that says what made it.
#[derive(Debug, Clone)]
pub struct ImageLayer<'a> {
    pub file: &'a LayerFile,
    pub created_by: &'a str,
}

/// Writes the OCI layout `layout` (replaced) and the combined docker-archive/OCI tarball `archive`.
pub fn write_image(
    layers: &[ImageLayer<'_>],
    spec: &ConfigSpec,
    reference: &Reference,
    layout: &Path,
    archive: &Path,
    mtime: u64,
) -> anyhow::Result<Written> {
    if layout.exists() {
        fs::remove_dir_all(layout)
            .with_context(|| format!("removing the old {}", layout.display()))?;
    }
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let blobs: Vec<Blob> = layers
        .iter()
        .map(|l| Blob {
            digest: l.file.digest.clone(),
            size: l.file.size,
        })
        .collect();
    for (layer, blob) in layers.iter().zip(&blobs) {
        let to = layout.join(blob.path());
        // A hard link where the file system allows: layers are tens of MiB.
        fs::hard_link(&layer.file.path, &to)
            .or_else(|_| fs::copy(&layer.file.path, &to).map(drop))
            .with_context(|| {
                format!(
                    "copying {} into {}",
                    layer.file.path.display(),
                    layout.display()
                )
            })?;
    }

    let created = jiff::Timestamp::from_second(i64::try_from(mtime)?)?.to_string();
    let diff_ids: Vec<&str> = blobs.iter().map(|b| b.digest.as_str()).collect();
    let history: Vec<&str> = layers.iter().map(|l| l.created_by).collect();
    let config_bytes = json_bytes(&config_json(spec, &diff_ids, &history, &created));
    let config = Blob::of(&config_bytes);
    let manifest_bytes = json_bytes(&manifest_json(spec, &config, &blobs));
    let manifest = Blob::of(&manifest_bytes);
    let index_bytes = json_bytes(&index_json(reference, &manifest));
    let docker_bytes = json_bytes(&docker_manifest_json(reference, &config, &blobs));
    let oci_layout = json_bytes(&json!({ "imageLayoutVersion": "1.0.0" }));
    fs::write(layout.join(config.path()), &config_bytes)?;
    fs::write(layout.join(manifest.path()), &manifest_bytes)?;
    fs::write(layout.join("index.json"), &index_bytes)?;
    fs::write(layout.join("oci-layout"), &oci_layout)?;

    // The tarball: the same layout plus `manifest.json`, in sorted order.
    let mut files: BTreeMap<String, ArchiveFile<'_>> = BTreeMap::new();
    files.insert(config.path(), ArchiveFile::Bytes(&config_bytes));
    files.insert(manifest.path(), ArchiveFile::Bytes(&manifest_bytes));
    for blob in &blobs {
        files.insert(blob.path(), ArchiveFile::Path(layout.join(blob.path())));
    }
    files.insert("index.json".into(), ArchiveFile::Bytes(&index_bytes));
    files.insert("manifest.json".into(), ArchiveFile::Bytes(&docker_bytes));
    files.insert("oci-layout".into(), ArchiveFile::Bytes(&oci_layout));
    let partial = archive.with_extension("partial");
    let mut tar = tar::Builder::new(BufWriter::new(
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    ));
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
        tar.append_data(&mut h, dir, io::empty())?;
    }
    for (name, file) in &files {
        match file {
            ArchiveFile::Bytes(bytes) => {
                let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, mtime);
                tar.append_data(&mut h, name, *bytes)?;
            }
            ArchiveFile::Path(path) => {
                let file = fs::File::open(path)?;
                let size = file.metadata()?.len();
                let mut h = header(tar::EntryType::Regular, 0o644, size, mtime);
                tar.append_data(&mut h, name, file.take(size))?;
            }
        }
    }
    tar.into_inner()?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    fs::rename(&partial, archive)?;

    Ok(Written {
        archive: archive.to_owned(),
        layout: layout.to_owned(),
        manifest_digest: manifest.digest,
        config_digest: config.digest,
    })
}

enum ArchiveFile<'a> {
    Bytes(&'a [u8]),
    Path(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_config_has_the_entrypoint_user_port_env_and_both_diff_ids() {
        let config = config_json(
            &ConfigSpec::agent(),
            &["sha256:base", "sha256:agent"],
            &["base", "agent"],
            "1970-01-01T00:00:00Z",
        );
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!([super::super::BINARY])
        );
        assert_eq!(config["config"]["Cmd"], json!(["--listen", "0.0.0.0:8494"]));
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["WorkingDir"], "/tmp");
        assert_eq!(config["config"]["ExposedPorts"], json!({ "8494/tcp": {} }));
        let env = config["config"]["Env"].as_array().unwrap();
        assert!(env.contains(&json!("HOME=/tmp")));
        assert!(env.contains(&json!("PYTHONDONTWRITEBYTECODE=1")));
        assert!(
            !env.iter()
                .any(|e| e.as_str().unwrap().starts_with("PYTHONHOME="))
        );
        assert_eq!(
            config["rootfs"],
            json!({ "type": "layers", "diff_ids": ["sha256:base", "sha256:agent"] })
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 2);

        let demo = config_json(&ConfigSpec::demo(), &["sha256:base"], &["base"], "x");
        assert_eq!(demo["config"]["Entrypoint"], json!(["/usr/local/bin/demo"]));
        assert_eq!(demo["config"]["Cmd"], json!([]));
        assert_eq!(demo["config"]["User"], "65532:65532");
        assert_eq!(demo["config"]["WorkingDir"], "/tmp");
        assert!(demo["config"].get("ExposedPorts").is_none());

        let base = config_json(&ConfigSpec::base(), &["sha256:base"], &["base"], "x");
        assert!(base["config"].get("Entrypoint").is_none());
        assert!(base["config"].get("ExposedPorts").is_none());
        assert_eq!(base["config"]["User"], "65532:65532");
    }

    #[test]
    fn the_docker_manifest_points_into_the_oci_blobs_with_the_familiar_tag() {
        let reference = Reference::parse("python-sandbox-agent:dev").unwrap();
        let config = Blob {
            digest: "sha256:c0".into(),
            size: 1,
        };
        let layers = [
            Blob {
                digest: "sha256:1a".into(),
                size: 2,
            },
            Blob {
                digest: "sha256:2b".into(),
                size: 3,
            },
        ];
        assert_eq!(
            docker_manifest_json(&reference, &config, &layers),
            json!([{
                "Config": "blobs/sha256/c0",
                "RepoTags": ["python-sandbox-agent:dev"],
                "Layers": ["blobs/sha256/1a", "blobs/sha256/2b"],
            }])
        );
        let manifest = manifest_json(&ConfigSpec::agent(), &config, &layers);
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
        let index = index_json(&reference, &Blob::of(&json_bytes(&manifest)));
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
}
