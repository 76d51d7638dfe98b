//! The chart's two replicas on this machine: both keep their caches and serve admission, one
//! (elected on the chart's Lease) reconciles. The webhook configurations reach the standby (the
//! chart's `webhook.url` is its address), so admission is measured where it happens while the
//! leader works.
//!
//! Which replica leads is the benchmark's to say, so that a phase's clock starts when the work
//! can: before the replicas start, the Lease is held by the benchmark (a holder that renews
//! nothing for an hour); [`Replicas::hand_over`] names the leader-to-be as the holder, and that
//! replica's next election round (at most the operator's 2 s retry period later) renews it and
//! leads. The other replica sees a holder that keeps renewing and stays standby.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    chart::{self, Chart},
    cluster::{Cluster, OPERATOR_NS},
    cpu::Process,
    operator::{Operator, free_port},
    rss::Sampler,
};

/// The benchmark's own holder of the Lease while no replica may lead.
const HOLDER: &str = "bench-holds-the-lease";

pub struct Replicas {
    pub leader: Operator,
    pub standby: Operator,
    leader_name: String,
    lease: String,
}

impl Replicas {
    /// Holds the Lease, then starts both replicas with the chart's arguments (and `extra`, which
    /// replaces a chart flag of the same name); the standby serves the webhook on
    /// `webhook_port`, the port of the configurations' URL. Returns once both are ready.
    pub async fn start(
        bin: &Path,
        cluster: &Cluster,
        chart: &Chart,
        webhook_port: u16,
        extra: &[String],
        dir: &Path,
        tag: &str,
    ) -> Result<Replicas> {
        let lease = chart::lease_name(chart);
        hold(cluster, &lease).await?;
        let start = |name: &str, webhook: u16| -> Result<Operator> {
            let health = format!("127.0.0.1:{}", free_port()?);
            let args = chart::replica_args(chart, &health, &format!("127.0.0.1:{webhook}"), extra);
            Operator::spawn(
                bin,
                &chart.kubeconfig,
                &health,
                name,
                &args,
                &chart.env,
                &dir.join(format!("{name}.log")),
            )
        };
        let leader_name = format!("replica-a-{tag}");
        let leader = start(&leader_name, free_port()?)?;
        let standby = start(&format!("replica-b-{tag}"), webhook_port)?;
        for r in [&leader, &standby] {
            r.wait_ready(Duration::from_secs(120)).await?;
        }
        Ok(Replicas {
            leader,
            standby,
            leader_name,
            lease,
        })
    }

    /// Names the leader-to-be as the Lease's holder and waits until it has renewed it (it leads
    /// from then on). Returns when the Lease was handed over and when the leader renewed it.
    pub async fn hand_over(&self, cluster: &Cluster) -> Result<(Instant, Instant)> {
        let api: Api<Lease> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
        let handed = Instant::now();
        let given = api
            .patch(
                &self.lease,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": {
                    "holderIdentity": self.leader_name,
                    "leaseDurationSeconds": 15,
                    "renewTime": MicroTime(Timestamp::now()),
                } })),
            )
            .await?;
        let version = given.resource_version();
        loop {
            let now = api.get(&self.lease).await?;
            let holder = now.spec.as_ref().and_then(|s| s.holder_identity.clone());
            if now.resource_version() != version {
                if holder.as_deref() != Some(self.leader_name.as_str()) {
                    bail!("Lease {} was taken by {holder:?}", self.lease);
                }
                return Ok((handed, Instant::now()));
            }
            if handed.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} did not renew Lease {} within 30 s",
                    self.leader_name,
                    self.lease
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// From now on `sampler` samples the leader as `operator` and the standby as `standby`.
    pub fn sampled_by(&self, sampler: &Sampler) {
        sampler.watch("operator", self.leader.pid());
        sampler.watch("standby", self.standby.pid());
    }

    /// The leader as `operator` and the standby as `standby`, for CPU accounting.
    pub fn processes(&self) -> [Process; 2] {
        [
            self.leader.process(),
            Process {
                name: "standby".into(),
                pid: self.standby.pid(),
            },
        ]
    }

    /// SIGTERM to both (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.leader.stop();
        self.standby.stop();
    }
}

/// The Lease held by the benchmark for an hour: no replica leads until it is handed over.
async fn hold(cluster: &Cluster, name: &str) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": name, "namespace": OPERATOR_NS },
        "spec": { "holderIdentity": HOLDER, "leaseDurationSeconds": 3600,
                  "renewTime": MicroTime(Timestamp::now()) },
    });
    api.patch(
        name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&lease),
    )
    .await?;
    Ok(())
}
