//! Idle after a restart: the converged replicas are stopped and started again, and the leader
//! elected; for the next `--idle-seconds` (from the start) the apiserver counts every write to
//! the kinds the operator touches, and `/proc` their CPU time. A converged system needs neither.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{Cluster, WRITE_VERBS, difference},
    cpu::{PhaseCpu, Process, Snapshot},
    operator::Operator,
};

pub const WRITTEN: [&str; 6] = [
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
    /// The leader's allocator figures at the end of the window; absent from older results.
    #[serde(default)]
    pub heap: Option<crate::results::HeapMib>,
}

impl Idle {
    /// The window that began with the request counts `before` and the CPU snapshot
    /// `cpu_before` (taken before the replicas started): the writes the apiserver served since,
    /// the leader's own write count, and CPU seconds per process (the replicas' whole lives).
    pub async fn measured(
        cluster: &Cluster,
        leader: &Operator,
        before: &BTreeMap<String, u64>,
        processes: &[Process],
        cpu_before: &Snapshot,
        seconds: u64,
    ) -> Result<Idle> {
        let cpu = Snapshot::take(processes).since(cpu_before);
        let after = cluster.requests(&WRITE_VERBS, &WRITTEN).await?;
        let writes_by_request = difference(before, &after);
        let scrape = leader.metrics().await;
        let operator_writes = match &scrape {
            Some(scrape) if scrape.has("tooljet_operator_writes_total") => {
                Some(scrape.sum("tooljet_operator_writes_total", |_| true))
            }
            _ => None,
        };
        let heap = scrape.as_ref().and_then(crate::results::HeapMib::of);
        Ok(Idle {
            seconds,
            writes: writes_by_request.values().sum(),
            writes_by_request,
            operator_writes,
            operator_cpu_seconds: cpu.seconds.get("operator").copied().unwrap_or(f64::NAN),
            cpu,
            heap,
        })
    }
}
