//! The real `kubectl-tooljet` binary against the local control plane, with the operator and its
//! admission webhook running: status, promote, release, rollback, history, diff, doctor,
//! import and export, and the exit codes scripts rely on.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{CANARY, apply, cli, crm, eventually, stage_of, workspace};
use tooljet_operator::{
    api::{AppVersion, EnvironmentConfig, ToolJetApp},
    lifecycle::References,
};

/// `status -o json` once `pred` holds for the app's board.
async fn board_when(ns: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(what, || {
        let run = cli(&["-n", ns, "status", "crm", "-o", "json"]);
        let board = (run.code == 0).then(|| run.json()[0].clone());
        std::future::ready(board.filter(|b| pred(b)))
    })
    .await
}

fn version_ready(board: &Value, version: &str) -> bool {
    board["versions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == version && v["ready"]["status"] == "True")
}

/// Promotes `version` through the CLI as bob until it is in `stage`.
fn promote_to(ns: &str, version: &str, stages: &[&str]) {
    for stage in stages {
        let run = cli(&["-n", ns, "--as", "bob", "promote", version]).ok();
        assert!(run.stdout.contains(&format!("-> {stage}")), "{run:?}");
    }
}

#[tokio::test]
async fn status_shows_the_pipeline_the_versions_and_their_readiness() {
    let (_, ns) = crm("plugin-status").await;
    let board = board_when(&ns, "both versions ready", |b| {
        version_ready(b, "v1") && version_ready(b, "v2")
    })
    .await;
    assert_eq!(board["app"], "crm");
    let stages: Vec<_> = board["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["development", "staging", "production"]);
    assert_eq!(board["stages"][0]["versions"], json!(["v1", "v2"]));
    assert!(board.get("releasedVersion").is_none());

    let table = cli(&["-n", &ns, "status"]).ok().stdout;
    assert!(table.contains("App ") && table.contains("/crm"), "{table}");
    let header = table
        .lines()
        .find(|l| l.contains("DEVELOPMENT"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        header.find("DEVELOPMENT") < header.find("STAGING")
            && header.find("STAGING") < header.find("PRODUCTION")
    );
    assert!(table.contains("v1 (ready)"), "{table}");
    assert!(
        !table.contains(CANARY),
        "status never shows configuration values"
    );
    let as_bob = cli(&["-n", &ns, "--as", "bob", "status", "-o", "json"])
        .ok()
        .json();
    assert_eq!(as_bob[0]["app"], "crm", "a promoter sees the board too");
    let everywhere = cli(&["-A", "status", "-o", "json"]).ok().json();
    assert!(
        everywhere
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["namespace"] == ns.as_str() && b["app"] == "crm")
    );
}

#[tokio::test]
async fn status_names_what_a_version_is_missing() {
    let (admin, ns) = crm("plugin-missing").await;
    apply(&admin, &ns, "AppVersion", "v3",
        json!({ "app": "crm", "versionName": "v3", "requires": { "constants": ["NOT_CONFIGURED"] } })).await;
    let board = board_when(&ns, "v3 reported not ready", |b| {
        b["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "v3" && v["ready"]["status"] == "False")
    })
    .await;
    let v3 = board["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v3")
        .unwrap()
        .clone();
    assert!(
        v3["missing"].as_str().unwrap().contains("NOT_CONFIGURED"),
        "{v3}"
    );
    let table = cli(&["-n", &ns, "status", "crm"]).ok().stdout;
    assert!(table.contains("NOT_CONFIGURED"), "{table}");

    // Declared now by a workspace configuration whose Secret does not exist: no Secret is
    // written, and v3 says why the constant is still missing (its stage's configuration changed
    // its readiness only).
    apply(&admin, &ns, "EnvironmentConfig", "workspace-development",
        json!({ "environment": "development",
                "constants": [{ "name": "NOT_CONFIGURED", "type": "Secret",
                                "valueFrom": { "secretKeyRef": { "name": "late", "key": "v" } } }] })).await;
    board_when(&ns, "v3 names the configuration that cannot be materialised", |b| {
        b["versions"].as_array().unwrap().iter().any(|v| {
            v["name"] == "v3"
                && v["missing"].as_str().is_some_and(|m| {
                    m.contains("declared by EnvironmentConfig workspace-development, which cannot be materialised")
                })
        })
    })
    .await;
}

#[tokio::test]
async fn promote_moves_a_version_to_the_next_stage_and_history_records_who() {
    let (admin, ns) = crm("plugin-promote").await;
    let run = cli(&["-n", &ns, "--as", "bob", "promote", "v1", "-o", "json"]).ok();
    let outcome = run.json();
    assert_eq!(
        (outcome["from"].as_str(), outcome["to"].as_str()),
        (Some("development"), Some("staging"))
    );
    assert_eq!(outcome["dryRun"], false);
    assert_eq!(stage_of(&admin, &ns, "v1").await, "staging");

    let history = eventually("the promotion in the history", || {
        let h = cli(&["-n", &ns, "history", "v1", "-o", "json"]).ok().json();
        std::future::ready((h.as_array().unwrap().len() == 1).then_some(h))
    })
    .await;
    assert_eq!(history[0]["kind"], "promotion");
    assert_eq!(history[0]["from"], "development");
    assert_eq!(history[0]["to"], "staging");
    assert_eq!(history[0]["by"], "bob");
    let table = cli(&["-n", &ns, "history", "crm"]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.contains("promotion"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("v1") && row.contains("staging") && row.contains("bob"),
        "{row}"
    );
}

#[tokio::test]
async fn a_dry_run_promotion_is_judged_by_the_server_and_changes_nothing() {
    let (admin, ns) = crm("plugin-dryrun").await;
    // The operator's status write for the new version would change its resourceVersion too:
    // compare from after it, once the status describes the current generation.
    let versions = Api::<AppVersion>::namespaced(admin.clone(), &ns);
    let before = eventually("v1's status is current", || async {
        let v = versions.get("v1").await.ok()?;
        let status = v.status.as_ref()?;
        (status.observed_generation == v.metadata.generation
            && status.conditions.iter().any(|c| c.type_ == "Ready"))
        .then_some(v)
    })
    .await;
    let run = cli(&["-n", &ns, "--as", "bob", "promote", "v1", "--dry-run"]).ok();
    assert!(
        run.stdout.contains("dry run") && run.stdout.contains("development -> staging"),
        "{run:?}"
    );
    let after = Api::<AppVersion>::namespaced(admin.clone(), &ns)
        .get("v1")
        .await
        .unwrap();
    assert_eq!(after.spec.environment, "development");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "nothing was written"
    );

    // A dry run is judged like the real thing: alice may not promote at all.
    let run = cli(&["-n", &ns, "--as", "alice", "promote", "v1", "--dry-run"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(stage_of(&admin, &ns, "v1").await, "development");
}

#[tokio::test]
async fn a_denied_promotion_shows_the_webhooks_message_and_exits_2() {
    let (admin, ns) = crm("plugin-denied").await;
    let run = cli(&[
        "-n",
        &ns,
        "--as",
        "bob",
        "promote",
        "v1",
        "--to",
        "production",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.starts_with("error: denied: "), "{}", run.stderr);
    assert!(
        run.stderr.contains("AppVersion v1"),
        "the webhook's own message: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("admission webhook"),
        "not the raw API error: {}",
        run.stderr
    );
    assert_eq!(stage_of(&admin, &ns, "v1").await, "development");
}

#[tokio::test]
async fn release_and_rollback_switch_the_live_version_and_are_in_the_history() {
    let (admin, ns) = crm("plugin-release").await;
    promote_to(&ns, "v1", &["staging", "production"]);
    promote_to(&ns, "v2", &["staging", "production"]);
    let run = cli(&["-n", &ns, "--as", "carol", "release", "v1"]).ok();
    assert!(run.stdout.contains("released v1"), "{run:?}");
    let run = cli(&["-n", &ns, "--as", "carol", "release", "v2"]).ok();
    assert!(run.stdout.contains("released v2 (was v1)"), "{run:?}");
    board_when(&ns, "v2 live", |b| b["releasedVersion"] == "v2").await;

    let run = cli(&["-n", &ns, "--as", "carol", "rollback", "-o", "json"]).ok();
    assert_eq!(
        run.json()["version"],
        "v1",
        "the previous release by default"
    );
    let app = Api::<ToolJetApp>::namespaced(admin.clone(), &ns)
        .get("crm")
        .await
        .unwrap();
    assert_eq!(app.released(), Some("v1"));
    board_when(&ns, "v1 live again", |b| b["releasedVersion"] == "v1").await;

    let history = eventually("three releases in the history", || {
        let h = cli(&["-n", &ns, "history", "crm", "-o", "json"])
            .ok()
            .json();
        let releases: Vec<(String, String)> = h
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] != "promotion")
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["version"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        std::future::ready((releases.len() == 3).then_some(releases))
    })
    .await;
    assert_eq!(
        history,
        [
            ("release".into(), "v1".into()),
            ("release".into(), "v2".into()),
            ("rollback".into(), "v1".into())
        ]
    );
    // Bob may promote but not release: refused with exit code 2.
    let run = cli(&["-n", &ns, "--as", "bob", "release", "v2"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn approve_creates_an_approval_named_after_the_approver_and_status_shows_it() {
    let (admin, ns) = crm("plugin-approve").await;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "dana-approver" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tooljet-approver" },
        "subjects": [{ "kind": "User", "name": "dana", "apiGroup": "rbac.authorization.k8s.io" }],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let run = cli(&[
        "-n",
        &ns,
        "--as",
        "dana",
        "approve",
        "v1",
        "--to",
        "staging",
        "--comment",
        "QA ok",
    ])
    .ok();
    assert!(
        run.stdout.contains("approval/v1-staging-dana created"),
        "{run:?}"
    );
    let again = cli(&[
        "-n", &ns, "--as", "dana", "approve", "v1", "--to", "staging",
    ]);
    assert_eq!(again.code, 1, "one approval per person: {again:?}");
    let skip = cli(&[
        "-n",
        &ns,
        "--as",
        "dana",
        "approve",
        "v1",
        "--to",
        "production",
    ]);
    assert_eq!(
        skip.code, 2,
        "only the next stage can be approved, says the webhook: {skip:?}"
    );
    let board = board_when(&ns, "the approval on the board", |b| {
        b["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "v1" && v["approvals"]["staging"] == json!(["dana"]))
    })
    .await;
    assert_eq!(board["app"], "crm");
}

#[tokio::test]
async fn diff_shows_names_and_hashes_never_values() {
    let (admin, ns) = crm("plugin-diff").await;
    apply(&admin, &ns, "EnvironmentConfig", "crm-staging",
        json!({ "app": "crm", "environment": "staging",
                "dataSources": [{ "name": "crm-db", "kind": "postgresql", "options": { "host": "db.staging" } },
                                { "name": "cache", "kind": "redis", "options": { "host": "cache.staging" } }],
                "constants": [{ "name": "API_URL", "type": "Global", "value": "https://staging.example" }] })).await;
    let d = cli(&[
        "-n",
        &ns,
        "diff",
        "staging",
        "production",
        "--app",
        "crm",
        "-o",
        "json",
    ])
    .ok()
    .json();
    let states: Vec<(String, String)> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("API_URL".into(), "differs".into()),
            ("cache".into(), "missingInB".into()),
            ("crm-db".into(), "differs".into())
        ]
    );
    let table = cli(&["-n", &ns, "diff", "staging", "production", "--app", "crm"])
        .ok()
        .stdout;
    assert!(
        table.contains("only in staging") && table.contains("differs"),
        "{table}"
    );
    for out in [table, d.to_string()] {
        assert!(
            !out.contains(CANARY) && !out.contains("staging.example"),
            "values never shown: {out}"
        );
    }
    let run = cli(&["-n", &ns, "diff", "staging", "qa"]);
    assert_eq!(run.code, 3, "an unconfigured stage is not found: {run:?}");
}

#[tokio::test]
async fn doctor_passes_on_a_working_install_and_lists_the_users_verbs() {
    let (_, ns) = crm("plugin-doctor").await;
    let run = cli(&["-n", &ns, "doctor", "-o", "json"]);
    let checks = run.json();
    let failed: Vec<_> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "fail")
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(run.code, 0, "{run:?}");
    let find = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"].as_str().unwrap().starts_with(name))
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {checks}"))
    };
    assert_eq!(find("CRD appversions.tooljet.io")["state"], "ok");
    assert_eq!(find("operator webhook answers")["state"], "ok");
    assert!(
        find("validating webhook")["detail"]
            .as_str()
            .unwrap()
            .contains("valid until")
    );
    assert_eq!(
        find("admission policy tooljet-operator-stage-rules")["state"],
        "ok"
    );
    let promote = find("you may promote");
    assert!(
        promote["detail"].as_str().unwrap().contains("staging"),
        "the admin may promote: {promote}"
    );
    let bob = cli(&["-n", &ns, "--as", "bob", "doctor", "-o", "json"]).json();
    let release = bob
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with("you may release"))
        .unwrap()
        .clone();
    assert_eq!(release["detail"], "no stage", "bob is no release manager");
    let table = cli(&["-n", &ns, "doctor"]).stdout;
    assert!(table.contains("CHECK") && table.contains("OK"), "{table}");
}

/// doctor computes a rollout workload's environment by Kubernetes' rules: a Secret listed after
/// the workload Secret replaces one of its constants, which fails the check (naming the key and
/// the source, never a value); without it, the workload passes.
#[tokio::test]
async fn doctor_finds_a_constant_another_envfrom_source_replaces() {
    let (admin, ns) = crm("plugin-doctor-env").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let legacy: Secret = serde_json::from_value(json!({
        "metadata": { "name": "legacy" },
        "stringData": { "TOOLJET_GLOBAL_CONSTANTS__production__API_URL": CANARY },
    }))
    .unwrap();
    secrets
        .patch(
            "legacy",
            &PatchParams::apply("tests"),
            &Patch::Apply(&legacy),
        )
        .await
        .unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), &ns);
    let deploy = |sources: Value| {
        serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
            "spec": { "replicas": 0, "selector": { "matchLabels": { "app": "web" } },
                "template": { "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": [{ "name": "tooljet", "image": "tooljet/tooljet:ee-lts-latest",
                        "envFrom": sources }] } } },
        }))
        .unwrap()
    };
    // web takes in its workload Secret, and with `extra` Secret legacy after it.
    let wire = async |extra: bool| {
        let mut sources = vec![json!({ "secretRef": { "name": "tooljet-workload.web" } })];
        if extra {
            sources.push(json!({ "secretRef": { "name": "legacy" } }));
        }
        deployments
            .patch(
                "web",
                &PatchParams::apply("tests").force(),
                &Patch::Apply(&deploy(Value::Array(sources))),
            )
            .await
            .unwrap();
    };
    wire(true).await;
    apply(
        &admin,
        &ns,
        "ToolJetApp",
        "crm",
        json!({ "environments": ["development", "staging", "production"],
                "rollout": [{ "environment": "production", "deployments": ["web"] }] }),
    )
    .await;
    let row = |run: &support::Run| {
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == format!("workload {ns}/web"))
            .cloned()
    };
    let (code, failed) = eventually("doctor judges web once its workload Secret exists", || {
        let run = cli(&["-n", &ns, "doctor", "-o", "json"]);
        let found =
            row(&run).filter(|r| !r["detail"].as_str().unwrap().contains("does not exist yet"));
        std::future::ready(found.map(|r| (run.code, r)))
    })
    .await;
    assert_eq!(code, 5, "a failed check exits 5");
    assert_eq!(failed["state"], "fail", "{failed}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "TOOLJET_GLOBAL_CONSTANTS__production__API_URL from tooljet-workload.web is replaced by envFrom[1] (Secret legacy) with another value: remove it there"
        ),
        "{detail}"
    );
    assert!(!detail.contains(CANARY) && !detail.contains("https://production.example"));

    wire(false).await;
    let run = cli(&["-n", &ns, "doctor", "-o", "json"]);
    let ok = row(&run).unwrap();
    assert_eq!(ok["state"], "ok", "{ok}");
    assert!(
        ok["detail"]
            .as_str()
            .unwrap()
            .contains("all from tooljet-workload.web")
    );
}

#[tokio::test]
async fn missing_objects_exit_3_and_bad_flags_exit_1() {
    let (_, ns) = workspace("plugin-codes").await;
    let run = cli(&["-n", &ns, "promote", "no-such-version"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("AppVersion no-such-version not found"),
        "{}",
        run.stderr
    );
    assert_eq!(cli(&["-n", &ns, "history", "nothing"]).code, 3);
    assert_eq!(
        cli(&["promote"]).code,
        1,
        "a missing argument is a usage error"
    );
    assert_eq!(cli(&["-o", "xml", "status"]).code, 1);
    assert!(
        cli(&["completion", "bash"])
            .ok()
            .stdout
            .contains("kubectl-tooljet")
    );
}

#[tokio::test]
async fn an_imported_export_applies_cleanly_and_is_ready_once_its_secrets_exist() {
    let (admin, ns) = workspace("plugin-import").await;
    let (path, original) = fixture("business-intelligence-dashboard-postgresql.json");
    let fixture = path.as_str();

    // Printed manifests name the Secrets to create, and hold no credential reference.
    let printed = cli(&["-n", &ns, "import", fixture]).ok();
    assert!(
        printed.stdout.contains("kind: ToolJetApp")
            && printed.stdout.contains("kind: EnvironmentConfig")
    );
    for doc in printed
        .stdout
        .split("---\n")
        .filter(|d| d.contains("kind: EnvironmentConfig"))
    {
        assert!(
            !doc.contains("465a9112") && doc.contains("secretKeyRef"),
            "options by reference only: {doc}"
        );
    }
    assert!(printed.stderr.contains(&format!(
        "kubectl -n {ns} create secret generic business-intelligence-dashboard-postgresql-staging-datasources --from-literal=business_analytics.password=..."
    )), "{}", printed.stderr);

    let run = cli(&["-n", &ns, "import", fixture, "--app", "bi", "--apply"]).ok();
    assert!(
        run.stdout.contains("tooljetapp/bi applied")
            && run.stdout.contains("appversion/bi-v1 applied"),
        "{run:?}"
    );
    let app = Api::<ToolJetApp>::namespaced(admin.clone(), &ns)
        .get("bi")
        .await
        .unwrap();
    assert_eq!(
        app.spec.environments,
        ["development", "staging", "production"]
    );
    let version = stored_version(&admin, &ns, "bi-v1", &original).await;
    assert_eq!(
        version.spec.requires.as_ref().unwrap().data_sources,
        ["business_analytics"]
    );
    let configs = Api::<EnvironmentConfig>::namespaced(admin.clone(), &ns);
    for stage in ["development", "staging", "production"] {
        let c = configs.get(&format!("bi-{stage}")).await.unwrap();
        assert_eq!(c.spec.data_sources.len(), 1);
        assert_eq!(
            c.spec.data_sources[0].options["database"],
            json!("business_analytics_database")
        );
    }

    // Not Ready while the Secret is missing; Ready once it exists.
    board_for(&ns, "bi", "bi-v1 waits for its Secret", |v| {
        v["ready"]["status"] == "False"
    })
    .await;
    // What is missing is the Secret the declared data source's configuration references, with
    // the command that creates it; not the data source, which is declared.
    let versions = Api::<AppVersion>::namespaced(admin.clone(), &ns);
    let create_dev = format!(
        "kubectl -n {ns} create secret generic bi-development-datasources --from-file=business_analytics.password=<file>"
    );
    let message = eventually("bi-v1 names the missing Secret", || {
        let versions = versions.clone();
        let create_dev = create_dev.clone();
        async move {
            let v = versions.get("bi-v1").await.ok()?;
            let c = v
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ConfigResolved")?;
            c.message.contains(&create_dev).then_some(c.message)
        }
    })
    .await;
    assert!(
        message.contains("data source business_analytics (declared by EnvironmentConfig bi-development, which cannot be materialised: Secret bi-development-datasources not found"),
        "{message}"
    );
    let refused = eventually("a refused promotion names staging's missing Secret", || {
        let run = cli(&["-n", &ns, "promote", "bi-v1", "--to", "staging"]);
        std::future::ready(
            (run.code == 2
                && run
                    .stderr
                    .contains("Secret bi-staging-datasources not found"))
            .then_some(run.stderr),
        )
    })
    .await;
    assert!(
        refused.contains(&format!(
            "kubectl -n {ns} create secret generic bi-staging-datasources --from-file=business_analytics.password=<file>"
        )),
        "{refused}"
    );
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    for stage in ["development", "staging", "production"] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("bi-{stage}-datasources") },
            "stringData": { "business_analytics.password": format!("{CANARY}-{stage}") },
        }))
        .unwrap();
        secrets
            .patch(
                &format!("bi-{stage}-datasources"),
                &PatchParams::apply("tests"),
                &Patch::Apply(&s),
            )
            .await
            .unwrap();
    }
    board_for(&ns, "bi", "bi-v1 ready", |v| v["ready"]["status"] == "True").await;

    // Export gives back the original app; no secret value leaves the cluster; the password is
    // the reference every stage's ToolJet server resolves to its own credential.
    let exported = exports_the_original(&ns, "bi-v1", "staging", &original);
    let options = exported["app"][0]["definition"]["appV2"]["dataSourceOptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["options"]["password"].is_object())
        .map(|o| o["options"]["password"].clone())
        .collect::<Vec<_>>();
    assert_eq!(options.len(), 3);
    for password in options {
        assert_eq!(
            password,
            json!({ "value": "{{secrets.BUSINESS_ANALYTICS_PASSWORD}}", "encrypted": false })
        );
    }
    // ... which the operator materialised, per stage, as the stage's secret constant.
    for stage in ["development", "staging", "production"] {
        let s = secrets.get(&format!("tooljet.{stage}.bi")).await.unwrap();
        let data = s.data.unwrap();
        assert_eq!(
            data[&format!("TOOLJET_SECRET_CONSTANTS__{stage}__BUSINESS_ANALYTICS_PASSWORD")].0,
            format!("{CANARY}-{stage}").into_bytes()
        );
        assert!(!String::from_utf8_lossy(&data["datasources.json"].0).contains(CANARY));
    }
}

#[tokio::test]
async fn an_imported_rest_api_app_is_ready_once_each_stage_has_its_constant() {
    let (admin, ns) = workspace("plugin-import-rest").await;
    let (_, mut original) = fixture("ai-powered-code-explainer.json");
    // Text that only looks like references: no name ToolJet accepts for a constant, or not
    // `constants` itself. Neither the import nor the operator may count them.
    original["app"][0]["definition"]["notReferences"] = json!(
        "{{constants.1BAD}} {{ myconstants.NOPE }} {{ page.constants.NOPE }} {{secrets.ÉTÉ}}"
    );
    let path = std::env::temp_dir().join(format!("{ns}-export.json"));
    std::fs::write(&path, serde_json::to_vec(&original).unwrap()).unwrap();
    let fixture = path.to_str().unwrap();

    let run = cli(&["-n", &ns, "import", fixture, "--apply"]).ok();
    assert!(
        run.stdout.contains("tooljetapp/ai-code-explainer applied")
            && run
                .stdout
                .contains("appversion/ai-code-explainer-v1 applied"),
        "{run:?}"
    );
    assert!(run.stderr.contains("GEMINI_API_KEY"), "{run:?}");
    let version = stored_version(&admin, &ns, "ai-code-explainer-v1", &original).await;
    let requires = version.spec.requires.as_ref().unwrap();
    assert!(requires.data_sources.is_empty());
    assert_eq!(requires.constants, ["GEMINI_API_KEY"]);
    // The webhook read the definition with the same rule as the import: the names it stamped on
    // the version are the ones the import declared.
    let stamped = References::stamped(&version).expect("stamped at admission");
    let mut names: Vec<&String> = stamped.constants.iter().chain(&stamped.secrets).collect();
    names.sort();
    assert_eq!(names, requires.constants.iter().collect::<Vec<_>>());

    board_for(
        &ns,
        "ai-code-explainer",
        "ai-code-explainer-v1 waits for its constant",
        |v| v["ready"]["status"] == "False",
    )
    .await;
    // {{constants.NAME}} is a Global constant in ToolJet ({{secrets.NAME}} would be a Secret one).
    for stage in ["development", "staging", "production"] {
        apply(
            &admin,
            &ns,
            "EnvironmentConfig",
            &format!("ai-code-explainer-{stage}"),
            json!({ "app": "ai-code-explainer", "environment": stage,
                    "constants": [{ "name": "GEMINI_API_KEY", "type": "Global", "value": CANARY }] }),
        )
        .await;
    }
    board_for(
        &ns,
        "ai-code-explainer",
        "ai-code-explainer-v1 ready",
        |v| v["ready"]["status"] == "True",
    )
    .await;

    exports_the_original(&ns, "ai-code-explainer-v1", "production", &original);
}

/// The imported version `name`, whose definition the apiserver kept exactly as `original` had it.
async fn stored_version(admin: &Client, ns: &str, name: &str, original: &Value) -> AppVersion {
    let version = Api::<AppVersion>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .unwrap();
    assert_eq!(
        version.spec.definition.as_ref(),
        Some(&original["app"][0]["definition"]),
        "kept exactly by the apiserver"
    );
    version
}

/// A ToolJet export under `tests/fixtures/`: its path and its JSON.
fn fixture(name: &str) -> (String, Value) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, json)
}

/// `export` of `version` as in `environment` gives back `original` (as ToolJet compares
/// exports), without the canary value. Returns the export.
fn exports_the_original(ns: &str, version: &str, environment: &str, original: &Value) -> Value {
    let exported = cli(&["-n", ns, "export", version, "--environment", environment]).ok();
    assert!(!exported.stdout.contains(CANARY));
    let exported: Value = serde_json::from_str(&exported.stdout).unwrap();
    assert_eq!(
        kubectl_tooljet::transfer::comparable(&exported),
        kubectl_tooljet::transfer::comparable(original)
    );
    exported
}

async fn board_for(ns: &str, app: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    eventually(what, || {
        let run = cli(&["-n", ns, "status", app, "-o", "json"]);
        let ok = run.code == 0
            && run.json()[0]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .any(&pred);
        std::future::ready(ok.then_some(()))
    })
    .await;
}
