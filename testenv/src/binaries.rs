//! Pinned control-plane binaries, built from the Go module proxy into a cache outside the repo.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The Kubernetes release built for the local control plane. Its minor version must stay within
/// the `k8s-openapi` version feature the operator enables (`v1_34`).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// etcd release; 3.6 is the line Kubernetes 1.34 is tested against.
pub const ETCD_VERSION: &str = "v3.6.16";
/// Helm release; 3.19 is built against the Kubernetes 1.34 client libraries.
pub const HELM_VERSION: &str = "v3.19.5";

/// One of the binaries the local control plane needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    Kubectl,
    Helm,
}

impl Binary {
    pub const ALL: [Binary; 5] = [
        Binary::Etcd,
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::Kubectl,
        Binary::Helm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::KubeApiserver => "kube-apiserver",
            Binary::KubeControllerManager => "kube-controller-manager",
            Binary::Kubectl => "kubectl",
            Binary::Helm => "helm",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Binary::Etcd => ETCD_VERSION,
            Binary::Helm => HELM_VERSION,
            _ => KUBERNETES_VERSION,
        }
    }

    /// Where the binary lives: `<cache>/<name>-<version>/<name>`.
    pub fn path(self) -> PathBuf {
        cache_dir()
            .join(format!("{}-{}", self.name(), self.version()))
            .join(self.name())
    }

    pub fn is_built(self) -> bool {
        self.path().is_file()
    }

    /// The path of a built binary, or an error that says how to build it.
    pub fn require(self) -> Result<PathBuf> {
        let path = self.path();
        if !path.is_file() {
            bail!(
                "{} {} is not built (expected at {}); run `cargo xtask control-plane build` \
                 (needs Go; a cold build takes 10-25 minutes on 2 cores)",
                self.name(),
                self.version(),
                path.display()
            );
        }
        Ok(path)
    }
}

/// `$TOOLJET_OPERATOR_CACHE`, else `$XDG_CACHE_HOME/tooljet-operator`, else `~/.cache/tooljet-operator`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOOLJET_OPERATOR_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("tooljet-operator")
}

/// The binaries that are not in the cache yet.
pub fn missing() -> Vec<Binary> {
    Binary::ALL.into_iter().filter(|b| !b.is_built()).collect()
}

/// Builds every binary that is missing, in dependency-friendly order, printing progress.
pub fn build_missing() -> Result<()> {
    let todo = missing();
    if todo.is_empty() {
        for b in Binary::ALL {
            println!(
                "cached  {} {} at {}",
                b.name(),
                b.version(),
                b.path().display()
            );
        }
        return Ok(());
    }
    let total = todo.len();
    for (i, b) in todo.iter().enumerate() {
        println!(
            "[{}/{total}] building {} {} (Go, from the module proxy) ...",
            i + 1,
            b.name(),
            b.version()
        );
        let started = Instant::now();
        build(*b).with_context(|| format!("building {} {} failed", b.name(), b.version()))?;
        println!(
            "[{}/{total}] built {} in {:.0}s -> {}",
            i + 1,
            b.name(),
            started.elapsed().as_secs_f64(),
            b.path().display()
        );
    }
    Ok(())
}

fn build(binary: Binary) -> Result<()> {
    let out_dir = binary
        .path()
        .parent()
        .expect("binary path has a parent")
        .to_path_buf();
    fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join(format!("{}.tmp", binary.name()));
    match binary {
        Binary::Etcd => {
            let module = go_module(
                &format!("etcd-{ETCD_VERSION}"),
                "etcd",
                &format!("go.etcd.io/etcd/server/v3 {ETCD_VERSION}"),
                &[],
            )?;
            go(
                &module,
                &[
                    "get",
                    "-tool",
                    &format!("go.etcd.io/etcd/server/v3@{ETCD_VERSION}"),
                ],
            )?;
            go_build(&module, "go.etcd.io/etcd/server/v3", "-s -w", &tmp)?;
        }
        Binary::Helm => {
            let module = go_module(
                &format!("helm-{HELM_VERSION}"),
                "helm",
                &format!("helm.sh/helm/v3 {HELM_VERSION}"),
                &[],
            )?;
            go(
                &module,
                &[
                    "get",
                    "-tool",
                    &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"),
                ],
            )?;
            let ldflags =
                format!("-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}");
            go_build(&module, "helm.sh/helm/v3/cmd/helm", &ldflags, &tmp)?;
        }
        _ => {
            let module = kubernetes_module()?;
            let v = KUBERNETES_VERSION;
            let minor = v.split('.').nth(1).expect("version has a minor");
            let ldflags = format!(
                "-s -w -X k8s.io/component-base/version.gitVersion={v} \
                 -X k8s.io/component-base/version.gitMajor=1 \
                 -X k8s.io/component-base/version.gitMinor={minor} \
                 -X k8s.io/component-base/version.gitTreeState=clean \
                 -X k8s.io/client-go/pkg/version.gitVersion={v} \
                 -X k8s.io/client-go/pkg/version.gitMajor=1 \
                 -X k8s.io/client-go/pkg/version.gitMinor={minor}"
            );
            let pkg = format!("k8s.io/kubernetes/cmd/{}", binary.name());
            go_build(&module, &pkg, &ldflags, &tmp)?;
        }
    }
    fs::rename(&tmp, binary.path())?;
    Ok(())
}

/// A small Go module of our own that requires `k8s.io/kubernetes` and replaces each staging module
/// (which the kubernetes go.mod points at local paths) by its matching `v0.Y.Z` release.
fn kubernetes_module() -> Result<PathBuf> {
    let v = KUBERNETES_VERSION;
    let dir = cache_dir().join("src").join(format!("kubernetes-{v}"));
    if dir.join("go.sum").is_file() && dir.join(".complete").is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    // Find the staging modules from the release's own go.mod.
    let out = go_output(
        &dir,
        &[
            "mod",
            "download",
            "-json",
            &format!("k8s.io/kubernetes@{v}"),
        ],
    )?;
    let gomod = json_string_field(&out, "GoMod")
        .context("`go mod download -json k8s.io/kubernetes` printed no GoMod path")?;
    let upstream = fs::read_to_string(&gomod).with_context(|| format!("reading {gomod}"))?;
    let staging_version = format!("v0.{}", v.trim_start_matches("v1."));
    let replaces: Vec<String> = upstream
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("replace").trim();
            let (module, target) = l.split_once("=>")?;
            target
                .trim()
                .starts_with("./staging/")
                .then(|| format!("{} => {} {staging_version}", module.trim(), module.trim()))
        })
        .collect();
    if replaces.is_empty() {
        bail!("found no staging replace directives in {gomod}");
    }
    write_go_mod(
        &dir,
        "kubernetes",
        &format!("k8s.io/kubernetes {v}"),
        &replaces,
    )?;
    let tools: Vec<String> = ["kube-apiserver", "kube-controller-manager", "kubectl"]
        .iter()
        .map(|t| format!("k8s.io/kubernetes/cmd/{t}@{v}"))
        .collect();
    let mut args = vec!["get", "-tool"];
    args.extend(tools.iter().map(String::as_str));
    go(&dir, &args)?;
    fs::write(dir.join(".complete"), "")?;
    Ok(dir)
}

fn go_module(dir_name: &str, name: &str, require: &str, replaces: &[String]) -> Result<PathBuf> {
    let dir = cache_dir().join("src").join(dir_name);
    fs::create_dir_all(&dir)?;
    write_go_mod(&dir, name, require, replaces)?;
    Ok(dir)
}

fn write_go_mod(dir: &Path, name: &str, require: &str, replaces: &[String]) -> Result<()> {
    let mut gomod =
        format!("module tooljet-operator/control-plane/{name}\n\ngo 1.24.0\n\nrequire {require}\n");
    for r in replaces {
        gomod.push_str(&format!("replace {r}\n"));
    }
    fs::write(dir.join("go.mod"), gomod)?;
    Ok(())
}

fn go_build(module: &Path, pkg: &str, ldflags: &str, out: &Path) -> Result<()> {
    let out = out.to_str().context("non-UTF-8 cache path")?;
    go(
        module,
        &[
            "build",
            "-p",
            "2",
            "-trimpath",
            "-ldflags",
            ldflags,
            "-o",
            out,
            pkg,
        ],
    )
}

fn go_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("go");
    cmd.args(args)
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod");
    cmd
}

fn go(dir: &Path, args: &[&str]) -> Result<()> {
    let status = go_command(dir, args).status().with_context(|| {
        "could not run `go`: install Go 1.24 or newer and put it on PATH".to_string()
    })?;
    if !status.success() {
        bail!(
            "`go {}` in {} exited with {status}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}

fn go_output(dir: &Path, args: &[&str]) -> Result<String> {
    let out = go_command(dir, args)
        .output()
        .context("could not run `go`: install Go 1.24 or newer and put it on PATH")?;
    if !out.status.success() {
        bail!(
            "`go {}` in {} exited with {}: {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The value of a top-level `"Field": "value"` in `go ... -json` output (paths only, no escapes).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\": \"");
    let start = json.find(&key)? + key.len();
    let end = json[start..].find('"')? + start;
    Some(json[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_versioned_in_the_cache() {
        let p = Binary::KubeApiserver.path();
        assert!(p.ends_with(format!(
            "kube-apiserver-{KUBERNETES_VERSION}/kube-apiserver"
        )));
        assert!(
            Binary::Etcd
                .path()
                .ends_with(format!("etcd-{ETCD_VERSION}/etcd"))
        );
    }

    #[test]
    fn reads_a_json_field() {
        let json =
            "{\n\t\"Path\": \"k8s.io/kubernetes\",\n\t\"GoMod\": \"/m/cache/v1.34.4.mod\"\n}";
        assert_eq!(
            json_string_field(json, "GoMod").as_deref(),
            Some("/m/cache/v1.34.4.mod")
        );
        assert_eq!(json_string_field(json, "Dir"), None);
    }
}
