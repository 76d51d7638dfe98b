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
/// KWOK release (simulated nodes and pods); 0.8 supports Kubernetes 1.34.
pub const KWOK_VERSION: &str = "v0.8.0";
/// go-containerregistry release whose `crane` builds and pushes the operator image and serves
/// the local registry (`crane registry serve`).
pub const CRANE_VERSION: &str = "v0.22.1";

/// One of the binaries the local control plane, the image build and the tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kubectl,
    Helm,
    Kwok,
    Crane,
}

impl Binary {
    pub const ALL: [Binary; 8] = [
        Binary::Etcd,
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::KubeScheduler,
        Binary::Kubectl,
        Binary::Helm,
        Binary::Kwok,
        Binary::Crane,
    ];

    /// The commands of `k8s.io/kubernetes`, built together by one `go build`.
    pub const KUBERNETES: [Binary; 4] = [
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::KubeScheduler,
        Binary::Kubectl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::KubeApiserver => "kube-apiserver",
            Binary::KubeControllerManager => "kube-controller-manager",
            Binary::KubeScheduler => "kube-scheduler",
            Binary::Kubectl => "kubectl",
            Binary::Helm => "helm",
            Binary::Kwok => "kwok",
            Binary::Crane => "crane",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Binary::Etcd => ETCD_VERSION,
            Binary::Helm => HELM_VERSION,
            Binary::Kwok => KWOK_VERSION,
            Binary::Crane => CRANE_VERSION,
            _ => KUBERNETES_VERSION,
        }
    }

    /// The cache key: `<name>-<version>`, plus a suffix when the way a binary is built changes,
    /// so a binary built the old way is never mistaken for the new one.
    fn key(self) -> String {
        match self {
            // Built with the ldflags of Helm's Makefile (Kubernetes version, commit, tree state);
            // helms cached before that are plain `helm-<version>` and are not used.
            Binary::Helm => format!("{}-{}-release", self.name(), self.version()),
            _ => format!("{}-{}", self.name(), self.version()),
        }
    }

    /// Where the binary lives: `<cache>/<key>/<name>` (the key is `<name>-<version>` for all but
    /// helm, see [`Binary::key`]).
    pub fn path(self) -> PathBuf {
        cache_dir().join(self.key()).join(self.name())
    }

    pub fn is_built(self) -> bool {
        self.path().is_file() && (self != Binary::Kwok || kwok_stages().is_file())
    }

    /// The path of a built binary, or an error that says how to build it.
    pub fn require(self) -> Result<PathBuf> {
        let path = self.path();
        if !self.is_built() {
            bail!(
                "{} {} is not built (expected at {}); run `cargo xtask control-plane build` \
                 (needs Go; a cold build of every binary takes about 15-20 minutes on 2 cores, \
                 see docs/images-and-pods.md)",
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

/// Builds every binary that is missing, printing a progress line with the elapsed time per step.
/// The `k8s.io/kubernetes` commands share one `go build` (their packages compile once).
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
    let kubernetes: Vec<Binary> = todo
        .iter()
        .copied()
        .filter(|b| Binary::KUBERNETES.contains(b))
        .collect();
    let mut steps: Vec<Vec<Binary>> = vec![];
    if !kubernetes.is_empty() {
        steps.push(kubernetes);
    }
    steps.extend(
        todo.iter()
            .copied()
            .filter(|b| !Binary::KUBERNETES.contains(b))
            .map(|b| vec![b]),
    );
    let total = steps.len();
    let all_started = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        let names: Vec<String> = step
            .iter()
            .map(|b| format!("{} {}", b.name(), b.version()))
            .collect();
        let names = names.join(", ");
        println!(
            "[{}/{total}] building {names} (Go, from the module proxy) ...",
            i + 1
        );
        let started = Instant::now();
        build(step).with_context(|| format!("building {names} failed"))?;
        println!(
            "[{}/{total}] built {names} in {:.0}s (total {:.0}s) -> {}",
            i + 1,
            started.elapsed().as_secs_f64(),
            all_started.elapsed().as_secs_f64(),
            step[0]
                .path()
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new(""))
                .display()
        );
    }
    Ok(())
}

/// Builds one step: one binary, or several `k8s.io/kubernetes` commands in one `go build`.
fn build(step: &[Binary]) -> Result<()> {
    let first = *step.first().context("nothing to build")?;
    let staging = cache_dir()
        .join("src")
        .join(format!(".build-{}", first.key()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let out = |b: Binary| staging.join(b.name());
    match first {
        Binary::Etcd => {
            let module = tool_module("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "")?;
            go_build(
                &module,
                &["go.etcd.io/etcd/server/v3"],
                "-s -w",
                &out(first),
            )?;
        }
        Binary::Helm => {
            let module = tool_module("helm", "helm.sh/helm/v3", HELM_VERSION, "/cmd/helm")?;
            let ldflags = helm_ldflags(&module)?;
            go_build(
                &module,
                &["helm.sh/helm/v3/cmd/helm"],
                &ldflags,
                &out(first),
            )?;
        }
        Binary::Kwok => {
            let module = tool_module("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, "/cmd/kwok")?;
            // kwok's version is a constant of its source (`pkg/consts`): no ldflags to add.
            go_build(
                &module,
                &["sigs.k8s.io/kwok/cmd/kwok"],
                "-s -w",
                &out(first),
            )?;
            write_kwok_stages(&module)?;
        }
        Binary::Crane => {
            let module = tool_module(
                "crane",
                "github.com/google/go-containerregistry",
                CRANE_VERSION,
                "/cmd/crane",
            )?;
            let ldflags = format!(
                "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version={CRANE_VERSION}"
            );
            go_build(
                &module,
                &["github.com/google/go-containerregistry/cmd/crane"],
                &ldflags,
                &out(first),
            )?;
        }
        _ => {
            if let Some(other) = step.iter().find(|b| !Binary::KUBERNETES.contains(b)) {
                bail!("{} is not a k8s.io/kubernetes command", other.name());
            }
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
            let pkgs: Vec<String> = step
                .iter()
                .map(|b| format!("k8s.io/kubernetes/cmd/{}", b.name()))
                .collect();
            let pkgs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
            // With several packages, `-o` names a directory and each command lands in it under
            // its own name.
            let target = if step.len() == 1 {
                out(first)
            } else {
                let mut dir = staging.clone().into_os_string();
                dir.push("/");
                PathBuf::from(dir)
            };
            go_build(&module, &pkgs, &ldflags, &target)?;
        }
    }
    for &b in step {
        let dir = b
            .path()
            .parent()
            .expect("binary path has a parent")
            .to_path_buf();
        fs::create_dir_all(&dir)?;
        fs::rename(out(b), b.path())
            .with_context(|| format!("moving the built {} into {}", b.name(), dir.display()))?;
    }
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// The stages KWOK plays nodes and pods by (kwok >= 0.8 starts only with some): the ones
/// `kwokctl` uses by default, copied from the release's source next to the binary.
pub fn kwok_stages() -> PathBuf {
    Binary::Kwok.path().with_file_name("stages.yaml")
}

/// The release's stage files: node initialisation and heartbeat, pod ready, complete and delete.
const KWOK_STAGES: [&str; 5] = [
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];

fn write_kwok_stages(module: &Path) -> Result<()> {
    let dir = go_output(
        module,
        &["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
    )?;
    let dir = Path::new(dir.trim());
    let mut stages = String::new();
    for file in KWOK_STAGES {
        let text = fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading {file} of sigs.k8s.io/kwok {KWOK_VERSION}"))?;
        stages.push_str("---\n");
        stages.push_str(text.trim_start_matches("---\n"));
        if !stages.ends_with('\n') {
            stages.push('\n');
        }
    }
    let path = kwok_stages();
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    fs::write(&path, stages)?;
    Ok(())
}

/// A module of our own that requires `module@version` and registers `module<cmd>` as a tool, so
/// the build uses exactly the dependency versions the release's go.mod names.
fn tool_module(name: &str, module: &str, version: &str, cmd: &str) -> Result<PathBuf> {
    let dir = go_module(
        &format!("{name}-{version}"),
        name,
        &format!("{module} {version}"),
        &[],
    )?;
    go(&dir, &["get", "-tool", &format!("{module}{cmd}@{version}")])?;
    Ok(dir)
}

/// The ldflags of Helm's Makefile: version, commit and tree state, and the Kubernetes version
/// (`k8sVersionMajor/Minor` of chartutil and lint/rules) taken from the `k8s.io/client-go` the
/// release is built with. Without them `helm template` assumes Kubernetes v1.20.
fn helm_ldflags(module: &Path) -> Result<String> {
    let client_go = go_output(
        module,
        &["list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"],
    )?;
    let (major, minor) = k8s_version_of_client_go(client_go.trim())?;
    let mut flags = vec![
        "-s -w".to_string(),
        format!("-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean".to_string(),
    ];
    // The module proxy may say which commit a release was cut from (`Origin.Hash`); when it
    // does not, `helm version` shows an empty GitCommit rather than a made-up one.
    let info = go_output(
        module,
        &[
            "mod",
            "download",
            "-json",
            &format!("helm.sh/helm/v3@{HELM_VERSION}"),
        ],
    )?;
    if let Some(commit) = json_string_field(&info, "Hash") {
        flags.push(format!(
            "-X helm.sh/helm/v3/internal/version.gitCommit={commit}"
        ));
    }
    for pkg in [
        "helm.sh/helm/v3/pkg/chartutil",
        "helm.sh/helm/v3/pkg/lint/rules",
    ] {
        flags.push(format!("-X {pkg}.k8sVersionMajor={major}"));
        flags.push(format!("-X {pkg}.k8sVersionMinor={minor}"));
    }
    Ok(flags.join(" "))
}

/// `v0.34.3` -> (1, 34): Helm's Makefile derives the Kubernetes version from client-go's.
fn k8s_version_of_client_go(version: &str) -> Result<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("unexpected k8s.io/client-go version {version:?}");
    };
    let major: u32 = major
        .parse()
        .with_context(|| format!("k8s.io/client-go version {version:?}"))?;
    let minor: u32 = minor
        .parse()
        .with_context(|| format!("k8s.io/client-go version {version:?}"))?;
    Ok((major + 1, minor))
}

/// A small Go module of our own that requires `k8s.io/kubernetes` and replaces each staging module
/// (which the kubernetes go.mod points at local paths) by its matching `v0.Y.Z` release.
fn kubernetes_module() -> Result<PathBuf> {
    let v = KUBERNETES_VERSION;
    let dir = cache_dir().join("src").join(format!("kubernetes-{v}"));
    let tools: Vec<String> = Binary::KUBERNETES
        .iter()
        .map(|b| format!("k8s.io/kubernetes/cmd/{}@{v}", b.name()))
        .collect();
    // The marker lists the registered tools: a module prepared for fewer commands is redone.
    let marker = tools.join("\n");
    if dir.join("go.sum").is_file()
        && fs::read_to_string(dir.join(".complete")).is_ok_and(|m| m == marker)
    {
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
    let mut args = vec!["get", "-tool"];
    args.extend(tools.iter().map(String::as_str));
    go(&dir, &args)?;
    fs::write(dir.join(".complete"), marker)?;
    Ok(dir)
}

pub(crate) fn go_module(
    dir_name: &str,
    name: &str,
    require: &str,
    replaces: &[String],
) -> Result<PathBuf> {
    let dir = cache_dir().join("src").join(dir_name);
    fs::create_dir_all(&dir)?;
    write_go_mod(&dir, name, require, replaces)?;
    Ok(dir)
}

pub(crate) fn write_go_mod(
    dir: &Path,
    name: &str,
    require: &str,
    replaces: &[String],
) -> Result<()> {
    let mut gomod =
        format!("module tooljet-operator/control-plane/{name}\n\ngo 1.24.0\n\nrequire {require}\n");
    for r in replaces {
        gomod.push_str(&format!("replace {r}\n"));
    }
    fs::write(dir.join("go.mod"), gomod)?;
    Ok(())
}

pub(crate) fn go_build(module: &Path, pkgs: &[&str], ldflags: &str, out: &Path) -> Result<()> {
    let out = out.to_str().context("non-UTF-8 cache path")?;
    let mut args = vec![
        "build",
        "-p",
        "2",
        "-trimpath",
        "-ldflags",
        ldflags,
        "-o",
        out,
    ];
    args.extend_from_slice(pkgs);
    go(module, &args)
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

pub(crate) fn go(dir: &Path, args: &[&str]) -> Result<()> {
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

pub(crate) fn go_output(dir: &Path, args: &[&str]) -> Result<String> {
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
pub(crate) fn json_string_field(json: &str, field: &str) -> Option<String> {
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
    fn helm_built_as_released_has_a_cache_key_of_its_own() {
        assert!(
            Binary::Helm
                .path()
                .ends_with(format!("helm-{HELM_VERSION}-release/helm"))
        );
        assert!(Binary::KubeScheduler.path().ends_with(format!(
            "kube-scheduler-{KUBERNETES_VERSION}/kube-scheduler"
        )));
    }

    #[test]
    fn helm_derives_the_kubernetes_version_from_client_go() {
        assert_eq!(k8s_version_of_client_go("v0.34.3").unwrap(), (1, 34));
        assert!(k8s_version_of_client_go("latest").is_err());
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
