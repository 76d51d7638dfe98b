//! `status [APP]`: a board per app — the pipeline left to right, the versions in each stage,
//! the last verification of each stage's workloads, an automatic rollback under way, the release,
//! and each version's readiness and missing requirements.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;
use tooljet_operator::{
    api::conditions,
    api::{
        APPROVED_BY_ANNOTATION, AppVersion, PromotionPolicy, StageVerification, ToolJetApp,
        VerificationCause, VerificationPhase,
    },
};

use crate::{
    cluster::Cluster,
    error::Result,
    output::{self, Format},
};

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AppBoard {
    pub namespace: String,
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The pipeline, first stage first, with the versions in each stage.
    pub stages: Vec<Stage>,
    /// spec.release.version (what end users should get).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// status.releasedVersion (what the operator has made live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_version: Option<String>,
    /// The automatic rollback the operator is making (status.automaticRollback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_rollback: Option<RollingBack>,
    pub ready: Readiness,
    pub versions: Vec<VersionState>,
}

/// An automatic rollback under way: the release that failed verification, the one it goes back
/// to, and why.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RollingBack {
    pub from: String,
    pub to: String,
    pub reason: String,
    /// When the operator decided it (RFC 3339, UTC).
    pub at: String,
}

#[derive(Serialize, Debug)]
pub struct Stage {
    pub name: String,
    pub versions: Vec<String>,
    /// The PromotionPolicies guarding entry into this stage (absent when none, or when the
    /// cluster does not serve PromotionPolicies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// The last verification of the stage's rollout workloads (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationState>,
}

/// The last verification of one stage's rollout workloads, as the operator reports it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerificationState {
    /// Progressing, Verified or Failed.
    pub phase: VerificationPhase,
    /// What started it: Release, Rollback, AutomaticRollback, Promotion or Configuration.
    pub cause: VerificationCause,
    /// The version released, rolled back to or promoted (none for a configuration change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Workloads available with what changed, of all: `1/3`.
    pub progress: String,
    /// The Deployment waited for (Progressing) or that failed (Failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// What it waits for, what failed, or how long it took.
    pub message: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One PromotionPolicy guarding a stage, as its status reports it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub policy: String,
    /// Whether its windows let promotions in now (unknown until the operator reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_open: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_close: Option<String>,
    /// Approvals needed to enter the stage.
    pub approvals_required: u32,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// True, False or Unknown (not reconciled yet).
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct VersionState {
    pub name: String,
    pub version_name: String,
    pub stage: String,
    pub released: bool,
    pub ready: Readiness,
    /// Why the stage's configuration does not satisfy the version (ConfigResolved=False).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Approvals per stage, once the cluster serves the Approval kind (absent before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<BTreeMap<String, Vec<String>>>,
}

pub async fn run(cluster: &Cluster, app: Option<&str>, format: Format) -> Result<()> {
    let apps = match app {
        Some(name) => vec![cluster.app(name).await?],
        None => cluster.list_apps().await?,
    };
    let boards = boards(cluster, &apps).await?;
    if boards.is_empty() && format == Format::Table {
        let scope = if cluster.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", cluster.namespace)
        };
        eprintln!(
            "No ToolJetApps in {scope}; import one with `kubectl tooljet import FILE.json --apply`."
        );
        return Ok(());
    }
    output::print(format, &boards, |boards| {
        boards.iter().map(render).collect::<Vec<_>>().join("\n")
    })
}

/// The boards of `apps`, reading each namespace's versions, Approvals and PromotionPolicies once.
pub async fn boards(cluster: &Cluster, apps: &[ToolJetApp]) -> Result<Vec<AppBoard>> {
    type Facts = (
        Vec<AppVersion>,
        Option<Vec<kube::api::DynamicObject>>,
        Vec<PromotionPolicy>,
    );
    let mut by_namespace: BTreeMap<String, Facts> = BTreeMap::new();
    let mut boards = Vec::new();
    for app in apps {
        let ns = app.namespace().unwrap_or_default();
        if !by_namespace.contains_key(&ns) {
            let versions = cluster.list_versions(&ns).await?;
            let approvals = cluster.list_approvals(&ns).await?;
            let policies = cluster.list_policies(&ns).await?;
            by_namespace.insert(ns.clone(), (versions, approvals, policies));
        }
        let (versions, approvals, policies) = &by_namespace[&ns];
        boards.push(board(app, versions, approvals.as_deref(), policies));
    }
    Ok(boards)
}

/// The board of one app from its versions (any app's, filtered here) and, when the kind is
/// served, the namespace's Approvals. Pure.
pub fn board(
    app: &ToolJetApp,
    versions: &[AppVersion],
    approvals: Option<&[kube::api::DynamicObject]>,
    policies: &[PromotionPolicy],
) -> AppBoard {
    let name = app.name_any();
    let mut mine: Vec<&AppVersion> = versions.iter().filter(|v| v.spec.app == name).collect();
    mine.sort_by_key(|v| v.name_any());
    let released = app.status.as_ref().and_then(|s| s.released_version.clone());
    let stages = app
        .spec
        .environments
        .iter()
        .map(|stage| Stage {
            name: stage.clone(),
            versions: mine
                .iter()
                .filter(|v| &v.spec.environment == stage)
                .map(|v| v.name_any())
                .collect(),
            gates: gates(&name, stage, policies),
            verification: app.verification_of(stage).map(verification_state),
        })
        .collect();
    let versions = mine
        .iter()
        .map(|v| {
            let conds = v
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let missing = find(conds, conditions::CONFIG_RESOLVED)
                .filter(|c| c.status == "False")
                .map(|c| c.message.clone());
            VersionState {
                name: v.name_any(),
                version_name: v.spec.version_name.clone(),
                stage: v.spec.environment.clone(),
                released: released.as_deref() == Some(v.name_any().as_str()),
                ready: readiness(
                    conds,
                    v.metadata.generation,
                    v.status.as_ref().and_then(|s| s.observed_generation),
                ),
                missing,
                approvals: approvals.map(|all| approvals_of(&v.name_any(), all)),
            }
        })
        .collect();
    let app_conds = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    AppBoard {
        namespace: app.namespace().unwrap_or_default(),
        app: name,
        display_name: app.spec.display_name.clone(),
        stages,
        release: app.released().map(str::to_string),
        released_version: released,
        automatic_rollback: rolling_back(app),
        ready: readiness(
            app_conds,
            app.metadata.generation,
            app.status.as_ref().and_then(|s| s.observed_generation),
        ),
        versions,
    }
}

/// A stage's verification as the board shows it.
fn verification_state(v: &StageVerification) -> VerificationState {
    VerificationState {
        phase: v.phase,
        cause: v.cause,
        version: v.version.clone(),
        progress: v.progress.clone(),
        workload: v.workload.clone(),
        message: v.message.clone(),
        started_at: output::time(&v.started_at),
        finished_at: v.finished_at.as_ref().map(output::time),
    }
}

/// The automatic rollback the operator is making, if any (status.automaticRollback).
fn rolling_back(app: &ToolJetApp) -> Option<RollingBack> {
    let r = app.status.as_ref()?.automatic_rollback.as_ref()?;
    Some(RollingBack {
        from: r.from.clone(),
        to: r.to.clone(),
        reason: r.reason.clone(),
        at: output::time(&r.at),
    })
}

/// The policies guarding `stage` of `app`, as the operator resolved them (status.apps).
fn gates(app: &str, stage: &str, policies: &[PromotionPolicy]) -> Vec<Gate> {
    policies
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let guarded = status
                .apps
                .iter()
                .any(|a| a.name == app && a.environments.iter().any(|e| e == stage));
            guarded.then(|| Gate {
                policy: p.name_any(),
                open: status.open,
                next_open: status.next_open.as_ref().map(output::time),
                next_close: status.next_close.as_ref().map(output::time),
                approvals_required: p.spec.approvals.as_ref().map(|a| a.required).unwrap_or(0),
            })
        })
        .collect()
}

/// Approvals of `version`, by stage: the approvers (or object names when not yet stamped).
fn approvals_of(version: &str, all: &[kube::api::DynamicObject]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in all {
        let spec = &a.data["spec"];
        if spec["version"].as_str() != Some(version) {
            continue;
        }
        let stage = spec["environment"].as_str().unwrap_or_default().to_string();
        let who = a
            .annotations()
            .get(APPROVED_BY_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| a.name_any());
        out.entry(stage).or_default().push(who);
    }
    out
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn readiness(conds: &[Condition], generation: Option<i64>, observed: Option<i64>) -> Readiness {
    match find(conds, conditions::READY) {
        Some(c) if observed.is_some() && observed == generation => Readiness {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: if c.status == "True" {
                String::new()
            } else {
                c.message.clone()
            },
        },
        Some(c) => Readiness {
            status: "Unknown".into(),
            reason: "Reconciling".into(),
            message: format!(
                "the operator has not yet observed the latest change (last: {} {})",
                c.status, c.reason
            ),
        },
        None => Readiness {
            status: "Unknown".into(),
            reason: "NotReconciled".into(),
            message: "the operator has not reported on it yet".into(),
        },
    }
}

fn mark(v: &VersionState) -> String {
    let ready = match v.ready.status.as_str() {
        "True" => "ready",
        "False" => "not ready",
        _ => "pending",
    };
    if v.released {
        format!("{} (released, {ready})", v.name)
    } else {
        format!("{} ({ready})", v.name)
    }
}

/// The board as text: a header, the pipeline as columns, the stages' verifications (when any),
/// the gates into stages (when any), then one line per version.
pub fn render(b: &AppBoard) -> String {
    let mut out = header(b);
    out += &pipeline_table(b);
    if b.stages.iter().any(|s| s.verification.is_some()) {
        section(&mut out, &verifications_table(b));
    }
    if b.stages.iter().any(|s| !s.gates.is_empty()) {
        section(&mut out, &gates_table(b));
    }
    if !b.versions.is_empty() {
        section(&mut out, &versions_table(b));
    }
    out
}

/// Appends `table` after one blank line (a pipeline without versions already ends with one).
fn section(out: &mut String, table: &str) {
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(table);
}

/// The app, its readiness (why, when not ready) and its released version.
fn header(b: &AppBoard) -> String {
    let mut out = format!(
        "App {}/{}{}  Ready: {}{}\n",
        b.namespace,
        b.app,
        b.display_name
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        b.ready.status,
        if b.ready.status == "True" {
            String::new()
        } else {
            format!(" ({}: {})", b.ready.reason, b.ready.message)
        },
    );
    out += &format!(
        "Released: {}\n",
        b.released_version.as_deref().unwrap_or("<none>")
    );
    if let Some(r) = &b.automatic_rollback {
        out += &rolling_back_line(r);
    }
    out.push('\n');
    out
}

/// What the operator is rolling back, since when, and why.
fn rolling_back_line(r: &RollingBack) -> String {
    // The operator's reason starts by saying it is an automatic rollback; the line says so first.
    let why = r
        .reason
        .strip_prefix("automatic rollback: ")
        .unwrap_or(&r.reason);
    format!(
        "Automatic rollback since {}: the operator is rolling back from {} to {}, because {why}\n",
        r.at, r.from, r.to
    )
}

/// The pipeline: a column per stage, left to right, with the versions in it.
fn pipeline_table(b: &AppBoard) -> String {
    let depth = b
        .stages
        .iter()
        .map(|s| s.versions.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let by_name: BTreeMap<&str, &VersionState> =
        b.versions.iter().map(|v| (v.name.as_str(), v)).collect();
    let headers: Vec<String> = b
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i + 1 < b.stages.len() {
                format!("{} ->", s.name)
            } else {
                s.name.clone()
            }
        })
        .collect();
    let rows = (0..depth).map(|row| {
        b.stages
            .iter()
            .map(|s| {
                s.versions
                    .get(row)
                    .map(|n| {
                        by_name
                            .get(n.as_str())
                            .map(|v| mark(v))
                            .unwrap_or_else(|| n.clone())
                    })
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    });
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    output::table(&header_refs, rows)
}

/// The last verification of each stage that has rollout workloads: a line per stage, with what
/// started it, since when it stands, and what it waits for or what failed (when not Verified).
fn verifications_table(b: &AppBoard) -> String {
    let verifying: Vec<(&Stage, &VerificationState)> = b
        .stages
        .iter()
        .filter_map(|s| s.verification.as_ref().map(|v| (s, v)))
        .collect();
    output::table(
        &[
            "stage",
            "verification",
            "progress",
            "after",
            "since",
            "details",
        ],
        verifying.iter().map(|(s, v)| {
            [
                s.name.clone(),
                output::phase(v.phase).to_string(),
                v.progress.clone(),
                output::started_by(v.cause, v.version.as_deref()),
                v.finished_at
                    .clone()
                    .unwrap_or_else(|| v.started_at.clone()),
                if v.phase == VerificationPhase::Verified {
                    String::new()
                } else {
                    v.message.clone()
                },
            ]
        }),
    )
}

/// The PromotionPolicies guarding the stages: a line per stage and policy.
fn gates_table(b: &AppBoard) -> String {
    let gated: Vec<(&Stage, &Gate)> = b
        .stages
        .iter()
        .flat_map(|s| s.gates.iter().map(move |g| (s, g)))
        .collect();
    output::table(
        &["gate", "policy", "window", "approvals"],
        gated.iter().map(|(s, g)| {
            [
                format!("into {}", s.name),
                g.policy.clone(),
                window(g),
                g.approvals_required.to_string(),
            ]
        }),
    )
}

/// Whether a gate's windows let promotions in, and until when.
fn window(g: &Gate) -> String {
    match (g.open, &g.next_close, &g.next_open) {
        (Some(true), Some(close), _) => format!("open until {close}"),
        (Some(true), None, _) => "open".to_string(),
        (Some(false), _, Some(open)) => format!("closed until {open}"),
        (Some(false), _, None) => "closed".to_string(),
        (None, _, _) => "unknown".to_string(),
    }
}

/// A line per version; the approvals column only when a version has approvals.
fn versions_table(b: &AppBoard) -> String {
    let with_approvals = b
        .versions
        .iter()
        .any(|v| v.approvals.as_ref().is_some_and(|a| !a.is_empty()));
    let mut headers = vec!["version", "name", "stage", "ready", "released", "details"];
    if with_approvals {
        headers.push("approvals");
    }
    let rows = b.versions.iter().map(|v| version_row(v, with_approvals));
    output::table(&headers, rows)
}

/// One version's line: names, stage, readiness, whether released, what is missing (or why it is
/// not ready) and, `with_approvals`, its approvals by stage.
fn version_row(v: &VersionState, with_approvals: bool) -> Vec<String> {
    let details = match (&v.missing, v.ready.status.as_str()) {
        (Some(m), _) => m.clone(),
        (None, "True") => String::new(),
        (None, _) => format!("{}: {}", v.ready.reason, v.ready.message),
    };
    let mut row = vec![
        v.name.clone(),
        v.version_name.clone(),
        v.stage.clone(),
        v.ready.status.clone(),
        if v.released {
            "yes".into()
        } else {
            String::new()
        },
        details,
    ];
    if with_approvals {
        row.push(
            v.approvals
                .iter()
                .flatten()
                .map(|(stage, who)| format!("{stage}: {}", who.join(",")))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    row
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({ "type": type_, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z" })
    }

    #[test]
    fn the_board_shows_stages_in_pipeline_order_readiness_gates_and_approvals() {
        let app: ToolJetApp = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": "crm", "namespace": "ws", "generation": 1 },
            "spec": { "environments": ["dev", "qa", "prod"], "release": { "version": "v1" } },
            "status": { "observedGeneration": 1, "releasedVersion": "v1",
                        "conditions": [condition("Ready", "True", "Ready", "")] },
        }));
        let version = |name: &str, stage: &str, ready: bool| -> AppVersion {
            let conds = if ready {
                vec![
                    condition("Ready", "True", "Ready", ""),
                    condition("ConfigResolved", "True", "Resolved", ""),
                ]
            } else {
                vec![
                    condition(
                        "Ready",
                        "False",
                        "MissingRequirements",
                        "environment qa lacks constant API_URL",
                    ),
                    condition(
                        "ConfigResolved",
                        "False",
                        "MissingRequirements",
                        "environment qa lacks constant API_URL",
                    ),
                ]
            };
            obj(json!({
                "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                "metadata": { "name": name, "namespace": "ws", "generation": 2 },
                "spec": { "app": "crm", "versionName": name, "environment": stage },
                "status": { "observedGeneration": 2, "conditions": conds },
            }))
        };
        let other_app: AppVersion = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": "x1" },
            "spec": { "app": "other", "versionName": "x1", "environment": "dev" },
        }));
        let versions = [
            version("v2", "qa", false),
            version("v1", "prod", true),
            other_app,
        ];
        let approval: kube::api::DynamicObject = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "Approval",
            "metadata": { "name": "v2-prod-dana", "annotations": { APPROVED_BY_ANNOTATION: "dana" } },
            "spec": { "version": "v2", "environment": "prod" },
        }));
        let policy: PromotionPolicy = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "PromotionPolicy", "metadata": { "name": "freeze" },
            "spec": { "environments": ["prod"], "approvals": { "required": 2 } },
            "status": { "open": false, "nextOpen": "2026-01-05T08:00:00Z", "selectedApps": 1,
                        "apps": [{ "name": "crm", "environments": ["prod"] }] },
        }));
        let b = board(
            &app,
            &versions,
            Some(std::slice::from_ref(&approval)),
            &[policy],
        );
        let stages: Vec<(&str, &[String])> = b
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.versions.as_slice()))
            .collect();
        assert_eq!(
            stages,
            [
                ("dev", &[][..]),
                ("qa", &["v2".to_string()][..]),
                ("prod", &["v1".to_string()][..])
            ]
        );
        assert!(b.stages[1].gates.is_empty());
        assert_eq!(b.stages[2].gates[0].policy, "freeze");
        assert_eq!(b.stages[2].gates[0].open, Some(false));
        assert_eq!(b.stages[2].gates[0].approvals_required, 2);
        let v2 = b.versions.iter().find(|v| v.name == "v2").unwrap();
        assert_eq!(v2.ready.status, "False");
        assert!(v2.missing.as_deref().unwrap().contains("API_URL"));
        assert_eq!(v2.approvals.as_ref().unwrap()["prod"], ["dana"]);
        assert!(b.versions.iter().find(|v| v.name == "v1").unwrap().released);
        assert_eq!(b.versions.len(), 2, "only this app's versions");

        let text = render(&b);
        assert!(text.contains("Released: v1"), "{text}");
        assert!(
            text.contains("v1 (released, ready)") && text.contains("v2 (not ready)"),
            "{text}"
        );
        assert!(text.contains("closed until 2026-01-05T08:00:00Z"), "{text}");
        assert!(text.contains("prod: dana"), "{text}");
    }

    /// A verification started 2026-01-05T09:00:00Z; finished ten minutes later unless
    /// Progressing.
    fn verification(
        phase: VerificationPhase,
        cause: VerificationCause,
        version: Option<&str>,
        progress: &str,
        message: &str,
    ) -> VerificationState {
        VerificationState {
            phase,
            cause,
            version: version.map(str::to_string),
            progress: progress.into(),
            workload: None,
            message: message.into(),
            started_at: "2026-01-05T09:00:00Z".into(),
            finished_at: (phase != VerificationPhase::Progressing)
                .then(|| "2026-01-05T09:10:00Z".into()),
        }
    }

    /// A verified stage shows when and after what, without its message; a board without
    /// versions keeps one blank line between its pipeline and its verifications.
    #[test]
    fn a_verified_stage_shows_when_and_after_what_without_details() {
        let stage = |name: &str, v| Stage {
            name: name.into(),
            versions: vec![],
            gates: vec![],
            verification: Some(v),
        };
        let b = AppBoard {
            namespace: "ws".into(),
            app: "crm".into(),
            display_name: None,
            stages: vec![
                stage(
                    "qa",
                    verification(
                        VerificationPhase::Verified,
                        VerificationCause::Configuration,
                        None,
                        "2/2",
                        "all 2 workloads are available (12 s after it started)",
                    ),
                ),
                stage(
                    "prod",
                    verification(
                        VerificationPhase::Failed,
                        VerificationCause::Release,
                        Some("crm-v2"),
                        "0/1",
                        "Deployment web was not available within the 600 s timeout (0 of 1 new pods available)",
                    ),
                ),
            ],
            release: Some("crm-v2".into()),
            released_version: Some("crm-v2".into()),
            automatic_rollback: None,
            ready: ready("True", "Ready", ""),
            versions: vec![],
        };
        assert_eq!(
            render(&b),
            "\
App ws/crm  Ready: True
Released: crm-v2

QA ->   PROD

STAGE   VERIFICATION   PROGRESS   AFTER                  SINCE                  DETAILS
qa      Verified       2/2        configuration change   2026-01-05T09:10:00Z
prod    Failed         0/1        release of crm-v2      2026-01-05T09:10:00Z   Deployment web was not available within the 600 s timeout (0 of 1 new pods available)
"
        );
    }

    #[test]
    fn the_board_takes_each_stages_verification_and_the_rollback_under_way_from_the_status() {
        let app: ToolJetApp = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": "crm", "namespace": "ws", "generation": 1 },
            "spec": { "environments": ["dev", "staging", "production"], "release": { "version": "v1" } },
            "status": {
                "observedGeneration": 1, "releasedVersion": "v2",
                "verifications": [
                    { "environment": "staging", "cause": "Promotion", "version": "v3", "phase": "Failed",
                      "startedAt": "2026-01-05T09:00:00Z", "finishedAt": "2026-01-05T09:10:00Z",
                      "workload": "tooljet-staging", "progress": "0/1",
                      "message": "Deployment tooljet-staging: ProgressDeadlineExceeded: no progress" },
                    { "environment": "production", "cause": "Release", "version": "v2", "phase": "Failed",
                      "startedAt": "2026-01-05T09:30:00Z", "finishedAt": "2026-01-05T09:40:00Z",
                      "workload": "web", "progress": "0/1", "message": "Deployment web: ProgressDeadlineExceeded: x" },
                ],
                "automaticRollback": { "from": "v2", "to": "v1", "at": "2026-01-05T09:40:01Z",
                    "reason": "automatic rollback: the release of v2 failed verification (Deployment web: ProgressDeadlineExceeded: x)" },
            },
        }));
        let b = board(&app, &[], None, &[]);
        assert!(b.stages[0].verification.is_none(), "dev has no workloads");
        let staging = b.stages[1].verification.as_ref().unwrap();
        assert_eq!(
            (
                staging.phase,
                staging.workload.as_deref(),
                staging.progress.as_str()
            ),
            (VerificationPhase::Failed, Some("tooljet-staging"), "0/1")
        );
        assert_eq!(staging.finished_at.as_deref(), Some("2026-01-05T09:10:00Z"));
        let rolling = b.automatic_rollback.as_ref().unwrap();
        assert_eq!((rolling.from.as_str(), rolling.to.as_str()), ("v2", "v1"));

        let text = render(&b);
        assert!(
            text.contains("the operator is rolling back from v2 to v1, because the release of v2 failed verification"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("staging ")
                && l.contains(" Failed ")
                && l.contains(" 0/1 ")),
            "{text}"
        );

        // -o json: the verification per stage and the rollback, in the API's words.
        let doc = serde_json::to_value(&b).unwrap();
        assert_eq!(doc["stages"][1]["verification"]["phase"], "Failed");
        assert_eq!(doc["stages"][1]["verification"]["cause"], "Promotion");
        assert_eq!(
            doc["stages"][1]["verification"]["startedAt"],
            "2026-01-05T09:00:00Z"
        );
        assert!(doc["stages"][0].get("verification").is_none());
        assert_eq!(doc["automaticRollback"]["to"], "v1");
    }

    fn ready(status: &str, reason: &str, message: &str) -> Readiness {
        Readiness {
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The whole text of a board: header, pipeline, gates (every window state) and versions.
    #[test]
    fn a_board_renders_as_this_text() {
        let gate = |policy: &str, open, next_open: Option<&str>, next_close: Option<&str>| Gate {
            policy: policy.into(),
            open,
            next_open: next_open.map(str::to_string),
            next_close: next_close.map(str::to_string),
            approvals_required: 1,
        };
        let version =
            |name: &str, stage: &str, released, ready, missing: Option<&str>| VersionState {
                name: name.into(),
                version_name: name.trim_start_matches("crm-").into(),
                stage: stage.into(),
                released,
                ready,
                missing: missing.map(str::to_string),
                approvals: None,
            };
        let mut approved = version("crm-v3", "qa", false, ready("True", "Ready", ""), None);
        approved.approvals = Some([("prod".to_string(), vec!["dana".into(), "lee".into()])].into());
        let b = AppBoard {
            namespace: "ws".into(),
            app: "crm".into(),
            display_name: Some("CRM".into()),
            stages: vec![
                Stage {
                    name: "dev".into(),
                    versions: vec!["crm-v4".into(), "crm-gone".into()],
                    gates: vec![],
                    verification: None,
                },
                Stage {
                    name: "qa".into(),
                    versions: vec!["crm-v3".into()],
                    gates: vec![
                        gate(
                            "office-hours",
                            Some(true),
                            None,
                            Some("2026-01-05T18:00:00Z"),
                        ),
                        gate("always", Some(true), None, None),
                    ],
                    verification: Some(verification(
                        VerificationPhase::Failed,
                        VerificationCause::Promotion,
                        Some("crm-v3"),
                        "0/1",
                        "Deployment tooljet-qa: ProgressDeadlineExceeded: ReplicaSet \"tooljet-qa-7c9\" has timed out progressing.",
                    )),
                },
                Stage {
                    name: "prod".into(),
                    versions: vec!["crm-v1".into()],
                    gates: vec![
                        gate("freeze", Some(false), Some("2026-01-06T08:00:00Z"), None),
                        gate("shut", Some(false), None, None),
                        gate("new", None, None, None),
                    ],
                    verification: Some(verification(
                        VerificationPhase::Progressing,
                        VerificationCause::AutomaticRollback,
                        Some("crm-v1"),
                        "1/2",
                        "waiting for Deployment web-2: 0 of 1 new pods available",
                    )),
                },
            ],
            release: Some("crm-v1".into()),
            released_version: Some("crm-v1".into()),
            automatic_rollback: Some(RollingBack {
                from: "crm-v2".into(),
                to: "crm-v1".into(),
                reason: "automatic rollback: the release of crm-v2 failed verification (Deployment web-1: ProgressDeadlineExceeded: no progress)".into(),
                at: "2026-01-05T10:00:00Z".into(),
            }),
            ready: ready("False", "RolloutFailed", "Deployment web is missing"),
            versions: vec![
                version("crm-v1", "prod", true, ready("True", "Ready", ""), None),
                approved,
                version(
                    "crm-v4",
                    "dev",
                    false,
                    ready("False", "MissingRequirements", "x"),
                    Some("environment dev lacks constant API_URL"),
                ),
                version(
                    "crm-v5",
                    "dev",
                    false,
                    ready("Unknown", "NotReconciled", "not yet"),
                    None,
                ),
            ],
        };
        let expected = "\
App ws/crm (CRM)  Ready: False (RolloutFailed: Deployment web is missing)
Released: crm-v1
Automatic rollback since 2026-01-05T10:00:00Z: the operator is rolling back from crm-v2 to crm-v1, because the release of crm-v2 failed verification (Deployment web-1: ProgressDeadlineExceeded: no progress)

DEV ->               QA ->            PROD
crm-v4 (not ready)   crm-v3 (ready)   crm-v1 (released, ready)
crm-gone

STAGE   VERIFICATION   PROGRESS   AFTER                          SINCE                  DETAILS
qa      Failed         0/1        promotion of crm-v3            2026-01-05T09:10:00Z   Deployment tooljet-qa: ProgressDeadlineExceeded: ReplicaSet \"tooljet-qa-7c9\" has timed out progressing.
prod    Progressing    1/2        automatic rollback to crm-v1   2026-01-05T09:00:00Z   waiting for Deployment web-2: 0 of 1 new pods available

GATE        POLICY         WINDOW                              APPROVALS
into qa     office-hours   open until 2026-01-05T18:00:00Z     1
into qa     always         open                                1
into prod   freeze         closed until 2026-01-06T08:00:00Z   1
into prod   shut           closed                              1
into prod   new            unknown                             1

VERSION   NAME   STAGE   READY     RELEASED   DETAILS                                  APPROVALS
crm-v1    v1     prod    True      yes
crm-v3    v3     qa      True                                                          prod: dana,lee
crm-v4    v4     dev     False                environment dev lacks constant API_URL
crm-v5    v5     dev     Unknown              NotReconciled: not yet
";
        assert_eq!(render(&b), expected);

        // Ready, no display name, nothing released, no gates, no versions.
        let empty = AppBoard {
            namespace: "ws".into(),
            app: "new".into(),
            display_name: None,
            stages: ["dev", "prod"]
                .map(|s| Stage {
                    name: s.into(),
                    versions: vec![],
                    gates: vec![],
                    verification: None,
                })
                .into(),
            release: None,
            released_version: None,
            automatic_rollback: None,
            ready: ready("True", "Ready", ""),
            versions: vec![],
        };
        assert_eq!(
            render(&empty),
            "App ws/new  Ready: True\nReleased: <none>\n\nDEV ->   PROD\n\n"
        );
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_taken_as_current() {
        let v: AppVersion = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
            "metadata": { "name": "v1", "generation": 3 },
            "spec": { "app": "crm", "versionName": "v1", "environment": "dev" },
            "status": { "observedGeneration": 2, "conditions": [condition("Ready", "True", "Ready", "")] },
        }));
        let app: ToolJetApp = obj(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": "crm" },
            "spec": { "environments": ["dev", "prod"] },
        }));
        let b = board(&app, &[v], None, &[]);
        assert_eq!(b.versions[0].ready.status, "Unknown");
        assert_eq!(b.ready.reason, "NotReconciled");
        assert!(
            b.versions[0].approvals.is_none(),
            "no Approval kind: nothing claimed"
        );
    }
}
