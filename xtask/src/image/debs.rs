//! The Debian packages of the base layer: the dependency closure of [`ROOTS`] minus [`EXCLUDED`], resolved with
//! `apt-cache`, fetched with `apt-get download` into a cache (reused as is when every `.deb` is there, so a rebuild
//! needs no network).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use duct::cmd;

/// What the image needs: the Python runtime the agent embeds (`libpython3.11` brings `libpython3.11-stdlib` and
/// `-minimal`, the stdlib and its extension modules' libraries) and the C runtime the agent links (`libc6`,
/// `libgcc-s1`, also in libpython's closure but named because the agent needs them whatever Python needs).
pub const ROOTS: &[&str] = &["libpython3.11", "libc6", "libgcc-s1"];

/// Packages in the closure that a runtime does not need, each with why. The closure is cut at these: what only
/// they depend on is left out too.
pub const EXCLUDED: &[(&str, &str)] = &[
    // libpython3.11-stdlib depends on `media-types | mime-support`; the first alternative is taken, but name
    // these in case apt lists them first: mime-support is an empty transitional package.
    (
        "mime-support",
        "transitional, empty; media-types provides /etc/mime.types",
    ),
    (
        "mailcap",
        "/etc/mailcap for the deprecated `mailcap` module; its scripts need perl",
    ),
    ("perl-base", "only mailcap's and dpkg's scripts run perl"),
    ("perl", "only mailcap's and dpkg's scripts run perl"),
    ("perl-modules-5.36", "perl's"),
    ("libperl5.36", "perl's"),
    (
        "readline-common",
        "/etc/inputrc and info pages for interactive readline; the agent has no terminal",
    ),
    ("dpkg", "nothing is installed at run time"),
    ("install-info", "info pages are dropped"),
    ("tar", "dpkg's"),
    ("debconf", "package configuration, install time only"),
    ("gcc-12-base", "holds only /usr/share/doc, which is dropped"),
];

/// One resolved, downloaded package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
}

/// `apt-cache depends` output as a graph: package → its dependency groups, each a list of alternatives in apt's
/// order (`Depends: a | b` is one group `[a, b]`).
pub type Graph = BTreeMap<String, Vec<Vec<String>>>;

/// Parses `apt-cache depends --recurse …` output: an unindented line names a package; its indented
/// `Depends:`/`PreDepends:` lines follow, a `|` before the key chaining the line to the next as alternatives.
/// Virtual packages (`<name>`) and the providers apt lists under them (deeper indentation) are kept as names.
pub fn parse_depends(output: &str) -> Graph {
    let mut graph = Graph::new();
    let mut current: Option<String> = None;
    let mut chained = false;
    for line in output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let name = line.trim().to_owned();
            graph.entry(name.clone()).or_default();
            current = Some(name);
            chained = false;
            continue;
        }
        let Some(package) = &current else { continue };
        let trimmed = line.trim_start();
        let (alternative, rest) = match trimmed.strip_prefix('|') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let Some((key, value)) = rest.split_once(':') else {
            // A provider of the virtual package on the line above: not a dependency of its own.
            continue;
        };
        if key != "Depends" && key != "PreDepends" {
            chained = alternative;
            continue;
        }
        let name = value
            .trim()
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let groups = graph.entry(package.clone()).or_default();
        match groups.last_mut() {
            Some(group) if chained => group.push(name),
            _ => groups.push(vec![name]),
        }
        chained = alternative;
    }
    graph
}

/// The packages reachable from `roots`: for each dependency group the first alternative that is not excluded
/// and is a real package (not `<virtual>`); a group whose every alternative is excluded is cut. Sorted by name.
pub fn closure(
    graph: &Graph,
    roots: &[&str],
    excluded: &[&str],
) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
    while let Some(package) = pending.pop() {
        if excluded.contains(&package.as_str()) || !seen.insert(package.clone()) {
            continue;
        }
        let groups = graph
            .get(&package)
            .with_context(|| format!("apt-cache depends says nothing about {package}"))?;
        for group in groups {
            let allowed: Vec<&String> = group
                .iter()
                .filter(|a| !excluded.contains(&a.as_str()))
                .collect();
            if allowed.is_empty() {
                continue;
            }
            match allowed.into_iter().find(|a| !a.starts_with('<')) {
                Some(chosen) => pending.push(chosen.clone()),
                None => bail!(
                    "{package} depends on {} only: name a provider in debs::ROOTS",
                    group.join(" | ")
                ),
            }
        }
    }
    Ok(seen)
}

/// Parses `apt-cache policy a b …`: each unindented `name:` line, then its `Candidate:` version.
pub fn parse_candidates(output: &str) -> BTreeMap<String, String> {
    let mut candidates = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if !line.starts_with(' ') {
            current = line.trim().strip_suffix(':').map(str::to_owned);
        } else if let (Some(package), Some(version)) =
            (&current, line.trim().strip_prefix("Candidate:"))
        {
            let version = version.trim();
            if version != "(none)" {
                candidates.insert(package.clone(), version.to_owned());
            }
        }
    }
    candidates
}

/// The start of the file name `apt-get download` gives `package` at `version` (an epoch's `:` becomes `%3a`);
/// the architecture (`amd64`, `all`) follows.
pub fn deb_file_prefix(package: &str, version: &str) -> String {
    format!("{package}_{}_", version.replace(':', "%3a"))
}

/// Resolves the closure, downloads what the cache lacks, and returns every package with its `.deb`.
pub fn fetch(cache: &Path) -> anyhow::Result<Vec<Deb>> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let excluded: Vec<&str> = EXCLUDED.iter().map(|(name, _)| *name).collect();
    let depends = cmd(
        "apt-cache",
        [
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ]
        .iter()
        .chain(ROOTS),
    )
    .stderr_capture()
    .read()
    .context("apt-cache depends failed (is this a Debian/Ubuntu host with bookworm sources?)")?;
    let packages = closure(&parse_depends(&depends), ROOTS, &excluded)?;

    let policy = cmd(
        "apt-cache",
        std::iter::once("policy").chain(packages.iter().map(String::as_str)),
    )
    .stderr_capture()
    .read()
    .context("apt-cache policy failed")?;
    let candidates = parse_candidates(&policy);
    let cached: Vec<String> = fs::read_dir(cache)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".deb"))
        .collect();
    let find = |prefix: &str| {
        cached
            .iter()
            .find(|name| name.starts_with(prefix))
            .map(|name| cache.join(name))
    };

    let mut debs = Vec::new();
    let mut missing = Vec::new();
    for package in &packages {
        let version = candidates.get(package).with_context(|| {
            format!("apt-cache policy has no candidate for {package} (run apt-get update)")
        })?;
        match find(&deb_file_prefix(package, version)) {
            Some(path) => debs.push(Deb {
                name: package.clone(),
                version: version.clone(),
                path,
            }),
            None => missing.push(format!("{package}={version}")),
        }
    }
    if !missing.is_empty() {
        println!(
            "    downloading {} packages into {}",
            missing.len(),
            cache.display()
        );
        // As root apt warns that its `_apt` sandbox user cannot write the cache: harmless, and not our business.
        let out = cmd(
            "apt-get",
            std::iter::once("download".to_owned()).chain(missing.iter().cloned()),
        )
        .dir(cache)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .context("running apt-get download")?;
        ensure!(
            out.status.success(),
            "apt-get download {} failed ({}): {}",
            missing.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return fetch_cached(cache, &packages, &candidates);
    }
    Ok(debs)
}

/// After a download: every package must now be in the cache.
fn fetch_cached(
    cache: &Path,
    packages: &BTreeSet<String>,
    candidates: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Deb>> {
    let names: Vec<String> = fs::read_dir(cache)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    packages
        .iter()
        .map(|package| {
            let version = &candidates[package];
            let prefix = deb_file_prefix(package, version);
            let name = names
                .iter()
                .find(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                .with_context(|| {
                    format!(
                        "apt-get download left no {prefix}*.deb in {}",
                        cache.display()
                    )
                })?;
            Ok(Deb {
                name: package.clone(),
                version: version.clone(),
                path: cache.join(name),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPENDS: &str = "\
libpython3.11
  Depends: libpython3.11-stdlib
  Depends: libc6
libpython3.11-stdlib
 |Depends: media-types
  Depends: mime-support
  Depends: libc6
  Depends: libreadline8
  PreDepends: libssl3:any
libc6
  Depends: libgcc-s1
libgcc-s1
  Depends: gcc-12-base
  Depends: libc6
gcc-12-base
media-types
mime-support
  Depends: mailcap
mailcap
  Depends: perl
perl
libreadline8
  Depends: readline-common
  Depends: libc6
readline-common
  Depends: dpkg
dpkg
libssl3
  Depends: <debconf-2.0>
    debconf
  Recommends: ca-certificates
";

    #[test]
    fn depends_output_becomes_groups_of_alternatives() {
        let graph = parse_depends(DEPENDS);
        assert_eq!(
            graph["libpython3.11-stdlib"],
            vec![
                vec!["media-types".to_owned(), "mime-support".to_owned()],
                vec!["libc6".to_owned()],
                vec!["libreadline8".to_owned()],
                vec!["libssl3".to_owned()],
            ]
        );
        assert_eq!(graph["libssl3"], vec![vec!["<debconf-2.0>".to_owned()]]);
        assert!(graph["media-types"].is_empty());
    }

    #[test]
    fn the_closure_takes_first_alternatives_and_stops_at_exclusions() {
        let graph = parse_depends(DEPENDS);
        let excluded = ["gcc-12-base", "readline-common", "<debconf-2.0>"];
        let packages = closure(&graph, &["libpython3.11", "libc6"], &excluded).unwrap();
        assert_eq!(
            packages.into_iter().collect::<Vec<_>>(),
            [
                "libc6",
                "libgcc-s1",
                "libpython3.11",
                "libpython3.11-stdlib",
                "libreadline8",
                "libssl3",
                "media-types"
            ]
        );
        // An excluded first alternative gives way to the next one.
        let excluded = [
            "media-types",
            "mailcap",
            "gcc-12-base",
            "readline-common",
            "<debconf-2.0>",
        ];
        let packages = closure(&graph, &["libpython3.11-stdlib"], &excluded).unwrap();
        assert!(packages.contains("mime-support") && !packages.contains("media-types"));
        // A virtual package with no exclusion is an error that says what to do.
        let error = closure(&graph, &["libssl3"], &[]).unwrap_err();
        assert!(error.to_string().contains("<debconf-2.0>"), "{error}");
    }

    #[test]
    fn the_real_exclusions_leave_what_python_needs() {
        let excluded: Vec<&str> = EXCLUDED.iter().map(|(n, _)| *n).collect();
        let mut graph = parse_depends(DEPENDS);
        // The fixture's libssl3 depends on a virtual package; the real one does not.
        graph.insert("libssl3".into(), vec![]);
        let packages = closure(&graph, ROOTS, &excluded).unwrap();
        for needed in [
            "libpython3.11-stdlib",
            "libc6",
            "libgcc-s1",
            "libssl3",
            "media-types",
            "libreadline8",
        ] {
            assert!(
                packages.contains(needed),
                "{needed} missing from {packages:?}"
            );
        }
        for dropped in [
            "perl",
            "mailcap",
            "dpkg",
            "readline-common",
            "mime-support",
            "gcc-12-base",
        ] {
            assert!(!packages.contains(dropped), "{dropped} in {packages:?}");
        }
    }

    #[test]
    fn policy_output_gives_candidates_and_file_names_encode_epochs() {
        let policy = "\
libc6:
  Installed: 2.36-9+deb12u13
  Candidate: 2.36-9+deb12u14
  Version table:
 *** 2.36-9+deb12u14 500
zlib1g:
  Installed: (none)
  Candidate: 1:1.2.13.dfsg-1
ghost:
  Installed: (none)
  Candidate: (none)
";
        let candidates = parse_candidates(policy);
        assert_eq!(candidates["libc6"], "2.36-9+deb12u14");
        assert_eq!(candidates["zlib1g"], "1:1.2.13.dfsg-1");
        assert!(!candidates.contains_key("ghost"));
        assert_eq!(
            deb_file_prefix("zlib1g", "1:1.2.13.dfsg-1"),
            "zlib1g_1%3a1.2.13.dfsg-1_"
        );
    }
}
