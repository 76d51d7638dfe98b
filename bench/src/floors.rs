//! The two floors the operator's convergence is compared with, measured back to back while the
//! operator is stopped, in namespaces of their own that are deleted before it starts (so that
//! nothing they write is found by the operator later):
//!
//! - the Secret floor: the same Secrets (names and data) created (POST, the operator's verb for a
//!   new Secret) by a tight client loop;
//! - the contract floor: what the operator's contract asks for each object, no more: one read
//!   (GET) of each Secret an EnvironmentConfig references (its values cannot be known otherwise),
//!   the same Secrets with the operator's labels, hash annotation and controller ownerReference,
//!   created, and one server-side apply (the operator's status verb, answered with the object's
//!   metadata only, as the operator asks) of a status shaped like the operator's on the status
//!   subresource of every EnvironmentConfig, AppVersion and ToolJetApp.
//!
//! Both write with the operator's credentials (the chart's ServiceAccount token: RBAC and
//! priority-and-fairness judge them as they judge the operator), through the same admission
//! chain, at a concurrency the caller sweeps; the apiserver's request counts of each are kept so
//! that they can be held against the operator's.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    cluster::{Cluster, difference},
    cpu::{PhaseCpu, Snapshot},
    workload::{Kind, Output, Workload, apply_all},
};

pub const SECRET_FLOOR_NS: &str = "floor-secrets";
pub const CONTRACT_FLOOR_NS: &str = "floor-contract";
const FLOOR_MANAGER: &str = "bench-floor";

/// One floor: its writes, their time, and the CPU they cost.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Floor {
    pub seconds: f64,
    pub writes: usize,
    pub cpu: PhaseCpu,
    /// Writes in flight at once.
    #[serde(default)]
    pub concurrency: usize,
    /// Requests the apiserver served on the profiled resources while it ran, by
    /// `VERB resource[/subresource]`.
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
}

/// The resources whose requests are counted around a floor or a convergence.
pub const PROFILED: [&str; 5] = [
    "secrets",
    "environmentconfigs",
    "appversions",
    "tooljetapps",
    "events",
];
/// The verbs counted.
pub const VERBS: [&str; 8] = [
    "GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE",
];

/// Creates each Secret, `concurrency` at once, with `client`.
async fn create_all(
    client: &Client,
    ns: &str,
    secrets: impl Iterator<Item = Value>,
    concurrency: usize,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        field_manager: Some(FLOOR_MANAGER.into()),
        ..Default::default()
    };
    stream::iter(secrets)
        .map(|secret| {
            let (api, params) = (&api, &params);
            async move {
                let secret: Secret = serde_json::from_value(secret)?;
                api.create(params, &secret)
                    .await
                    .with_context(|| format!("creating Secret {}", secret.name_any()))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// The Secret floor: the operator's Secrets, data only, created in `ns` by `client`.
pub async fn secret_floor(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    w: &Workload,
    concurrency: usize,
) -> Result<Floor> {
    let objects = w.outputs.iter().map(|o| {
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": o.secret }, "type": "Opaque", "data": secret_data(o) })
    });
    let processes = cluster.processes();
    let requests_before = cluster.requests(&VERBS, &PROFILED).await?;
    let before = Snapshot::take(&processes);
    let started = Instant::now();
    create_all(client, ns, objects, concurrency).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = Snapshot::take(&processes).since(&before);
    let requests = difference(
        &requests_before,
        &cluster.requests(&VERBS, &PROFILED).await?,
    );
    Ok(Floor {
        seconds,
        writes: w.outputs.len(),
        cpu,
        concurrency,
        requests,
    })
}

/// One object's share of the contract: the Secrets it references read, its Secret (if it has
/// one) created, then its status applied.
struct Unit {
    kind: Kind,
    name: String,
    reads: Vec<String>,
    secret: Option<Value>,
    status: Value,
}

/// The Secrets an EnvironmentConfig's spec references (`secretKeyRef.name` of its data sources'
/// secret options and of its constants), each once.
fn referenced_secrets(config: &Value) -> Vec<String> {
    let spec = &config["spec"];
    let options = spec["dataSources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["secretOptions"].as_object())
        .flat_map(|o| o.values());
    let constants = spec["constants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| &c["valueFrom"]);
    let names: std::collections::BTreeSet<String> = options
        .chain(constants)
        .filter_map(|r| r["secretKeyRef"]["name"].as_str())
        .map(str::to_string)
        .collect();
    names.into_iter().collect()
}

/// The contract floor. Returns it and the mean status size it wrote per kind (bytes of JSON).
pub async fn contract_floor(
    cluster: &Cluster,
    writer: &Client,
    ns: &str,
    w: &Workload,
    concurrency: usize,
) -> Result<(Floor, BTreeMap<String, f64>)> {
    let client = &cluster.client;
    let contract_ns = ns;
    // Untimed: the referenced Secrets and the owners exist, with the uids and generations the
    // writes refer to (written by the admin, as people write them).
    apply_all(client, contract_ns, w.secrets.iter().cloned(), 16).await?;
    apply_all(client, contract_ns, w.sources(), 16).await?;
    let reads: BTreeMap<&str, Vec<String>> = w
        .configs
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap_or_default(),
                referenced_secrets(c),
            )
        })
        .collect();
    let mut owners: BTreeMap<(Kind, String), (String, i64)> = BTreeMap::new();
    for kind in Kind::SOURCES {
        for obj in kind
            .api(client, contract_ns)
            .list_metadata(&ListParams::default())
            .await?
        {
            let uid = obj.uid().context("a stored object without a uid")?;
            let generation = obj.metadata.generation.unwrap_or(1);
            owners.insert((kind, obj.name_any()), (uid, generation));
        }
    }
    let owner = |kind: Kind, name: &str| {
        owners
            .get(&(kind, name.to_string()))
            .cloned()
            .with_context(|| format!("{} {name} was not applied", kind.name()))
    };
    let at = serde_json::to_value(Time(Timestamp::now()))?;
    let mut units = vec![];
    for o in &w.outputs {
        let (uid, generation) = owner(o.owner_kind, &o.owner)?;
        let status = match o.owner_kind {
            Kind::EnvironmentConfig => config_status(o, generation, &at),
            _ => version_status(o, generation, &at),
        };
        let reads = match o.owner_kind {
            Kind::EnvironmentConfig => reads.get(o.owner.as_str()).cloned().unwrap_or_default(),
            _ => vec![],
        };
        units.push(Unit {
            kind: o.owner_kind,
            name: o.owner.clone(),
            reads,
            secret: Some(managed_secret(o, &uid)),
            status,
        });
    }
    for app in w.names(Kind::ToolJetApp) {
        let (_, generation) = owner(Kind::ToolJetApp, &app)?;
        let versions: Vec<String> = w
            .outputs
            .iter()
            .filter(|o| o.owner_kind == Kind::AppVersion && o.app == app)
            .map(|o| o.owner.clone())
            .collect();
        units.push(Unit {
            kind: Kind::ToolJetApp,
            name: app,
            reads: vec![],
            secret: None,
            status: app_status(&versions, generation, &at),
        });
    }
    let mut bytes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for u in &units {
        let entry = bytes.entry(u.kind.name().to_string()).or_default();
        entry.0 += serde_json::to_string(&u.status)?.len() as f64;
        entry.1 += 1.0;
    }
    let writes = units
        .iter()
        .map(|u| 1 + usize::from(u.secret.is_some()))
        .sum();

    let processes = cluster.processes();
    let requests_before = cluster.requests(&VERBS, &PROFILED).await?;
    let before = Snapshot::take(&processes);
    let started = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(writer.clone(), contract_ns);
    let create = PostParams {
        field_manager: Some(FLOOR_MANAGER.into()),
        ..Default::default()
    };
    stream::iter(units.iter())
        .map(|u| {
            let (secrets, create) = (&secrets, &create);
            async move {
                for name in &u.reads {
                    secrets
                        .get(name)
                        .await
                        .with_context(|| format!("reading Secret {name}"))?;
                }
                if let Some(secret) = &u.secret {
                    let secret: Secret = serde_json::from_value(secret.clone())?;
                    secrets
                        .create(create, &secret)
                        .await
                        .with_context(|| format!("creating Secret {}", secret.name_any()))?;
                }
                let body = json!({ "apiVersion": u.kind.api_version(), "kind": u.kind.name(), "status": u.status });
                u.kind
                    .apply_status(writer, contract_ns, &u.name, FLOOR_MANAGER, &body)
                    .await
                    .with_context(|| format!("applying the status of {} {}", u.kind.name(), u.name))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = Snapshot::take(&processes).since(&before);
    let requests = difference(
        &requests_before,
        &cluster.requests(&VERBS, &PROFILED).await?,
    );
    let floor = Floor {
        seconds,
        writes,
        cpu,
        concurrency,
        requests,
    };
    let means = bytes
        .into_iter()
        .map(|(kind, (total, n))| (kind, total / n))
        .collect();
    Ok((floor, means))
}

/// The mean size (bytes of JSON) of the statuses of the ToolJet objects in `ns`, per kind.
pub async fn status_bytes(client: &Client, ns: &str) -> Result<BTreeMap<String, f64>> {
    let mut means = BTreeMap::new();
    for kind in Kind::SOURCES {
        let list = kind.api(client, ns).list(&ListParams::default()).await?;
        let sizes: Vec<usize> = list
            .items
            .iter()
            .filter_map(|o| o.data.get("status"))
            .map(|s| serde_json::to_string(s).map(|s| s.len()).unwrap_or(0))
            .collect();
        if !sizes.is_empty() {
            means.insert(
                kind.name().to_string(),
                sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
            );
        }
    }
    Ok(means)
}

fn secret_data(o: &Output) -> BTreeMap<&String, ByteString> {
    o.data
        .iter()
        .map(|(k, v)| (k, ByteString(v.clone())))
        .collect()
}

/// The Secret as the operator writes it (`controller::secrets::managed_secret`): its labels, the
/// content-hash annotation and a controller ownerReference to the object it is written for.
fn managed_secret(o: &Output, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": o.secret,
            "labels": {
                "app.kubernetes.io/managed-by": "tooljet-operator",
                "tooljet.io/kind": o.kind_label,
                "tooljet.io/environment": o.environment,
                "tooljet.io/app": o.app,
            },
            "annotations": { "tooljet.io/config-hash": o.hash },
            "ownerReferences": [{
                "apiVersion": "tooljet.io/v1alpha1", "kind": o.owner_kind.name(), "name": o.owner,
                "uid": owner_uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "data": secret_data(o),
    })
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    at: &Value,
) -> Value {
    json!({
        "type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": at,
    })
}

/// An EnvironmentConfig's status once materialised, as the operator words it.
fn config_status(o: &Output, generation: i64, at: &Value) -> Value {
    json!({
        "observedGeneration": generation,
        "secretName": o.secret,
        "hash": o.hash,
        "dataSourceCount": o.data_sources,
        "constantCount": o.constants,
        "conditions": [condition("Ready", true, "Materialized", format!("materialised into Secret {}", o.secret), generation, at)],
    })
}

/// An AppVersion's status once resolved in its stage.
fn version_status(o: &Output, generation: i64, at: &Value) -> Value {
    let env = &o.environment;
    json!({
        "observedGeneration": generation,
        "environment": env,
        "resolvedConfig": { "secretName": o.secret, "hash": o.hash, "environment": env },
        "conditions": [
            condition("ConfigResolved", true, "Resolved",
                format!("{} constants of {env} in Secret {}; {} data sources configured", o.constants, o.secret, o.data_sources), generation, at),
            condition("Released", false, "NotReleased", "another version (or none) is released".into(), generation, at),
            condition("Verified", true, "NoWorkloads", format!("{env} has no rollout workloads to verify"), generation, at),
            condition("Ready", true, "Ready", format!("running with the {env} configuration"), generation, at),
        ],
    })
}

/// A ToolJetApp's status without a release: its versions by stage.
fn app_status(versions: &[String], generation: i64, at: &Value) -> Value {
    let environments: Vec<Value> = crate::workload::STAGES
        .iter()
        .enumerate()
        .map(|(i, stage)| json!({ "name": stage, "versions": if i == 0 { versions.to_vec() } else { vec![] } }))
        .collect();
    json!({
        "observedGeneration": generation,
        "environments": environments,
        "conditions": [
            condition("Ready", true, "NoRelease", "no version is released yet".into(), generation, at),
            condition("RolloutReady", true, "Synced", "every rollout workload's Secret holds what it serves, and its pod template that Secret's hash".into(), generation, at),
            condition("Verified", true, "NoWorkloads", "no stage has rollout workloads to verify".into(), generation, at),
        ],
    })
}
