//! What the fault suite needs besides the shared support: the control plane's processes (stop,
//! continue, restart kube-apiserver with the same flags, compact etcd), a TCP round-robin in front
//! of webhook replicas (a Service's stand-in), a fleet of apps whose changes stream in while faults
//! happen, and the exact end state recomputed from what the API holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tooljet_operator::api::{
    AppVersion, ConstantType, EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ToolJetApp,
};

use super as support;

// ---------------------------------------------------------------------------------------------
// The control plane's processes.

/// The pid of the live (not zombie) process of this test binary's control plane whose command
/// line holds `marker`.
fn find(program: &str, marker: &str) -> i32 {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let args = cmdline(pid);
        if args.first().is_some_and(|a| a.ends_with(program))
            && args.iter().any(|a| a.contains(marker))
            && testenv::cluster::alive(pid)
        {
            found.push(pid);
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected one live {program} with {marker} in its command line, found {found:?}"
    );
    found[0]
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn dir() -> &'static Path {
    &testenv::shared().dir
}

/// This test binary's kube-apiserver.
pub fn apiserver_pid() -> i32 {
    find(
        "kube-apiserver",
        &format!("--cert-dir={}", dir().join("apiserver-certs").display()),
    )
}

/// This test binary's etcd.
pub fn etcd_pid() -> i32 {
    find(
        "etcd",
        &format!("--data-dir={}", dir().join("etcd").display()),
    )
}

/// This test binary's kube-controller-manager (its garbage collector deletes owned objects).
pub fn controller_manager_pid() -> i32 {
    find(
        "kube-controller-manager",
        &format!("--kubeconfig={}", dir().join("kubeconfig").display()),
    )
}

/// A process frozen (SIGSTOP) until dropped (SIGCONT), so that a failing test leaves nothing
/// frozen behind for the next.
pub struct Frozen(pub i32);

impl Frozen {
    pub fn new(pid: i32) -> Frozen {
        signal(pid, libc::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: plain signal delivery to the process frozen here.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: plain signal delivery to a process of this test binary's control plane or operator.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Children spawned here must outlive the test that asked for them (the apiserver serves every
/// later test): they are spawned from one thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG`, as testenv spawns the originals.
fn spawn_kept(mut cmd: Command) -> u32 {
    type Request = (Command, mpsc::Sender<std::io::Result<u32>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("faults-keeper".into())
            .spawn(move || {
                let mut kept: Vec<Child> = vec![];
                for (mut cmd, reply) in rx {
                    let spawned = cmd.spawn().map(|child| {
                        let pid = child.id();
                        kept.push(child);
                        pid
                    });
                    let _ = reply.send(spawned);
                }
                // Never reached while the process lives (the sender is static).
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    keeper.lock().unwrap().send((cmd, reply)).unwrap();
    answer
        .recv()
        .unwrap()
        .expect("the relaunched process starts")
}

static RESTARTS: AtomicUsize = AtomicUsize::new(0);

/// SIGKILLs kube-apiserver and starts it again with the same flags, `extra` flags replacing
/// flags of the same name; returns once it is ready again, with how long it was down.
pub fn restart_apiserver(extra: &[&str]) -> Duration {
    let pid = apiserver_pid();
    let mut args = cmdline(pid);
    let program = args.remove(0);
    for flag in extra {
        let name = flag.split('=').next().unwrap();
        args.retain(|a| a.split('=').next() != Some(name));
        args.push(flag.to_string());
    }
    let down = Instant::now();
    signal(pid, libc::SIGKILL);
    while testenv::cluster::alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed process releases its listening socket when its last thread is gone, which may be
    // after it shows as a zombie: a relaunch that finds the port still taken is tried again.
    for _ in 0..100 {
        let n = RESTARTS.fetch_add(1, Ordering::SeqCst);
        let log_path = dir()
            .join("logs")
            .join(format!("kube-apiserver-restart-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        let pid = spawn_kept(cmd) as i32;
        let started = Instant::now();
        loop {
            if !testenv::cluster::alive(pid) {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                assert!(
                    text.contains("address already in use"),
                    "the relaunched kube-apiserver exited:\n{}",
                    tail(&text, 20)
                );
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            if support::kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"])
                .is_ok_and(|out| out.trim() == "ok")
            {
                return down.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready 90 s after its restart; see {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("kube-apiserver's port stayed taken after its restart");
}

/// A minimal HTTP/1.1 POST of JSON on loopback; the JSON body of the answer.
async fn post_json(addr: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}\n{rest}");
    let (start, end) = (rest.find('{').unwrap(), rest.rfind('}').unwrap());
    serde_json::from_str(&rest[start..=end]).unwrap()
}

/// Compacts etcd's history up to its current revision (through etcd's JSON gateway, as
/// `etcdctl compaction --physical` does): every watch resumed from an older revision gets
/// `410 Gone`. Returns the revision.
pub async fn compact_etcd() -> i64 {
    let args = cmdline(etcd_pid());
    let url = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen-client-urls=http://"))
        .expect("etcd's client URL")
        .to_string();
    // Any key: the header carries the current revision.
    let range = post_json(&url, "/v3/kv/range", &json!({ "key": "Lw==" })).await;
    let revision: i64 = range["header"]["revision"]
        .as_str()
        .expect("a revision")
        .parse()
        .unwrap();
    post_json(
        &url,
        "/v3/kv/compaction",
        &json!({ "revision": revision.to_string(), "physical": true }),
    )
    .await;
    revision
}

// ---------------------------------------------------------------------------------------------
// Operators.

/// The operator's own log lines are the only place a value could leak to: none may hold `canary`.
pub fn assert_no_canary(logs: &[PathBuf], canary: &str) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains(canary),
            "{} holds a secret value (canary {canary})",
            log.display()
        );
        assert!(
            !text.contains("panicked"),
            "{} shows a panic:\n{}",
            log.display(),
            tail(&text, 40)
        );
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The sum of a counter family on an operator's /metrics; `family` may carry the first labels
/// of the series to count (`tooljet_operator_access_reviews_total{answer="denied"`).
pub async fn counter(health: &str, family: &str) -> u64 {
    let (_, metrics) = support::admission::http_get(health, "/metrics")
        .await
        .unwrap_or_default();
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(['{', ' ', ',', '}']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A round-robin TCP forwarder in front of webhook replicas, as a Service spreads connections
/// over its endpoints; a replica that refuses connections is skipped (as it would leave the
/// endpoints once not ready). TLS passes through untouched.
pub async fn round_robin(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..backends.len() {
                    let backend = backends[(first + i) % backends.len()];
                    let connect = tokio::net::TcpStream::connect(backend);
                    if let Ok(Ok(mut outbound)) =
                        tokio::time::timeout(Duration::from_secs(1), connect).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// A fleet of apps, and the changes that stream in.

pub const STAGES: [&str; 3] = ["development", "staging", "production"];

/// A namespace of `apps` apps (`a0`, `a1`, ...): each with a Secret of credentials, a config per
/// stage (a Global constant, a Secret constant and a data source with a secret option), and one
/// version in development. Every secret value holds `canary`.
pub struct Fleet {
    pub client: Client,
    pub ns: String,
    pub apps: usize,
    pub canary: String,
    /// The releases made, per app, in order.
    pub releases: Mutex<BTreeMap<String, Vec<String>>>,
    /// The versions made, per app.
    versions: Mutex<BTreeMap<String, usize>>,
    edits: AtomicU64,
    /// Promote only versions whose status shows their current stage (changes made while the
    /// webhook cannot stamp them, see [`Fleet::promote_seen_only`]).
    seen_only: std::sync::atomic::AtomicBool,
    /// Objects (versions, apps) the end-state check leaves to the caller.
    ignored: Mutex<BTreeSet<String>>,
    /// Changes that failed and were retried (e.g. while the apiserver or the webhook was away).
    pub retried: AtomicU64,
    pub changes: AtomicU64,
}

fn ar(kind: &str) -> kube::api::ApiResource {
    support::admission::ar(kind)
}

impl Fleet {
    pub async fn new(client: &Client, prefix: &str, apps: usize) -> Fleet {
        let ns = support::namespace(client, prefix).await;
        let canary = format!("canary-{:08x}", rand_u64() as u32);
        let fleet = Fleet {
            client: client.clone(),
            ns,
            apps,
            canary,
            releases: Mutex::new(BTreeMap::new()),
            versions: Mutex::new(BTreeMap::new()),
            edits: AtomicU64::new(0),
            seen_only: std::sync::atomic::AtomicBool::new(false),
            ignored: Mutex::new(BTreeSet::new()),
            retried: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        };
        for i in 0..apps {
            fleet.create_app(i).await;
        }
        fleet
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply("faults-test").force()
    }

    pub fn api(&self, kind: &str) -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &ar(kind))
    }

    /// Retries a change until the API accepts it (the caller's side of "requests in flight fail
    /// and are retried").
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match f().await {
                Ok(v) => {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                    return v;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{what} kept failing for 120 s: {e}"
                    );
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn apply(&self, kind: &str, name: &str, spec: Value) {
        let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind,
                           "metadata": { "name": name }, "spec": spec });
        let (api, params) = (self.api(kind), Self::apply_params());
        self.retry(&format!("applying {kind} {name}"), || async {
            api.patch(name, &params, &Patch::Apply(&body)).await
        })
        .await;
    }

    async fn merge(&self, kind: &str, name: &str, patch: Value) {
        let (api, params) = (self.api(kind), PatchParams::default());
        self.retry(&format!("patching {kind} {name}"), || async {
            api.patch(name, &params, &Patch::Merge(&patch)).await
        })
        .await;
    }

    fn secret_value(&self, app: usize, stage: &str, n: u64) -> String {
        format!("{}-{app}-{stage}-{n}", self.canary)
    }

    async fn write_credentials(&self, app: usize, values: BTreeMap<String, String>) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let data: BTreeMap<String, k8s_openapi::ByteString> = values
            .into_iter()
            .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
            .collect();
        let body = json!({ "apiVersion": "v1", "kind": "Secret",
                           "metadata": { "name": format!("creds-a{app}") }, "data": data });
        let name = format!("creds-a{app}");
        let params = Self::apply_params();
        self.retry(&format!("writing Secret {name}"), || async {
            secrets.patch(&name, &params, &Patch::Apply(&body)).await
        })
        .await;
    }

    async fn write_config(&self, app: usize, stage: &str, api_url: &str) {
        let spec = json!({
            "app": format!("a{app}"), "environment": stage,
            "dataSources": [{ "name": "db", "kind": "postgresql",
                "options": { "host": format!("db.{stage}.a{app}"), "port": 5432 },
                "secretOptions": { "password": { "secretKeyRef": { "name": format!("creds-a{app}"), "key": stage } } } }],
            "constants": [
                { "name": "API_URL", "type": "Global", "value": api_url },
                { "name": "DB_PASSWORD", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": format!("creds-a{app}"), "key": stage } } },
            ],
        });
        self.apply("EnvironmentConfig", &format!("a{app}-{stage}"), spec)
            .await;
    }

    async fn create_app(&self, i: usize) {
        let values = STAGES
            .iter()
            .map(|s| (s.to_string(), self.secret_value(i, s, 0)))
            .collect();
        self.write_credentials(i, values).await;
        for stage in STAGES {
            self.write_config(i, stage, &format!("https://{stage}.a{i}/0"))
                .await;
        }
        self.apply(
            "ToolJetApp",
            &format!("a{i}"),
            json!({ "environments": STAGES }),
        )
        .await;
        self.new_version(i).await;
    }

    /// A new version of app `i`, in development.
    pub async fn new_version(&self, i: usize) -> String {
        let n = {
            let mut versions = self.versions.lock().unwrap();
            let n = versions.entry(format!("a{i}")).or_insert(0);
            *n += 1;
            *n
        };
        let name = format!("a{i}-v{n}");
        let spec = json!({ "app": format!("a{i}"), "versionName": format!("v{n}"),
                           "definition": { "pages": [{ "name": "home", "query": "{{constants.API_URL}}/x" }] } });
        let api = self.api("AppVersion");
        let body: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
            "metadata": { "name": name }, "spec": spec }))
        .unwrap();
        self.retry(&format!("creating AppVersion {name}"), || async {
            match api.create(&PostParams::default(), &body).await {
                // A retry of a create that went through before its answer was lost.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await;
        name
    }

    /// One random change: a promotion, a release, a credential rotation, a config edit or a new
    /// version. Returns what it did, for the test's log.
    pub async fn random_change(&self, rng: &mut Rng) -> String {
        let app = rng.below(self.apps as u64) as usize;
        match rng.below(10) {
            0..=2 => {
                let versions: Api<AppVersion> = Api::namespaced(self.client.clone(), &self.ns);
                let lp = ListParams::default();
                let all = self.retry("listing versions", || versions.list(&lp)).await;
                let candidates: Vec<_> = all
                    .items
                    .iter()
                    .filter(|v| {
                        v.spec.app == format!("a{app}")
                            && STAGES[..2].contains(&v.spec.environment.as_str())
                    })
                    .filter(|v| {
                        !self.seen_only.load(Ordering::Relaxed)
                            || v.status.as_ref().and_then(|s| s.environment.as_ref())
                                == Some(&v.spec.environment)
                    })
                    .collect();
                let Some(v) = candidates.get(rng.below(candidates.len().max(1) as u64) as usize)
                else {
                    return self.new_version(app).await;
                };
                let at = STAGES
                    .iter()
                    .position(|s| *s == v.spec.environment)
                    .unwrap();
                let (name, to) = (v.name_any(), STAGES[at + 1]);
                self.merge(
                    "AppVersion",
                    &name,
                    json!({ "spec": { "environment": to } }),
                )
                .await;
                format!("promote {name} to {to}")
            }
            3..=4 => {
                let versions: Api<AppVersion> = Api::namespaced(self.client.clone(), &self.ns);
                let lp = ListParams::default();
                let all = self.retry("listing versions", || versions.list(&lp)).await;
                let live: Vec<String> = all
                    .items
                    .iter()
                    .filter(|v| v.spec.app == format!("a{app}") && v.spec.environment == STAGES[2])
                    .map(|v| v.name_any())
                    .collect();
                let last = self
                    .releases
                    .lock()
                    .unwrap()
                    .get(&format!("a{app}"))
                    .and_then(|r| r.last().cloned());
                let choices: Vec<&String> =
                    live.iter().filter(|v| Some(*v) != last.as_ref()).collect();
                let Some(version) = choices.get(rng.below(choices.len().max(1) as u64) as usize)
                else {
                    return format!("nothing to release in a{app}");
                };
                let version = version.to_string();
                self.merge(
                    "ToolJetApp",
                    &format!("a{app}"),
                    json!({ "spec": { "release": { "version": version } } }),
                )
                .await;
                self.releases
                    .lock()
                    .unwrap()
                    .entry(format!("a{app}"))
                    .or_default()
                    .push(version.clone());
                format!("release {version}")
            }
            5..=6 => {
                let n = self.edits.fetch_add(1, Ordering::Relaxed) + 1;
                let stage = STAGES[rng.below(3) as usize];
                // Only the rotated key changes: the others keep the value they had.
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
                let name = format!("creds-a{app}");
                let current = self
                    .retry("reading credentials", || secrets.get(&name))
                    .await;
                let mut values: BTreeMap<String, String> = current
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                    .collect();
                values.insert(stage.to_string(), self.secret_value(app, stage, n));
                self.write_credentials(app, values).await;
                format!("rotate creds-a{app}/{stage}")
            }
            7..=8 => {
                let n = self.edits.fetch_add(1, Ordering::Relaxed) + 1;
                let stage = STAGES[rng.below(3) as usize];
                self.write_config(app, stage, &format!("https://{stage}.a{app}/{n}"))
                    .await;
                format!("edit a{app}-{stage}")
            }
            _ => {
                let name = self.new_version(app).await;
                format!("create {name}")
            }
        }
    }

    /// The end state, exactly (see [`check`]), and the release histories against the releases
    /// this fleet made.
    pub async fn check(&self) -> Result<(), String> {
        let ignored = self.ignored.lock().unwrap().clone();
        check_except(&self.client, &self.ns, &ignored).await?;
        let apps: Api<ToolJetApp> = Api::namespaced(self.client.clone(), &self.ns);
        let made = self.releases.lock().unwrap().clone();
        for app in apps
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
        {
            if ignored.contains(&app.name_any()) {
                continue;
            }
            let history: Vec<String> = app
                .status
                .as_ref()
                .map(|s| {
                    s.release_history
                        .iter()
                        .map(|r| r.version.clone())
                        .collect()
                })
                .unwrap_or_default();
            let made = made.get(&app.name_any()).cloned().unwrap_or_default();
            if !is_subsequence(&history, &made) {
                return Err(format!(
                    "app {}: release history {history:?} is not the releases made {made:?} in order",
                    app.name_any()
                ));
            }
        }
        Ok(())
    }

    /// From now on, promote only versions the operator has seen in their current stage: without
    /// the webhook's stamp of the stages a version has been in, a version first seen outside its
    /// first stage has no known history (it may have been created there).
    pub fn promote_seen_only(&self) {
        self.seen_only.store(true, Ordering::Relaxed);
    }

    /// Leaves these versions and apps (bad state a scenario checks itself) out of the check.
    pub fn ignore(&self, names: &[&str]) {
        self.ignored
            .lock()
            .unwrap()
            .extend(names.iter().map(|n| n.to_string()));
    }

    /// Waits until the end state holds; returns how long it took.
    pub async fn converged(&self, timeout: Duration) -> Duration {
        wait_for(&self.ns, timeout, || self.check()).await
    }

    /// Waits until the end state of any namespace holds (see [`check`]).
    pub async fn wait_check(client: &Client, ns: &str, timeout: Duration) -> Duration {
        wait_for(ns, timeout, || check(client, ns)).await
    }
}

async fn wait_for<F, Fut>(ns: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    {
        let started = Instant::now();
        let last = Mutex::new(String::new());
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                match check().await {
                    Ok(()) => return,
                    Err(e) => *last.lock().unwrap() = e,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
        assert!(
            outcome.is_ok(),
            "not converged within {timeout:?} in namespace {ns}: {}",
            last.lock().unwrap()
        );
        started.elapsed()
    }
}

fn is_subsequence(sub: &[String], of: &[String]) -> bool {
    let mut it = of.iter();
    sub.iter().all(|s| it.any(|o| o == s))
}

// ---------------------------------------------------------------------------------------------
// The end state, recomputed from what the API holds.

/// A Secret's data as text (values are text here).
type Data = BTreeMap<String, String>;

const HASH_ANNOTATION: &str = "tooljet.io/config-hash";

/// What a layer (one EnvironmentConfig) contributes: constants by name (their key and value) and
/// data sources by name. `None` when a reference does not resolve.
struct Layer {
    constants: BTreeMap<String, (String, String)>,
    sources: serde_json::Map<String, Value>,
    /// Per data source: its secret options as secret constants (key, value).
    option_secrets: BTreeMap<String, Vec<(String, String)>>,
}

fn layer(config: &EnvironmentConfig, secrets: &BTreeMap<String, Data>) -> Option<Layer> {
    let spec = &config.spec;
    let lookup = |name: &str, key: &str| secrets.get(name)?.get(key).cloned();
    let mut constants = BTreeMap::new();
    for c in &spec.constants {
        let (prefix, value) = match c.type_ {
            ConstantType::Global => ("TOOLJET_GLOBAL_CONSTANTS", c.value.clone()?),
            ConstantType::Secret => {
                let r = &c.value_from.as_ref()?.secret_key_ref;
                ("TOOLJET_SECRET_CONSTANTS", lookup(&r.name, &r.key)?)
            }
        };
        let key = format!("{prefix}__{}__{}", spec.environment, c.name);
        constants.insert(c.name.clone(), (key, value));
    }
    let mut sources = serde_json::Map::new();
    let mut option_secrets = BTreeMap::new();
    for ds in &spec.data_sources {
        let mut options: serde_json::Map<String, Value> = ds
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut secret_constants = vec![];
        for (option, src) in &ds.secret_options {
            let r = &src.secret_key_ref;
            let name = tooljet_operator::lifecycle::constants::option_constant(&ds.name, option);
            options.insert(
                option.clone(),
                Value::String(format!("{{{{secrets.{name}}}}}")),
            );
            secret_constants.push((
                format!("TOOLJET_SECRET_CONSTANTS__{}__{name}", spec.environment),
                lookup(&r.name, &r.key)?,
            ));
        }
        sources.insert(
            ds.name.clone(),
            json!({ "kind": ds.kind, "options": options }),
        );
        option_secrets.insert(ds.name.clone(), secret_constants);
    }
    Some(Layer {
        constants,
        sources,
        option_secrets,
    })
}

/// Layers merged, later ones winning by name: the data a Secret must hold (`datasources.json`
/// as JSON, compared as JSON).
fn merged(layers: &[&Layer]) -> (BTreeMap<String, String>, Value) {
    let mut constants: BTreeMap<&str, &(String, String)> = BTreeMap::new();
    let mut sources = serde_json::Map::new();
    let mut option_secrets: BTreeMap<&str, &Vec<(String, String)>> = BTreeMap::new();
    for l in layers {
        for (name, entry) in &l.constants {
            constants.insert(name, entry);
        }
        for (name, source) in &l.sources {
            sources.insert(name.clone(), source.clone());
            option_secrets.insert(name, &l.option_secrets[name]);
        }
    }
    // The winning data sources' secret options, as secret constants.
    let data = constants
        .values()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(option_secrets.values().flat_map(|c| c.iter().cloned()))
        .collect();
    (data, Value::Object(sources))
}

fn text(secret: &Secret) -> Data {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Compares a managed Secret with what it must hold and who must own it.
fn compare(
    name: &str,
    actual: Option<&Secret>,
    expected: &(BTreeMap<String, String>, Value),
    owner_uid: Option<&str>,
) -> Result<(), String> {
    let secret = actual.ok_or_else(|| format!("Secret {name} is missing"))?;
    let mut data = text(secret);
    // A version's resolved Secret holds the constants only; a stage Secret also the document.
    let resolved = name.starts_with("tooljet-version.");
    let doc = match data.remove("datasources.json") {
        Some(_) if resolved => return Err(format!("Secret {name} holds datasources.json")),
        Some(doc) => serde_json::from_str(&doc).map_err(|e| format!("{name}: {e}"))?,
        None if resolved => expected.1.clone(),
        None => return Err(format!("Secret {name} lacks datasources.json")),
    };
    if data != expected.0 {
        let keys = |d: &BTreeMap<String, String>| d.keys().cloned().collect::<Vec<_>>();
        let differ: Vec<&String> = expected
            .0
            .iter()
            .filter(|(k, v)| data.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        return Err(format!(
            "Secret {name}: keys {:?}, expected {:?}; values differ for {differ:?}",
            keys(&data),
            keys(&expected.0)
        ));
    }
    if doc != expected.1 {
        return Err(format!("Secret {name}: datasources.json differs"));
    }
    let controller = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str());
    if controller != owner_uid {
        return Err(format!(
            "Secret {name} is controlled by {controller:?}, expected {owner_uid:?}"
        ));
    }
    Ok(())
}

fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<String> {
    conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| format!("{} {}", c.status, c.reason))
}

/// The end state of namespace `ns`, exactly, recomputed from the specs and the referenced Secrets:
/// - every materialised Secret (`tooljet.<env>[.<app>]`) and every resolved Secret
///   (`tooljet-version.<version>`) holds exactly the merged data (constants only) and is
///   controlled by its source;
/// - no other Secret carries the managed-by label (no orphan), but those whose controlling owner
///   is gone (kube-controller-manager's garbage collector deletes them, not the operator);
/// - every status is current: configs Ready with the Secret's hash, versions in their stage with
///   the resolved Secret's hash and a promotion history that walks the pipeline one stage at a time
///   from its first stage to the current one (no duplicate, no gap), apps with their release
///   recorded last and no release recorded twice in a row.
///
/// EnvironmentConfigs with a rival or an unresolvable reference are left to the caller.
pub async fn check(client: &Client, ns: &str) -> Result<(), String> {
    check_except(client, ns, &BTreeSet::new()).await
}

/// [`check`], leaving the versions and apps named in `ignored` (and their Secrets) out.
pub async fn check_except(
    client: &Client,
    ns: &str,
    ignored: &BTreeSet<String>,
) -> Result<(), String> {
    let err = |e: kube::Error| e.to_string();
    let lp = ListParams::default();
    let secrets: Vec<Secret> = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(err)?
        .items;
    let configs = Api::<EnvironmentConfig>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(err)?
        .items;
    let versions = Api::<AppVersion>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(err)?
        .items;
    let apps = Api::<ToolJetApp>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(err)?
        .items;
    let managed =
        |s: &Secret| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
    let by_name: BTreeMap<String, &Secret> = secrets.iter().map(|s| (s.name_any(), s)).collect();
    let referenced: BTreeMap<String, Data> = secrets
        .iter()
        .filter(|s| !managed(s))
        .map(|s| (s.name_any(), text(s)))
        .collect();
    let mut expected_names = BTreeSet::new();

    // Materialised: one per config without a rival.
    let mut layers: BTreeMap<(Option<String>, String), (Layer, &EnvironmentConfig)> =
        BTreeMap::new();
    let mut scopes: BTreeMap<(Option<String>, String), usize> = BTreeMap::new();
    for c in &configs {
        *scopes
            .entry((c.spec.app.clone(), c.spec.environment.clone()))
            .or_default() += 1;
    }
    for c in &configs {
        let scope = (c.spec.app.clone(), c.spec.environment.clone());
        let name = match &c.spec.app {
            Some(app) => format!("tooljet.{}.{app}", c.spec.environment),
            None => format!("tooljet.{}", c.spec.environment),
        };
        // A rival or a broken reference keeps the last good content, if any: the caller's.
        let Some(l) = layer(c, &referenced).filter(|_| scopes[&scope] == 1) else {
            expected_names.insert(name);
            continue;
        };
        compare(
            &name,
            by_name.get(&name).copied(),
            &merged(&[&l]),
            c.metadata.uid.as_deref(),
        )?;
        let status = c.status.clone().unwrap_or_default();
        let hash = by_name[&name].annotations().get(HASH_ANNOTATION).cloned();
        if status.hash != hash
            || ready(&status.conditions, "Ready").as_deref() != Some("True Materialized")
        {
            return Err(format!(
                "EnvironmentConfig {}: status hash {:?} / Ready {:?}, Secret hash {hash:?}",
                c.name_any(),
                status.hash,
                ready(&status.conditions, "Ready")
            ));
        }
        if status.observed_generation != c.metadata.generation {
            return Err(format!(
                "EnvironmentConfig {}: generation not observed",
                c.name_any()
            ));
        }
        expected_names.insert(name);
        layers.insert(scope, (l, c));
    }

    // Resolved: one per version, its stage's workspace layer then its app's.
    for v in &versions {
        if ignored.contains(&v.name_any()) {
            expected_names.insert(format!("tooljet-version.{}", v.name_any()));
            continue;
        }
        let env = &v.spec.environment;
        let scope = |app: Option<&str>| (app.map(str::to_string), env.clone());
        let found: Vec<&Layer> = [scope(None), scope(Some(&v.spec.app))]
            .iter()
            .filter_map(|s| layers.get(s).map(|(l, _)| l))
            .collect();
        let name = format!("tooljet-version.{}", v.name_any());
        compare(
            &name,
            by_name.get(&name).copied(),
            &merged(&found),
            v.metadata.uid.as_deref(),
        )?;
        expected_names.insert(name.clone());
        let status = v.status.clone().unwrap_or_default();
        let hash = by_name[&name].annotations().get(HASH_ANNOTATION).cloned();
        if status.environment.as_ref() != Some(env)
            || status.resolved_config.as_ref().map(|r| Some(&r.hash)) != Some(hash.as_ref())
            || status.observed_generation != v.metadata.generation
        {
            return Err(format!(
                "AppVersion {}: status says {:?} (hash {:?}), spec says {env} (hash {hash:?})",
                v.name_any(),
                status.environment,
                status.resolved_config.as_ref().map(|r| &r.hash)
            ));
        }
        let pipeline = apps
            .iter()
            .find(|a| a.name_any() == v.spec.app)
            .map(|a| a.spec.environments.clone())
            .unwrap_or_default();
        let steps: Vec<(String, String)> = status
            .promotions
            .iter()
            .map(|p| (p.from.clone(), p.to.clone()))
            .collect();
        let at = pipeline.iter().position(|s| s == env).unwrap_or(0);
        let walk: Vec<(String, String)> = pipeline[..=at]
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect();
        if steps != walk {
            return Err(format!(
                "AppVersion {}: promotion history {steps:?}, expected {walk:?}",
                v.name_any()
            ));
        }
    }

    for app in apps.iter().filter(|a| !ignored.contains(&a.name_any())) {
        let status = app.status.clone().unwrap_or_default();
        let wanted = app.spec.release.as_ref().map(|r| r.version.clone());
        let history: Vec<&String> = status.release_history.iter().map(|r| &r.version).collect();
        if status.released_version != wanted || history.last().copied() != wanted.as_ref() {
            return Err(format!(
                "ToolJetApp {}: released {:?} (history {history:?}), spec says {wanted:?}",
                app.name_any(),
                status.released_version
            ));
        }
        if history.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!(
                "ToolJetApp {}: a release recorded twice in a row: {history:?}",
                app.name_any()
            ));
        }
    }

    // A managed Secret nothing explains is an orphan, unless its controlling owner is gone:
    // then it awaits kube-controller-manager's garbage collector (as every owned object does).
    let live: BTreeSet<&str> = configs
        .iter()
        .filter_map(|c| c.metadata.uid.as_deref())
        .chain(versions.iter().filter_map(|v| v.metadata.uid.as_deref()))
        .collect();
    let orphans: Vec<String> = secrets
        .iter()
        .filter(|s| managed(s) && !expected_names.contains(&s.name_any()))
        .filter(|s| {
            s.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .is_none_or(|o| live.contains(o.uid.as_str()))
        })
        .map(|s| s.name_any())
        .collect();
    if !orphans.is_empty() {
        return Err(format!("orphaned managed Secrets: {orphans:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift), seeded from the clock unless `TOOLJET_FAULTS_SEED`
/// is set; tests print the seed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("TOOLJET_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand_u64);
        println!("seed: TOOLJET_FAULTS_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A generator of its own, seeded from another's output.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ ((std::process::id() as u64) << 32)
}

/// The scale of a scenario: its short form by default, `TOOLJET_FAULTS_LONG=1` for the long one.
pub fn long() -> bool {
    std::env::var_os("TOOLJET_FAULTS_LONG").is_some()
}
