//! How many connections the operator holds to the apiserver, counted from the kernel's side
//! (`/proc`), not from the client's: while it converges 150 EnvironmentConfigs with dozens of
//! reconciles in flight, and at rest afterwards. kube's own client (HTTP/1.1) held one
//! connection per request in flight, about 76 at N=300 in docs/benchmarks.md; the operator's
//! client multiplexes them over HTTP/2. Its own test binary, so nothing else shares its control
//! plane.

mod support;

use std::{collections::HashSet, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use tooljet_operator::api::{EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

const CONFIGS: usize = 150;

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
