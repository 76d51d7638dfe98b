//! The peers a user would pick instead of the operator, built for the benchmark's side-by-side
//! phase (`cargo xtask bench`), the way the control plane is ([`crate::binaries`]): a small
//! wrapper Go module that requires the peer at a pinned release and copies its `replace`
//! directives, `go build`, cached under [`cache_dir`] keyed by `<name>-<version>`.
//!
//! A set of its own, not in [`crate::Binary::ALL`]: `cargo xtask control-plane build`, the tests
//! and CI never build them (each is a multi-minute build of a 100-200 MB binary).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::binaries::{cache_dir, go, go_build, go_module, go_output, json_string_field};

/// External Secrets Operator. Later releases (v1.x) require their own sub-modules at `v0.0.0`
/// placeholders that only resolve inside their repository; v0.16.2 builds from the module proxy.
pub const EXTERNAL_SECRETS_VERSION: &str = "v0.16.2";
/// Stakater Reloader.
pub const RELOADER_VERSION: &str = "v1.4.22";

/// Reloader v1.4.22 requires `github.com/openshift/api v0.0.0-20260402111718-ad9eb11110b6`, a
/// pseudo-version the module proxy refuses (`403 Forbidden`, "This module version is not
/// available"; the proxy lists only `v3.9.0+incompatible` for that module). Reloader uses only
/// `apps/v1` (DeploymentConfig) from it, through `github.com/openshift/client-go` (whose required
/// pseudo-version the proxy does serve). This is the closest earlier pseudo-version the proxy
/// serves (the one `github.com/openshift/cluster-autoscaler-operator` requires).
pub const RELOADER_OPENSHIFT_API: &str = "v0.0.0-20260318185450-1f2fa3f09f4e";

/// One of the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `github.com/external-secrets/external-secrets`: its `external-secrets` root command runs
    /// the core controllers (no webhook, no cert-controller).
    ExternalSecrets,
    /// `github.com/stakater/Reloader`.
    Reloader,
}

impl Peer {
    pub const ALL: [Peer; 2] = [Peer::ExternalSecrets, Peer::Reloader];

    pub fn name(self) -> &'static str {
        match self {
            Peer::ExternalSecrets => "external-secrets",
            Peer::Reloader => "reloader",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Peer::ExternalSecrets => EXTERNAL_SECRETS_VERSION,
            Peer::Reloader => RELOADER_VERSION,
        }
    }

    pub fn module(self) -> &'static str {
        match self {
            Peer::ExternalSecrets => "github.com/external-secrets/external-secrets",
            Peer::Reloader => "github.com/stakater/Reloader",
        }
    }

    /// Replaces of our own, beyond those copied from the peer's go.mod (see
    /// [`RELOADER_OPENSHIFT_API`]).
    fn extra_replaces(self) -> Vec<String> {
        match self {
            Peer::ExternalSecrets => vec![],
            Peer::Reloader => vec![format!(
                "github.com/openshift/api => github.com/openshift/api {RELOADER_OPENSHIFT_API}"
            )],
        }
    }

    fn key(self) -> String {
        format!("{}-{}", self.name(), self.version())
    }

    /// `<cache>/<name>-<version>/<name>`.
    pub fn path(self) -> PathBuf {
        cache_dir().join(self.key()).join(self.name())
    }

    /// ESO's CRDs (`config/crds/bases` of its module), copied next to the binary when it is
    /// built; `None` for Reloader, which has none.
    pub fn crds_dir(self) -> Option<PathBuf> {
        match self {
            Peer::ExternalSecrets => Some(cache_dir().join(self.key()).join("crds")),
            Peer::Reloader => None,
        }
    }

    pub fn is_built(self) -> bool {
        self.path().is_file()
            && self
                .crds_dir()
                .is_none_or(|d| d.join(".complete").is_file())
    }

    /// The path of a built peer, or an error that says how to build it.
    pub fn require(self) -> Result<PathBuf> {
        if !self.is_built() {
            bail!(
                "{} {} is not built (expected at {}); `cargo xtask bench` builds it unless given \
                 --no-peers (needs Go; about 5 minutes per peer on 2 cores)",
                self.name(),
                self.version(),
                self.path().display()
            );
        }
        Ok(self.path())
    }
}

/// The peers that are not in the cache yet.
pub fn missing() -> Vec<Peer> {
    Peer::ALL.into_iter().filter(|p| !p.is_built()).collect()
}

/// Builds every peer that is missing, printing a progress line with the elapsed time per step.
/// Goes on after a failure and returns the peers that could not be built with their errors, so
/// that the benchmark can run the others and say why one is missing.
pub fn build_missing() -> Vec<(Peer, anyhow::Error)> {
    let todo = missing();
    let mut failed = vec![];
    if todo.is_empty() {
        for p in Peer::ALL {
            println!(
                "cached  {} {} at {}",
                p.name(),
                p.version(),
                p.path().display()
            );
        }
        return failed;
    }
    let total = todo.len();
    let all_started = Instant::now();
    for (i, peer) in todo.into_iter().enumerate() {
        let name = format!("{} {}", peer.name(), peer.version());
        println!(
            "[{}/{total}] building peer {name} (Go, from the module proxy) ...",
            i + 1
        );
        let started = Instant::now();
        match build(peer) {
            Ok(()) => println!(
                "[{}/{total}] built peer {name} in {:.0}s (total {:.0}s) -> {}",
                i + 1,
                started.elapsed().as_secs_f64(),
                all_started.elapsed().as_secs_f64(),
                peer.path().display()
            ),
            Err(e) => {
                let e = e.context(format!("building peer {name} failed"));
                println!("[{}/{total}] {e:#}", i + 1);
                failed.push((peer, e));
            }
        }
    }
    failed
}

fn build(peer: Peer) -> Result<()> {
    let staging = cache_dir()
        .join("src")
        .join(format!(".build-{}", peer.key()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let (module, version) = (peer.module(), peer.version());
    // The peer's own go.mod, for its replace directives.
    let dir = cache_dir().join("src").join(format!("peer-{}", peer.key()));
    fs::create_dir_all(&dir)?;
    let info = go_output(
        &dir,
        &["mod", "download", "-json", &format!("{module}@{version}")],
    )?;
    let gomod = json_string_field(&info, "GoMod")
        .with_context(|| format!("`go mod download -json {module}` printed no GoMod path"))?;
    let upstream = fs::read_to_string(&gomod).with_context(|| format!("reading {gomod}"))?;
    let mut replaces = replace_directives(&upstream);
    replaces.extend(peer.extra_replaces());
    let dir = go_module(
        &format!("peer-{}", peer.key()),
        &format!("peer-{}", peer.name()),
        &format!("{module} {version}"),
        &replaces,
    )?;
    go(&dir, &["get", "-tool", &format!("{module}@{version}")])?;
    let out = staging.join(peer.name());
    go_build(&dir, &[module], "-s -w", &out)?;
    let target = cache_dir().join(peer.key());
    fs::create_dir_all(&target)?;
    if let Some(crds) = peer.crds_dir() {
        let src = go_output(&dir, &["list", "-m", "-f", "{{.Dir}}", module])?;
        copy_crds(&Path::new(src.trim()).join("config/crds/bases"), &crds)?;
    }
    fs::rename(&out, peer.path())
        .with_context(|| format!("moving the built {} into {}", peer.name(), target.display()))?;
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// Copies the CRD manifests (`*.yaml` but the kustomization) and marks the copy complete.
fn copy_crds(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    fs::create_dir_all(to)?;
    let mut n = 0;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            fs::copy(&path, to.join(&*name))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("no CRDs in {}", from.display());
    }
    fs::write(to.join(".complete"), n.to_string())?;
    Ok(())
}

/// The `replace` directives of a go.mod (one-line and block forms) as `old => new version`,
/// leaving out those that point at a local directory (they only resolve in the peer's repository).
fn replace_directives(gomod: &str) -> Vec<String> {
    let mut out = vec![];
    let mut in_block = false;
    for line in gomod.lines() {
        let line = line.split("//").next().unwrap_or_default().trim();
        let directive = if in_block {
            if line == ")" {
                in_block = false;
                continue;
            }
            line
        } else if let Some(rest) = line.strip_prefix("replace") {
            let rest = rest.trim();
            if rest == "(" {
                in_block = true;
                continue;
            }
            rest
        } else {
            continue;
        };
        if let Some((_, target)) = directive.split_once("=>") {
            let target = target.trim();
            if !(target.starts_with("./") || target.starts_with("../") || target.starts_with('/')) {
                out.push(directive.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_versioned_in_the_cache_apart_from_the_control_plane() {
        assert!(Peer::ExternalSecrets.path().ends_with(format!(
            "external-secrets-{EXTERNAL_SECRETS_VERSION}/external-secrets"
        )));
        assert!(
            Peer::Reloader
                .path()
                .ends_with(format!("reloader-{RELOADER_VERSION}/reloader"))
        );
        for p in Peer::ALL {
            assert!(!crate::Binary::ALL.iter().any(|b| b.name() == p.name()));
        }
    }

    #[test]
    fn copies_replace_directives_but_local_ones() {
        let gomod = "module x\n\nreplace github.com/a/b/v3 => github.com/c/b/v3 v3.3.0\n\
                     require (\n\tk8s.io/api v0.35.3\n)\n\
                     // Replacements\nreplace (\n\tk8s.io/api v0.0.0 => k8s.io/api v0.35.3 // pinned\n\
                     \tk8s.io/local => ./staging/local\n)\n";
        assert_eq!(
            replace_directives(gomod),
            vec![
                "github.com/a/b/v3 => github.com/c/b/v3 v3.3.0".to_string(),
                "k8s.io/api v0.0.0 => k8s.io/api v0.35.3".to_string(),
            ]
        );
    }
}
