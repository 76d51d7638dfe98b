//! Faults: the operator killed mid-work, kube-apiserver restarted, watches expired, the apiserver
//! partitioned away from a leader, the leader killed under load, certificates rotated while
//! admissions stream, memory pressure, and bad state in the cluster. Each scenario ends with the
//! exact end state (see `support::faults::check`) and no secret value in any operator log.
//!
//! The scenarios restart and stop this binary's own kube-apiserver, so they run one at a time
//! (`SERIAL`). Short forms run in CI; `TOOLJET_FAULTS_LONG=1` runs the long ones (more apps, more
//! rounds); every scenario prints its figures (`--nocapture`). docs/reliability.md has them.

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    coordination::v1::Lease,
    core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Operator,
    admission::{ar, http_get, with_kind},
    faults::{self, Fleet, Rng},
};
use tooljet_operator::{
    api::{AppVersion, EnvironmentConfig, ToolJetApp},
    webhook::config::{self, Endpoint},
};

/// One scenario at a time: they stop and restart the control plane every test here shares.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OPERATOR_NS: &str = "tooljet-system";

async fn client() -> Client {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": OPERATOR_NS } })).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    client
}

/// One operator process and where it answers.
struct Replica {
    operator: Operator,
    health: String,
    webhook: Option<SocketAddr>,
}

impl Replica {
    /// `lease`: elect a leader on this Lease; `webhook`: serve the webhook (self-managed
    /// certificate for 127.0.0.1) unless other arguments are given in `extra`.
    fn start(name: &str, lease: Option<&str>, webhook: bool, extra: &[&str]) -> Replica {
        let webhook_addr = webhook.then(|| {
            format!("127.0.0.1:{}", support::free_port())
                .parse()
                .unwrap()
        });
        Replica::start_at(name, lease, webhook_addr, extra)
    }

    /// [`Replica::start`], the webhook (if any) listening on `webhook_addr`.
    fn start_at(
        name: &str,
        lease: Option<&str>,
        webhook_addr: Option<SocketAddr>,
        extra: &[&str],
    ) -> Replica {
        let webhook = webhook_addr.is_some();
        let health = format!("127.0.0.1:{}", support::free_port());
        let addr = webhook_addr.map(|a| a.to_string()).unwrap_or_default();
        let mut args = vec![
            "--namespace",
            OPERATOR_NS,
            "--health-addr",
            &health,
            "--instance",
            name,
        ];
        if let Some(lease) = lease {
            args.extend(["--leader-elect", "--lease-name", lease]);
        }
        if webhook {
            args.extend(["--webhook-addr", &addr, "--webhook-host", "127.0.0.1"]);
        } else {
            args.push("--no-webhook");
        }
        args.extend(extra);
        Replica {
            operator: Operator::start_with(name, &args),
            health,
            webhook: webhook_addr,
        }
    }

    async fn ready(&self) {
        support::admission::wait_ok(&self.health, "/readyz", Duration::from_secs(60)).await;
    }

    fn log(&self) -> PathBuf {
        self.operator.log.clone()
    }
}

/// The webhook configurations pointing at `url` (with `ca` when the operator does not keep the
/// caBundle itself), removed again on drop so that later scenarios are not failed closed.
struct Admission;

impl Admission {
    async fn install(client: &Client, url: &str, ca: Option<&[u8]>) -> Admission {
        let apply = PatchParams::apply("faults").force();
        let endpoint = Endpoint::Url(url.to_string());
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .patch(
                config::CONFIGURATION_NAME,
                &apply,
                &Patch::Apply(&with_kind(
                    &config::validating(&endpoint, ca),
                    "admissionregistration.k8s.io/v1",
                    "ValidatingWebhookConfiguration",
                )),
            )
            .await
            .unwrap();
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                config::CONFIGURATION_NAME,
                &apply,
                &Patch::Apply(&with_kind(
                    &config::mutating(&endpoint, ca),
                    "admissionregistration.k8s.io/v1",
                    "MutatingWebhookConfiguration",
                )),
            )
            .await
            .unwrap();
        Admission
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for kind in [
            "validatingwebhookconfiguration",
            "mutatingwebhookconfiguration",
        ] {
            let _ = support::kubectl(&[
                "delete",
                kind,
                config::CONFIGURATION_NAME,
                "--ignore-not-found",
            ]);
        }
    }
}

/// Admission requests the webhook must answer, sent continuously (server-side dry runs of a new
/// version in development: allowed, no side effect); counts what failed, and when the last one
/// succeeded.
struct Probe {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    successes: Arc<std::sync::Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(client: &Client, ns: &str, app: &str) -> Probe {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let successes = Arc::new(std::sync::Mutex::new(vec![]));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar("AppVersion"));
        let app = app.to_string();
        let (s, n, f, ok) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            successes.clone(),
        );
        let task = tokio::spawn(async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let body: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                    "metadata": { "name": format!("probe-{i}") },
                    "spec": { "app": app, "versionName": format!("probe-{i}"), "definition": { "n": i } } }))
                .unwrap();
                n.fetch_add(1, Ordering::Relaxed);
                match api.create(&dry, &body).await {
                    Ok(_) => ok.lock().unwrap().push(Instant::now()),
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        eprintln!("admission probe {i} failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        Probe {
            stop,
            sent,
            failed,
            successes,
            task,
        }
    }

    /// Stops; returns (sent, failed).
    async fn stop(self) -> (u64, u64, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let successes = self.successes.lock().unwrap().clone();
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            successes,
        )
    }
}

/// Streams random changes into `fleet` until stopped; returns how many were made.
fn stream(
    fleet: Arc<Fleet>,
    seed_rng: &mut Rng,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::seeded(seed_rng.next());
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            fleet.random_change(&mut rng).await;
            n += 1;
        }
        n
    });
    (stop, task)
}

async fn finish(stream: (Arc<AtomicBool>, tokio::task::JoinHandle<u64>)) -> u64 {
    stream.0.store(true, Ordering::Relaxed);
    stream.1.await.unwrap()
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------

/// Scenario 1: SIGKILL at random points while a fleet converges and changes stream in; restart;
/// repeat. Nothing is lost, nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_work_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let (apps, rounds) = if faults::long() { (300, 10) } else { (30, 4) };
    let mut logs = vec![];
    // Promotions go through admission, as they do in a cluster: the webhook stamps the stages a
    // version has been in, and it is down while its replica is (callers retry).
    let webhook: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let mut operator = Some(Replica::start_at("crash-0", None, Some(webhook), &[]));
    operator.as_ref().unwrap().ready().await;
    let _admission = Admission::install(&client, &format!("https://{webhook}"), None).await;
    wait_for_admission(&client).await;
    let fleet = Arc::new(Fleet::new(&client, "crash", apps).await);
    let changes = stream(fleet.clone(), &mut rng);
    for round in 1..=rounds {
        // A random point: during the initial lists, the first reconciles, or the stream.
        let after = Duration::from_millis(200 + rng.below(2500));
        tokio::time::sleep(after).await;
        let killed = operator.take().unwrap();
        logs.push(killed.log());
        drop(killed); // SIGKILL
        operator = Some(Replica::start_at(
            &format!("crash-{round}"),
            None,
            Some(webhook),
            &[],
        ));
        println!("round {round}: SIGKILL after {}", secs(after));
    }
    let restarted = Instant::now();
    let made = finish(changes).await;
    let took = fleet.converged(Duration::from_secs(120)).await;
    let mut last = operator.take().unwrap();
    assert!(
        last.operator.is_running(),
        "the last operator is still running"
    );
    logs.push(last.log());
    println!(
        "figure: {apps} apps, {rounds} SIGKILLs, {made} changes streamed: converged {} after the \
         stream ended ({} after the last restart)",
        secs(took),
        secs(restarted.elapsed())
    );
    drop(last);
    faults::assert_no_canary(&logs, &fleet.canary);
}

/// Scenario 2: kube-apiserver restarts during convergence and while admissions stream; watches
/// break and resume, the callers retry, the operator keeps running and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_restart_during_convergence_and_admissions_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let (mut operator, _admission) = admitting(&client, "restart").await;
    let apps = if faults::long() { 100 } else { 12 };
    let fleet = Arc::new(Fleet::new(&client, "restart", apps).await);
    let changes = stream(fleet.clone(), &mut rng);
    let mut downs = vec![];
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        downs.push(
            tokio::task::spawn_blocking(|| faults::restart_apiserver(&[]))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let made = finish(changes).await;
    let took = fleet.converged(Duration::from_secs(120)).await;
    assert!(
        operator.operator.is_running(),
        "the operator survives apiserver restarts:\n{}",
        faults::tail(&operator.operator.log_text(), 40)
    );
    println!(
        "figure: apiserver down {:?} (SIGKILL to ready), {made} changes ({} retried by the \
         caller), converged {} after the stream ended",
        downs.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        fleet.retried.load(Ordering::Relaxed),
        secs(took)
    );
    faults::assert_no_canary(&[operator.log()], &fleet.canary);
}

/// A replica named `name` serving the webhook, registered by URL (with the CA the replica puts
/// in the configurations) and answering through the apiserver.
async fn admitting(client: &Client, name: &str) -> (Replica, Admission) {
    let operator = Replica::start(name, None, true, &[]);
    operator.ready().await;
    let admission = Admission::install(
        client,
        &format!("https://{}", operator.webhook.unwrap()),
        None,
    )
    .await;
    wait_for_admission(client).await;
    (operator, admission)
}

/// Waits until the webhook answers through the apiserver (a dry-run create in a fresh namespace
/// calls it).
async fn wait_for_admission(client: &Client) {
    let ns = support::namespace(client, "probe").await;
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("ToolJetApp"));
    let body: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
        "metadata": { "name": "probe" }, "spec": {} }))
    .unwrap();
    support::eventually(Duration::from_secs(30), "the webhook answering", || {
        let (apps, body) = (apps.clone(), body.clone());
        async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            apps.create(&dry, &body).await.ok().map(|_| ())
        }
    })
    .await;
}

/// Scenario 2b: etcd stalls while a version is created. The webhook's create check reads the
/// app's stored versions from the apiserver, which cannot answer; the webhook refuses the create
/// with its own message (the object, the time spent against what the apiserver waits, the
/// cause, what to do) before the apiserver stops waiting, rather than leaving the apiserver to
/// fail it as "context deadline exceeded". Nothing is created, the refusal is counted as
/// `result="timeout"`, and once etcd answers again the same create is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_the_apiserver_cannot_feed_is_refused_in_time_with_why() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let (operator, _admission) = admitting(&client, "deadline").await;
    let ns = support::namespace(&client, "deadline").await;
    let definition = testenv::definitions::realistic(2048, 0);
    // The app and a first version, so the webhook's cache holds the app: the stalled read is
    // the check of the stored versions, not a look-up of the app.
    create_versions(&client, &ns, "crm", 1, &definition).await;
    let versions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("AppVersion"));
    let body: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
        "metadata": { "name": "crm-1" },
        "spec": { "app": "crm", "versionName": "v1", "definition": definition } }))
    .unwrap();
    let timeouts = r#"tooljet_operator_admission_requests_total{webhook="validate",kind="AppVersion",operation="CREATE",result="timeout""#;
    assert_eq!(faults::counter(&operator.health, timeouts).await, 0);

    // kubectl, as a person runs it: it does not retry a 503 (kube-rs clients do, with backoff).
    let manifest = std::env::temp_dir().join(format!("{ns}-crm-1.json"));
    std::fs::write(&manifest, serde_json::to_vec(&body).unwrap()).unwrap();
    let started = Instant::now();
    let refused = {
        let _etcd = faults::Frozen::new(faults::etcd_pid());
        let (file, ns) = (manifest.display().to_string(), ns.clone());
        tokio::task::spawn_blocking(move || {
            support::kubectl(&["create", "-n", &ns, "--request-timeout=30s", "-f", &file])
        })
        .await
        .unwrap()
    };
    let took = started.elapsed();
    let _ = std::fs::remove_file(&manifest);
    let message = match refused {
        Err(e) => e.to_string(),
        Ok(out) => panic!("the create was admitted while etcd was frozen: {out}"),
    };
    println!(
        "figure: a create whose check could not read was refused after {} (the apiserver waits 5 s): {message}",
        secs(took)
    );
    for part in [
        "Error from server (ServiceUnavailable)".to_string(),
        format!("AppVersion {ns}/crm-1: tooljet-operator could not decide this CREATE in"),
        "of the 5s the API server waits for it".to_string(),
        "Nothing was changed; retry the request".to_string(),
    ] {
        assert!(message.contains(&part), "{part:?} not in {message:?}");
    }
    assert!(
        !message.contains("deadline exceeded"),
        "the apiserver gave up first: {message}"
    );
    assert_eq!(faults::counter(&operator.health, timeouts).await, 1);

    // Nothing was stored, and once etcd answers the same create is admitted.
    support::eventually(Duration::from_secs(60), "the same create admitted", || {
        let (versions, body) = (versions.clone(), body.clone());
        async move {
            versions
                .create(&PostParams::default(), &body)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(
        versions.get("crm-1").await.unwrap().data["spec"]["versionName"],
        json!("v1")
    );
}

/// Scenario 3: the operator's watches expire (`410 Gone`) while changes are made: it is frozen,
/// kube-apiserver restarts (a fresh watch cache) and etcd is compacted; the changes made
/// meanwhile (edits, rotations, a new version, a deleted configuration) are all applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_watches_were_expired_are_not_missed() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let operator = Replica::start("expiry", None, false, &[]);
    let fleet = Fleet::new(&client, "expiry", 10).await;
    fleet.converged(Duration::from_secs(60)).await;

    // The webhook is frozen with its replica, so these changes bypass admission (no stamps): a
    // version is promoted only from a stage the operator has seen it in.
    fleet.promote_seen_only();
    let frozen = faults::Frozen::new(operator.operator.pid());
    let down = tokio::task::spawn_blocking(|| faults::restart_apiserver(&[]))
        .await
        .unwrap();
    for _ in 0..20 {
        fleet.random_change(&mut rng).await;
    }
    // A deletion the operator can only learn from the relist. The garbage collector is held
    // meanwhile: the deleted config's Secret stays, and no change to it wakes the versions.
    let gc = faults::Frozen::new(faults::controller_manager_pid());
    Api::<EnvironmentConfig>::namespaced(client.clone(), &fleet.ns)
        .delete("a0-development", &DeleteParams::default())
        .await
        .unwrap();
    let revision = faults::compact_etcd().await;
    let log_before = operator.operator.log_text().len();
    drop(frozen);
    let resumed = Instant::now();

    let took = fleet.converged(Duration::from_secs(60)).await;
    drop(gc);
    let log = operator.operator.log_text();
    let after = &log[log_before..];
    assert!(
        after
            .lines()
            .any(|l| l.contains("watch failed") && (l.contains("410") || l.contains("Expired"))),
        "the resumed watches expired and relisted (410 Gone):\n{}",
        faults::tail(after, 30)
    );
    println!(
        "figure: apiserver restarted ({}), etcd compacted at revision {revision}, 21 changes \
         made while the operator was frozen: converged {} after it resumed",
        secs(down),
        secs(took.max(resumed.elapsed()))
    );
    faults::assert_no_canary(&[operator.log()], &fleet.canary);
}

/// The lease's holder.
async fn holder(client: &Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get_opt(lease)
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// How often `line` appears in a log.
fn count(log: &str, line: &str) -> usize {
    log.lines().filter(|l| l.contains(line)).count()
}

const LOST: &str = "lost the leadership; reconciling stops";
const BECAME: &str = "became the leader; reconciling";

/// Whether a replica's log says it leads now (its last leadership transition).
fn leads(log: &str) -> bool {
    log.lines()
        .rfind(|l| l.contains(LOST) || l.contains(BECAME))
        .is_some_and(|l| l.contains(BECAME))
}

/// Scenario 4: kube-apiserver frozen (SIGSTOP) longer than the lease: the leader stops writing at
/// its renew deadline while the apiserver is still away; afterwards exactly one replica leads and
/// only it writes; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_at_its_deadline_and_one_leader_remains() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let lease = format!("faults-partition-{}", std::process::id());
    let replicas = [
        Replica::start("partition-a", Some(&lease), false, &[]),
        Replica::start("partition-b", Some(&lease), false, &[]),
    ];
    let fleet = Fleet::new(&client, "partition", 10).await;
    // No webhook here to stamp promotions: promote only what the operator has seen.
    fleet.promote_seen_only();
    fleet.converged(Duration::from_secs(60)).await;
    let first = holder(&client, &lease).await.unwrap();
    let leader = if first.ends_with("-a") { 0 } else { 1 };
    let losses = count(&replicas[leader].operator.log_text(), LOST);

    let apiserver = faults::Frozen::new(faults::apiserver_pid());
    let stopped = Instant::now();
    // The leader must give up on its own clock, before anyone else could take over (the lease
    // duration, 15 s): polled from its log, the apiserver being away.
    let mut stepped_down = None;
    while stopped.elapsed() < Duration::from_secs(17) {
        if stepped_down.is_none() && count(&replicas[leader].operator.log_text(), LOST) > losses {
            stepped_down = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(apiserver);
    let resumed = Instant::now();
    let stepped_down = stepped_down.unwrap_or_else(|| {
        panic!(
            "the leader kept leading with the apiserver away for 17 s:\n{}",
            faults::tail(&replicas[leader].operator.log_text(), 30)
        )
    });
    assert!(
        stepped_down < Duration::from_secs(15),
        "the leader stepped down after the lease could have expired: {stepped_down:?}"
    );

    // Exactly one leader, the lease's holder, and it stays so.
    let new_leader = support::eventually(Duration::from_secs(40), "one leader", || {
        let (client, lease, replicas) = (&client, &lease, &replicas);
        async move {
            let h = holder(client, lease).await?;
            let leading: Vec<usize> = (0..2)
                .filter(|&i| leads(&replicas[i].operator.log_text()))
                .collect();
            (leading.len() == 1 && h.ends_with(["-a", "-b"][leading[0]])).then(|| leading[0])
        }
    })
    .await;
    let elected_after = resumed.elapsed();
    let follower = 1 - new_leader;
    let quiet = faults::counter(&replicas[follower].health, "tooljet_operator_writes_total").await;
    for _ in 0..20 {
        fleet.random_change(&mut rng).await;
    }
    let took = fleet.converged(Duration::from_secs(60)).await;
    assert_eq!(
        faults::counter(&replicas[follower].health, "tooljet_operator_writes_total").await,
        quiet,
        "the follower wrote nothing"
    );
    assert!(leads(&replicas[new_leader].operator.log_text()));
    assert!(!leads(&replicas[follower].operator.log_text()));
    println!(
        "figure: apiserver stopped 17 s; the leader stepped down {} after the stop (renew \
         deadline 10 s, lease 15 s); one leader {} after SIGCONT ({}); 20 changes converged in {}",
        secs(stepped_down),
        secs(elected_after),
        if new_leader == leader {
            "the same replica"
        } else {
            "the other replica"
        },
        secs(took)
    );
    faults::assert_no_canary(
        &replicas.iter().map(Replica::log).collect::<Vec<_>>(),
        &fleet.canary,
    );
}

/// Scenario 5: two replicas, both serving the webhook behind a round-robin; the leader is killed
/// while changes stream in. Admission goes on (the follower answers before it leads) and the new
/// leader converges what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_keeps_admission_and_converges() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let lease = format!("faults-failover-{}", std::process::id());
    let mut replicas = [
        Some(Replica::start("failover-a", Some(&lease), true, &[])),
        Some(Replica::start("failover-b", Some(&lease), true, &[])),
    ];
    for r in replicas.iter().flatten() {
        r.ready().await;
    }
    let backends = replicas
        .iter()
        .flatten()
        .map(|r| r.webhook.unwrap())
        .collect();
    let front = faults::round_robin(backends).await;
    let _admission = Admission::install(&client, &format!("https://{front}"), None).await;
    wait_for_admission(&client).await;
    let apps = if faults::long() { 100 } else { 12 };
    let fleet = Arc::new(Fleet::new(&client, "failover", apps).await);
    fleet.converged(Duration::from_secs(60)).await;
    let first = holder(&client, &lease).await.unwrap();
    let leader = if first.ends_with("-a") { 0 } else { 1 };
    let logs: Vec<PathBuf> = replicas.iter().flatten().map(Replica::log).collect();

    let probe = Probe::start(&client, &fleet.ns, "a0");
    let changes = stream(fleet.clone(), &mut rng);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(replicas[leader].take()); // SIGKILL
    let killed = Instant::now();
    let new_holder = support::eventually(Duration::from_secs(40), "a new leader", || {
        let (client, lease, first) = (&client, &lease, &first);
        async move { holder(client, lease).await.filter(|h| h != first) }
    })
    .await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let made = finish(changes).await;
    fleet.converged(Duration::from_secs(60)).await;
    let since_kill = killed.elapsed();
    let (sent, failed, successes) = probe.stop().await;
    assert!(new_holder.ends_with(["-a", "-b"][1 - leader]));
    let before_takeover = successes
        .iter()
        .filter(|t| **t > killed && **t < killed + takeover)
        .count();
    assert!(
        before_takeover > 0,
        "admission went on between the kill and the takeover ({} s)",
        takeover.as_secs()
    );
    let gap = successes
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "figure: {apps} apps, {made} changes; leader killed: new leader after {}, everything \
         converged {} after the kill; admission: {sent} probes, {failed} failed, {before_takeover} \
         answered before the takeover, longest gap between answers {}",
        secs(takeover),
        secs(since_kill),
        secs(gap)
    );
    faults::assert_no_canary(&logs, &fleet.canary);
}

/// A serving certificate for 127.0.0.1 issued by the CA in `ca_pem`/`ca_key_pem`, valid for
/// `days` days: (cert, key).
fn issue(ca_pem: &str, ca_key_pem: &str, days: i64) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Scenario 6a: the self-managed serving certificate is renewed while admissions stream: zero
/// failed admission requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_managed_certificate_renews_without_a_failed_admission() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let (operator, _admission) = admitting(&client, "rotate-self").await;
    let fleet = Fleet::new(&client, "rotate-self", 1).await;
    let probe = Probe::start(&client, &fleet.ns, "a0");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A certificate 10 days from expiry (the operator renews 30 days before): written as an
    // outside rotation would, then the webhook configuration touched so the check runs now.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NS);
    let tls = secrets.get("tooljet-operator-webhook-tls").await.unwrap();
    let data = tls.data.clone().unwrap();
    let s = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    let (short, short_key) = issue(&s("ca.crt"), &s("ca.key"), 10);
    let mut rotated = tls.clone();
    let d = rotated.data.as_mut().unwrap();
    d.insert(
        "tls.crt".into(),
        k8s_openapi::ByteString(short.clone().into_bytes()),
    );
    d.insert(
        "tls.key".into(),
        k8s_openapi::ByteString(short_key.into_bytes()),
    );
    secrets
        .replace(
            "tooljet-operator-webhook-tls",
            &PostParams::default(),
            &rotated,
        )
        .await
        .unwrap();
    let loaded = count(
        &operator.operator.log_text(),
        "webhook serving certificate loaded",
    );
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            config::CONFIGURATION_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "faults/touch": format!("{:?}", Instant::now()) } } })),
        )
        .await
        .unwrap();
    let renewed_at = Instant::now();
    let renewed = support::eventually(Duration::from_secs(40), "the renewed certificate", || {
        let (secrets, short) = (&secrets, &short);
        let log = &operator.operator;
        async move {
            let tls = secrets.get("tooljet-operator-webhook-tls").await.ok()?;
            let cert = String::from_utf8(tls.data?["tls.crt"].0.clone()).ok()?;
            (cert != *short
                && count(&log.log_text(), "webhook serving certificate loaded") > loaded)
                .then_some(cert)
        }
    })
    .await;
    let took = renewed_at.elapsed();
    assert_ne!(renewed, s("tls.crt"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed, _) = probe.stop().await;
    assert!(sent > 20, "admissions streamed during the rotation: {sent}");
    assert_eq!(failed, 0, "admission requests failed during the rotation");
    println!(
        "figure: self-managed renewal {} after the trigger; admission requests during the \
         rotation: {sent} sent, {failed} failed",
        secs(took)
    );
}

/// Scenario 6b: file mode (cert-manager, a mounted Secret): the files are swapped as the kubelet
/// swaps a Secret volume (an atomic `..data` symlink) while admissions stream: zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_files_rotates_without_a_failed_admission() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let dir = testenv::shared()
        .dir
        .join(format!("certs-{}", support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = tooljet_operator::webhook::certs::generate(&["127.0.0.1".to_string()]).unwrap();
    let mount = |n: usize, cert: &str, key: &str| {
        let data = dir.join(format!("..{n}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tls.crt"), cert).unwrap();
        std::fs::write(data.join("tls.key"), key).unwrap();
        let link = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("..{n}"), &link).unwrap();
        std::fs::rename(&link, dir.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            if !dir.join(f).exists() {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
            }
        }
    };
    mount(0, &bundle.cert, &bundle.key);
    let dir_arg = dir.display().to_string();
    let operator = Replica::start(
        "rotate-files",
        None,
        true,
        &["--webhook-cert-dir", &dir_arg],
    );
    operator.ready().await;
    let _admission = Admission::install(
        &client,
        &format!("https://{}", operator.webhook.unwrap()),
        Some(bundle.ca.as_bytes()),
    )
    .await;
    wait_for_admission(&client).await;
    let fleet = Fleet::new(&client, "rotate-files", 1).await;
    let probe = Probe::start(&client, &fleet.ns, "a0");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = count(
        &operator.operator.log_text(),
        "webhook serving certificate loaded",
    );
    let (cert, key) = issue(&bundle.ca, &bundle.ca_key, 90);
    mount(1, &cert, &key);
    let swapped = Instant::now();
    support::eventually(Duration::from_secs(20), "the swapped files loaded", || {
        let log = &operator.operator;
        async move {
            (count(&log.log_text(), "webhook serving certificate loaded") > loaded).then_some(())
        }
    })
    .await;
    let took = swapped.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed, _) = probe.stop().await;
    assert!(sent > 20, "admissions streamed during the rotation: {sent}");
    assert_eq!(failed, 0, "admission requests failed during the rotation");
    println!(
        "figure: file-mode rotation loaded {} after the swap; admission requests during the \
         rotation: {sent} sent, {failed} failed",
        secs(took)
    );
}

/// Scenario 6c: an API error while loading the certificate at start is retried with backoff;
/// meanwhile the replica is unready, and once unready for longer than `--ready-deadline` its
/// liveness fails (the kubelet would restart it); when the error clears it becomes ready and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_error_at_start_is_retried_and_liveness_reflects_it() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    // An immutable Secret of that name, without a certificate: the operator cannot write one
    // (422 from the API) until it is gone.
    let name = format!("faults-blocked-tls-{}", support::free_port());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NS);
    let blocked: Secret = serde_json::from_value(json!({
        "metadata": { "name": name }, "immutable": true, "stringData": { "note": "not a certificate" } }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &blocked)
        .await
        .unwrap();
    let operator = Replica::start(
        "cert-error",
        None,
        true,
        &[
            "--webhook-secret",
            &name,
            "--webhook-configuration",
            "faults-none",
            "--ready-deadline",
            "3s",
        ],
    );
    let health = operator.health.clone();
    support::eventually(Duration::from_secs(30), "liveness failing", || {
        let health = &health;
        async move {
            let (code, body) = http_get(health, "/healthz").await?;
            (code == 503).then_some(body)
        }
    })
    .await;
    let (code, why) = http_get(&health, "/readyz").await.unwrap();
    assert_eq!(
        (code, why.as_str()),
        (503, "webhook certificate not loaded")
    );
    let retries = count(&operator.operator.log_text(), "retrying");
    assert!(
        retries >= 2,
        "retried with backoff: {retries} attempts logged"
    );

    secrets
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let cleared = Instant::now();
    support::admission::wait_ok(&health, "/readyz", Duration::from_secs(60)).await;
    let (code, _) = http_get(&health, "/healthz").await.unwrap();
    assert_eq!(code, 200, "live again once ready");
    println!(
        "figure: certificate load failed {retries} times before the error cleared; ready {} \
         after it cleared (backoff up to 30 s)",
        secs(cleared.elapsed())
    );
    let _ = secrets.delete(&name, &DeleteParams::default()).await;
}

/// The largest and average resident memory of a process (VmHWM, VmRSS), in MiB.
fn memory(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The chart's memory limit, in MiB.
fn chart_memory_limit() -> u64 {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/tooljet-operator/values.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let limit = values["resources"]["limits"]["memory"].as_str().unwrap();
    limit.strip_suffix("Mi").unwrap().parse().unwrap()
}

/// Scenario 7: many versions with definitions near the admitted maximum and data sources with
/// options near theirs: the operator stays within the chart's memory limit, another namespace
/// keeps converging, and the webhook keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_memory_pressure_other_namespaces_converge_and_admission_answers() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let (operator, _admission) = admitting(&client, "pressure").await;
    let pid = operator.operator.pid();
    let (_, idle) = memory(pid);
    let other = Fleet::new(&client, "calm", 3).await;
    let heavy = support::namespace(&client, "pressure").await;
    let versions = if faults::long() { 300 } else { 24 };
    let max = tooljet_operator::webhook::limits::MAX_DEFINITION_BYTES;
    let options_max = tooljet_operator::webhook::limits::MAX_OPTIONS_BYTES;
    let api = |kind: &str| -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &heavy, &ar(kind))
    };
    let apply = PatchParams::apply("faults").force();
    api("ToolJetApp")
        .patch("big", &apply, &Patch::Apply(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": "big" }, "spec": {} })))
        .await
        .unwrap();
    // 20 data sources whose options are just under their limit, in each stage.
    let filler = |bytes: usize| "x".repeat(bytes);
    for stage in faults::STAGES {
        let sources: Vec<_> = (0..20)
            .map(|i| json!({ "name": format!("ds{i}"), "kind": "restapi", "options": { "blob": filler(options_max - 64) } }))
            .collect();
        api("EnvironmentConfig")
            .patch(
                &format!("big-{stage}"),
                &apply,
                &Patch::Apply(
                    json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
                    "metadata": { "name": format!("big-{stage}") },
                    "spec": { "app": "big", "environment": stage, "dataSources": sources } }),
                ),
            )
            .await
            .unwrap();
    }
    let probe = Probe::start(&client, &other.ns, "a0");
    let started = Instant::now();
    let flood = {
        let api = api("AppVersion");
        tokio::spawn(async move {
            for i in 0..versions {
                // Just under the limit once serialized: a page of filler text.
                let body: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                    "metadata": { "name": format!("big-{i}") },
                    "spec": { "app": "big", "versionName": format!("big-{i}"),
                              "definition": { "pages": [{ "text": "y".repeat(max - 1024) }] } } }))
                .unwrap();
                api.create(&PostParams::default(), &body).await.unwrap();
            }
        })
    };
    // Meanwhile the calm namespace changes and must converge.
    for _ in 0..10 {
        other.random_change(&mut rng).await;
    }
    let calm_took = other.converged(Duration::from_secs(90)).await;
    flood.await.unwrap();
    let flood_took = started.elapsed();
    let heavy_took = faults::Fleet::wait_check(&client, &heavy, Duration::from_secs(120)).await;
    let (sent, failed, _) = probe.stop().await;
    let (hwm, rss) = memory(pid);
    let limit = chart_memory_limit();
    assert!(
        hwm < limit,
        "peak resident memory {hwm} MiB exceeds the chart's limit {limit} MiB"
    );
    assert!(
        sent > 0 && failed == 0,
        "the webhook kept answering: {failed} of {sent} failed"
    );
    println!(
        "figure: {versions} versions of ~{} KiB and 3x20 data sources of ~{} KiB: memory idle \
         {idle} MiB, peak {hwm} MiB (VmHWM), after {rss} MiB, chart limit {limit} MiB; flood \
         written in {}, converged {} later; the calm namespace converged in {} meanwhile; \
         admission {sent} probes, {failed} failed",
        max / 1024,
        options_max / 1024,
        secs(flood_took),
        secs(heavy_took),
        secs(calm_took)
    );
    faults::assert_no_canary(&[operator.log()], &other.canary);
}

/// Creates `count` versions of app `app` in `ns` with `definition`, through admission.
async fn create_versions(
    client: &Client,
    ns: &str,
    app: &str,
    count: usize,
    definition: &serde_json::Value,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar("AppVersion"));
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar("ToolJetApp"));
    let body: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
        "metadata": { "name": app }, "spec": {} }))
    .unwrap();
    apps.create(&PostParams::default(), &body).await.unwrap();
    for i in 0..count {
        let body: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
            "metadata": { "name": format!("{app}-{i}") },
            "spec": { "app": app, "versionName": format!("v{i}"), "definition": definition } }))
        .unwrap();
        api.create(&PostParams::default(), &body)
            .await
            .unwrap_or_else(|e| panic!("creating AppVersion {app}-{i}: {e}"));
    }
}

/// Waits until `replica` has reconciled nothing for 2 s.
async fn quiet(replica: &Replica) {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = faults::counter(&replica.health, "tooljet_operator_reconciles_total").await;
        if now == last {
            return;
        }
        last = now;
    }
}

/// An operator started against the cluster as it is, serving the webhook on `addr`, once it
/// is ready and has reconciled everything (quiet), and its peak resident memory (VmHWM, MiB).
async fn restarted(name: &str, addr: SocketAddr) -> (Replica, u64) {
    let replica = Replica::start_at(name, None, Some(addr), &[]);
    replica.ready().await;
    quiet(&replica).await;
    let peak = memory(replica.operator.pid()).0;
    (replica, peak)
}

/// Scenario 7b: the operator never holds or parses a stored definition. Versions with
/// definitions of a real ToolJet app's shape near the admitted maximum are stored; a restarted
/// operator's peak memory is that of the same number of 1 KiB versions, within less than what two
/// of those definitions take parsed, and their references still reach the versions' status. A
/// regression that parses a list page's definitions, or holds any two, fails. Receiving the large
/// versions as a stream raises the peak about as much as one parsed tree does (measured: +4 to +5
/// MiB), so parsing one definition at a time and dropping it cannot be told apart from that by
/// memory; nothing does it (`cache::lean::VersionSpecParts`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_reads_no_definition() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let (operator, _admission) = admitting(&client, "definitions").await;
    let versions = if faults::long() { 200 } else { 24 };
    let max = tooljet_operator::webhook::limits::MAX_DEFINITION_BYTES;
    let mut large = testenv::definitions::realistic(max - 96 * 1024, 0);
    large["appV2"]["components"][0]["note"] = json!("{{constants.BIG_REFERENCE}}");
    let bytes = serde_json::to_vec(&large).unwrap().len();
    assert!(bytes <= max && bytes > max * 3 / 4, "{bytes} bytes");
    let small = testenv::definitions::realistic(1024, 0);
    // What one large definition takes once parsed, as the operator's allocator counts it.
    let parsed = parsed_size(&large);

    let addr = operator.webhook.unwrap();
    let tiny_ns = support::namespace(&client, "tiny").await;
    create_versions(&client, &tiny_ns, "tiny", versions, &small).await;
    quiet(&operator).await;
    drop(operator);
    let (operator, tiny_peak) = restarted("definitions-tiny", addr).await;
    wait_for_admission(&client).await;
    let big_ns = support::namespace(&client, "big").await;
    create_versions(&client, &big_ns, "big", versions, &large).await;
    quiet(&operator).await;
    drop(operator);
    let (_operator, big_peak) = restarted("definitions-big", addr).await;
    println!(
        "figure: restart peak with {versions} versions of 1 KiB: {tiny_peak} MiB; with {versions} more of {} KiB: \
         {big_peak} MiB; one such definition parsed takes {} MiB",
        bytes / 1024,
        parsed / (1024 * 1024)
    );
    let limit = chart_memory_limit();
    assert!(
        big_peak < limit,
        "restart peak {big_peak} MiB over the chart's limit {limit} MiB"
    );
    let two = (2 * parsed / (1024 * 1024)) as u64;
    assert!(
        big_peak < tiny_peak + two,
        "the restarted operator's peak grew by {} MiB with {versions} large definitions stored, as much as \
         parsing two ({two} MiB): it reads definitions",
        big_peak.saturating_sub(tiny_peak),
    );
    // The references of a definition the operator never read reach the version's status.
    let v = Api::<AppVersion>::namespaced(client.clone(), &big_ns);
    support::eventually(
        Duration::from_secs(60),
        "the stamped reference reported missing",
        || {
            let v = v.clone();
            async move {
                let status = v.get("big-0").await.ok()?.status?;
                status
                    .conditions
                    .iter()
                    .any(|c| c.message.contains("constant BIG_REFERENCE"))
                    .then_some(())
            }
        },
    )
    .await;
}

/// What `value` takes once parsed into a `serde_json::Value` tree, in bytes: measured in this
/// process (8 trees parsed from its text, the growth of VmRSS divided by 8).
fn parsed_size(value: &serde_json::Value) -> usize {
    let text = serde_json::to_string(value).unwrap();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
            .unwrap()
            * 1024
    };
    let before = rss();
    let trees: Vec<serde_json::Value> = (0..8)
        .map(|_| serde_json::from_str(&text).unwrap())
        .collect();
    let grown = rss().saturating_sub(before);
    drop(trees);
    grown / 8
}

/// Scenario 8: objects no admission ever judged (written while the webhook was down, or before
/// the CRD validation existed) are reported in status and stop neither a reconcile nor the other
/// objects from converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_state_in_the_cluster_is_reported_and_the_rest_converges() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut rng = Rng::new();
    let mut operator = Replica::start("bad-state", None, false, &[]);
    let fleet = Fleet::new(&client, "bad", 5).await;
    // Everything here bypasses admission (no stamps): promote only what the operator has seen.
    fleet.promote_seen_only();
    let ns = fleet.ns.clone();
    let apply = PatchParams::apply("faults").force();
    let put = |kind: &'static str,
               name: &'static str,
               meta: serde_json::Value,
               spec: serde_json::Value| {
        let (client, ns, apply) = (client.clone(), ns.clone(), apply.clone());
        async move {
            let mut metadata = meta;
            metadata["name"] = json!(name);
            let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar(kind));
            api.patch(name, &apply, &Patch::Apply(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec })))
                .await
                .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
        }
    };
    // A version created straight into production with forged stamps.
    put(
        "AppVersion",
        "forged",
        json!({ "annotations": {
        "tooljet.io/stages": "production",
        "tooljet.io/promoted-by": "mallory", "tooljet.io/promoted-from": "staging",
        "tooljet.io/promoted-at": "2020-01-01T00:00:00Z" } }),
        json!({ "app": "a1", "versionName": "forged", "environment": "production" }),
    )
    .await;
    // A config referencing a Secret that does not exist.
    put("EnvironmentConfig", "ghost", json!({}), json!({ "app": "ghost", "environment": "staging",
        "constants": [{ "name": "K", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "nowhere", "key": "k" } } }] })).await;
    // Two rival configs for the same app and stage.
    for rival in ["rival-1", "rival-2"] {
        put(
            "EnvironmentConfig",
            rival,
            json!({}),
            json!({ "app": "rivals", "environment": "development",
            "constants": [{ "name": "WHO", "type": "Global", "value": rival }] }),
        )
        .await;
    }
    // A version of an app that does not exist, one in a stage its app does not have, and a
    // release of a version that is not in production.
    put(
        "AppVersion",
        "stray",
        json!({}),
        json!({ "app": "nope", "versionName": "stray" }),
    )
    .await;
    put(
        "AppVersion",
        "offpipe",
        json!({}),
        json!({ "app": "a2", "versionName": "offpipe", "environment": "qa" }),
    )
    .await;
    put(
        "ToolJetApp",
        "broken",
        json!({}),
        json!({ "environments": faults::STAGES, "release": { "version": "a3-v1" } }),
    )
    .await;

    for _ in 0..20 {
        fleet.random_change(&mut rng).await;
    }
    let configs: Api<EnvironmentConfig> = Api::namespaced(client.clone(), &ns);
    let versions: Api<AppVersion> = Api::namespaced(client.clone(), &ns);
    let apps: Api<ToolJetApp> = Api::namespaced(client.clone(), &ns);
    let reason = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
                  t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    support::eventually(Duration::from_secs(60), "every bad object reported", || {
        let (configs, versions, apps) = (&configs, &versions, &apps);
        async move {
            let cond = |o: Option<Vec<_>>, t: &str| o.and_then(|c: Vec<_>| reason(&c, t));
            let ghost = cond(configs.get("ghost").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            let r1 = cond(configs.get("rival-1").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            let r2 = cond(configs.get("rival-2").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            let stray = cond(versions.get("stray").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            let offpipe = cond(versions.get("offpipe").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            let broken = cond(apps.get("broken").await.ok()?.status.map(|s| s.conditions), "Ready")?;
            println!("reported: ghost {ghost:?}, rivals {r1:?} {r2:?}, stray {stray:?}, offpipe {offpipe:?}, broken {broken:?}");
            let f = |s: &str| s.to_string();
            (ghost == (f("False"), f("SecretNotFound"))
                && r1 == (f("False"), f("Conflict"))
                && r2 == (f("False"), f("Conflict"))
                && stray == (f("False"), f("AppNotFound"))
                && offpipe == (f("False"), f("EnvironmentNotInPipeline"))
                && broken == (f("False"), f("ReleaseVersionNotFound")))
                .then_some(())
        }
    })
    .await;
    // The forged stamps are never taken for a promotion the operator saw.
    let forged = versions.get("forged").await.unwrap();
    let status = serde_json::to_string(&forged.status).unwrap();
    assert!(
        !status.contains("mallory"),
        "a forged promoter in status: {status}"
    );
    // The rest converged exactly (the bad objects aside), and keeps converging.
    fleet.ignore(&["forged", "stray", "offpipe", "broken"]);
    fleet.converged(Duration::from_secs(60)).await;
    assert!(
        operator.operator.is_running(),
        "no reconcile crashed the operator"
    );
    faults::assert_no_canary(&[operator.log()], &fleet.canary);
}
