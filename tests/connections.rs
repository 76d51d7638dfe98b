//! How the operator uses the apiserver, counted from outside it.
//!
//! - How many connections it holds, from the kernel's side (`/proc`), not from the client's:
//!   while it converges 150 EnvironmentConfigs with dozens of reconciles in flight, and at rest
//!   afterwards. kube's own client (HTTP/1.1) held one connection per request in flight, about 76
//!   at N=300 in docs/benchmarks.md; the operator's client multiplexes them over HTTP/2.
//! - How it fills its caches, from the apiserver's request counts: as watch streams, never as
//!   LISTs (a page of 500 objects is read whole before any of it is cached).
//!
//! Its own test binary, and its tests one at a time, so nothing else uses its control plane.

mod support;

use std::{collections::HashSet, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use tooljet_operator::api::{EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

const CONFIGS: usize = 150;

/// One operator at a time: each test counts what its own operator does.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The established TCP connections of process `pid` whose far end is `port`.
fn connections_to(pid: i32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let sockets: HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let port = format!("{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 9
                        && fields[2].rsplit(':').next() == Some(port.as_str())
                        && fields[3] == "01"
                        && sockets.contains(fields[9])
                })
                .count()
        })
        .sum()
}

#[tokio::test]
async fn the_operator_shares_one_connection_to_the_apiserver() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    support::install_crds(&client).await;
    let port: u16 = testenv::shared()
        .server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("the server URL ends in a port");
    let ns = support::namespace(&client, "conns").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let configs: Api<EnvironmentConfig> = Api::namespaced(client.clone(), &ns);
    support::configs::referencing(&client, &ns, CONFIGS).await;

    // Started on a backlog: every config is due at once, so requests pile up in flight.
    let mut operator = support::Operator::start("connections");
    let pid = operator.pid();
    let mut most = 0;
    let mut samples = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        most = most.max(connections_to(pid, port));
        samples += 1;
        let list = configs.list(&ListParams::default()).await.unwrap();
        let ready = support::configs::ready(&list.items);
        if ready == CONFIGS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ready} of {CONFIGS} configs Ready after 180 s:\n{}",
            operator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(operator.is_running(), "{}", operator.log_text());
    assert!(
        samples > 5,
        "too few samples ({samples}) to have seen the convergence"
    );
    assert!(
        (1..=2).contains(&most),
        "the operator held up to {most} connections to the apiserver (port {port}) while \
         converging {CONFIGS} configs; it should multiplex them over one"
    );
    let materialised = secrets
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")))
        .await
        .unwrap();
    assert!(
        materialised.items.len() >= CONFIGS,
        "{} Secrets materialised",
        materialised.items.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connections_to(pid, port),
        1,
        "at rest the operator holds its one connection (its watches ride on it)"
    );
    operator.stop();
}

/// Every kind the operator watches cluster-wide.
const WATCHED: [&str; 8] = [
    "secrets",
    "environmentconfigs",
    "appversions",
    "tooljetapps",
    "promotionpolicies",
    "approvals",
    "notifications",
    "deployments",
];

/// The apiserver here serves streaming lists (Kubernetes 1.34: `WatchList` is on), so a started
/// operator fills every cache from watch streams (`sendInitialEvents`) and sends no LIST; with
/// kube's default pages it sent one LIST per watch at least, each page of up to 500 objects read
/// whole before any of it was cached (docs/benchmarks.md, "The fifth day").
#[tokio::test]
async fn the_operator_fills_its_caches_from_watch_streams() {
    let _serial = SERIAL.lock().await;
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "streams").await;
    let configs: Api<EnvironmentConfig> = Api::namespaced(client.clone(), &ns);
    let count = 20;
    support::configs::referencing(&client, &ns, count).await;

    // Cluster-wide only: the operator's watches are; the namespace controller's LISTs of a
    // deleted namespace are namespaced.
    let lists = || {
        support::apiserver_requests(
            "apiserver_request_total",
            &["LIST"],
            &WATCHED,
            Some("cluster"),
        )
    };
    // Open watches (a watch is counted in `apiserver_request_total` only when it ends).
    let watches = || {
        support::apiserver_requests(
            "apiserver_longrunning_requests",
            &["WATCH"],
            &WATCHED,
            Some("cluster"),
        )
    };
    let (lists_before, watches_before) = (lists(), watches());
    let mut operator = support::Operator::start("streams");
    support::eventually(Duration::from_secs(120), "every config Ready", || {
        let configs = configs.clone();
        async move {
            let list = configs.list(&ListParams::default()).await.ok()?;
            (support::configs::ready(&list.items) == count).then_some(())
        }
    })
    .await;
    assert!(operator.is_running(), "{}", operator.log_text());
    let (listed, watched) = (
        lists() - lists_before,
        watches().saturating_sub(watches_before),
    );
    assert!(
        watched >= WATCHED.len() as u64,
        "{watched} more cluster-wide watches of the watched kinds open with the operator running \
         than before: the count does not see the operator's watches"
    );
    assert_eq!(
        listed, 0,
        "the operator sent {listed} cluster-wide LISTs while filling its caches; the apiserver \
         streams the initial list of a watch"
    );
    operator.stop();
}
