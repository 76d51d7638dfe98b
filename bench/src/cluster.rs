//! A fresh local control plane (testenv's etcd + kube-apiserver + kube-controller-manager) with
//! the CRDs and the benchmark's namespaces, its processes for CPU accounting, and the apiserver's
//! own metrics.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{conditions, wait::await_condition},
};
use serde_json::json;
use testenv::{ControlPlane, Mode};
use tooljet_operator::api;

use crate::{cpu::Process, prom::Scrape};

/// The namespace of the workload the operator reconciles.
pub const NS: &str = "bench";
/// The operator's own namespace (its hash key, its webhook certificate).
pub const OPERATOR_NS: &str = "tooljet-system";

pub struct Cluster {
    cp: ControlPlane,
    pub client: Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cp.kill();
    }
}

impl Cluster {
    /// Starts a control plane with state under `dir`, installs the CRDs and creates `namespaces`.
    pub async fn start(dir: &Path, namespaces: &[&str]) -> Result<Cluster> {
        // Attached: the control plane dies with this (main) thread whatever happens.
        let cp = ControlPlane::start(dir, Mode::Attached)?;
        let client = client_from(&cp.kubeconfig, None).await?;
        let cluster = Cluster { cp, client };
        let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
        for crd in api::crds() {
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&crd),
            )
            .await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await??;
        }
        for ns in namespaces {
            cluster.create_namespace(ns).await?;
        }
        Ok(cluster)
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.cp.kubeconfig
    }

    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        namespaces.create(&PostParams::default(), &ns).await?;
        Ok(())
    }

    /// Deletes the namespaces and waits until they are gone (the kube-controller-manager's
    /// namespace controller deletes their objects first). Returns how long that took.
    ///
    /// Their Secrets go first, and are waited for: were the owners (the floor's ToolJet objects)
    /// deleted with their dependents still there, the garbage collector would read each dependent
    /// (a 404 by then) at the kube-controller-manager's 20 requests a second, for minutes after
    /// the namespace is gone, during the phases that follow.
    pub async fn delete_namespaces(&self, names: &[&str], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        for name in names {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), name);
            secrets
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
            while !secrets
                .list_metadata(&ListParams::default().limit(1))
                .await?
                .items
                .is_empty()
            {
                if started.elapsed() > timeout {
                    bail!("the Secrets of namespace {name} were not deleted within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for name in names {
            namespaces.delete(name, &DeleteParams::default()).await?;
        }
        for name in names {
            while namespaces.get_opt(name).await?.is_some() {
                if started.elapsed() > timeout {
                    bail!("namespace {name} was not deleted within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(started.elapsed())
    }

    /// Waits until the apiserver has served no request on `resources` (any verb but WATCH, any
    /// answer) for `quiet`, polling every 250 ms; returns how long that took. With the operator
    /// stopped and the benchmark idle, what still moves is the kube-controller-manager finishing a
    /// deletion: after a namespace is gone, its garbage collector still reads (404) each
    /// dependent of the deleted owners, about a thousand at N=1000, which would otherwise run
    /// during the next phase and be counted against it. Gives up after `timeout` with a warning
    /// (the wait is reported either way).
    pub async fn settle(
        &self,
        resources: &[&str],
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Duration> {
        let verbs = ["GET", "LIST", "POST", "PUT", "PATCH", "APPLY", "DELETE"];
        let started = Instant::now();
        let total =
            async || -> Result<u64> { Ok(self.requests(&verbs, resources).await?.values().sum()) };
        let (mut last, mut since) = (total().await?, Instant::now());
        while since.elapsed() < quiet {
            if started.elapsed() > timeout {
                eprintln!(
                    "warning: the apiserver still served requests on {resources:?} after \
                     {timeout:?}; going on"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = total().await?;
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        Ok(started.elapsed())
    }

    /// The control plane's processes (named after their binaries) and this benchmark's own.
    pub fn processes(&self) -> Vec<Process> {
        let mut processes: Vec<Process> = self
            .cp
            .children
            .iter()
            .map(|child| Process {
                name: binary_name(child.id()).unwrap_or_else(|| format!("pid {}", child.id())),
                pid: child.id(),
            })
            .collect();
        processes.push(Process {
            name: "bench".into(),
            pid: std::process::id(),
        });
        processes
    }

    /// One scrape of the apiserver's `/metrics`.
    pub async fn metrics(&self) -> Result<Scrape> {
        let request = http::Request::get("/metrics").body(vec![])?;
        Ok(Scrape::parse(&self.client.request_text(request).await?))
    }

    /// Requests the apiserver has served with these verbs on these resources, by
    /// `VERB resource[/subresource]`, from its `apiserver_request_total`.
    pub async fn requests(
        &self,
        verbs: &[&str],
        resources: &[&str],
    ) -> Result<BTreeMap<String, u64>> {
        let scrape = self.metrics().await?;
        let mut counts = BTreeMap::new();
        for (labels, value) in scrape.series("apiserver_request_total", |l| {
            verbs.contains(&label(l, "verb")) && resources.contains(&label(l, "resource"))
        }) {
            let (verb, resource, sub) = (
                label(&labels, "verb"),
                label(&labels, "resource"),
                label(&labels, "subresource"),
            );
            let mut key = if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            };
            // Answers other than success are counted apart (`GET secrets 404`).
            let code = label(&labels, "code");
            if !code.starts_with('2') {
                key = format!("{key} {code}");
            }
            *counts.entry(key).or_insert(0) += value as u64;
        }
        Ok(counts)
    }
}

/// A client with the credentials of `kubeconfig`, acting as `impersonate` when given, on the
/// operator's own transport (one HTTP/2 connection, `tooljet_operator::apiclient`): the floor
/// and the load are sent the way the operator sends its requests.
pub async fn client_from(kubeconfig: &Path, impersonate: Option<&str>) -> Result<Client> {
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = impersonate.map(String::from);
    Ok(tooljet_operator::apiclient::client(config)?)
}

/// The verbs the apiserver counts as writes.
pub const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// `after - before`, keeping the keys that changed.
pub fn difference(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

pub fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map(String::as_str).unwrap_or_default()
}

/// The file name of a process' executable (`etcd`, `kube-apiserver`, ...), from its command line.
fn binary_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let path = Path::new(std::str::from_utf8(argv0).ok()?);
    Some(path.file_name()?.to_string_lossy().into_owned())
}
