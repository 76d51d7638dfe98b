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

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub children: Vec<Child>,
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
        let etcd = Binary::Etcd.require()?;
        let apiserver = Binary::KubeApiserver.require()?;
        let kcm = Binary::KubeControllerManager.require()?;
        Binary::Kubectl.require()?;

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
            cp.spawn(
                mode,
                &kcm,
                &[
                    format!("--kubeconfig={}", cp.kubeconfig.display()),
                    "--controllers=garbagecollector,namespace".into(),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--concurrent-gc-syncs=20".into(),
                    "--v=0".into(),
                ],
                &logs.join("kube-controller-manager.log"),
            )?;
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

fn free_ports<const N: usize>() -> Result<[u16; N]> {
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
