//! The operator's OCI image, built without a container engine: a static operator binary, a base
//! layer made here (nonroot user, /tmp, CA certificates) and `crane` (go-containerregistry) to
//! assemble, label, save and push it. Reproducible: the same commit gives the same digest.
//!
//! [`Registry`] is go-containerregistry's registry (`crane registry serve`) on loopback, used to
//! assemble the image and by tests that push and pull it.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::binaries::Binary;

/// The image's repository name (the chart's default `image.repository`).
pub const REPOSITORY: &str = "tooljet-operator";
/// Where the operator binary lives in the image (as in the Dockerfile).
pub const ENTRYPOINT: &str = "/usr/local/bin/tooljet-operator";
/// The kubectl plugin, whose `dashboard --forward-token` the chart's opt-in dashboard runs.
pub const PLUGIN: &str = "/usr/local/bin/kubectl-tooljet";
/// The user and group the image runs as: distroless' `nonroot`.
pub const USER: &str = "65532:65532";
pub const PLATFORM: &str = "linux/amd64";
/// The CA bundle in the image: the build machine's, from Debian's `ca-certificates`.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The Rust target of the static binary (`+crt-static` on glibc: the musl target is optional).
pub const RUST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The OCI source label's value.
pub const SOURCE: &str = "https://github.com/tooljet/tooljet-operator";

/// A built image: an OCI image layout (a directory `crane push DIR REF` and
/// `skopeo copy oci:DIR docker://REF` take), and its manifest digest.
#[derive(Clone, Debug)]
pub struct Image {
    pub layout: PathBuf,
    /// `sha256:...` of the manifest.
    pub digest: String,
    /// The tag it is saved and pushed under: the package version.
    pub tag: String,
    /// The commit it was built from (`<sha>-dirty` with uncommitted changes, `unknown` outside
    /// a git checkout).
    pub revision: String,
}

/// Builds the image of the workspace at `root` under `out` (the OCI layout `out/oci`); the
/// static binary is compiled in `out/cargo`. Prints a progress line per step.
pub fn build(root: &Path, out: &Path) -> Result<Image> {
    let crane = Binary::Crane.require()?;
    let started = Instant::now();
    let step = |what: &str| println!("[image {:>4.0}s] {what}", started.elapsed().as_secs_f64());
    fs::create_dir_all(out)?;
    let version = package_version(root)?;
    // The commit, marked `-dirty` when the working tree differs from it.
    let revision = match git(root, &["rev-parse", "HEAD"]) {
        Some(commit) if git(root, &["diff", "--quiet", "HEAD", "--"]).is_none() => {
            format!("{commit}-dirty")
        }
        Some(commit) => commit,
        None => "unknown".into(),
    };
    let epoch: i64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(root, &["log", "-1", "--format=%ct"]))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);

    step(
        "building the static operator and dashboard binaries (cargo build --release, +crt-static)",
    );
    let binaries = build_static_binaries(
        root,
        &out.join("cargo"),
        &["tooljet-operator", "kubectl-tooljet"],
    )?;

    step("writing the base and application layers");
    let ca = fs::read(CA_BUNDLE).with_context(|| {
        format!(
            "the image needs a CA bundle and {CA_BUNDLE} is not readable on this machine; \
             install Debian's ca-certificates (`apt-get install ca-certificates`)"
        )
    })?;
    if !String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE") {
        bail!("{CA_BUNDLE} holds no PEM certificate; reinstall ca-certificates");
    }
    let layers = out.join("layers");
    fs::create_dir_all(&layers)?;
    let base = layers.join("base.tar");
    fs::write(&base, base_layer(&ca, epoch))?;
    let app = layers.join("app.tar");
    let read = |p: &PathBuf| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (operator, plugin) = (read(&binaries[0])?, read(&binaries[1])?);
    fs::write(&app, app_layer(&operator, &plugin, epoch))?;

    step("assembling the image with crane (on a loopback registry)");
    let registry = Registry::start(&out.join("registry.log"))?;
    let staged = format!("{}/{REPOSITORY}:build", registry.addr);
    crane_run(
        &crane,
        &[
            "append",
            "--oci-empty-base",
            "-f",
            path_str(&base)?,
            "-f",
            path_str(&app)?,
            "-t",
            &staged,
        ],
    )?;
    let tag = format!("{REPOSITORY}:{version}");
    let final_ref = format!("{}/{tag}", registry.addr);
    let labels = [
        format!("org.opencontainers.image.source={SOURCE}"),
        format!("org.opencontainers.image.version={version}"),
        format!("org.opencontainers.image.revision={revision}"),
        format!("org.opencontainers.image.created={}", rfc3339(epoch)),
        "org.opencontainers.image.title=tooljet-operator".into(),
        "org.opencontainers.image.licenses=Apache-2.0".into(),
    ];
    let mut args = vec![
        "mutate".to_string(),
        staged,
        "--entrypoint".into(),
        ENTRYPOINT.into(),
        "--user".into(),
        USER.into(),
        "--workdir".into(),
        "/".into(),
        "--env".into(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "--env".into(),
        format!("SSL_CERT_FILE={CA_BUNDLE}"),
        "--set-platform".into(),
        PLATFORM.into(),
        "-t".into(),
        final_ref.clone(),
    ];
    for label in &labels {
        args.extend(["-l".into(), label.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = crane_output(&crane, &args)?;
    let digest = pushed
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .with_context(|| format!("crane mutate printed no digest: {pushed:?}"))?;
    let layout = out.join("oci");
    let tmp = out.join("oci.tmp");
    for dir in [&layout, &tmp] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    crane_run(
        &crane,
        &[
            "pull",
            "--format=oci",
            &format!("{final_ref}@{digest}"),
            path_str(&tmp)?,
        ],
    )?;
    drop(registry);
    fs::rename(&tmp, &layout)?;
    let index = fs::read_to_string(layout.join("index.json"))?;
    if !index.contains(&digest) {
        bail!("the OCI layout's index.json does not name {digest}: {index}");
    }
    fs::write(out.join("digest"), format!("{digest}\n"))?;
    step(&format!("built {tag} {digest} -> {}", layout.display()));
    Ok(Image {
        layout,
        digest,
        tag,
        revision,
    })
}

/// Pushes `image` to `repository` (`HOST:PORT/REPO`, tagged with the image's version unless a tag
/// is given); returns `repository@digest` as crane prints it.
pub fn push(image: &Image, repository: &str) -> Result<String> {
    let crane = Binary::Crane.require()?;
    let has_tag = repository
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    let version = image.tag.rsplit(':').next().unwrap_or("latest");
    let dest = if has_tag {
        repository.to_string()
    } else {
        format!("{repository}:{version}")
    };
    let mut args = vec!["push", path_str(&image.layout)?, &dest];
    // Plain HTTP for loopback registries (crane assumes it for localhost and 127.0.0.1 already).
    if dest.starts_with("127.") || dest.starts_with("localhost") || dest.starts_with("[::1]") {
        args.push("--insecure");
    }
    Ok(crane_output(&crane, &args)?.trim().to_string())
}

/// Extracts the flattened root filesystem (`crane export`) of the image at `reference` (e.g. as
/// [`push`] returns it) into `dest`.
pub fn unpack(reference: &str, dest: &Path) -> Result<()> {
    let crane = Binary::Crane.require()?;
    if dest.exists() {
        fs::remove_dir_all(dest)?;
    }
    fs::create_dir_all(dest)?;
    let fs_tar = dest.with_extension("fs.tar");
    crane_run(&crane, &["export", reference, path_str(&fs_tar)?])?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&fs_tar)
        .arg("-C")
        .arg(dest)
        .status()
        .context("running tar")?;
    fs::remove_file(&fs_tar)?;
    if !status.success() {
        bail!(
            "extracting the image's filesystem into {} failed",
            dest.display()
        );
    }
    Ok(())
}

/// go-containerregistry's registry on a free loopback port, in memory (or blobs under a
/// directory), killed on drop and with the thread that started it.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Registry {
    pub fn start(log: &Path) -> Result<Registry> {
        let crane = Binary::Crane.require()?;
        let [port] = crate::cluster::free_ports()?;
        let addr = format!("127.0.0.1:{port}");
        let log_file = fs::File::create(log)?;
        let mut cmd = Command::new(crane);
        cmd.args(["registry", "serve", "--address", &addr])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting `crane registry serve`")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "`crane registry serve` exited ({status}): {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if registry_answers(&addr) {
                return Ok(Registry { child, addr });
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                bail!("the loopback registry did not answer on {addr} within 20s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_answers(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains(" 200")
}

/// `cargo build --release` of the binary `name` (the package of the same name) for
/// [`RUST_TARGET`] with `+crt-static`, with paths remapped so the binary does not depend on
/// where the checkout or the cargo home is. Fails unless the result is static (no ELF
/// interpreter).
fn build_static_binary(root: &Path, target_dir: &Path, name: &str) -> Result<PathBuf> {
    Ok(build_static_binaries(root, target_dir, &[name])?.remove(0))
}

/// Builds the static binaries `names` (each its package's binary of the same name) in one cargo
/// run, so the dependencies they share compile once.
fn build_static_binaries(root: &Path, target_dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let rustflags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/build --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    // The variables cargo sets for what it runs (`cargo xtask`, `cargo test`) are left out, so the
    // build is the same (and reused) whoever asks for it.
    let mut args = vec!["build", "--release", "--locked"];
    for name in names {
        args.extend(["-p", name, "--bin", name]);
    }
    args.extend(["--target", RUST_TARGET]);
    let status = Command::new(&cargo)
        .env_clear()
        .current_dir(root)
        .args(&args)
        .envs(std::env::vars_os().filter(|(k, _)| !is_cargo_set(k)))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("building the static {names:?} binaries failed ({status})");
    }
    names
        .iter()
        .map(|name| {
            let binary = target_dir.join(RUST_TARGET).join("release").join(name);
            let elf = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
            if has_interpreter(&elf)? {
                bail!(
                    "{} is dynamically linked (it has an ELF interpreter); the image has no libc",
                    binary.display()
                );
            }
            Ok(binary)
        })
        .collect()
}

/// The krew platform the plugin archive is built for (the only one this machine builds).
pub const PLUGIN_PLATFORM: (&str, &str) = ("linux", "amd64");

/// A release of the kubectl plugin as krew installs it.
#[derive(Clone, Debug)]
pub struct PluginRelease {
    /// `kubectl-tooljet-linux-amd64.tar.gz`: the static binary, reproducible from a commit.
    pub archive: PathBuf,
    pub sha256: String,
    /// The krew manifest (`kubectl-tooljet/tooljet.yaml` rendered with the archive's address and
    /// digest).
    pub manifest: PathBuf,
}

/// Builds the static `kubectl-tooljet` for linux/amd64 under `out`, packs it as a `.tar.gz` (fixed
/// owners and mtime, `gzip -n`: the same commit gives the same bytes) and renders the krew
/// manifest for an archive published under `base_url`.
pub fn plugin_release(root: &Path, out: &Path, base_url: &str) -> Result<PluginRelease> {
    fs::create_dir_all(out)?;
    let epoch: i64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(root, &["log", "-1", "--format=%ct"]))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let binary = build_static_binary(root, &out.join("cargo"), "kubectl-tooljet")?;
    let exe = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut tar = Tar::new(epoch);
    tar.file("LICENSE", 0o644, b"Apache-2.0\n");
    tar.file("kubectl-tooljet", 0o755, &exe);
    let (os, arch) = PLUGIN_PLATFORM;
    let archive = out.join(format!("kubectl-tooljet-{os}-{arch}.tar.gz"));
    let mut gzip = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let bytes = tar.finish();
    let mut stdin = gzip.stdin.take().expect("piped");
    let writer = thread::spawn(move || stdin.write_all(&bytes));
    let output = gzip.wait_with_output().context("running gzip")?;
    writer.join().expect("the writer thread ends")?;
    if !output.status.success() {
        bail!("gzip failed ({})", output.status);
    }
    fs::write(&archive, &output.stdout)?;
    let sha256 = sha256_hex(&archive)?;
    let template = fs::read_to_string(root.join("kubectl-tooljet/tooljet.yaml"))?;
    let url = format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        archive.file_name().unwrap().to_string_lossy()
    );
    let manifest = out.join("tooljet.yaml");
    fs::write(&manifest, render_krew_manifest(&template, &url, &sha256)?)?;
    Ok(PluginRelease {
        archive,
        sha256,
        manifest,
    })
}

/// The krew manifest template with its archive address and SHA-256 filled in.
pub fn render_krew_manifest(template: &str, url: &str, sha256: &str) -> Result<String> {
    for placeholder in ["{{ARCHIVE_URL}}", "{{ARCHIVE_SHA256}}"] {
        if template.matches(placeholder).count() != 1 {
            bail!("the krew manifest template must hold {placeholder} exactly once");
        }
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{sha256:?} is not a SHA-256 in hex");
    }
    Ok(template
        .replace("{{ARCHIVE_URL}}", url)
        .replace("{{ARCHIVE_SHA256}}", sha256))
}

fn sha256_hex(path: &Path) -> Result<String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    if !output.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Whether `name` is set by cargo for the processes it runs rather than by the user.
fn is_cargo_set(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "RUSTFLAGS" || name == "OUT_DIR"
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(
            elf.get(at..at + 4)
                .context("truncated ELF program header")?
                .try_into()?,
        );
        if p_type == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
";
const GROUP: &str = "root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
";
const NSSWITCH: &str = "passwd: files
group: files
hosts: files dns
";

/// The base layer (what distroless' `nonroot` base gives): users and groups, /tmp, the CA bundle.
fn base_layer(ca: &[u8], mtime: i64) -> Vec<u8> {
    let mut tar = Tar::new(mtime);
    tar.dir("etc/", 0o755, 0);
    tar.file("etc/group", 0o644, GROUP.as_bytes());
    tar.file("etc/nsswitch.conf", 0o644, NSSWITCH.as_bytes());
    tar.file("etc/passwd", 0o644, PASSWD.as_bytes());
    tar.dir("etc/ssl/", 0o755, 0);
    tar.dir("etc/ssl/certs/", 0o755, 0);
    tar.file("etc/ssl/certs/ca-certificates.crt", 0o644, ca);
    tar.dir("home/", 0o755, 0);
    tar.dir("home/nonroot/", 0o700, 65532);
    tar.dir("root/", 0o700, 0);
    tar.dir("tmp/", 0o1777, 0);
    tar.finish()
}

/// The application layer: the operator binary at [`ENTRYPOINT`].
fn app_layer(operator: &[u8], plugin: &[u8], mtime: i64) -> Vec<u8> {
    let mut tar = Tar::new(mtime);
    tar.dir("usr/", 0o755, 0);
    tar.dir("usr/local/", 0o755, 0);
    tar.dir("usr/local/bin/", 0o755, 0);
    // Sorted by name, as every entry of the layer.
    tar.file(PLUGIN.trim_start_matches('/'), 0o755, plugin);
    tar.file(ENTRYPOINT.trim_start_matches('/'), 0o755, operator);
    tar.finish()
}

/// A minimal ustar writer with fixed owners and mtimes, entries in the order written (callers
/// write them sorted, parents first): the same input always gives the same bytes.
struct Tar {
    out: Vec<u8>,
    mtime: i64,
}

impl Tar {
    fn new(mtime: i64) -> Tar {
        Tar {
            out: vec![],
            mtime: mtime.max(0),
        }
    }

    fn dir(&mut self, name: &str, mode: u32, owner: u32) {
        self.entry(name, mode, owner, b'5', &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, 0, b'0', data);
    }

    fn entry(&mut self, name: &str, mode: u32, owner: u32, kind: u8, data: &[u8]) {
        assert!(name.len() < 100, "tar entry name too long: {name}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
            let s = format!("{value:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, u64::from(owner));
        octal(&mut h, 116, 8, u64::from(owner));
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, self.mtime as u64);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let user: &[u8] = if owner == 0 { b"root" } else { b"nonroot" };
        h[265..265 + user.len()].copy_from_slice(user);
        h[297..297 + user.len()].copy_from_slice(user);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

/// The `[package] version` of the workspace's root Cargo.toml.
fn package_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line.strip_prefix("version")
            && let Some(value) = value.trim().strip_prefix('=')
        {
            return Ok(value.trim().trim_matches('"').to_string());
        }
    }
    bail!(
        "no [package] version in {}",
        root.join("Cargo.toml").display()
    )
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `epoch` (seconds, UTC) as RFC 3339 (days to civil date: Howard Hinnant's algorithm).
fn rfc3339(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn crane_run(crane: &Path, args: &[&str]) -> Result<()> {
    crane_output(crane, args).map(|_| ())
}

fn crane_output(crane: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(crane)
        .args(args)
        .stdin(Stdio::null())
        // Loopback registries only: never through a proxy.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .context("running crane")?;
    if !out.status.success() {
        bail!(
            "crane {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_byte_for_byte_reproducible_and_valid_ustar() {
        let a = base_layer(b"-----BEGIN CERTIFICATE-----\n", 1_700_000_000);
        let b = base_layer(b"-----BEGIN CERTIFICATE-----\n", 1_700_000_000);
        assert_eq!(a, b);
        assert_eq!(a.len() % 512, 0);
        // The first header's checksum is what tar computes.
        let h = &a[..512];
        let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        sum -= h[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&h[..4], b"etc/");
    }

    #[test]
    fn recognises_a_dynamic_elf() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built without +crt-static: dynamically linked.
        assert!(has_interpreter(&exe).unwrap());
        assert!(has_interpreter(b"not an elf").is_err());
    }

    #[test]
    fn formats_the_created_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
