//! The convergence clock: from the leader's election until watches have seen every expected
//! Secret carry its expected content hash and every EnvironmentConfig, AppVersion and ToolJetApp
//! report `observedGeneration == metadata.generation` with a `Ready` condition `True`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};

use crate::workload::{Kind, Workload};

/// What a watch event says about one object: done or not (yet, or any more).
type Observation = ((Kind, String), bool);

/// Whether a ToolJet object reports its current generation as Ready.
pub fn ready(obj: &DynamicObject) -> bool {
    let status = obj.data.get("status");
    let observed = status.and_then(|s| s["observedGeneration"].as_i64());
    let current = obj.metadata.generation;
    let is_ready = status
        .and_then(|s| s["conditions"].as_array())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    observed.is_some() && observed == current && is_ready
}

/// Watches until every expected object is done. Returns the time since `started`.
pub async fn converge(
    client: &Client,
    ns: &str,
    w: &Workload,
    started: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let expected = w.expected();
    let mut pending: BTreeSet<(Kind, String)> = expected
        .keys()
        .map(|name| (Kind::Secret, name.clone()))
        .collect();
    for kind in Kind::SOURCES {
        pending.extend(w.names(kind).into_iter().map(|name| (kind, name)));
    }
    let total = pending.len();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut streams: Vec<BoxStream<'static, Result<Observation, watcher::Error>>> = vec![
        watcher(
            secrets,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=tooljet-operator"),
        )
        .applied_objects()
        .map_ok(move |s: Secret| {
            let name = s.name_any();
            let done = expected
                .get(&name)
                .is_some_and(|hash| s.annotations().get("tooljet.io/config-hash") == Some(hash));
            ((Kind::Secret, name), done)
        })
        .boxed(),
    ];
    for kind in Kind::SOURCES {
        streams.push(
            watcher(kind.api(client, ns), watcher::Config::default())
                .applied_objects()
                .map_ok(move |o: DynamicObject| ((kind, o.name_any()), ready(&o)))
                .boxed(),
        );
    }
    let mut events = futures::stream::select_all(streams);
    let deadline = started + timeout;
    let mut done: BTreeMap<(Kind, String), bool> = BTreeMap::new();
    while !pending.is_empty() {
        let next = tokio::time::timeout(Duration::from_millis(200), events.try_next()).await;
        if let Ok(event) = next
            && let Some((key, is_done)) = event?
        {
            if is_done {
                pending.remove(&key);
            } else if done.get(&key) == Some(&true) {
                // It was done and no longer is (a newer generation): wait for it again.
                pending.insert(key.clone());
            }
            done.insert(key, is_done);
        }
        if Instant::now() > deadline {
            let sample: Vec<String> = pending
                .iter()
                .take(5)
                .map(|(k, n)| format!("{} {n}", k.name()))
                .collect();
            bail!(
                "{} of {total} objects not converged after {timeout:?}, e.g. {}",
                pending.len(),
                sample.join(", ")
            );
        }
    }
    Ok(started.elapsed())
}
