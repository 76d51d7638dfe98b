//! Shared by the integration tests: the test binary's control plane, a client for it, a fresh
//! namespace per test, and the CRDs installed.
#![allow(dead_code)]

pub mod admission;
pub mod configs;
pub mod faults;
pub mod pods;
pub mod receiver;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{conditions, wait::await_condition},
};

/// A client for this test binary's control plane (started on first use).
pub async fn client() -> Client {
    let shared = testenv::shared();
    let kubeconfig = Kubeconfig::read_from(&shared.kubeconfig).expect("kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("client builds")
}

/// Runs kubectl against this test binary's control plane.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    testenv::kubectl(&testenv::shared().kubeconfig, args)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Creates a namespace of its own for one test: `<prefix>-<n>`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("{prefix}-{n}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": { "tooljet.io/test": prefix } },
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// A client, the CRDs, the shared operator running, and a fresh namespace `<prefix>-<n>`.
pub async fn operator_namespace(prefix: &str) -> (Client, String) {
    let client = client().await;
    install_crds(&client).await;
    shared_operator();
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

/// Installs (server-side applies) every CRD and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply("tooljet-operator-tests").force();
    for crd in tooljet_operator::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .unwrap();
    }
}

/// An operator process run from the built binary against this test binary's control plane, with
/// its log captured to a file. Killed on drop, and by the kernel if the test binary dies.
pub struct Operator {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Operator {
    /// Starts the operator without a webhook. Must be called from a thread that outlives it
    /// (PR_SET_PDEATHSIG).
    pub fn start(name: &str) -> Operator {
        let health = format!("127.0.0.1:{}", free_port());
        Operator::start_with(name, &["--no-webhook", "--health-addr", &health])
    }

    /// Starts the operator with these arguments.
    pub fn start_with(name: &str, args: &[&str]) -> Operator {
        Operator::start_with_kubeconfig(name, args, &testenv::shared().kubeconfig)
    }

    /// Starts the operator with these arguments and kubeconfig.
    pub fn start_with_kubeconfig(
        name: &str,
        args: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        use std::os::unix::process::CommandExt;
        let shared = testenv::shared();
        ensure_operator_namespace(args);
        let log = shared.dir.join(format!(
            "operator-{name}-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tooljet-operator"));
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("TOOLJET_TEST_LOG")
                    .unwrap_or_else(|_| "info,tooljet_operator=debug".into()),
            )
            .env("NO_COLOR", "1")
            .env("POD_NAME", format!("test-{name}"))
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("the operator binary starts");
        Operator { child, log }
    }

    /// The operator's process id (to signal it).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process still runs (it exits when a component fails).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a graceful exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates the operator's own namespace (`--namespace`, default `tooljet-system`) as the admin,
/// when missing: the operator keeps its content-hash key there and does not start without it.
fn ensure_operator_namespace(args: &[&str]) {
    let ns = args
        .windows(2)
        .find(|w| w[0] == "--namespace")
        .map(|w| w[1])
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--namespace=")))
        .unwrap_or("tooljet-system");
    let admin = &testenv::shared().kubeconfig;
    if testenv::kubectl(admin, &["get", "namespace", ns]).is_ok() {
        return;
    }
    if let Err(e) = testenv::kubectl(admin, &["create", "namespace", ns]) {
        // Another test of this binary may have created it meanwhile.
        assert!(
            e.to_string().contains("AlreadyExists") || e.to_string().contains("already exists"),
            "creating the operator's namespace {ns}: {e}"
        );
    }
}

static SHARED_OPERATOR_LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One operator shared by every test of this binary, started on first use.
pub fn shared_operator() -> &'static std::path::Path {
    shared_operator_with(&[])
}

/// The shared operator, started with `args` on first use (later calls' args are ignored).
pub fn shared_operator_with(args: &[&str]) -> &'static std::path::Path {
    SHARED_OPERATOR_LOG.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (restarts, requests) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<_>>();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let start = || {
                if args.is_empty() {
                    Operator::start("shared")
                } else {
                    Operator::start_with("shared", &args)
                }
            };
            let mut operator = start();
            tx.send(operator.log.clone()).unwrap();
            // This thread started the process (PR_SET_PDEATHSIG): it serves restarts until the
            // test binary exits.
            for reply in requests {
                drop(operator);
                operator = start();
                let _ = reply.send(operator.log.clone());
            }
            loop {
                std::thread::park();
            }
        });
        *SHARED_OPERATOR_RESTARTS.lock().unwrap() = Some(restarts);
        rx.recv().unwrap()
    })
}

static SHARED_OPERATOR_RESTARTS: std::sync::Mutex<
    Option<std::sync::mpsc::Sender<std::sync::mpsc::Sender<std::path::PathBuf>>>,
> = std::sync::Mutex::new(None);

/// Kills the shared operator (SIGKILL: no graceful shutdown) and starts it again with the same
/// arguments; returns the new process's log.
pub fn restart_shared_operator() -> std::path::PathBuf {
    let (reply, log) = std::sync::mpsc::channel();
    SHARED_OPERATOR_RESTARTS
        .lock()
        .unwrap()
        .as_ref()
        .expect("the shared operator was started")
        .send(reply)
        .unwrap();
    log.recv().unwrap()
}

/// A client that acts as `user` in `groups` (impersonation by the admin).
pub async fn client_as(user: &str, groups: &[&str]) -> Client {
    let shared = testenv::shared();
    let kubeconfig = Kubeconfig::read_from(&shared.kubeconfig).expect("kubeconfig is readable");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).expect("client builds")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let tail = SHARED_OPERATOR_LOG
                .get()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|log| {
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(200)..].join("\n")
                })
                .unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}; operator log tail:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of the apiserver's `apiserver_request_total` for write verbs on `resources`.
pub fn apiserver_writes(resources: &[&str]) -> u64 {
    apiserver_requests(
        "apiserver_request_total",
        &["POST", "PUT", "PATCH", "APPLY", "DELETE"],
        resources,
        None,
    )
}

/// Sum of the apiserver's request metric `family` (a counter such as `apiserver_request_total`,
/// or the gauge `apiserver_longrunning_requests`) for `verbs` on `resources`, of `scope`
/// (`cluster`, `namespace`, `resource`) when given.
pub fn apiserver_requests(
    family: &str,
    verbs: &[&str],
    resources: &[&str],
    scope: Option<&str>,
) -> u64 {
    let metrics = kubectl(&["get", "--raw", "/metrics"]).expect("apiserver metrics");
    let has = |line: &str, label: &str, value: &str| line.contains(&format!("{label}=\"{value}\""));
    let prefix = format!("{family}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| verbs.iter().any(|v| has(l, "verb", v)))
        .filter(|l| resources.iter().any(|r| has(l, "resource", r)))
        .filter(|l| scope.is_none_or(|s| has(l, "scope", s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
