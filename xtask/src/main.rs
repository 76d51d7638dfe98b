//! `cargo xtask`: the project's developer tasks.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use testenv::{Binary, ControlPlane, Mode, Options, cluster, local_dir};

#[derive(Parser)]
#[command(about = "Developer tasks for tooljet-operator")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build, start, stop or inspect the local Kubernetes control plane.
    ControlPlane {
        #[command(subcommand)]
        action: ControlPlaneAction,
    },
    /// The main job: control plane + CRDs + operator + examples, then `kubectl get tooljet -A`.
    Up {
        /// Run the operator in the background (log in the control plane's logs/ directory)
        /// instead of in the foreground until Ctrl-C.
        #[arg(long)]
        detach: bool,
        /// Leave out kube-scheduler and KWOK's simulated nodes (no pods).
        #[arg(long)]
        no_pods: bool,
    },
    /// Build the operator's OCI image without a container engine (static binary, base layer made
    /// here, crane): target/image/tooljet-operator.tar, reproducible from a commit.
    Image {
        /// Also push it to this registry repository (`HOST:PORT/REPO`, optionally `:TAG`; the
        /// package version is the default tag).
        #[arg(long, value_name = "HOST:PORT/REPO")]
        push: Option<String>,
        /// Where to write the image and build files.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The kubectl plugin for krew: a static linux/amd64 `kubectl-tooljet` in a reproducible
    /// `.tar.gz` and the krew manifest for it, under target/plugin.
    PluginRelease {
        /// Where the archive will be published (the manifest's `uri` is this plus its file name).
        #[arg(long, value_name = "URL")]
        base_url: String,
    },
    /// The fault suite's long forms (`tests/faults.rs` with TOOLJET_FAULTS_LONG=1): more apps,
    /// more kill rounds, 300 maximum-size versions. The short forms run in `cargo xtask test`.
    Faults {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The test command: binaries present, fmt, clippy, then every test of the workspace.
    Test {
        /// Extra arguments passed to `cargo test` (after `--workspace`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate the CRD YAML under crds/ (and the chart's copies) from the Rust types.
    Crdgen,
    /// Lint the Helm chart (strict) and render it with default and non-default values.
    Chart,
    /// Benchmarks against a fresh local control plane; prints a table and writes
    /// target/bench/results.json; a run at the reference sizes (`--large 5000`, the other
    /// defaults) also rewrites the results section of docs/benchmarks.md.
    Bench {
        /// Arguments for the benchmark (e.g. `--large 5000`, or a quick `--apps 50 --small 20
        /// --changes 30 --admission 30 --promotions 30 --idle-seconds 10`; `--no-peers` leaves
        /// out the peers, External Secrets Operator and Reloader, and their build).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ControlPlaneAction {
    /// Build the pinned binaries that are missing from the cache.
    Build,
    /// Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK's simulated
    /// nodes on loopback (detached).
    Start {
        /// Leave out kube-scheduler and KWOK's simulated nodes (no pods).
        #[arg(long)]
        no_pods: bool,
    },
    /// Stop the detached control plane (and an operator started by `up --detach`).
    Stop,
    /// Print the shell exports that point kubectl and helm at the local control plane.
    Env,
    /// Say whether the control plane is running and where its files are.
    Status,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::ControlPlane { action } => match action {
            ControlPlaneAction::Build => testenv::binaries::build_missing(),
            ControlPlaneAction::Start { no_pods } => start(pods(no_pods)).map(|_| ()),
            ControlPlaneAction::Stop => stop(),
            ControlPlaneAction::Env => {
                print!("{}", env_exports());
                Ok(())
            }
            ControlPlaneAction::Status => status(),
        },
        Task::Up { detach, no_pods } => up(detach, pods(no_pods)),
        Task::Image { push, out } => image(push.as_deref(), out),
        Task::PluginRelease { base_url } => plugin_release(&base_url),
        Task::Faults { args } => faults(&args),
        Task::Test { args } => test(&args),
        Task::Crdgen => crdgen(),
        Task::Chart => chart(),
        Task::Bench { args } => bench(&args),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn kubeconfig() -> PathBuf {
    local_dir().join("kubeconfig")
}

/// Where `cargo xtask up` links the `kubectl-tooljet` plugin (on the PATH the exports print).
fn plugin_dir() -> PathBuf {
    local_dir().join("bin")
}

fn env_exports() -> String {
    let dirs: Vec<String> = [Binary::Kubectl, Binary::Helm]
        .iter()
        .map(|b| b.path().parent().unwrap().to_path_buf())
        .chain([plugin_dir()])
        .map(|d| d.display().to_string())
        .collect();
    format!(
        "export KUBECONFIG={}\nexport PATH={}:$PATH\n",
        kubeconfig().display(),
        dirs.join(":")
    )
}

fn pods(no_pods: bool) -> Options {
    Options { pods: !no_pods }
}

/// Starts the detached control plane; returns false when it was already running.
fn start(options: Options) -> Result<bool> {
    let dir = local_dir();
    let running = cluster::running_pids(&dir);
    if !running.is_empty() {
        println!(
            "The local control plane is already running (pids {running:?}); KUBECONFIG={}.\n\
             Stop it with `cargo xtask control-plane stop`.",
            kubeconfig().display()
        );
        return Ok(false);
    }
    let missing = testenv::binaries::missing();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|b| b.name()).collect();
        println!(
            "Missing binaries ({}); building them first.",
            names.join(", ")
        );
        testenv::binaries::build_missing()?;
    }
    let started = Instant::now();
    let cp = ControlPlane::start_with(&dir, Mode::Detached, options)?;
    let pods = if options.pods {
        format!(
            ", kube-scheduler, KWOK with {} simulated nodes",
            testenv::cluster::SIMULATED_NODES
        )
    } else {
        String::new()
    };
    println!(
        "Control plane ready at {} in {:.1}s (etcd, kube-apiserver {}, kube-controller-manager{pods}).\n\
         Logs: {}\nPoint your shell at it:\n{}",
        cp.server,
        started.elapsed().as_secs_f64(),
        testenv::KUBERNETES_VERSION,
        dir.join("logs").display(),
        env_exports()
    );
    Ok(true)
}

fn stop() -> Result<()> {
    let n = cluster::stop(&local_dir())?;
    if n == 0 {
        println!("The local control plane is not running; nothing to stop.");
    } else {
        println!("Stopped {n} processes of the local control plane.");
    }
    Ok(())
}

fn status() -> Result<()> {
    let pids = cluster::running_pids(&local_dir());
    if pids.is_empty() {
        println!("not running (start it with `cargo xtask control-plane start`)");
    } else {
        println!("running, pids {pids:?}\n{}", env_exports());
    }
    for b in Binary::ALL {
        let state = if b.is_built() { "built" } else { "missing" };
        println!(
            "{state:8} {} {} ({})",
            b.name(),
            b.version(),
            b.path().display()
        );
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    // The Go tools build (when missing) while cargo checks and compiles: on a cold machine the two
    // overlap instead of adding up (each waits on downloads and single-threaded links at times).
    let go_tools = std::thread::spawn(testenv::binaries::build_missing);
    let browser = std::thread::spawn(ensure_browser);
    let checks = (|| {
        println!("cargo fmt --check");
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
        println!("cargo clippy --all-targets -- -D warnings");
        run_cmd(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })();
    go_tools
        .join()
        .map_err(|_| anyhow::anyhow!("building the Go tools panicked"))??;
    browser
        .join()
        .map_err(|_| anyhow::anyhow!("installing the browser panicked"))??;
    checks?;
    println!(
        "tools, fmt and clippy done in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    println!("helm lint and template (cargo xtask chart)");
    chart()?;
    println!("cargo test --workspace");
    run_cmd(cargo().args(["test", "--workspace"]).args(extra))?;
    println!(
        "all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The dashboard's browser tests drive Debian's Chromium through its WebDriver: installed with
/// apt when missing (as root), or a message that says how.
fn ensure_browser() -> Result<()> {
    let on_path = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if on_path("chromium") && on_path("chromedriver") {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !on_path("apt-get") {
        anyhow::bail!(
            "the dashboard's browser tests need chromium and chromedriver on PATH; on Debian: \
             `sudo apt-get install chromium chromium-driver`"
        );
    }
    println!("installing chromium and chromium-driver (apt-get) for the browser tests");
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn image(push: Option<&str>, out: Option<PathBuf>) -> Result<()> {
    testenv::binaries::build_missing()?;
    let root = root();
    let out = out.unwrap_or_else(|| target_dir().join("image"));
    let image = testenv::image::build(&root, &out)?;
    println!(
        "{} {} (revision {})\n  OCI image layout: {} (`cargo xtask image --push HOST:PORT/REPO`, \
         or `crane push {} REF`)",
        image.tag,
        image.digest,
        image.revision,
        image.layout.display(),
        image.layout.display(),
    );
    if let Some(repository) = push {
        let pushed = testenv::image::push(&image, repository)?;
        println!("pushed {pushed}");
    }
    Ok(())
}

fn faults(filter: &[String]) -> Result<()> {
    testenv::binaries::build_missing()?;
    run_cmd(
        cargo()
            .env("TOOLJET_FAULTS_LONG", "1")
            .args(["test", "-p", "tooljet-operator", "--test", "faults"])
            .args(filter)
            .args(["--", "--nocapture", "--test-threads", "1"]),
    )
}

fn plugin_release(base_url: &str) -> Result<()> {
    let out = target_dir().join("plugin");
    let release = testenv::image::plugin_release(&root(), &out, base_url)?;
    println!(
        "{}\n  sha256 {}\n  krew manifest: {} (install with `kubectl krew install --manifest={} --archive={}`)",
        release.archive.display(),
        release.sha256,
        release.manifest.display(),
        release.manifest.display(),
        release.archive.display(),
    );
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The example ToolJet Deployments' pods, once each Deployment carries its stage's config hash and
/// has rolled out on the simulated nodes.
fn show_example_pods() -> Result<()> {
    const NS: &str = "acme-workspace";
    println!("Waiting for the example ToolJet Deployments' pods (simulated by KWOK) ...");
    for stage in ["development", "staging", "production"] {
        let deployment = format!("tooljet-{stage}");
        wait_for(
            &format!("the operator to stamp {stage}'s config hash on {deployment}"),
            Duration::from_secs(60),
            || {
                kubectl(&[
                    "get",
                    "deployment",
                    &deployment,
                    "--namespace",
                    NS,
                    "-o",
                    "jsonpath={.spec.template.metadata.annotations.tooljet\\.io/config-hash}",
                ])
                .is_ok_and(|hash| !hash.trim().is_empty())
            },
        )?;
        kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--namespace",
            NS,
            "--timeout=120s",
        ])?;
    }
    println!(
        "{}",
        kubectl(&[
            "get",
            "deployments,replicasets,pods",
            "--namespace",
            NS,
            "-o",
            "wide",
        ])?
    );
    println!(
        "A stage's pods restart (a new ReplicaSet) only when its configuration changes, e.g.\n  \
         kubectl -n {NS} patch environmentconfig crm-staging --type json \\\n    \
         -p '[{{\"op\":\"replace\",\"path\":\"/spec/constants/1/value\",\"value\":\"debug\"}}]'\n  \
         kubectl -n {NS} get replicasets -l app.kubernetes.io/name=tooljet"
    );
    Ok(())
}

fn has_simulated_nodes() -> bool {
    kubectl(&["get", "nodes", "-o", "name"]).is_ok_and(|nodes| nodes.contains("node/kwok-node-"))
}

fn crdgen() -> Result<()> {
    let root = root();
    let chart = root.join("charts/tooljet-operator");
    run_cmd(
        cargo()
            .args(["run", "--quiet", "--bin", "crdgen", "--", "--out"])
            .arg(root.join("crds")),
    )?;
    run_cmd(
        cargo()
            .args(["run", "--quiet", "--bin", "crdgen", "--", "--out"])
            .arg(chart.join("crds")),
    )?;
    let policy = cargo()
        .args(["run", "--quiet", "--bin", "crdgen", "--", "policy"])
        .output()?;
    if !policy.status.success() {
        bail!(
            "crdgen policy failed: {}",
            String::from_utf8_lossy(&policy.stderr)
        );
    }
    std::fs::write(chart.join("files/policy.yaml"), policy.stdout)?;
    println!("wrote {}", chart.join("files/policy.yaml").display());
    Ok(())
}

fn bench(extra: &[String]) -> Result<()> {
    testenv::binaries::build_missing()?;
    // The peers (External Secrets Operator, Reloader) are measured unless `--no-peers`; a run
    // that measures nothing (`--from`) or only sizes (`--sizes`) needs none. A peer that cannot
    // be built is reported by the benchmark as not measured, with the reason.
    let measures_peers = !extra
        .iter()
        .any(|a| a == "--no-peers" || a == "--sizes" || a == "--from" || a.starts_with("--from="));
    if measures_peers {
        println!(
            "Building the peers (External Secrets Operator, Reloader; --no-peers skips them) ..."
        );
        for (peer, e) in testenv::peers::build_missing() {
            eprintln!(
                "warning: peer {} {} could not be built; the benchmark reports it as not \
                 measured: {e:#}",
                peer.name(),
                peer.version()
            );
        }
    }
    let root = root();
    println!("Building the operator and the benchmark (release) ...");
    run_cmd(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "tooljet-operator",
        "--bin",
        "tooljet-operator",
    ]))?;
    run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "bench"]))?;
    let target = target_dir();
    // The bench rewrites the Markdown only when its sizes are the reference ones, so a quick run
    // never replaces the published figures.
    run_cmd(
        Command::new(target.join("release").join("bench"))
            .current_dir(&root)
            .arg("--operator")
            .arg(target.join("release").join("tooljet-operator"))
            .arg("--markdown")
            .arg(root.join("docs/benchmarks.md"))
            .args(extra),
    )
}

/// The value sets `cargo xtask chart` renders.
const CHART_VALUE_SETS: &[&[&str]] = &[
    &[],
    &[
        "webhook.certificates.mode=cert-manager",
        "metrics.serviceMonitor.enabled=true",
        "grafanaDashboard.enabled=true",
        "replicaCount=3",
        "logging.format=text",
        "networkPolicy.enabled=true",
        "networkPolicy.webhook.from[0].ipBlock.cidr=10.0.0.0/24",
        "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    ],
    &[
        "webhook.enabled=false",
        "leaderElection.enabled=false",
        "replicaCount=1",
        "admissionPolicy.enabled=false",
        "userRoles.enabled=false",
        // No source at all: the policy admits nothing but the node.
        "networkPolicy.enabled=true",
    ],
    &[
        "webhook.url=https://127.0.0.1:9443",
        "webhook.certificates.mode=cert-manager",
        "webhook.certificates.certManager.issuerRef.name=corp-ca",
        "webhook.certificates.certManager.issuerRef.kind=ClusterIssuer",
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.labels.grafana_dashboard=tooljet",
    ],
];

fn chart() -> Result<()> {
    testenv::binaries::build_missing()?;
    let helm = Binary::Helm.path();
    let chart = root().join("charts/tooljet-operator");
    for (i, set) in CHART_VALUE_SETS.iter().enumerate() {
        // Linted with each value set, so templates that only render with non-default values
        // (e.g. the NetworkPolicy) are linted too.
        let mut lint = Command::new(&helm);
        lint.args([
            "lint",
            "--strict",
            "--kube-version",
            testenv::KUBERNETES_VERSION,
        ])
        .arg(&chart);
        for value in *set {
            lint.args(["--set", value]);
        }
        run_cmd(&mut lint)?;
        let mut cmd = Command::new(&helm);
        cmd.args([
            "template",
            "tooljet-operator",
            "--namespace",
            "tooljet-system",
            "--kube-version",
            testenv::KUBERNETES_VERSION,
        ])
        .arg(&chart);
        for value in *set {
            cmd.args(["--set", value]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "helm template with {set:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rendered = String::from_utf8_lossy(&out.stdout);
        let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        println!("values set {i} {set:?}: {kinds} objects rendered");
    }
    println!("chart OK");
    Ok(())
}

fn kubectl(args: &[&str]) -> Result<String> {
    testenv::kubectl(&kubeconfig(), args)
}

/// Where `cargo xtask up` runs the operator's webhook and health endpoints.
const WEBHOOK_ADDR: &str = "127.0.0.1:9443";
const HEALTH_ADDR: &str = "127.0.0.1:8080";

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn up(detach: bool, options: Options) -> Result<()> {
    if !start(options)? && options.pods && !has_simulated_nodes() {
        bail!(
            "the running control plane has no simulated nodes (started with --no-pods?); \
             `cargo xtask control-plane stop` it, or pass --no-pods"
        );
    }
    let up = Up {
        root: root(),
        local: local_dir(),
    };
    up.install_crds()?;
    up.build_binaries()?;
    ensure_operator_addresses_free()?;
    up.register_admission()?;
    let operator = up.start_operator(detach)?;
    up.apply_examples()?;
    up.import_sales_dashboard()?;
    std::thread::sleep(Duration::from_secs(2));
    println!("{}", kubectl(&["get", "tooljet", "-A"])?);
    if options.pods {
        show_example_pods()?;
    }
    up.hand_over(operator, detach)
}

/// What the phases of `cargo xtask up` share: the repository root and the control plane's local
/// directory.
struct Up {
    root: PathBuf,
    local: PathBuf,
}

impl Up {
    /// A binary of the workspace's debug build.
    fn bin(&self, name: &str) -> PathBuf {
        target_dir().join("debug").join(name)
    }

    fn examples(&self) -> PathBuf {
        self.root.join("examples")
    }

    fn operator_log(&self) -> PathBuf {
        self.local.join("logs").join("operator.log")
    }

    /// The CRDs from crds/, established, and the operator's namespace.
    fn install_crds(&self) -> Result<()> {
        println!("Installing the CRDs from crds/ ...");
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &self.root.join("crds").display().to_string(),
        ])?;
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=tooljet-operator",
        ])?;
        kubectl(&[
            "create",
            "namespace",
            "tooljet-system",
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .and_then(|yaml| {
            let path = self.local.join("namespace.yaml");
            std::fs::write(&path, yaml)?;
            kubectl(&["apply", "-f", &path.display().to_string()])
        })?;
        Ok(())
    }

    /// The operator, `crdgen` and the kubectl plugin, built; the plugin linked where kubectl
    /// finds it.
    fn build_binaries(&self) -> Result<()> {
        println!("Building the operator and the kubectl plugin ...");
        run_cmd(cargo().args([
            "build",
            "--quiet",
            "-p",
            "tooljet-operator",
            "-p",
            "kubectl-tooljet",
            "--bin",
            "tooljet-operator",
            "--bin",
            "crdgen",
            "--bin",
            "kubectl-tooljet",
        ]))?;
        // `kubectl tooljet`: kubectl finds plugins on PATH; the printed exports put this directory
        // there.
        let plugin_dir = plugin_dir();
        std::fs::create_dir_all(&plugin_dir)?;
        let link = plugin_dir.join("kubectl-tooljet");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(self.bin("kubectl-tooljet"), &link)
            .with_context(|| format!("linking {}", link.display()))?;
        Ok(())
    }

    /// The admission webhook (at [`WEBHOOK_ADDR`]), policy and user roles that `crdgen admission`
    /// prints, applied.
    fn register_admission(&self) -> Result<()> {
        println!(
            "Registering the admission webhook (https://{WEBHOOK_ADDR}), policy and user roles ..."
        );
        let admission = Command::new(self.bin("crdgen"))
            .args([
                "admission",
                "--webhook-url",
                &format!("https://{WEBHOOK_ADDR}"),
            ])
            .output()?;
        if !admission.status.success() {
            bail!(
                "crdgen admission failed: {}",
                String::from_utf8_lossy(&admission.stderr)
            );
        }
        let admission_path = self.local.join("admission.yaml");
        std::fs::write(&admission_path, &admission.stdout)?;
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &admission_path.display().to_string(),
        ])?;
        Ok(())
    }

    /// The operator, started (its output in the log file when `detach`), ready, and its webhook's
    /// caBundle published.
    fn start_operator(&self, detach: bool) -> Result<Child> {
        let mut operator = Command::new(self.bin("tooljet-operator"));
        operator
            .args([
                "--namespace",
                "tooljet-system",
                "--webhook-addr",
                WEBHOOK_ADDR,
                "--webhook-host",
                "127.0.0.1",
                "--health-addr",
                HEALTH_ADDR,
            ])
            .env("KUBECONFIG", kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if detach {
            let log = std::fs::File::create(self.operator_log())?;
            operator.stdout(log.try_clone()?).stderr(log);
        }
        let mut child = operator
            .spawn()
            .with_context(|| "starting the operator".to_string())?;
        self.wait_until_serving(&mut child)?;
        Ok(child)
    }

    /// Until the operator is ready (an error if it exits first) and its webhook has a caBundle.
    fn wait_until_serving(&self, child: &mut Child) -> Result<()> {
        wait_for("the operator's /readyz", Duration::from_secs(60), || {
            http_status(HEALTH_ADDR, "/readyz") == Some(200)
                || matches!(child.try_wait(), Ok(Some(_)))
        })?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "the operator exited at start ({status}); see {}",
                self.operator_log().display()
            );
        }
        wait_for("the webhook's caBundle", Duration::from_secs(30), || {
            kubectl(&[
                "get",
                "validatingwebhookconfiguration",
                "tooljet-operator",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .is_ok_and(|ca| !ca.trim().is_empty())
        })
    }

    /// examples/: the namespace, Secrets, app, configurations and policies, then (once the
    /// webhook sees the app) the versions and the ToolJet Deployments.
    fn apply_examples(&self) -> Result<()> {
        println!("Applying examples/ ...");
        let examples = self.examples();
        kubectl(&[
            "apply",
            "-f",
            &examples.join("namespace.yaml").display().to_string(),
        ])?;
        // The webhook judges versions against their app: apply the app (and everything else) first.
        for file in [
            "secrets.yaml",
            "app.yaml",
            "environment-configs.yaml",
            "workspace-configs.yaml",
            "policies.yaml",
        ] {
            kubectl(&["apply", "-f", &examples.join(file).display().to_string()])?;
        }
        wait_for(
            "the webhook to see app crm",
            Duration::from_secs(30),
            || {
                kubectl(&[
                    "apply",
                    "--dry-run=server",
                    "-f",
                    &examples.join("versions.yaml").display().to_string(),
                ])
                .is_ok()
            },
        )?;
        kubectl(&[
            "apply",
            "-f",
            &examples.join("versions.yaml").display().to_string(),
        ])?;
        // The ToolJet Deployments the app's spec.rollout targets, once every stage's configuration
        // is in: each starts, then restarts once with its stage's config hash stamped.
        kubectl(&[
            "apply",
            "-f",
            &examples.join("deployments.yaml").display().to_string(),
        ])?;
        Ok(())
    }

    /// A real ToolJet export, imported as a user would, on one ToolJet server for every stage
    /// (examples/single-instance.yaml, which its rollout names).
    fn import_sales_dashboard(&self) -> Result<()> {
        let examples = self.examples();
        let sales = examples.join("sales-dashboard");
        println!("Importing a ToolJet export: examples/sales-dashboard/export.json ...");
        kubectl(&[
            "apply",
            "-f",
            &sales.join("credentials.yaml").display().to_string(),
        ])?;
        run_cmd(
            Command::new(self.bin("kubectl-tooljet"))
                .env("KUBECONFIG", kubeconfig())
                .args(["-n", "acme-workspace", "import"])
                .arg(sales.join("export.json"))
                .arg("--apply"),
        )?;
        kubectl(&[
            "-n",
            "acme-workspace",
            "patch",
            "tjapp",
            "sales-dashboard",
            "--type",
            "merge",
            "--patch-file",
            &sales.join("rollout.yaml").display().to_string(),
        ])?;
        kubectl(&[
            "apply",
            "-f",
            &examples.join("single-instance.yaml").display().to_string(),
        ])?;
        Ok(())
    }

    /// With `detach`, leaves the operator running (its pid recorded for `control-plane stop`);
    /// otherwise runs it in the foreground until it exits.
    fn hand_over(&self, mut operator: Child, detach: bool) -> Result<()> {
        if detach {
            let pids_file = self.local.join("pids");
            let mut pids = std::fs::read_to_string(&pids_file).unwrap_or_default();
            pids.push_str(&format!("\n{}", operator.id()));
            std::fs::write(&pids_file, pids)?;
            println!(
                "The operator runs in the background (log: {}).\n{}",
                self.operator_log().display(),
                env_exports()
            );
            println!("{DASHBOARD_HINT}");
            println!("Stop everything with `cargo xtask control-plane stop`.");
            return Ok(());
        }
        println!(
            "The operator runs in the foreground; Ctrl-C stops it (the control plane stays up).\n{}{DASHBOARD_HINT}",
            env_exports()
        );
        let status = operator.wait()?;
        println!("operator exited: {status}");
        Ok(())
    }
}

/// How to see the examples in a browser (after the exports above).
const DASHBOARD_HINT: &str = "The web dashboard of the examples: `kubectl tooljet -n acme-workspace dashboard` \
     (add `--as USER` to act as someone with fewer rights; README: The dashboard).";

/// Refuses to start a second operator: the webhook and health addresses must be free.
fn ensure_operator_addresses_free() -> Result<()> {
    if http_status(HEALTH_ADDR, "/healthz").is_some()
        || std::net::TcpListener::bind(WEBHOOK_ADDR).is_err()
    {
        bail!(
            "{WEBHOOK_ADDR} or {HEALTH_ADDR} is in use (an operator from an earlier `cargo xtask up`?); stop it first"
        );
    }
    Ok(())
}
