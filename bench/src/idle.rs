//! Idle after a restart: the converged operator is stopped and started again; for the next
//! `--idle-seconds` the apiserver counts every write to the kinds the operator touches, and
//! `/proc` its CPU time. A converged system needs neither.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{Cluster, WRITE_VERBS, difference},
    cpu::{PhaseCpu, Snapshot},
    operator::Operator,
};

const WRITTEN: [&str; 6] = [
    "secrets",
    "environmentconfigs",
    "appversions",
    "tooljetapps",
    "events",
    "deployments",
];

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Idle {
    pub seconds: u64,
    /// Writes the apiserver served (POST, PUT, PATCH, APPLY, DELETE on Secrets, ToolJet objects,
    /// Events and Deployments) during the window.
    pub writes: u64,
    pub writes_by_request: BTreeMap<String, u64>,
    /// The operator's own count (`tooljet_operator_writes_total`) at the end of the window.
    pub operator_writes: Option<f64>,
    /// The restarted operator's CPU seconds in the window (its whole life).
    pub operator_cpu_seconds: f64,
    pub cpu: PhaseCpu,
}

/// Starts the operator on the converged system (the caller stopped the previous one) and counts
/// what it does in `seconds`. Returns the measurement and the running operator.
pub async fn after_restart(
    cluster: &Cluster,
    start: impl FnOnce(&Path) -> Result<Operator>,
    seconds: u64,
    log: &Path,
) -> Result<(Idle, Operator)> {
    let before = cluster.requests(&WRITE_VERBS, &WRITTEN).await?;
    let mut processes = cluster.processes();
    let cpu_before = Snapshot::take(&processes);
    let operator = start(log)?;
    processes.push(operator.process());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = Snapshot::take(&processes).since(&cpu_before);
    let after = cluster.requests(&WRITE_VERBS, &WRITTEN).await?;
    let writes_by_request = difference(&before, &after);
    let operator_writes = match operator.metrics().await {
        Some(scrape) if scrape.has("tooljet_operator_writes_total") => {
            Some(scrape.sum("tooljet_operator_writes_total", |_| true))
        }
        _ => None,
    };
    let idle = Idle {
        seconds,
        writes: writes_by_request.values().sum(),
        writes_by_request,
        operator_writes,
        operator_cpu_seconds: cpu.seconds.get("operator").copied().unwrap_or(f64::NAN),
        cpu,
    };
    Ok((idle, operator))
}
