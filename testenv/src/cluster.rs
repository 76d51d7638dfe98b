//! Starting and stopping etcd + kube-apiserver + kube-controller-manager on loopback.

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    binaries::{Binary, cache_dir},
    pki::{self, Files},
};

/// How the processes relate to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Own session, outlives the caller; stopped with [`stop`] (for `cargo xtask`).
    Detached,
    /// Killed by the kernel when the spawning thread dies (`PR_SET_PDEATHSIG`), so a test binary
    /// that exits, panics or is killed leaves nothing behind.
    Attached,
}

/// What runs besides etcd, kube-apiserver and kube-controller-manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// kube-scheduler, KWOK and [`SIMULATED_NODES`] simulated nodes, plus the deployment and
    /// replicaset controllers: Deployments get pods that reach Running (nothing is executed: KWOK
    /// plays the kubelet) and roll out through ReplicaSets.
    pub pods: bool,
}

impl Options {
    pub fn with_pods() -> Options {
        Options { pods: true }
    }
}

/// How many simulated nodes a control plane with pods has (`kwok-node-0`, `kwok-node-1`).
pub const SIMULATED_NODES: usize = 2;
/// The annotation KWOK manages nodes by, and its value.
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub children: Vec<Child>,
    pub options: Options,
}

/// The state directory of the control plane `cargo xtask control-plane start` runs.
pub fn local_dir() -> PathBuf {
    cache_dir().join("local")
}

const PIDS: &str = "pids";

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with state under `dir` (wiped first)
    /// and waits until the apiserver is ready.
    pub fn start(dir: &Path, mode: Mode) -> Result<ControlPlane> {
        ControlPlane::start_with(dir, mode, Options::default())
    }

    /// [`ControlPlane::start`], plus what `options` asks for; with pods, returns once every
    /// simulated node is Ready.
    pub fn start_with(dir: &Path, mode: Mode, options: Options) -> Result<ControlPlane> {
        let etcd = Binary::Etcd.require()?;
        let apiserver = Binary::KubeApiserver.require()?;
        let kcm = Binary::KubeControllerManager.require()?;
        Binary::Kubectl.require()?;
        let pod_binaries = if options.pods {
            Some((Binary::KubeScheduler.require()?, Binary::Kwok.require()?))
        } else {
            None
        };

        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cleaning {}", dir.display()))?;
        }
        let pki_dir = dir.join("pki");
        let logs = dir.join("logs");
        fs::create_dir_all(&logs)?;
        pki::generate(&pki_dir)?;
        let [etcd_port, peer_port, api_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki_dir)?;

        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig,
            server,
            children: vec![],
            options,
        };
        let result = (|| {
            let p = |f: &str| pki_dir.join(f).display().to_string();
            cp.spawn(
                mode,
                &etcd,
                &[
                    "--name=tooljet-local".into(),
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-cluster=tooljet-local=http://127.0.0.1:{peer_port}"),
                    "--unsafe-no-fsync=true".into(),
                    "--quota-backend-bytes=4294967296".into(),
                    "--log-level=warn".into(),
                ],
                &logs.join("etcd.log"),
            )?;
            cp.spawn(
                mode,
                &apiserver,
                &[
                    format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                    format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                    format!("--tls-cert-file={}", p(Files::SERVING_CERT)),
                    format!("--tls-private-key-file={}", p(Files::SERVING_KEY)),
                    format!("--client-ca-file={}", p(Files::CA)),
                    format!("--secure-port={api_port}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    "--service-cluster-ip-range=10.0.0.0/24".into(),
                    "--allow-privileged=true".into(),
                    "--authorization-mode=RBAC".into(),
                    format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
                    format!("--service-account-key-file={}", p(Files::SA_PUB)),
                    format!("--service-account-signing-key-file={}", p(Files::SA_KEY)),
                    "--disable-admission-plugins=ServiceAccount".into(),
                    "--v=0".into(),
                ],
                &logs.join("kube-apiserver.log"),
            )?;
            cp.wait_ready(Duration::from_secs(90))?;
            let controllers = if options.pods {
                "garbagecollector,namespace,deployment,replicaset"
            } else {
                "garbagecollector,namespace"
            };
            cp.spawn(
                mode,
                &kcm,
                &[
                    format!("--kubeconfig={}", cp.kubeconfig.display()),
                    format!("--controllers={controllers}"),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--concurrent-gc-syncs=20".into(),
                    "--v=0".into(),
                ],
                &logs.join("kube-controller-manager.log"),
            )?;
            if let Some((scheduler, kwok)) = &pod_binaries {
                cp.start_pods(mode, scheduler, kwok)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            cp.kill();
            return Err(e);
        }
        if mode == Mode::Detached {
            let pids: Vec<String> = cp.children.iter().map(|c| c.id().to_string()).collect();
            fs::write(dir.join(PIDS), pids.join("\n"))?;
        }
        Ok(cp)
    }

    /// kube-scheduler, KWOK and the simulated nodes; waits until every node is Ready.
    fn start_pods(&mut self, mode: Mode, scheduler: &Path, kwok: &Path) -> Result<()> {
        let logs = self.dir.join("logs");
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        self.spawn(
            mode,
            scheduler,
            &[
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                // Serving (health, metrics) is not needed and would take a port.
                "--secure-port=0".into(),
                "--v=0".into(),
            ],
            &logs.join("kube-scheduler.log"),
        )?;
        let (key, value) = KWOK_NODE_ANNOTATION;
        self.spawn(
            mode,
            kwok,
            &[
                kubeconfig,
                format!("--config={}", crate::binaries::kwok_stages().display()),
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={key}={value}"),
                // Pod IPs come from the service-less pod range; nothing routes to them.
                "--cidr=10.244.0.1/16".into(),
                "--node-ip=127.0.0.1".into(),
                // kwok's own server (logs, exec, port-forward of simulated pods) stays off.
                "--server-address=".into(),
                "--v=0".into(),
            ],
            &logs.join("kwok.log"),
        )?;
        let nodes: String = (0..SIMULATED_NODES).map(simulated_node).collect();
        let manifest = self.dir.join("simulated-nodes.yaml");
        fs::write(&manifest, nodes)?;
        self.kubectl(&["apply", "-f", &manifest.display().to_string()])?;
        let started = Instant::now();
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a control-plane process exited early ({status}); see the logs in {}:\n{}",
                        logs.display(),
                        tail_logs(&logs)
                    );
                }
            }
            let ready = self.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])?;
            if ready.lines().filter(|l| l.trim() == "True").count() >= SIMULATED_NODES {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the simulated nodes were not Ready after 60s (KWOK: {}):\n{}",
                    logs.join("kwok.log").display(),
                    tail_logs(&logs)
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
        // The apiserver taints every new node `node.kubernetes.io/not-ready` (admission plugin
        // TaintNodesByCondition); the node lifecycle controller, not run here, would lift it once
        // the node is Ready. KWOK reports them Ready: lift it.
        for i in 0..SIMULATED_NODES {
            self.kubectl(&[
                "patch",
                "node",
                &format!("kwok-node-{i}"),
                "--type=merge",
                "-p",
                r#"{"spec":{"taints":null}}"#,
            ])?;
        }
        Ok(())
    }

    fn spawn(&mut self, mode: Mode, bin: &Path, args: &[String], log: &Path) -> Result<()> {
        let log_file = fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // The apiserver calls webhooks on loopback: never through a proxy.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            match mode {
                Mode::Detached => cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                }),
                Mode::Attached => cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                }),
            };
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.children.push(child);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a control-plane process exited early ({status}); see the logs in {}:\n{}",
                        self.dir.join("logs").display(),
                        tail_logs(&self.dir.join("logs"))
                    );
                }
            }
            if self
                .kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"])
                .map(|out| out.trim() == "ok")
                .unwrap_or(false)
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "kube-apiserver was not ready after {timeout:?}; logs in {}:\n{}",
                    self.dir.join("logs").display(),
                    tail_logs(&self.dir.join("logs"))
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs kubectl against this control plane and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.kubeconfig, args)
    }

    /// Kills every process and waits for it.
    pub fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

/// A Node that KWOK manages (by its annotation) and reports Ready, with room for many pods. Not
/// tainted: it is the only kind of node this cluster has.
fn simulated_node(i: usize) -> String {
    let (key, value) = KWOK_NODE_ANNOTATION;
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: kwok-node-{i}
  annotations:
    {key}: {value}
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-{i}
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
status:
  allocatable:
    cpu: \"32\"
    memory: 256Gi
    pods: \"110\"
  capacity:
    cpu: \"32\"
    memory: 256Gi
    pods: \"110\"
---
"
    )
}

/// Runs kubectl with the given kubeconfig and returns stdout; a failure carries stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(Binary::Kubectl.require()?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pids of a detached control plane under `dir` that are still alive.
pub fn running_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join(PIDS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| alive(pid))
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !zombie(pid)
}

fn zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Stops a detached control plane: SIGTERM to each process group, SIGKILL after 10 s.
/// Returns how many processes were running.
pub fn stop(dir: &Path) -> Result<usize> {
    let pids = running_pids(dir);
    for &pid in &pids {
        // SAFETY: plain signal delivery; control-plane processes lead their own process group
        // (setsid), an operator started by `cargo xtask up --detach` does not.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = fs::remove_file(dir.join(PIDS));
    Ok(pids.len())
}

pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Path) -> Result<()> {
    let f = |name: &str| pki.join(name).display().to_string();
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: tooljet-local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: tooljet-local
  context:
    cluster: tooljet-local
    user: admin
    namespace: default
current-context: tooljet-local
",
        ca = f(Files::CA),
        cert = f(Files::ADMIN_CERT),
        key = f(Files::ADMIN_KEY),
    );
    fs::write(path, config)?;
    Ok(())
}

fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in [
        "etcd.log",
        "kube-apiserver.log",
        "kube-controller-manager.log",
        "kube-scheduler.log",
        "kwok.log",
    ] {
        if let Ok(text) = fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            if !tail.is_empty() {
                out.push_str(&format!(
                    "--- {name} (last {} lines)\n{}\n",
                    tail.len(),
                    tail.join("\n")
                ));
            }
        }
    }
    out
}
