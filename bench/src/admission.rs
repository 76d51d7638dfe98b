//! Admission cost, with the standby replica serving the webhooks and the configurations the
//! chart renders registered by URL:
//!
//! - (a) first-stage edits: merge patches of an AppVersion's description in development, one at
//!   a time with quiet spacing, with the webhooks registered and then without; client-side
//!   percentiles of both. The versions edited are created through the webhooks, like a user's;
//! - (b) promotions (development -> staging, then staging -> production), one at a time with
//!   quiet spacing: the validating webhook asks SubjectAccessReviews, the mutating one stamps.
//!
//! Apiserver-side, per webhook name and operation, from the apiserver's own
//! `apiserver_admission_webhook_admission_duration_seconds` (the difference of two scrapes around
//! each series): calls (`_count`) and p50/p99 estimated from the buckets. Beside it the
//! operator's own decision time (`tooljet_operator_admission_duration_seconds`).

use std::{collections::BTreeMap, time::Duration, time::Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tooljet_operator::webhook::config as admission;

use crate::{
    cluster::{Cluster, NS, label},
    converge::ready,
    latency::{Series, Spaced, spaced},
    operator::Operator,
    prom::{Histogram, Quantile, Scrape},
    workload::{Kind, STAGES},
};

const APISERVER_HISTOGRAM: &str = "apiserver_admission_webhook_admission_duration_seconds";
const OPERATOR_HISTOGRAM: &str = "tooljet_operator_admission_duration_seconds";
/// The webhook that judges AppVersions.
pub const VALIDATING_APPVERSIONS: &str = "appversions.validate.tooljet.io";
/// The AppVersions edited in (a): created through the webhooks, so that the mutating webhook
/// stamps their stage record as it does for every version created with the operator installed
/// (the workload's versions were applied before any webhook existed: unstamped versions are
/// always judged); first stage, never promoted.
const EDITED_WITH: &str = "app-0-edited";
const EDITED_WITHOUT: &str = "app-1-edited";
/// The version patched to see that the webhooks are in use.
const PROBE: &str = "app-0-v1";
/// The annotation the mutating webhook stamps a version's stage record into.
const STAGES_ANNOTATION: &str = "tooljet.io/stages";

/// The cost of one webhook (or of the operator's side of one) over a series of requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WebhookCost {
    /// The webhook's name (apiserver side) or `validate`/`mutate` (operator side).
    pub name: String,
    /// `UPDATE`, ... (apiserver side).
    pub operation: String,
    /// `validating` or `admit` (apiserver side), `operator` for the operator's own histogram.
    pub kind: String,
    pub calls: u64,
    pub mean_ms: Option<f64>,
    pub p50: Option<Quantile>,
    pub p99: Option<Quantile>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Admission {
    /// (a) client-side, with the webhooks registered.
    pub edit_with: Spaced,
    /// (a) client-side, with no webhook configuration.
    pub edit_without: Spaced,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// (a) apiserver side, per webhook and operation.
    pub edit_webhooks: Vec<WebhookCost>,
    /// (a) the operator's side.
    pub edit_operator: Vec<WebhookCost>,
    /// (a) calls of the AppVersion validating webhook (target: none).
    pub validating_calls_on_edits: u64,
    /// Whether the edited versions carry the stage record the mutating webhook stamps on CREATE.
    #[serde(default)]
    pub edited_versions_stamped: bool,
    /// Webhook calls while no configuration was registered (must be 0: the comparison is fair).
    pub calls_without: u64,
    /// (b) client-side.
    pub promotion: Spaced,
    /// (b) apiserver side, per webhook and operation.
    pub promotion_webhooks: Vec<WebhookCost>,
    /// (b) the operator's side.
    pub promotion_operator: Vec<WebhookCost>,
    /// Edits of a version by someone other than the one who last edited it (impersonated, with
    /// the `tooljet-developer` role): client side, and per webhook apiserver side.
    #[serde(default)]
    pub other_user_edit: Spaced,
    #[serde(default)]
    pub other_user_webhooks: Vec<WebhookCost>,
    /// The first edit of a version just created (each sample a new version).
    #[serde(default)]
    pub first_edit: Spaced,
    #[serde(default)]
    pub first_edit_webhooks: Vec<WebhookCost>,
    /// Who promoted: `admin`, or the impersonated user with the `tooljet-promoter` role.
    #[serde(default)]
    pub promoter: String,
    /// (b) the accesses the validating webhook checked, by how it learnt the answer
    /// (`tooljet_operator_access_reviews_total`: `allowed` and `denied` were asked of the
    /// apiserver, `remembered` reused an allowing answer).
    #[serde(default)]
    pub promotion_access_reviews: BTreeMap<String, u64>,
}

impl Admission {
    /// The apiserver-side cost of `webhook` in the promotions.
    pub fn promotion_cost(&self, webhook: &str) -> Option<&WebhookCost> {
        self.promotion_webhooks
            .iter()
            .find(|c| c.name == webhook && c.operation == "UPDATE")
    }
}

/// Registers the webhooks at `https://127.0.0.1:<port>` and waits until the apiserver uses them
/// (the operator has put its CA into them and a patch passes).
async fn register(cluster: &Cluster, configs: &[Value]) -> Result<()> {
    let client = &cluster.client;
    let apply = PatchParams::apply("bench").force();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for config in configs {
        let name = config["metadata"]["name"].as_str().unwrap_or_default();
        if config["kind"] == "ValidatingWebhookConfiguration" {
            validating
                .patch(name, &apply, &Patch::Apply(config))
                .await?;
        } else {
            mutating.patch(name, &apply, &Patch::Apply(config)).await?;
        }
    }
    let versions = Kind::AppVersion.api(client, NS);
    let started = Instant::now();
    loop {
        let v = validating.get(admission::CONFIGURATION_NAME).await?;
        let has_ca = v
            .webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some());
        if has_ca && describe(&versions, PROBE, "warm").await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the webhook did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn unregister(cluster: &Cluster) -> Result<()> {
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    validating
        .delete(admission::CONFIGURATION_NAME, &DeleteParams::default())
        .await?;
    mutating
        .delete(admission::CONFIGURATION_NAME, &DeleteParams::default())
        .await?;
    Ok(())
}

/// A first-stage edit: a merge patch of the description. Returns its client-side time.
async fn describe(api: &Api<DynamicObject>, version: &str, text: &str) -> Result<Duration> {
    let started = Instant::now();
    api.patch(
        version,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "description": text } })),
    )
    .await
    .with_context(|| format!("editing the description of AppVersion {version}"))?;
    Ok(started.elapsed())
}

/// Creates the versions edited in (a) through the webhooks and waits until they are Ready.
/// Returns whether both carry the stage record.
/// Creates version `name` of `app` in development (as the admin, through the webhooks), with a
/// definition of a real app's median size (40 KiB).
async fn create_version(cluster: &Cluster, name: &str, app: &str) -> Result<()> {
    let api = Kind::AppVersion.api(&cluster.client, NS);
    let version: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": name },
        "spec": { "app": app, "versionName": name, "environment": "development",
                  "definition": testenv::definitions::realistic(40 * 1024, 0) },
    }))?;
    api.create(&PostParams::default(), &version)
        .await
        .with_context(|| format!("creating AppVersion {name}"))?;
    Ok(())
}

async fn create_edited(cluster: &Cluster) -> Result<bool> {
    let api = Kind::AppVersion.api(&cluster.client, NS);
    for (name, app) in [(EDITED_WITH, "app-0"), (EDITED_WITHOUT, "app-1")] {
        create_version(cluster, name, app).await?;
    }
    let started = Instant::now();
    let mut stamped = true;
    for name in [EDITED_WITH, EDITED_WITHOUT] {
        loop {
            let v = api.get(name).await?;
            if ready(&v) {
                stamped &= v.annotations().contains_key(STAGES_ANNOTATION);
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("AppVersion {name} was not Ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(stamped)
}

/// One series of first-stage edits (with or without the webhooks), taken in blocks, and what the
/// apiserver and the operator saw of them.
#[derive(Default)]
struct EditSeries {
    series: Series,
    webhooks: Calls,
    operator: Calls,
}

impl EditSeries {
    /// `n` more edits of `version`, with the metrics scraped around them.
    #[allow(clippy::too_many_arguments)]
    async fn block(
        &mut self,
        cluster: &Cluster,
        operator: &Operator,
        webhook: &Operator,
        client: &kube::Client,
        version: &str,
        tag: &'static str,
        n: usize,
    ) -> Result<()> {
        let (api_before, op_before) = (cluster.metrics().await?, webhook.metrics().await);
        let (client, version) = (client.clone(), version.to_string());
        self.series
            .take(cluster, operator, n, move |k| {
                let (api, version) = (Kind::AppVersion.api(&client, NS), version.clone());
                Box::pin(async move { describe(&api, &version, &format!("{tag} {k}")).await })
            })
            .await?;
        let (api_after, op_after) = (cluster.metrics().await?, webhook.metrics().await);
        self.webhooks.add(apiserver_calls(&api_before, &api_after));
        if let (Some(before), Some(after)) = (op_before.as_ref(), op_after.as_ref()) {
            self.operator.add(operator_calls(before, after));
        }
        Ok(())
    }
}

/// Webhook observations by (name, operation, type), summed over blocks.
#[derive(Default)]
struct Calls(BTreeMap<(String, String, String), Histogram>);

impl Calls {
    fn add(&mut self, more: Calls) {
        for (key, h) in more.0 {
            self.0
                .entry(key)
                .and_modify(|sum| *sum = sum.plus(&h))
                .or_insert(h);
        }
    }

    fn costs(&self) -> Vec<WebhookCost> {
        self.0
            .iter()
            .map(|((name, operation, kind), h)| {
                cost(name.clone(), operation.clone(), kind.clone(), h)
            })
            .collect()
    }
}

/// The promotions to make: versions of apps 2.. (apps 0 and 1 are edited), development ->
/// staging, then staging -> production.
fn promotion_plan(apps: usize, n: usize) -> Vec<(String, &'static str)> {
    let versions: Vec<String> = (2..apps)
        .flat_map(|i| (1..=2).map(move |v| format!("app-{i}-v{v}")))
        .collect();
    STAGES[1..]
        .iter()
        .flat_map(|to| versions.iter().map(move |v| (v.clone(), *to)))
        .take(n)
        .collect()
}

/// Per (webhook name, operation, type), the apiserver's histogram between two scrapes.
fn apiserver_calls(before: &Scrape, after: &Scrape) -> Calls {
    let earlier = before.histograms(APISERVER_HISTOGRAM, |_| true);
    let mut calls = Calls::default();
    for (labels, h) in after.histograms(APISERVER_HISTOGRAM, |_| true) {
        let delta = h.minus(&earlier.get(&labels).cloned().unwrap_or_default());
        if delta.count <= 0.0 {
            continue;
        }
        let key = (
            label(&labels, "name").to_string(),
            label(&labels, "operation").to_string(),
            label(&labels, "type").to_string(),
        );
        // `rejected` true and false are one webhook's calls.
        calls.add(Calls([(key, delta)].into()));
    }
    calls
}

fn apiserver_costs(before: &Scrape, after: &Scrape) -> Vec<WebhookCost> {
    apiserver_calls(before, after).costs()
}

/// Per webhook (`validate`, `mutate`), the operator's decision time between two scrapes.
fn operator_calls(before: &Scrape, after: &Scrape) -> Calls {
    let earlier = before.histograms(OPERATOR_HISTOGRAM, |_| true);
    let mut calls = Calls::default();
    for (labels, h) in after.histograms(OPERATOR_HISTOGRAM, |_| true) {
        let delta = h.minus(&earlier.get(&labels).cloned().unwrap_or_default());
        if delta.count > 0.0 {
            let key = (
                label(&labels, "webhook").to_string(),
                String::new(),
                "operator".to_string(),
            );
            calls.add(Calls([(key, delta)].into()));
        }
    }
    calls
}

/// The operator's access checks between two scrapes, by answer.
fn access_reviews(before: Option<&Scrape>, after: Option<&Scrape>) -> BTreeMap<String, u64> {
    const COUNTER: &str = "tooljet_operator_access_reviews_total";
    let (Some(before), Some(after)) = (before, after) else {
        return BTreeMap::new();
    };
    after
        .series(COUNTER, |_| true)
        .into_iter()
        .map(|(labels, value)| {
            let answer = label(&labels, "answer").to_string();
            let earlier = before.sum(COUNTER, |l| label(l, "answer") == answer);
            (answer, (value - earlier).max(0.0) as u64)
        })
        .collect()
}

fn operator_costs(before: Option<&Scrape>, after: Option<&Scrape>) -> Vec<WebhookCost> {
    match (before, after) {
        (Some(before), Some(after)) => operator_calls(before, after).costs(),
        _ => vec![],
    }
}

fn cost(name: String, operation: String, kind: String, h: &Histogram) -> WebhookCost {
    WebhookCost {
        name,
        operation,
        kind,
        calls: h.count.round() as u64,
        mean_ms: h.mean_ms(),
        p50: h.quantile(0.5),
        p99: h.quantile(0.99),
    }
}

fn calls(costs: &[WebhookCost], name: Option<&str>) -> u64 {
    costs
        .iter()
        .filter(|c| name.is_none_or(|n| c.name == n))
        .map(|c| c.calls)
        .sum()
}

/// The first-stage edits of each series are taken in this many blocks, the series alternating
/// (with, without, with, ...), so that a slow spell of the machine (an etcd compaction, a
/// garbage collection) is as likely to fall on either series.
const EDIT_BLOCKS: usize = 5;
/// Edits after each switch, not measured.
const WARMUP_EDITS: usize = 10;

/// The size of block `b` of `n` edits in [`EDIT_BLOCKS`] blocks.
fn block_size(n: usize, b: usize) -> usize {
    n / EDIT_BLOCKS + usize::from(b < n % EDIT_BLOCKS)
}

async fn warm_up(cluster: &Cluster, version: &str) -> Result<()> {
    let versions = Kind::AppVersion.api(&cluster.client, NS);
    for k in 0..WARMUP_EDITS {
        describe(&versions, version, &format!("warmup {k}")).await?;
    }
    Ok(())
}

/// Unregisters the webhooks and waits until an edit no longer reaches them (the apiserver's view
/// of the configurations lags their deletion).
async fn unregister_and_wait(cluster: &Cluster) -> Result<()> {
    unregister(cluster).await?;
    let versions = Kind::AppVersion.api(&cluster.client, NS);
    let started = Instant::now();
    loop {
        let before = cluster.metrics().await?;
        describe(&versions, EDITED_WITHOUT, "unregistered?").await?;
        let after = cluster.metrics().await?;
        if calls(&apiserver_costs(&before, &after), None) == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the apiserver still calls the webhooks 60 s after their configurations were deleted"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Who writes in the admission phase besides the admin: clients impersonating users bound (in
/// the workload's namespace) to the chart's people roles.
pub struct People {
    pub developer: kube::Client,
    pub promoter: kube::Client,
    pub promoter_name: String,
}

/// Binds a developer and a promoter (the chart's `tooljet-developer` and `tooljet-promoter`
/// ClusterRoles, by RoleBindings in the workload's namespace) and returns clients impersonating
/// them; waits until the apiserver's authorizer grants them.
pub async fn people(cluster: &Cluster) -> Result<People> {
    let mut clients = vec![];
    for (user, role) in [
        ("bench-developer", "tooljet-developer"),
        ("bench-promoter", "tooljet-promoter"),
    ] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": user },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io" }],
        }))?;
        Api::<RoleBinding>::namespaced(cluster.client.clone(), NS)
            .patch(
                user,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&binding),
            )
            .await?;
        let client = crate::cluster::client_from(cluster.kubeconfig(), Some(user)).await?;
        // The authorizer's cache lags the binding: wait until a read is allowed.
        let started = Instant::now();
        while Kind::AppVersion
            .api(&client, NS)
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{user} was not granted {role} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        clients.push(client);
    }
    let promoter = clients.pop().expect("two");
    let developer = clients.pop().expect("two");
    Ok(People {
        developer,
        promoter,
        promoter_name: "bench-promoter".into(),
    })
}

/// Measures (a) and (b): `operator` is the leader (quiet spacing), `webhook` the replica the
/// configurations `configs` reach.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    cluster: &Cluster,
    operator: &Operator,
    webhook: &Operator,
    configs: &[Value],
    people: &People,
    apps: usize,
    edits_n: usize,
    promotions_n: usize,
) -> Result<Admission> {
    register(cluster, configs).await?;
    let edited_versions_stamped = create_edited(cluster).await?;
    if !edited_versions_stamped {
        println!(
            "   the edited versions carry no {STAGES_ANNOTATION}: every edit of them is judged"
        );
    }

    let plan = promotion_plan(apps, promotions_n);
    if plan.len() < promotions_n {
        println!(
            "   only {} promotions possible with {apps} apps (asked {promotions_n})",
            plan.len()
        );
    }
    let (api_before, op_before) = (cluster.metrics().await?, webhook.metrics().await);
    let client = people.promoter.clone();
    let promotion = spaced(cluster, operator, plan.len(), move |k| {
        let api = Kind::AppVersion.api(&client, NS);
        let (version, to) = plan[k].clone();
        Box::pin(async move {
            let started = Instant::now();
            api.patch(
                &version,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "environment": to } })),
            )
            .await
            .with_context(|| format!("promoting AppVersion {version} to {to}"))?;
            Ok(started.elapsed())
        })
    })
    .await?;
    let (api_after, op_after) = (cluster.metrics().await?, webhook.metrics().await);
    let promotion_webhooks = apiserver_costs(&api_before, &api_after);
    let promotion_operator = operator_costs(op_before.as_ref(), op_after.as_ref());
    let promotion_access_reviews = access_reviews(op_before.as_ref(), op_after.as_ref());

    let (mut with, mut without) = (EditSeries::default(), EditSeries::default());
    for b in 0..EDIT_BLOCKS {
        if b > 0 {
            register(cluster, configs).await?;
        }
        warm_up(cluster, EDITED_WITH).await?;
        with.block(
            cluster,
            operator,
            webhook,
            &cluster.client,
            EDITED_WITH,
            "with",
            block_size(edits_n, b),
        )
        .await?;
        unregister_and_wait(cluster).await?;
        warm_up(cluster, EDITED_WITHOUT).await?;
        without
            .block(
                cluster,
                operator,
                webhook,
                &cluster.client,
                EDITED_WITHOUT,
                "without",
                block_size(edits_n, b),
            )
            .await?;
    }
    register(cluster, configs).await?;

    // Edits by someone else: the admin made the version; a developer edits it, every other edit
    // (the developer's edit follows the admin's warm-up edit, so each is by another user than
    // the last).
    let others_n = (edits_n / 5).max(1);
    let mut other = EditSeries::default();
    for k in 0..others_n {
        describe(
            &Kind::AppVersion.api(&cluster.client, NS),
            EDITED_WITH,
            &format!("admin {k}"),
        )
        .await?;
        other
            .block(
                cluster,
                operator,
                webhook,
                &people.developer,
                EDITED_WITH,
                "developer",
                1,
            )
            .await?;
    }
    // First edits: a version created now (through the webhooks), edited once.
    let mut first = EditSeries::default();
    for k in 0..others_n {
        let name = format!("app-0-first-{k}");
        create_version(cluster, &name, "app-0").await?;
        first
            .block(
                cluster,
                operator,
                webhook,
                &cluster.client,
                &name,
                "first",
                1,
            )
            .await?;
    }
    let edit_webhooks = with.webhooks.costs();
    let calls_without = calls(&without.webhooks.costs(), None);
    let (edit_with, edit_without) = (with.series.summary(), without.series.summary());

    Ok(Admission {
        added_p50_ms: edit_with.latency.p50_ms - edit_without.latency.p50_ms,
        added_p99_ms: edit_with.latency.p99_ms - edit_without.latency.p99_ms,
        validating_calls_on_edits: edit_webhooks
            .iter()
            .filter(|c| c.name == VALIDATING_APPVERSIONS && c.kind == "validating")
            .map(|c| c.calls)
            .sum(),
        edit_operator: with.operator.costs(),
        edit_with,
        edit_without,
        edit_webhooks,
        edited_versions_stamped,
        calls_without,
        promotion,
        promotion_webhooks,
        promotion_operator,
        promotion_access_reviews,
        other_user_webhooks: other.webhooks.costs(),
        other_user_edit: other.series.summary(),
        first_edit_webhooks: first.webhooks.costs(),
        first_edit: first.series.summary(),
        promoter: people.promoter_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_blocks_split_the_series_evenly() {
        for n in [0, 3, 5, 30, 298, 300] {
            let sizes: Vec<usize> = (0..EDIT_BLOCKS).map(|b| block_size(n, b)).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{sizes:?}");
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
        assert_eq!(block_size(300, 0), 60);
    }

    #[test]
    fn calls_add_up_per_webhook_and_operation() {
        let h = |count: f64| Histogram {
            buckets: vec![(0.005, count), (f64::INFINITY, count)],
            count,
            sum: count * 0.001,
        };
        let key = |name: &str| (name.to_string(), "UPDATE".to_string(), "admit".to_string());
        let mut calls = Calls::default();
        calls.add(Calls([(key("a"), h(2.0))].into()));
        calls.add(Calls([(key("a"), h(3.0)), (key("b"), h(1.0))].into()));
        let costs = calls.costs();
        assert_eq!(
            costs
                .iter()
                .map(|c| (c.name.as_str(), c.calls))
                .collect::<Vec<_>>(),
            [("a", 5), ("b", 1)]
        );
        assert_eq!(costs[0].mean_ms, Some(1.0));
    }

    #[test]
    fn promotions_skip_the_edited_apps_and_go_one_stage_at_a_time() {
        let plan = promotion_plan(3, 10);
        assert_eq!(
            plan,
            [
                ("app-2-v1".to_string(), "staging"),
                ("app-2-v2".to_string(), "staging"),
                ("app-2-v1".to_string(), "production"),
                ("app-2-v2".to_string(), "production"),
            ]
        );
        assert_eq!(promotion_plan(100, 5).len(), 5);
    }
}
